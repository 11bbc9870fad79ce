#!/usr/bin/env bash
# Every test, on a fresh machine of this kind: installs what is missing, then runs
#   1. lints: rustfmt (rustfmt.toml), clippy (native and wasm32) with unwrap/expect/panic denied outside tests
#   2. native unit tests + Wasm-host tests (the release .wasm files in our wasmtime host) + CLI tests,
#      then `gatewarden test examples` (the example policy repo's tests through the release modules)
#   3. `envoy --mode validate` on every shipped Envoy config
#   4. end-to-end tests against a real Envoy (with the .wasm modules, and with the native module
#      libgatewarden.so) and Kong's engine (nginx + ngx_wasm_module) on 127.0.0.1
#   scripts/test.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
start=$SECONDS
# A clean clone builds once: incremental caches would only take disk (several GB).
[[ -n "${CI:-}" ]] && export CARGO_INCREMENTAL=0

"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"

log "rustfmt --check (workspace and the test-only modules)"
cargo fmt --all -- --check
for m in "$ROOT"/wasm-host/test-modules/*/Cargo.toml; do cargo fmt --manifest-path "$m" -- --check; done

# Every crate without FFI forbids unsafe code (the glue and the cdylibs export the ABI, so they cannot).
for root in shared/policy/src/lib.rs shared/testkit/src/lib.rs filters/*/policy/src/lib.rs wasm-host/src/lib.rs cli/src/main.rs \
    services/ratelimit/src/lib.rs services/ratelimit/src/main.rs; do
    grep -q '^#!\[forbid(unsafe_code)\]' "$ROOT/$root" || die "$root: #![forbid(unsafe_code)] is missing"
done

log "clippy (native, all targets)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "clippy (wasm32 filters)"
clippy_args=()
for p in "${WASM_PACKAGES[@]}"; do clippy_args+=(-p "$p"); done
cargo clippy --target "$WASM_TARGET" "${clippy_args[@]}" --quiet -- -D warnings

log "native and wasm-host tests"
GATEWARDEN_REQUIRE_REAL_DB=1 GATEWARDEN_WASM_DIR="$WASM_DIR" cargo test --workspace --quiet
# The workspace run unifies features: the JWT policy is tested there with `native-crypto` (AWS-LC's
# RSA, as in the native module). Its portable RSA path (the .wasm modules') alone, too:
cargo test -p gatewarden-jwt-policy --quiet

log "policy tests of examples/ through the release modules (gatewarden test)"
# The binary `cargo test` just built for the CLI's integration tests: `cargo run` would build the
# CLI again with other wasmtime features (no dev-dependencies), a second wasmtime build in CI.
[[ -x "$ROOT/target/debug/gatewarden" ]] || cargo build --quiet -p gatewarden
"$ROOT/target/debug/gatewarden" test --modules "$WASM_DIR" --junit "$ROOT/target/gatewarden-examples.junit.xml" examples
"$PY" "$ROOT/scripts/policy_reference.py" --check  # docs/reference/ matches `gatewarden schema`; links in docs/ resolve

log "envoy --mode validate on every shipped config"
"$ROOT/scripts/validate-configs.sh"

log "end-to-end tests against Envoy (Wasm and native) and Kong's engine"
SKIP_SETUP=1 SKIP_BUILD=1 "$ROOT/scripts/e2e.sh"

log "all tests passed in $((SECONDS - start)) s"
