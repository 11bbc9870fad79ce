#!/usr/bin/env bash
# End-to-end tests on every host: a real Envoy with the .wasm modules, the same Envoy with the native
# module (libgatewarden.so), and Kong's engine (nginx + ngx_wasm_module): install, build the
# modules, run pytest on scripts/e2e. Every case runs once per host ([envoy] / [envoy-native] /
# [kong]; a case for Envoy runs on both of its hosts unless it is about Wasm itself).
#   scripts/e2e.sh                   # everything
#   scripts/e2e.sh -k floor -x       # extra arguments go to pytest
#   scripts/e2e.sh --host kong       # one host only
# Without --host the hosts run side by side (one pytest each); E2E_SERIAL=1 runs one pytest.
# Kong's engine: $GATEWARDEN_WASMX, else ../shared/wasmx/bin/nginx; without one the Kong cases skip
# (CI=true: the run fails instead).
# SKIP_SETUP=1 / SKIP_BUILD=1 skip those steps (e.g. when the caller already did them).
. "$(dirname "$0")/lib.sh"

[[ "${SKIP_SETUP:-}" == 1 ]] || "$ROOT/scripts/setup.sh"
[[ "${SKIP_BUILD:-}" == 1 ]] || "$ROOT/scripts/build.sh"
cd "$ROOT"
# test_cli_lifecycle.py and the Kong counters run the gatewarden command (debug build: shared with
# `cargo test`, no extra compile in scripts/test.sh).
[[ "${SKIP_BUILD:-}" == 1 ]] || cargo build --quiet -p gatewarden
# A test fixture, not a product module: built here even with SKIP_BUILD (cargo makes it a no-op).
build_kong_metrics
build_test_pipeline  # the request pipeline's test-only module (scripts/e2e/test_pipeline.py)
engine="$(wasmx_bin)"
if [[ -n "$engine" && -x "$engine" ]]; then
    log "Kong engine: $engine"
else
    log "no Kong engine (../shared/wasmx/bin/nginx or GATEWARDEN_WASMX): the Kong cases will skip${CI:+ (CI=$CI: fail)}"
fi
# -rxXs: every skip, xfail (the Kong engine's and the native module's known defects, with their
# cause) and xpass is listed.
pytest_args=(-q -rxXs -p no:cacheprovider "$ROOT/scripts/e2e")
if [[ " $* " == *" --host"* || -n "${E2E_SERIAL:-}" ]]; then
    exec "$PY" -m pytest "${pytest_args[@]}" "$@"
fi
# The hosts' cases are independent (their own gateways, ports and temp dirs) and mostly wait on
# I/O: run them side by side, one pytest per host, and show each one's report after all end.
out="$(mktemp -d "${TMPDIR:-/tmp}/gatewarden-e2e.XXXXXX")"
hosts=(envoy envoy-native kong)
pids=()
for h in "${hosts[@]}"; do
    "$PY" -m pytest "${pytest_args[@]}" --basetemp "$out/$h-tmp" --host "$h" "$@" > "$out/$h.log" 2>&1 &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
for h in "${hosts[@]}"; do
    log "end-to-end cases on $h"
    cat "$out/$h.log"
done
[[ $rc == 0 ]] && rm -rf "$out"
exit "$rc"
