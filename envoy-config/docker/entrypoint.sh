#!/bin/sh
# Render envoy-config/envoy.yaml with sed (the template is designed for it: one Gatewarden filter,
# ip_geo by default) and exec Envoy. Used by docker-compose.yaml; works on any host with sh + sed.
#   FILTER=ip_geo LISTEN_PORT=10000 ... envoy-config/docker/entrypoint.sh [extra envoy args]
set -eu
TEMPLATE="${TEMPLATE:-/gatewarden/envoy-config/envoy.yaml}"
OUT="${OUT:-/tmp/envoy.yaml}"
sed \
    -e '/# BEGIN optional:ipv6/,/# END optional:ipv6/d' \
    -e "s|\${FILTER}|${FILTER:-ip_geo}|g" \
    -e "s|\${ADMIN_ADDRESS}|${ADMIN_ADDRESS:-0.0.0.0}|g" \
    -e "s|\${ADMIN_PORT}|${ADMIN_PORT:-9901}|g" \
    -e "s|\${LISTEN_ADDRESS}|${LISTEN_ADDRESS:-0.0.0.0}|g" \
    -e "s|\${LISTEN_PORT}|${LISTEN_PORT:-10000}|g" \
    -e "s|\${UPSTREAM_HOST}|${UPSTREAM_HOST:-upstream}|g" \
    -e "s|\${UPSTREAM_PORT}|${UPSTREAM_PORT:-8080}|g" \
    -e "s|\${GEO_DB_HOST}|${GEO_DB_HOST:-geo-db}|g" \
    -e "s|\${GEO_DB_PORT}|${GEO_DB_PORT:-80}|g" \
    -e "s|\${ECDS_DIR}|${ECDS_DIR:-/gatewarden/envoy-config/ecds}|g" \
    "$TEMPLATE" > "$OUT"
if grep -v '^[[:space:]]*#' "$OUT" | grep -q '\${'; then
    echo "entrypoint.sh: unrendered placeholder left in $OUT:" >&2
    grep -n '\${' "$OUT" | grep -v ':[[:space:]]*#' >&2
    exit 1
fi
exec envoy -c "$OUT" "$@"
