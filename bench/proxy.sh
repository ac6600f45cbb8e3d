#!/usr/bin/env bash
# Sluice side by side with nginx and HAProxy: plain proxied GET on a 2-core box.
#
# Method (see ../shared/BENCHMARKS.md): an upstream nginx answering
# `return 200 "ok"` and the load generator (wrk) share CPU0; the proxy under
# test runs alone on CPU1 with one worker. Every target (upstream direct,
# nginx, HAProxy, sluice-proxy) gets a 2 s warm-up, then
# `wrk -t1 -c64 -d${DURATION}s --latency`; targets are interleaved over
# ${REPEATS} rounds (the starting target rotates each round) and medians are
# reported. The headline figure is the proxy's CPU time per request: utime +
# stime of its process(es) from /proc/PID/stat, before and after the run,
# divided by the requests wrk completed.
#
# Usage: bench/proxy.sh
# Environment:
#   DURATION=10       seconds of each measured wrk run
#   REPEATS=3         rounds over all targets
#   SKIP_BUILD=1      do not run cargo; use the existing sluice-proxy binary
#   SLUICE_BIN=PATH   use this binary (implies no build)
#   KEEP_TMP=1        keep the temp dir (configs, logs, raw wrk output)
#   QUIET_MAX=10      warn when a CPU is busier than this % before a round
#   SLUICE_CALL_LOG=off  sluice's JSON call log (on|off; the peers log nothing)
#   SLUICE_WILDCARD_HOSTS=0  that many extra routes, each on a wildcard host
#                        (*.hN.bench.test), which the benchmark's requests
#                        (Host: 127.0.0.1) never match: the cost of looking
#   SLUICE_WATERFALL=0   1: sluice's route runs the whole waterfall (API key,
#                        approved subscription, a rate limit that never
#                        triggers, a header transform, metrics, call log on)
#                        while the peers proxy plainly
#   SLUICE_ROUTES=0      that many extra routes (exact paths); the run then
#                        prints sluice's resident memory (beside a sluice
#                        with one route: the cost a route adds) and
#                        /metrics size
#
# Exit status: 0 when every target ran, 1 when one (e.g. sluice) was not
# available, 2 on a setup error.
set -euo pipefail

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
QUIET_MAX=${QUIET_MAX:-10}
WARMUP=2       # seconds of wrk before each measured run
CONNECTIONS=64
LOAD_CPU=0     # wrk and the upstream
PROXY_CPU=1    # the proxy under test, alone

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

TARGETS=(direct nginx haproxy sluice)
declare -A URL=()          # target -> URL wrk loads
SLUICE_HEADERS=()          # extra wrk arguments for sluice (the waterfall scenario)
declare -A PID=()          # target -> PID of the (main) process we started
declare -A UNAVAILABLE=()  # target -> reason it did not run
STARTED_PIDS=()            # every server process we started, for cleanup
WRK_PID=""
TMP=""
MADE_POLICY_RC=0
SUDO=()

log() { printf '== %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 2
}

# ---------------------------------------------------------------- cleanup

