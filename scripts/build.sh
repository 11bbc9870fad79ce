#!/usr/bin/env bash
# Build the filters' release .wasm modules and the native Envoy module (libgatewarden.so), and print
# their sizes. Packages in SMALL_WASM_PACKAGES (lib.sh) are built with the size profile and
# wasm-opt, then placed beside the others.
#   scripts/build.sh              # every package in WASM_PACKAGES and NATIVE_PACKAGE (scripts/lib.sh)
#   scripts/build.sh gatewarden-floor   # only these packages
#   scripts/build.sh gatewarden-envoy-native   # only the native module (lib.sh build_native)
. "$(dirname "$0")/lib.sh"

packages=("$@")
((${#packages[@]})) || packages=("${WASM_PACKAGES[@]}" "$NATIVE_PACKAGE")

args=()
small=()
native=0
wasm=()
for p in "${packages[@]}"; do
    if [[ "$p" == "$NATIVE_PACKAGE" ]]; then
        native=1
        continue
    fi
    wasm+=("$p")
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
    for p in "${wasm[@]}"; do
        is_small_package "$p" || continue
        shrink_module "$ROOT/target/$WASM_TARGET/$SMALL_PROFILE/${p//-/_}.wasm" "$(module_path "$p")"
    done
fi

if ((native)); then build_native; fi

for p in "${wasm[@]}"; do
    m="$(module_path "$p")"
    [[ -f "$m" ]] || die "$p built but $m is missing (is it a cdylib?)"
    printf '%10s bytes  %s\n' "$(stat -c %s "$m")" "${m#"$ROOT"/}"
done
if ((native)); then printf '%10s bytes  %s\n' "$(stat -c %s "$NATIVE_MODULE")" "${NATIVE_MODULE#"$ROOT"/}"; fi
