#!/usr/bin/env bash
# The demo, on a fresh machine of this kind: installs what is missing (wasm target, venv with
# Envoy, wrk, the free geo database, binaryen), builds the filters (the .wasm modules and the native
# module libgatewarden.so), starts Envoy on 127.0.0.1 with the example IP/geo, JWT, rate-limit and
# validation policies, shows allowed and denied requests, a JWT-protected route, a rate limit,
# request validation, a live update and a refused bad update, then stops everything.
#   scripts/demo.sh              # Envoy (.wasm), Envoy with the native module, then Kong's engine
#   scripts/demo.sh envoy-native # one host only (envoy | envoy-native | kong)
. "$(dirname "$0")/lib.sh"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
exec "$PY" "$ROOT/scripts/demo.py" "$@"
