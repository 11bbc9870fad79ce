#!/usr/bin/env bash
# Benchmark: no filter vs floor Wasm filter vs ip-geo (10 / 100k CIDRs) vs Envoy's native RBAC;
# our JWT filter vs Envoy's native jwt_authn (with and without its cache), ES256/RS256, cold/warm;
# our rate limiter vs Envoy's native local_ratelimit (per client address, 1 and 10,000 clients,
# nothing / most denied, with accuracy); on Envoy and on Kong's engine (nginx + ngx_wasm_module).
#   scripts/bench.sh                        # 5 rounds x 10 s per configuration (~5 min with all five)
#   ROUNDS=2 DURATION=3 scripts/bench.sh    # quick look
#   CONFIGS=none,floor,rbac_10 scripts/bench.sh
#   BENCH_CONFIGS=jwt scripts/bench.sh      # none, floor + our JWT filter vs native jwt_authn (issue 4)
#   CONFIGS=ratelimit scripts/bench.sh      # none, floor + rate limiting vs local_ratelimit (issue 13)
#   CONFIGS=fleet scripts/bench.sh          # fleet rate limiting only (scripts/bench_fleet.py: ours per
#                                           # call and lease vs Envoy's ratelimit filter, on
#                                           # gatewarden-ratelimit + Redis; ~10 min, plus ~4 min of builds) and the service's
#                                           # checks/s against Redis (LOAD_SECONDS, LOAD_CONCURRENCY,
#                                           # LOAD_KEYS); in the default selection too, FLEET=0 skips it
#   CONFIGS=fleet INSTRUCTIONS=1 scripts/bench.sh   # also the fleet callgrind counts: gateway Envoy,
#                                           # service and Redis per request, 1-client configurations
#                                           # (N=1000 WARM=100: ~4 min each on a loaded machine)
#   CONFIGS=validate scripts/bench.sh       # request validation (issue 14): valid JSON bodies of 200 B,
#                                           # 10 KB, 100 KB through our filter vs the same POST with no
#                                           # filter (scripts/bench_validate.py), then the module's size
#                                           # and its VM memory per worker with the example policy
#   CONFIGS=validate INSTRUCTIONS=1 scripts/bench.sh   # also their instructions per request
#   HOSTS=envoy CONFIGS=native scripts/bench.sh   # issue 15: the native module (libgatewarden.so,
#                                           # nat_* configurations) vs Envoy's filters on the same work
#                                           # (rbac, jwt_authn with/without cache, local_ratelimit) and
#                                           # vs our .wasm, side by side (scripts/bench_native.py; groups
#                                           # native_ip_geo, native_jwt, native_rl, native_val), then
#                                           # memory per worker of each (~4 min); with INSTRUCTIONS=1
#                                           # also instructions per request
#   RATELIMIT_MEMORY=1 scripts/bench.sh     # also the rate limiter's bounded memory: 1,000,000 keys
#                                           # in the Wasm host and on a real Envoy, and 10,000
#                                           # cycling clients in the Wasm host (~6 min)
#   BENCH_CONFIGS=none,jwt_es256_cold,authn_es256_cold,authn_cache_es256_cold scripts/bench.sh
#   INSTRUCTIONS=1 scripts/bench.sh         # also instructions/request under callgrind (noise-free)
#   HOSTS=envoy scripts/bench.sh            # Envoy only; HOSTS=kong: Kong's engine only (default both)
#   BENCH_MODULE_DIR=DIR SKIP_BUILD=1 scripts/bench.sh   # modules kept aside (one commit's build)
# Kong's engine (nginx + ngx_wasm_module): ../shared/wasmx/bin/nginx or $GATEWARDEN_WASMX; without
# one the Kong half is skipped with a message. Same configurations where Kong has them (not rbac_10,
# authn_*, ip_geo_100k), one worker, same wrk settings, ratios to that nginx with no filter and to
# its floor, plus each worker's start time (module compile) and memory.
# Writes target/bench/results.md (Markdown tables) and results.json (every run).
. "$(dirname "$0")/lib.sh"

[[ "${SKIP_SETUP:-}" == 1 ]] || "$ROOT/scripts/setup.sh"
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    # ip-geo is optional here: the benchmark skips its configurations when the module is missing.
    "$ROOT/scripts/build.sh" || { log "full build failed; building the floor filter only";
                                  "$ROOT/scripts/build.sh" gatewarden-floor; }
