#!/bin/sh
# Render deploy/envoy/envoy.yaml with awk + sed and exec Envoy. Used by docker-compose.yaml; works on
# any host with sh, awk and sed. FILTERS lists the Gatewarden filters in chain order (the template's
# gatewarden-filters block is repeated once per name); FILTER=<one name> is accepted too.
#   FILTERS="ip_geo jwt" LISTEN_PORT=10000 ... deploy/compose/docker/entrypoint.sh [extra envoy args]
set -eu
TEMPLATE="${TEMPLATE:-/gatewarden/deploy/envoy/envoy.yaml}"
OUT="${OUT:-/tmp/envoy.yaml}"
FILTERS="${FILTERS:-${FILTER:-ip_geo}}"
awk -v filters="$FILTERS" '
    /# BEGIN gatewarden-filters/ { inblock = 1; block = ""; next }
    /# END gatewarden-filters/ {
        n = split(filters, f, " ")
        for (i = 1; i <= n; i++) { b = block; gsub(/\$\{FILTER\}/, f[i], b); printf "%s", b }
        inblock = 0; next
    }
    inblock { block = block $0 "\n"; next }
    { print }
' "$TEMPLATE" | sed \
    -e '/# BEGIN optional:ipv6/,/# END optional:ipv6/d' \
    -e "s|\${ADMIN_ADDRESS}|${ADMIN_ADDRESS:-0.0.0.0}|g" \
    -e "s|\${ADMIN_PORT}|${ADMIN_PORT:-9901}|g" \
    -e "s|\${LISTEN_ADDRESS}|${LISTEN_ADDRESS:-0.0.0.0}|g" \
    -e "s|\${LISTEN_PORT}|${LISTEN_PORT:-10000}|g" \
    -e "s|\${UPSTREAM_HOST}|${UPSTREAM_HOST:-upstream}|g" \
    -e "s|\${UPSTREAM_PORT}|${UPSTREAM_PORT:-8080}|g" \
    -e "s|\${GEO_DB_HOST}|${GEO_DB_HOST:-geo-db}|g" \
    -e "s|\${GEO_DB_PORT}|${GEO_DB_PORT:-80}|g" \
    -e "s|\${JWKS_HOST}|${JWKS_HOST:-jwks}|g" \
    -e "s|\${JWKS_PORT}|${JWKS_PORT:-80}|g" \
    -e "s|\${RLS_HOST}|${RLS_HOST:-ratelimit}|g" \
    -e "s|\${RLS_PORT}|${RLS_PORT:-8081}|g" \
    -e "s|\${ECDS_DIR}|${ECDS_DIR:-/gatewarden/deploy/envoy/ecds}|g" \
    > "$OUT"
if grep -v '^[[:space:]]*#' "$OUT" | grep -q '\${'; then
    echo "entrypoint.sh: unrendered placeholder left in $OUT:" >&2
    grep -n '\${' "$OUT" | grep -v ':[[:space:]]*#' >&2
    exit 1
fi
exec envoy -c "$OUT" "$@"
