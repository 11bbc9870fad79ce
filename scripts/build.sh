#!/usr/bin/env bash
# Build the filters' release .wasm modules and print their sizes. Packages in SMALL_WASM_PACKAGES
# (lib.sh) are built with the size profile and wasm-opt, then placed beside the others.
#   scripts/build.sh              # every package in WASM_PACKAGES (scripts/lib.sh)
#   scripts/build.sh gatewarden-floor   # only these packages
. "$(dirname "$0")/lib.sh"

packages=("$@")
((${#packages[@]})) || packages=("${WASM_PACKAGES[@]}")

args=()
small=()
for p in "${packages[@]}"; do
    if is_small_package "$p"; then small+=(-p "$p"); else args+=(-p "$p"); fi
done
if ((${#args[@]})); then
    log "cargo build --release --target $WASM_TARGET ${args[*]}"
    (cd "$ROOT" && cargo build --release --target "$WASM_TARGET" "${args[@]}")
fi
# Built for size (SMALL_WASM_PACKAGES in lib.sh): the size profile, then wasm-opt, into $WASM_DIR.
if ((${#small[@]})); then
    ensure_node_modules
    log "cargo build --profile $SMALL_PROFILE --target $WASM_TARGET ${small[*]}"
    (cd "$ROOT" && cargo build --profile "$SMALL_PROFILE" --target "$WASM_TARGET" "${small[@]}")
    mkdir -p "$WASM_DIR"
    for p in "${packages[@]}"; do
        is_small_package "$p" || continue
        shrink_module "$ROOT/target/$WASM_TARGET/$SMALL_PROFILE/${p//-/_}.wasm" "$(module_path "$p")"
    done
fi

for p in "${packages[@]}"; do
    m="$(module_path "$p")"
    [[ -f "$m" ]] || die "$p built but $m is missing (is it a cdylib?)"
    printf '%10s bytes  %s\n' "$(stat -c %s "$m")" "${m#"$ROOT"/}"
done