fi
"$PY" "$ROOT/scripts/bench.py"
# Fleet rate limiting (issue 13): when CONFIGS is unset or names `all`, `fleet`, fleet_* or rls_*;
# with INSTRUCTIONS=1 also its callgrind counts (gateway Envoy, service and Redis, 1 client).
spec="${BENCH_CONFIGS:-${CONFIGS:-}}"
fleet_only=0
[[ -n "$spec" && ",${spec// /}," =~ ^(,(fleet|fleet_call_[a-z0-9_]+|fleet_lease_[a-z0-9_]+|rls_[a-z0-9_]+))+,$ ]] && fleet_only=1
if [[ "${FLEET:-1}" != 0 ]] && { [[ -z "$spec" ]] || [[ ",${spec// /}," =~ ,(all|fleet|fleet_call_[a-z0-9_]+|fleet_lease_[a-z0-9_]+|rls_[a-z0-9_]+), ]]; }; then
    command -v redis-server >/dev/null || ensure_apt redis-server
    out="${BENCH_OUT:-$ROOT/target/bench}"
    mkdir -p "$out"
    (cd "$ROOT" && cargo build --release -p gatewarden-ratelimit) || die "building gatewarden-ratelimit failed"
    [[ "${INSTRUCTIONS:-}" == 1 ]] && { command -v valgrind >/dev/null || ensure_apt valgrind; }
    GATEWARDEN_RATELIMIT="${GATEWARDEN_RATELIMIT:-$ROOT/target/release/gatewarden-ratelimit}" \
        "$PY" "$ROOT/scripts/bench_fleet.py" || die "bench_fleet.py failed"
    # The service's checks per second against this machine's Redis (a gRPC client loop in
    # services/ratelimit/tests/load.rs; one line).
    (cd "$ROOT" && cargo test --release -p gatewarden-ratelimit --test load -- --ignored --nocapture) \
        > "$out/ratelimit_load.txt" 2>&1 || { cat "$out/ratelimit_load.txt"; die "the service's load test failed"; }
    grep '^gatewarden-ratelimit: ' "$out/ratelimit_load.txt" | tee -a "$out/fleet.md" \
        || die "no checks/s line in $out/ratelimit_load.txt"
fi
# Request validation (issue 14): the module's size and the memory of its VM per worker with the
# example policy (one Envoy per policy and concurrency); when CONFIGS names validate, val_* or post_*.
if [[ -n "$spec" && ",${spec// /}," =~ ,(all|validate|val_[a-z0-9_@]+|post_[a-z0-9_]+), ]]; then
    "$PY" "$ROOT/scripts/bench_validate.py" || die "bench_validate.py failed"
fi
# The native module (issue 15): memory per worker of it, our .wasm and Envoy's filters (one Envoy
# per configuration at --concurrency 1 and 3); when CONFIGS names native or native_*.
if [[ -n "$spec" && ",${spec// /}," =~ ,(native|native_[a-z_]+), && "${NATIVE_MEMORY:-1}" != 0 ]]; then
    "$PY" "$ROOT/scripts/bench_native.py" || die "bench_native.py failed"
fi
# The noise-free half: instructions per request under callgrind (needs valgrind; ~3 min per
# configuration). INSTRUCTIONS=1 scripts/bench.sh
if [[ "${INSTRUCTIONS:-}" == 1 && "$fleet_only" != 1 ]]; then
    command -v valgrind >/dev/null || ensure_apt valgrind
    "$PY" "$ROOT/scripts/bench_instructions.py"
fi
# Bounded memory of the rate limiter (issue 13): 1,000,000 distinct client addresses through the
# module in our Wasm host (shared-data entries and bytes, admission accuracy; both profiles; fails
# when the store grows or a limit over-admits), then on a real Envoy against local_ratelimit
# (admin /memory while wrk floods; an exhausted client must stay limited).
if [[ "${RATELIMIT_MEMORY:-}" == 1 ]]; then
    rl_module="${BENCH_MODULE_DIR:-$ROOT/target/$WASM_TARGET/release}/gatewarden_rate_limit.wasm"
    out="${BENCH_OUT:-$ROOT/target/bench}"
    mkdir -p "$out"
    (cd "$ROOT" && cargo build --release -p gatewarden-wasm-host --example rate_limit_flood)
    for profile in envoy kong; do
        "$ROOT/target/release/examples/rate_limit_flood" "$rl_module" 1000000 65536 "$profile" \
            | tee "$out/ratelimit_flood_$profile.md"
        ((PIPESTATUS[0] == 0)) || die "rate_limit_flood ($profile) failed"
    done
    # 10,000 clients cycling against 5 per day: admitted / configured pass after pass.
    (cd "$ROOT" && cargo build --release -p gatewarden-wasm-host --example rate_limit_cycle)
    "$ROOT/target/release/examples/rate_limit_cycle" "$rl_module" 10000 40 | tee "$out/ratelimit_cycle.md"
    "$PY" "$ROOT/scripts/bench_ratelimit_memory.py"
fi
