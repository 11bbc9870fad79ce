#!/usr/bin/env bash
# Build the filters' release .wasm modules and print their sizes.
#   scripts/build.sh              # every package in WASM_PACKAGES (scripts/lib.sh)
#   scripts/build.sh gatewarden-floor   # only these packages
. "$(dirname "$0")/lib.sh"

packages=("$@")
((${#packages[@]})) || packages=("${WASM_PACKAGES[@]}")

args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
log "cargo build --release --target $WASM_TARGET ${args[*]}"
(cd "$ROOT" && cargo build --release --target "$WASM_TARGET" "${args[@]}")

for p in "${packages[@]}"; do
    m="$(module_path "$p")"
    [[ -f "$m" ]] || die "$p built but $m is missing (is it a cdylib?)"
    printf '%10s bytes  %s\n' "$(stat -c %s "$m")" "${m#"$ROOT"/}"
done
