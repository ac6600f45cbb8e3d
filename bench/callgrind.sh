#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a
# figure that does not move with the load on a shared box (bench/proxy.sh's
# CPU times move by 10-15 % between runs), for comparing two builds of
# sluice-proxy and nginx on the same plain proxied GET.
#
# Each binary runs under callgrind with one worker and the call log off,
# unless CALL_LOG=on,
# in front of an nginx upstream answering `200 ok`; after a 5 s warm-up,
# the counters are zeroed, wrk sends load for DURATION seconds, and the
# counters are dumped. nginx as a proxy is measured the same way.
#
# Usage: bench/callgrind.sh [SLUICE_BINARY ...]
#   (default: target/release/sluice-proxy, built if missing)
# Environment: DURATION=20, CALL_LOG=off (on: the call log is written, to
#   /dev/null, by its writer thread; its instructions are counted too),
#   WATERFALL=0 (1: sluice's route takes an API key, an approved
#   subscription, a rate limit that never triggers and a header transform,
#   as bench/proxy.sh's SLUICE_WATERFALL; nginx still proxies plainly),
#   KEEP=0 (1: keep the callgrind files and print where)
# Needs: valgrind, nginx, wrk, curl (apt-get install valgrind nginx wrk curl).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-20}
for cmd in valgrind callgrind_control callgrind_annotate nginx wrk curl python3; do
  command -v "$cmd" >/dev/null || { echo "callgrind.sh: $cmd is missing" >&2; exit 2; }
done
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
  [ -x "$ROOT/target/release/sluice-proxy" ] || (cd "$ROOT" && cargo build --release -p sluice-proxy)
  BINS=("$ROOT/target/release/sluice-proxy")
fi
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; if [ "${KEEP:-0}" = 1 ]; then echo "kept: $TMP"; else rm -rf "$TMP"; fi' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port)

nginx_conf() { # dir, server block
  mkdir -p "$1"
  cat >"$1/nginx.conf" <<EOF
worker_processes 1; master_process off; daemon off; pid $1/pid; error_log $1/error.log;
events { worker_connections 1024; }
http { access_log off; $2 }
EOF
}
nginx_conf "$TMP/up" "server { listen 127.0.0.1:$UP; location / { return 200 \"ok\"; } }"
nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" &

# Runs `$@` under callgrind, loads http://127.0.0.1:$LISTEN/, prints Ir/request.
measure() {
  local name=$1 listen=$2; shift 2
  local file
  file=$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_')
  local out="$TMP/$file.cg"
  valgrind --tool=callgrind --callgrind-out-file="$out" --trace-children=no "$@" >/dev/null 2>"$TMP/$file.vg" &
  local pid=$!
  for _ in $(seq 1 120); do curl -sf -o /dev/null "${HEADERS[@]}" "http://127.0.0.1:$listen/" && break; sleep 0.5; done
  wrk -t1 -c8 -d5s "${HEADERS[@]}" "http://127.0.0.1:$listen/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c8 -d"${DURATION}s" "${HEADERS[@]}" "http://127.0.0.1:$listen/" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local ir
  ir=$(callgrind_annotate "$(ls -t "$out"* | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%-40s %8d requests  %7d instructions/request\n' "$name" "$requests" "$((ir / requests))"
}

HEADERS=()
for bin in "${BINS[@]}"; do
  listen=$(port); admin=$(port); mkdir -p "$TMP/cfg"
  if [ "${WATERFALL:-0}" = 1 ]; then
    HEADERS=(-H "Host: api.bench.test" -H "x-api-key: sk-bench-partner")
    sed "s|UPSTREAM|127.0.0.1:$UP|" "$ROOT/bench/waterfall.yaml" >"$TMP/cfg/routes.yaml"
  else
    printf 'apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: bench }\nspec:\n  backend: { upstreams: [ { url: "http://127.0.0.1:%s" } ] }\n' "$UP" >"$TMP/cfg/routes.yaml"
  fi
  measure "$bin" "$listen" "$bin" --config-dir "$TMP/cfg" --listen "127.0.0.1:$listen" \
    --admin "127.0.0.1:$admin" --workers 1 --call-log "${CALL_LOG:-off}"
done
HEADERS=()
listen=$(port)
nginx_conf "$TMP/proxy" "upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$listen; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
measure "nginx (proxy)" "$listen" nginx -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf"
