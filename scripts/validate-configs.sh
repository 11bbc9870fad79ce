#!/usr/bin/env bash
# envoy --mode validate on every shipped Envoy config (see scripts/validate_configs.py).
. "$(dirname "$0")/lib.sh"
[[ -x "$ENVOY" ]] || "$ROOT/scripts/setup.sh"
exec "$PY" "$ROOT/scripts/validate_configs.py"
