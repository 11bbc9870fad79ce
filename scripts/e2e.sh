#!/usr/bin/env bash
# End-to-end tests against a real Envoy: install, build the modules, run pytest on scripts/e2e.
#   scripts/e2e.sh                   # everything
#   scripts/e2e.sh -k floor -x       # extra arguments go to pytest
# SKIP_SETUP=1 / SKIP_BUILD=1 skip those steps (e.g. when the caller already did them).
. "$(dirname "$0")/lib.sh"

[[ "${SKIP_SETUP:-}" == 1 ]] || "$ROOT/scripts/setup.sh"
[[ "${SKIP_BUILD:-}" == 1 ]] || "$ROOT/scripts/build.sh"
cd "$ROOT"
# test_cli_lifecycle.py runs the gatewarden command (debug build: shared with `cargo test`, no extra
# compile in scripts/test.sh).
[[ "${SKIP_BUILD:-}" == 1 ]] || cargo build --quiet -p gatewarden
exec "$PY" -m pytest -q -p no:cacheprovider "$ROOT/scripts/e2e" "$@"
