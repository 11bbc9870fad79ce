#!/usr/bin/env bash
# Fill the sha256 of deploy/istio/wasmplugin-<filter>.yaml (FILTER=ip-geo by default, jwt, rate-limit or validate).
#   scripts/istio-sha256.sh                    # sha256 of the built module (file:// or https:// url)
#   scripts/istio-sha256.sh sha256:<digest>    # an OCI image digest (oci:// url)
#   FILTER=jwt scripts/istio-sha256.sh
. "$(dirname "$0")/lib.sh"

filter="${FILTER:-ip-geo}"
[[ "$filter" == ip-geo || "$filter" == jwt || "$filter" == rate-limit || "$filter" == validate ]] ||
    die "FILTER must be ip-geo, jwt, rate-limit or validate, not $filter"
file="$ROOT/deploy/istio/wasmplugin-$filter.yaml"
if (($#)); then
    sum="${1#sha256:}"
else
    module="$(module_path "gatewarden-$filter")"
    [[ -f "$module" ]] || die "$module missing: run scripts/build.sh (or pass an OCI digest)"
    sum="$(sha256sum "$module" | cut -d' ' -f1)"
fi
[[ "$sum" =~ ^[0-9a-f]{64}$ ]] || die "not a sha256: $sum"
sed -i -E "s/^(  sha256: )\"[0-9a-f]{64}\"/\1\"$sum\"/" "$file"
grep -q "\"$sum\"" "$file" || die "no sha256 line replaced in $file"
log "sha256 $sum -> ${file#"$ROOT"/}"
