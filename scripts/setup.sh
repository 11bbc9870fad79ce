#!/usr/bin/env bash
# Install everything the build, e2e tests and benchmarks need. Idempotent; quick when already done.
#   scripts/setup.sh
. "$(dirname "$0")/lib.sh"

ensure_wasm_target
ensure_venv
# gcc: the C parts of the native module's crates (AWS-LC for RSA, mimalloc); this machine kind has it.
ensure_apt wrk redis-server gcc
ensure_node_modules
log "setup done: $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
# Kong's engine is not installed from a registry: the prebuilt ../shared/wasmx, or GATEWARDEN_WASMX.
if engine="$(wasmx_bin)" && [[ -n "$engine" && -x "$engine" ]]; then
    log "Kong engine: $engine ($("$engine" -v 2>&1 | head -1))"
else
    log "no Kong engine found (../shared/wasmx/bin/nginx, or GATEWARDEN_WASMX=/path/to/nginx built with ngx_wasm_module: Kong's image, or the module's wasmx release binaries)"
fi