# Direct children of a PID (e.g. nginx workers of their master), from /proc.
children_of() {
  local parent=$1 f stat rest ppid
  for f in /proc/[0-9]*/stat; do
    { stat=$(<"$f"); } 2>/dev/null || continue # the process may be gone
    rest=${stat##*) }                           # drop "pid (comm) "; comm may hold spaces
    read -r _ ppid _ <<<"$rest"
    if [[ $ppid == "$parent" ]]; then
      f=${f#/proc/}
      printf '%s\n' "${f%/stat}"
    fi
  done
}

cleanup() {
  local rc=$? pid pids=() i
  trap - EXIT INT TERM
  set +e # best effort from here on
  if [[ -n $WRK_PID ]]; then
    kill -KILL "$WRK_PID" 2>/dev/null
    wait "$WRK_PID" 2>/dev/null
  fi
  for pid in "${STARTED_PIDS[@]}"; do
    # Collect children first: nginx workers outlive a master killed hard.
    mapfile -t -O "${#pids[@]}" pids < <(children_of "$pid")
    pids+=("$pid")
  done
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in {1..30}; do
      kill -0 "${pids[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  if ((MADE_POLICY_RC)); then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; fi
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

check_args() {
  [[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds), got '$DURATION'"
  [[ $REPEATS =~ ^[1-9][0-9]*$ ]] || die "REPEATS must be a positive integer, got '$REPEATS'"
  [[ $QUIET_MAX =~ ^[0-9]+$ ]] || die "QUIET_MAX must be an integer percentage, got '$QUIET_MAX'"
  local ncpu
  ncpu=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
  ((ncpu >= 2)) || die "needs at least 2 CPUs (CPU0 for load + upstream, CPU1 for the proxy); found $ncpu"
  ((ncpu == 2)) || warn "$ncpu CPUs online; the method assumes 2 (only CPU0 and CPU1 are used)"
}

# Root runs apt directly; anyone else goes through sudo.
choose_sudo() {
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "not root and sudo is missing: cannot install packages"
    SUDO=(sudo)
  fi
}

# Installs the tools that are missing (command -> Debian package).
install_deps() {
  local -A pkg_of=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl
    [python3]=python3 [taskset]=util-linux [getconf]=libc-bin)
  local cmd need=()
  for cmd in nginx haproxy wrk curl python3 taskset getconf; do
    command -v "$cmd" >/dev/null || need+=("${pkg_of[$cmd]}")
  done
  if ((${#need[@]} == 0)); then
    log "tools present: nginx, haproxy, wrk, curl, python3, taskset"
    return
  fi
  command -v apt-get >/dev/null || die "missing ${need[*]} and apt-get is not available"
  choose_sudo
  log "installing with apt: ${need[*]}"
  # Keep the packages' maintainer scripts from starting system nginx/haproxy
  # services (port 80, stray daemons on a benchmark box): a temporary
  # policy-rc.d, only if the system has none, removed on exit.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    MADE_POLICY_RC=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if ((MADE_POLICY_RC)); then
    "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    MADE_POLICY_RC=0
  fi
  for cmd in nginx haproxy wrk curl python3 taskset getconf; do
    command -v "$cmd" >/dev/null || die "$cmd still missing after apt-get install"
  done
}

# Builds sluice-proxy and sets SLUICE_BIN, or marks sluice unavailable.
build_sluice() {
  local target_dir=${CARGO_TARGET_DIR:-target}
  [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
  if [[ -n ${SLUICE_BIN:-} ]]; then
    log "sluice: using SLUICE_BIN=$SLUICE_BIN (no build)"
  elif [[ $SKIP_BUILD == 1 ]]; then
    SLUICE_BIN=$target_dir/release/sluice-proxy
    log "sluice: SKIP_BUILD=1, using $SLUICE_BIN as it is"
  elif ! command -v cargo >/dev/null; then
    UNAVAILABLE[sluice]="cargo not found, cannot build sluice-proxy"
  else
    SLUICE_BIN=$target_dir/release/sluice-proxy
    log "building: cargo build --release -p sluice-proxy"
    if ! (cd "$ROOT" && cargo build --release -p sluice-proxy); then
      UNAVAILABLE[sluice]="build failed: cargo build --release -p sluice-proxy (errors above)"
    fi
  fi
  if [[ -z ${UNAVAILABLE[sluice]:-} && ! -x $SLUICE_BIN ]]; then
    UNAVAILABLE[sluice]="binary missing: $SLUICE_BIN"
  fi
  if [[ -n ${UNAVAILABLE[sluice]:-} ]]; then
    warn "sluice: ${UNAVAILABLE[sluice]}; running the other targets only"
  fi
}

# Prints N distinct free TCP ports on 127.0.0.1 (bound to port 0, then released).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# ---------------------------------------------------------------- servers

# start NAME CPU LOGFILE COMMAND...: runs COMMAND pinned to CPU, in the background.
start() {
  local name=$1 cpu=$2 logfile=$3
  shift 3
  taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
  PID[$name]=$!
  STARTED_PIDS+=("$!")
}

# wait_http NAME URL EXPECT_BODY SECONDS: waits for a 200 answer (with that
# body, unless EXPECT_BODY is empty) while the process is alive.
wait_http() {
  local name=$1 url=$2 body=$3 secs=$4 deadline out code
  deadline=$((SECONDS + secs))
  while ((SECONDS < deadline)); do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      echo "process exited"
      return 1
    fi
    local extra=()
    [[ $url == "${URL[sluice]:-}" ]] && extra=("${SLUICE_HEADERS[@]}")
    out=$(curl -s --noproxy '*' -m 2 -w '\n%{http_code}' "${extra[@]}" "$url" 2>/dev/null) || out=$'\n000'
    code=${out##*$'\n'}
    if [[ $code == 200 ]] && [[ -z $body || ${out%$'\n'*} == "$body" ]]; then
      return 0
    fi
    sleep 0.2
  done
  echo "no 200${body:+ \"$body\"} from $url within ${secs}s (last: HTTP $code)"
  return 1
}

# mark_failed NAME REASON LOGFILE: records why a target does not run, shows its log.
mark_failed() {
  UNAVAILABLE[$1]=$2
  warn "$1: $2"
  if [[ -s $3 ]]; then
    echo "--- last lines of $3:" >&2
    tail -n 15 "$3" >&2
  fi
  kill -TERM "${PID[$1]}" 2>/dev/null || true
}

# Writes the common part of an nginx config: one worker, no access log,
# runtime files in the temp dir. $1 = dir, $2 = http-block body.
write_nginx_conf() {
  local dir=$1 body=$2 user=""
  # As root, nginx would look up its compiled-in default user and group.
  ((EUID == 0)) && user="user nobody nogroup;"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$user
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    # Keep-alive for the whole run on every hop, as HAProxy and sluice do.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$body
}
EOF
}

start_upstream() {
  local dir=$TMP/upstream
  write_nginx_conf "$dir" "    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { return 200 \"ok\"; }
    }"
  start direct "$LOAD_CPU" "$dir/stdout.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  URL[direct]=http://127.0.0.1:$UPSTREAM_PORT/
  local why
  if ! why=$(wait_http direct "${URL[direct]}" ok 10); then
    mark_failed direct "upstream nginx did not start: $why" "$dir/error.log"
    die "no upstream, nothing to measure"
  fi
}

start_nginx() {
  local dir=$TMP/nginx
  write_nginx_conf "$dir" "    upstream backend {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
  start nginx "$PROXY_CPU" "$dir/stdout.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  URL[nginx]=http://127.0.0.1:$NGINX_PORT/
  local why
  why=$(wait_http nginx "${URL[nginx]}" ok 10) || mark_failed nginx "$why" "$dir/error.log"
}

start_haproxy() {
  local dir=$TMP/haproxy
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend upstream

backend upstream
    server up 127.0.0.1:$UPSTREAM_PORT
EOF
  start haproxy "$PROXY_CPU" "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
  URL[haproxy]=http://127.0.0.1:$HAPROXY_PORT/
  local why
  why=$(wait_http haproxy "${URL[haproxy]}" ok 10) || mark_failed haproxy "$why" "$dir/haproxy.log"
}

start_sluice() {
  local dir=$TMP/sluice
  mkdir -p "$dir/config"
  cat >"$dir/config/bench.yaml" <<EOF
apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: bench, namespace: default }
spec:
  backend:
    upstreams:
      - url: http://127.0.0.1:$UPSTREAM_PORT
EOF
  local i
  if ((${SLUICE_WILDCARD_HOSTS:-0} > 0)); then
    for ((i = 0; i < SLUICE_WILDCARD_HOSTS; i++)); do
      printf -- '---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: wild-%d, namespace: default }\nspec:\n  hosts: ["*.h%d.bench.test"]\n  backend: { upstreams: [ { url: "http://127.0.0.1:%s" } ] }\n' "$i" "$i" "$UPSTREAM_PORT"
    done >"$dir/config/wildcards.yaml"
  fi
  if [[ ${SLUICE_WATERFALL:-0} == 1 ]]; then
    # The whole waterfall on one route: an API key, an approved
    # subscription, a rate limit that never triggers, a header transform;
    # metrics always, and the call log on (to the log file).
    SLUICE_CALL_LOG=on
    SLUICE_HEADERS=(-H "Host: api.bench.test" -H "x-api-key: sk-bench-partner")
    sed "s|UPSTREAM|127.0.0.1:$UPSTREAM_PORT|" "$ROOT/bench/waterfall.yaml" >"$dir/config/bench.yaml"
  fi
  if ((${SLUICE_ROUTES:-0} > 0)); then
    for ((i = 0; i < SLUICE_ROUTES; i++)); do
      printf -- '---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: r-%d, namespace: default }\nspec:\n  matches: [ { path: { type: Exact, value: /r/%d } } ]\n  backend: { upstreams: [ { url: "http://127.0.0.1:%s" } ] }\n' "$i" "$i" "$UPSTREAM_PORT"
    done >"$dir/config/routes.yaml"
  fi
  # The call log is off like nginx's and HAProxy's access logs here;
  # SLUICE_CALL_LOG=on measures it too (written to the log file).
  start sluice "$PROXY_CPU" "$dir/sluice.log" "$SLUICE_BIN" --config-dir "$dir/config" \
    --listen "127.0.0.1:$SLUICE_PORT" --admin "127.0.0.1:$SLUICE_ADMIN_PORT" --workers 1 \
    --call-log "${SLUICE_CALL_LOG:-off}"
  URL[sluice]=http://127.0.0.1:$SLUICE_PORT/
  local why
  if ! why=$(wait_http sluice "http://127.0.0.1:$SLUICE_ADMIN_PORT/readyz" "" 30); then
    mark_failed sluice "not ready: $why" "$dir/sluice.log"
  elif ! why=$(wait_http sluice "${URL[sluice]}" ok 5); then
    # Ready but not proxying to the upstream: its numbers would mean nothing.
    mark_failed sluice "ready, but does not proxy: $why" "$dir/sluice.log"
  elif ((${SLUICE_ROUTES:-0} > 0)); then
    # RSS once the allocator has returned what loading left free (its
    # purge delay is 1 s), beside a sluice serving the one bench route.
    sleep 3
    local rss base metrics_bytes
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/${PID[sluice]}/status")
    metrics_bytes=$(curl -s --noproxy '*' "http://127.0.0.1:$SLUICE_ADMIN_PORT/metrics" | wc -c)
    base=$(baseline_rss "$dir/config/bench.yaml")
    log "footprint: $((SLUICE_ROUTES + 1)) routes: RSS $((rss / 1024)) MiB ($((base / 1024)) MiB with one route): $(((rss - base) * 1024 / SLUICE_ROUTES)) bytes a route more; /metrics $metrics_bytes bytes"
  fi
}

# baseline_rss ROUTES_FILE: the RSS (KiB) of a sluice serving only that file.
baseline_rss() {
  local dir=$TMP/sluice-base port admin pid rss=0
  mkdir -p "$dir/config"
  cp "$1" "$dir/config/"
  read -r port admin < <(free_ports 2)
  "$SLUICE_BIN" --config-dir "$dir/config" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
    --workers 1 --call-log off >"$dir/sluice.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$admin/readyz" && break
    sleep 0.1
  done
  sleep 3
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$rss"
}

# ---------------------------------------------------------------- measuring

# Sum of utime+stime (clock ticks) of the given PIDs.
cpu_ticks() {
  local pid stat rest total=0
  local -a f
  for pid in "$@"; do
    { stat=$(<"/proc/$pid/stat"); } 2>/dev/null || continue
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    # rest starts at field 3 (state): utime is field 14, stime field 15.
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# Prints "busy% of cpu0, busy% of cpu1" over one second, from /proc/stat.
box_busy() {
  local -A busy0 total0
  local cpu u n s idle iow irq sirq steal rest
  while read -r cpu u n s idle iow irq sirq steal rest; do
    [[ $cpu == cpu[0-9]* ]] || continue
    busy0[$cpu]=$((u + n + s + irq + sirq + steal))
    total0[$cpu]=$((u + n + s + idle + iow + irq + sirq + steal))
  done </proc/stat
  sleep 1
  local lines=() db dt
  while read -r cpu u n s idle iow irq sirq steal rest; do
    [[ $cpu == cpu[0-9]* && -n ${busy0[$cpu]:-} ]] || continue
    db=$((u + n + s + irq + sirq + steal - busy0[$cpu]))
    dt=$((u + n + s + idle + iow + irq + sirq + steal - total0[$cpu]))
    ((dt > 0)) || dt=1
    lines+=("$cpu $((100 * db / dt))")
  done </proc/stat
  printf '%s\n' "${lines[@]}"
}

# run_wrk SECONDS URL OUTFILE: one wrk run pinned to the load CPU.
run_wrk() {
  local headers=()
  # The waterfall scenario's requests name its host and carry an API key.
  [[ $2 == "${URL[sluice]:-}" ]] && headers=("${SLUICE_HEADERS[@]}")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$1"s --latency "${headers[@]}" "$2" >"$3" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID"
  WRK_PID=""
}

# Parses wrk output into "requests rps p50_ms p99_ms errors" (errors =
# non-2xx/3xx responses + socket errors of any kind).
parse_wrk() {
  awk '
    function ms(v,  x) {
      x = v + 0
      if (v ~ /us$/) return x / 1000
      if (v ~ /ms$/) return x
      if (v ~ /s$/)  return x * 1000
      if (v ~ /m$/)  return x * 60000
      if (v ~ /h$/)  return x * 3600000
      return x
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { req = $1 }
    /^ *Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    /^ *Non-2xx or 3xx responses:/ { err += $NF }
    $1 == "Requests/sec:" { rps = $2 }
    END {
      if (req == "" || rps == "" || p99 == "") { print "NA NA NA NA NA"; exit }
      printf "%d %.1f %.4f %.4f %d\n", req, rps, p50, p99, err
    }' "$1"
}

# measure TARGET ROUND: warm-up, then one measured run; appends
# "cpu_us_per_req rps p50 p99 errors" to $TMP/results/TARGET.
measure() {
  local t=$1 round=$2 out=$TMP/wrk/$1.$2.txt pids=() before after req rps p50 p99 err cpu
  run_wrk "$WARMUP" "${URL[$t]}" "$TMP/wrk/$t.$round.warmup.txt"
  if [[ $t != direct ]]; then
    # The proxy's process and its children (nginx: master + worker).
    mapfile -t pids < <(children_of "${PID[$t]}")
    pids+=("${PID[$t]}")
    before=$(cpu_ticks "${pids[@]}")
  fi
  run_wrk "$DURATION" "${URL[$t]}" "$out"
  [[ $t != direct ]] && after=$(cpu_ticks "${pids[@]}")
  read -r req rps p50 p99 err < <(parse_wrk "$out")
  if [[ $req == NA || $req == 0 ]]; then
    warn "$t round $round: could not parse wrk output:"
    cat "$out" >&2
    return
  fi
  cpu=-
  if [[ $t != direct ]]; then
    cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$req" \
      'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  fi
  echo "$cpu $rps $p50 $p99 $err" >>"$TMP/results/$t"
  printf '  %-8s cpu/req %6s us  rps %9.0f  p50 %6.2f ms  p99 %6.2f ms  errors %s\n' \
    "$t" "$cpu" "$rps" "$p50" "$p99" "$err"
}

# ---------------------------------------------------------------- report

# median FILE COLUMN: median of the numeric values in that column ("" if none).
median() {
  awk -v c="$2" '$c ~ /^[0-9.]+$/ { print $c }' "$1" | sort -g | awk '
    { a[NR] = $1 }
    END {
      if (NR == 0) exit
      if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
    }'
}

report() {
  local t f cpu rps p50 p99 err
  local -A m_cpu m_rps m_p99
  echo
  echo "Medians over $REPEATS round(s) of ${DURATION}s (errors: total over all rounds)"
  printf '%-9s %12s %10s %8s %8s %8s\n' target "us CPU/req" RPS "p50 ms" "p99 ms" errors
  for t in "${TARGETS[@]}"; do
    f=$TMP/results/$t
    if [[ -n ${UNAVAILABLE[$t]:-} || ! -s $f ]]; then
      printf '%-9s not available\n' "$t:"
      continue
    fi
    cpu=$(median "$f" 1)
    rps=$(median "$f" 2)
    p50=$(median "$f" 3)
    p99=$(median "$f" 4)
    err=$(awk '{ s += $5 } END { print s + 0 }' "$f")
    m_cpu[$t]=$cpu m_rps[$t]=$rps m_p99[$t]=$p99
    printf '%-9s %12s %10.0f %8.2f %8.2f %8d\n' "$t" \
      "$([[ -n $cpu ]] && printf '%.1f' "$cpu" || echo -)" "$rps" "$p50" "$p99" "$err"
  done
  echo
  if [[ -n ${m_rps[sluice]:-} && -n ${m_rps[nginx]:-} ]]; then
    awk -v sr="${m_rps[sluice]}" -v nr="${m_rps[nginx]}" \
      -v sp="${m_p99[sluice]}" -v np="${m_p99[nginx]}" \
      -v sc="${m_cpu[sluice]}" -v nc="${m_cpu[nginx]}" 'BEGIN {
        printf "ratio sluice/nginx: rps %.2fx, p99 %.2fx, cpu/req %.2fx\n", sr / nr, sp / np, sc / nc
      }'
  else
    echo "ratio sluice/nginx: not available"
  fi
}

# ---------------------------------------------------------------- main

main() {
  check_args
  install_deps
  CLK_TCK=$(getconf CLK_TCK)

  TMP=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
  chmod 755 "$TMP" # nginx workers run as nobody when we are root
  mkdir -p "$TMP/results" "$TMP/wrk"

  build_sluice

  read -r UPSTREAM_PORT NGINX_PORT HAPROXY_PORT SLUICE_PORT SLUICE_ADMIN_PORT < <(free_ports 5)
  log "ports: upstream $UPSTREAM_PORT, nginx $NGINX_PORT, haproxy $HAPROXY_PORT, sluice $SLUICE_PORT (admin $SLUICE_ADMIN_PORT)"

  start_upstream
  start_nginx
  start_haproxy
  [[ -z ${UNAVAILABLE[sluice]:-} ]] && start_sluice

  local runnable=() t
  for t in "${TARGETS[@]}"; do
    [[ -z ${UNAVAILABLE[$t]:-} ]] && runnable+=("$t")
  done

  echo "Sluice proxy benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "  $(nginx -v 2>&1); $(haproxy -v 2>&1 | head -n 1); $(wrk -v 2>&1 | head -n 1 || true); kernel $(uname -r)"
  echo "  wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency after ${WARMUP}s warm-up; wrk + upstream on CPU$LOAD_CPU, proxy on CPU$PROXY_CPU"
  echo "  targets: ${runnable[*]}; $REPEATS round(s), starting target rotated each round"

  local round i n=${#runnable[@]} line quiet
  for ((round = 1; round <= REPEATS; round++)); do
    quiet=""
    while read -r line; do
      quiet+="${quiet:+, }${line% *} busy ${line##* }%"
      if ((${line##* } > QUIET_MAX)); then
        warn "round $round: ${line% *} is ${line##* }% busy before the run: the box is not quiet, absolute figures will suffer"
      fi
    done < <(box_busy)
    echo
    echo "round $round/$REPEATS (box before the round: $quiet)"
    for ((i = 0; i < n; i++)); do
      measure "${runnable[(i + round - 1) % n]}" "$round"
    done
  done

  report

  if ((${#UNAVAILABLE[@]})); then
    for t in "${TARGETS[@]}"; do
      [[ -n ${UNAVAILABLE[$t]:-} ]] && echo "$t: not available: ${UNAVAILABLE[$t]}" >&2
    done
    exit 1
  fi
}

main "$@"
