#!/usr/bin/env bash
# Install everything the build, e2e tests and benchmarks need. Idempotent; quick when already done.
#   scripts/setup.sh
. "$(dirname "$0")/lib.sh"

ensure_wasm_target
ensure_venv
ensure_apt wrk
ensure_node_modules
log "setup done: $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
