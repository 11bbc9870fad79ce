#!/usr/bin/env bash
# Benchmark: no filter vs floor Wasm filter vs ip-geo (10 / 100k CIDRs) vs Envoy's native RBAC;
# our JWT filter vs Envoy's native jwt_authn (with and without its cache), ES256/RS256, cold/warm;
# on Envoy and on Kong's engine (nginx + ngx_wasm_module).
#   scripts/bench.sh                        # 5 rounds x 10 s per configuration (~5 min with all five)
#   ROUNDS=2 DURATION=3 scripts/bench.sh    # quick look
#   CONFIGS=none,floor,rbac_10 scripts/bench.sh
#   BENCH_CONFIGS=jwt scripts/bench.sh      # none, floor + our JWT filter vs native jwt_authn (issue 4)
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
# The noise-free half: instructions per request under callgrind (needs valgrind; ~3 min per
# configuration). INSTRUCTIONS=1 scripts/bench.sh
if [[ "${INSTRUCTIONS:-}" == 1 ]]; then
    command -v valgrind >/dev/null || ensure_apt valgrind
    "$PY" "$ROOT/scripts/bench_instructions.py"
fi
