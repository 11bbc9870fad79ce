#!/usr/bin/env bash
# Regenerates the config schemas shipped for Kong (<filter>.meta.json) from the Rust types.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p gatewarden
for f in ip_geo jwt rate_limit validate; do
  ./target/debug/gatewarden schema "$f" --kong > "deploy/kong/gatewarden_${f}.meta.json"
  echo "wrote deploy/kong/gatewarden_${f}.meta.json"
done
# The validation policy with its OpenAPI document inlined, where hosts take the policy itself.
python3 scripts/embed_validate_policy.py
