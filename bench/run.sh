#!/usr/bin/env bash
# Ferry benchmark harness: the same backend reached directly, through HAProxy, through nginx
# and through Ferry, over HTTP/1.1 (wrk) and h2c (h2load), in one run. See bench/README.md for
# the methodology. Run it with `make bench` (builds bin/ferry and installs the tools first) or
# `bash bench/run.sh` from the repository root.
#
# Settings (environment):
#   BENCH_DURATION=10        seconds of measured load per case
#   BENCH_WARMUP=2           seconds of discarded load before each measured run
#   BENCH_CONNECTIONS=50     client connections
#   BENCH_H2_STREAMS=1       h2load max concurrent streams per connection (-m)
#   BENCH_BACKEND=nginx      nginx | go   (the origin server; see README)
#   BENCH_PROXIES="direct haproxy nginx reverseproxy ferry ferry_ha"   which paths to run
#   BENCH_PROTOCOLS="h1 h2c"                     which protocols to run
#   BENCH_SUITES="proxies mtls handshake policy" which suites to run
#   BENCH_MTLS_PROXIES="direct haproxy haproxy_bare ferry"   which two-hop chains to run
#                            (haproxy: with the header work a sidecar does, as Ferry does
#                            it; haproxy_bare: the mTLS chain without any header rule)
#   BENCH_MTLS_RATES=4000    also run the mTLS chains at these fixed offered loads
#                            (requests/s, h2load --rps); empty: none
#   BENCH_MTLS_ROUNDS=3      then alternate the HAProxy (and bare HAProxy) and Ferry mTLS
#                            chains (closed loop)
#                            this many times and report each round's ratio and the median
#                            (drift on a shared machine hits both alike); 0: none
#   BENCH_PROFILE=1          also take a CPU profile of Ferry under h1 load
#   BENCH_PROFILE_SECONDS=10 length of that profile
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1           cores for the proxy / for client and backend
#   BENCH_NICE=-10           niceness of every benchmark process (as root), so that other
#                            work on a shared machine disturbs the measurement less; 0: off
#   FERRY_BIN=bin/ferry      the Ferry binary
#   BENCH_READY_TIMEOUT=15   seconds a proxy may take to become ready
#   BENCH_QUIET_TIMEOUT=30 BENCH_QUIET_PERCENT=10
#                            before each measured run, wait up to that many seconds for
#                            other processes to use at most that % of one core
#   BENCH_RETRIES=2          repeat a measured run disturbed by other processes (more than
#                            BENCH_QUIET_PERCENT of a core) up to this many times; the
#                            least disturbed run is reported
#   BENCH_KEEP_TMP=1         keep the temporary directory (configs, logs) for inspection
set -euo pipefail

# The whole script is one brace group, so bash parses all of it before running any of it and
# an edit to this file during a run cannot derail that run.
{

cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-50}
H2_STREAMS=${BENCH_H2_STREAMS:-1}
BACKEND_KIND=${BENCH_BACKEND:-nginx}
PROXIES=${BENCH_PROXIES:-direct haproxy nginx reverseproxy ferry ferry_ha}
PROTOCOLS=${BENCH_PROTOCOLS:-h1 h2c}
SUITES=${BENCH_SUITES:-proxies mtls handshake policy}
MTLS_PROXIES=${BENCH_MTLS_PROXIES:-direct haproxy haproxy_bare ferry}
MTLS_RATES=${BENCH_MTLS_RATES-4000}
MTLS_ROUNDS=${BENCH_MTLS_ROUNDS:-3}
HS_WORKERS=${BENCH_HANDSHAKE_WORKERS:-16}
HS_DURATION=${BENCH_HANDSHAKE_DURATION:-5}
HS_CURVES=${BENCH_HANDSHAKE_CURVES:-X25519}
POLICY_ROUNDS=${BENCH_POLICY_ROUNDS:-2}
PROFILE=${BENCH_PROFILE:-0}
PROFILE_SECONDS=${BENCH_PROFILE_SECONDS:-10}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-15}
QUIET_TIMEOUT=${BENCH_QUIET_TIMEOUT:-30}
QUIET_PERCENT=${BENCH_QUIET_PERCENT:-10}
RETRIES=${BENCH_RETRIES:-2}
TCK=$(getconf CLK_TCK)
NICE=${BENCH_NICE:--10}
RESULTS=$ROOT/bench/results

# Ports, all on 127.0.0.1.
BACKEND_H1_PORT=19001
BACKEND_H2_PORT=19002 # the nginx backend needs a separate h2c port; the Go backend serves both on 19001
FERRY_PORT=19101
RP_PORT=19103
FERRY_ADMIN=127.0.0.1:19901
HAPROXY_H1_PORT=19201
HAPROXY_H2_PORT=19202
HAPROXY_H2H1_PORT=19203
NGINX_H1_PORT=19301
NGINX_H2_PORT=19302

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

for n in DURATION WARMUP CONNS H2_STREAMS PROFILE_SECONDS PROXY_CPU LOAD_CPU READY_TIMEOUT QUIET_TIMEOUT QUIET_PERCENT RETRIES HS_WORKERS HS_DURATION POLICY_ROUNDS MTLS_ROUNDS; do
	[[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer, got '${!n}'"
done
((DURATION > 0)) || die "BENCH_DURATION must be > 0"
((HS_DURATION > 0 && HS_WORKERS > 0)) || die "BENCH_HANDSHAKE_DURATION and BENCH_HANDSHAKE_WORKERS must be > 0"
for n in $SUITES; do
	[[ " proxies mtls handshake policy " == *" $n "* ]] || die "BENCH_SUITES: unknown suite '$n' (proxies, mtls, handshake, policy)"
done
for t in wrk h2load haproxy nginx curl taskset go; do
	command -v "$t" >/dev/null || die "$t not found (run 'make deps')"
done
[[ $NICE =~ ^-?[0-9]+$ ]] || die "BENCH_NICE must be an integer, got '$NICE'"
if ((NICE < 0)) && [ "$(id -u)" != 0 ]; then
	log "not root: running at normal priority instead of nice $NICE"
	NICE=0
fi
# Every benchmark process (proxy, backend, load generator) runs pinned and at raised priority.
ON_PROXY_CPU=(nice -n "$NICE" taskset -c "$PROXY_CPU")
ON_LOAD_CPU=(nice -n "$NICE" taskset -c "$LOAD_CPU")
[ "$(nproc)" -ge 2 ] || log "warning: only $(nproc) CPU; proxy and load generator will share it"

TMP=$(mktemp -d /tmp/ferry-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers may run as an unprivileged user
PIDS=()

cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
		log "kept $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- process helpers

# tree_pids PID: PID and all its descendants.
tree_pids() {
	local c
	echo "$1"
	for c in $(pgrep -P "$1" 2>/dev/null); do tree_pids "$c"; done
}

# cpu_ticks PID...: utime+stime (clock ticks) summed over the processes; each figure in
# /proc/PID/stat already covers all of that process's threads.
cpu_ticks() {
	local p t=0 v
	for p in "$@"; do
		v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

# ctx_switches PID...: voluntary plus involuntary context switches summed over all the
# threads of the processes (each thread counts its own in /proc/PID/task/TID/status).
ctx_switches() {
	local p
	for p in "$@"; do cat /proc/"$p"/task/*/status 2>/dev/null; done |
		awk '/^(non)?voluntary_ctxt_switches:/{s += $2} END{printf "%d\n", s}'
}

# user_sys_ticks PID...: "utime stime" (clock ticks) summed over the processes.
user_sys_ticks() {
	local p
	for p in "$@"; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null; done | awk '{u += $12; s += $13} END{printf "%d %d\n", u, s}'
}

# hwm_kb PID...: peak resident set size (VmHWM, kB) summed over the processes.
hwm_kb() {
	local p t=0 v
	for p in "$@"; do
		v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null) || v=0
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

# busy_ticks: CPU time spent on all CPUs (user, nice, system, irq, softirq), in clock ticks.
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# child_ticks: CPU time of this shell's reaped children (the load generator), in clock ticks.
child_ticks() { sed 's/^.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'; }

# wait_quiet: this is a shared machine; before a measured run, wait (up to
# BENCH_QUIET_TIMEOUT seconds) until processes outside the benchmark use less than
# BENCH_QUIET_PERCENT of one core, measured over one second.
wait_quiet() {
	local i s0 s1 t0 t1 pct=0 waited=0
	((QUIET_TIMEOUT > 0)) || return 0
	for ((i = 0; i < QUIET_TIMEOUT; i++)); do
		t0=$(date +%s%N)
		s0=$(busy_ticks)
		sleep 1
		s1=$(busy_ticks)
		t1=$(date +%s%N)
		pct=$(((s1 - s0) * 100 * 1000000000 / TCK / (t1 - t0)))
		if ((pct <= QUIET_PERCENT)); then
			((waited)) && log "machine quiet again after ${i}s"
			return 0
		fi
		((waited)) || log "waiting for other processes to go quiet (${pct}% of a core busy)"
		waited=1
	done
	log "machine still busy after ${QUIET_TIMEOUT}s (${pct}% of a core); measuring anyway"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http URL [h2c]: wait until URL answers 200 (and the body is the backend's) or time out.
wait_http() {
	local url=$1 mode=${2:-h1} i out flags=(-fs --max-time 2)
	[ "$mode" = h2c ] && flags+=(--http2-prior-knowledge)
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		if out=$(curl "${flags[@]}" "$url" 2>/dev/null) && [ "$out" = "Hello, world" ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# stop PID: terminate a process we started and wait for it.
stop() {
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- backend

BACKEND_PID=
start_backend() {
	case $BACKEND_KIND in
	go)
		log "building bench/backend"
		go build -o "$TMP/backend" ./bench/backend
		BACKEND_H2_PORT=$BACKEND_H1_PORT
		GOMAXPROCS=1 "${ON_LOAD_CPU[@]}" "$TMP/backend" -addr "127.0.0.1:$BACKEND_H1_PORT" \
			>"$TMP/backend.log" 2>&1 &
		BACKEND_PID=$!
		;;
	nginx)
		mkdir -p "$TMP/backend-nginx"
		cat >"$TMP/backend-nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/backend-nginx/nginx.pid;
error_log $TMP/backend-nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    client_body_temp_path $TMP/backend-nginx/client_body;
    proxy_temp_path $TMP/backend-nginx/proxy;
    fastcgi_temp_path $TMP/backend-nginx/fastcgi;
    uwsgi_temp_path $TMP/backend-nginx/uwsgi;
    scgi_temp_path $TMP/backend-nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 1000;
    default_type text/plain;
    server {
        listen 127.0.0.1:$BACKEND_H1_PORT;
        location / { return 200 "Hello, world\n"; }
    }
    server {
        listen 127.0.0.1:$BACKEND_H2_PORT http2;
        location / { return 200 "Hello, world\n"; }
    }
}
EOF
		"${ON_LOAD_CPU[@]}" nginx -p "$TMP/backend-nginx" -c "$TMP/backend-nginx/nginx.conf" \
			>"$TMP/backend.log" 2>&1 &
		BACKEND_PID=$!
		;;
	*) die "BENCH_BACKEND must be nginx or go, got '$BACKEND_KIND'" ;;
	esac
	PIDS+=("$BACKEND_PID")
	wait_http "http://127.0.0.1:$BACKEND_H1_PORT/" || die "backend did not start: $(tail -5 "$TMP/backend.log")"
	wait_http "http://127.0.0.1:$BACKEND_H2_PORT/" h2c || die "backend h2c did not start: $(tail -5 "$TMP/backend.log")"
}

# ---------------------------------------------------------------- proxies
# start_proxy NAME PROTO: starts the proxy for one case, sets PROXY_PID and TARGET_PORT,
# returns non-zero (with NOTE set) when it cannot run.
PROXY_PID=
TARGET_PORT=
NOTE=

start_haproxy() {
	local proto=$1 dir=$TMP/haproxy-$1
	mkdir -p "$dir"
	local bind server
	case $proto in
	h1)
		TARGET_PORT=$HAPROXY_H1_PORT
		bind="bind 127.0.0.1:$TARGET_PORT"
		server="server s1 127.0.0.1:$BACKEND_H1_PORT"
		;;
	h2c)
		TARGET_PORT=$HAPROXY_H2_PORT
		bind="bind 127.0.0.1:$TARGET_PORT proto h2"
		server="server s1 127.0.0.1:$BACKEND_H2_PORT proto h2"
		;;
	h2c-h1)
		TARGET_PORT=$HAPROXY_H2H1_PORT
		bind="bind 127.0.0.1:$TARGET_PORT proto h2"
		server="server s1 127.0.0.1:$BACKEND_H1_PORT"
		;;
	esac
	cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
    pidfile $dir/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse safe

frontend fe
    $bind
    default_backend be

backend be
    $server
EOF
	port_free "$TARGET_PORT" || { NOTE="port $TARGET_PORT in use"; return 1; }
	"${ON_PROXY_CPU[@]}" haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	local mode=h1
	[ "$proto" != h1 ] && mode=h2c
	wait_http "http://127.0.0.1:$TARGET_PORT/" "$mode" || {
		NOTE="HAProxy did not answer: $(tail -3 "$dir/haproxy.log" | tr '\n' ' ')"
		return 1
	}
}

start_nginx() {
	local proto=$1 dir=$TMP/nginx-$1 listen
	mkdir -p "$dir"
	case $proto in
	h1)
		TARGET_PORT=$NGINX_H1_PORT
		listen="listen 127.0.0.1:$TARGET_PORT;"
		;;
	h2c)
		TARGET_PORT=$NGINX_H2_PORT
		listen="listen 127.0.0.1:$TARGET_PORT http2;"
		;;
	esac
	cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream backend {
        server 127.0.0.1:$BACKEND_H1_PORT;
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        $listen
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
	port_free "$TARGET_PORT" || { NOTE="port $TARGET_PORT in use"; return 1; }
	"${ON_PROXY_CPU[@]}" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/nginx.log" 2>&1 &
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	local mode=h1
	[ "$proto" = h2c ] && mode=h2c
	wait_http "http://127.0.0.1:$TARGET_PORT/" "$mode" || {
		NOTE="nginx did not answer: $(tail -3 "$dir/error.log" "$dir/nginx.log" 2>/dev/null | tr '\n' ' ')"
		return 1
	}
}

# start_reverseproxy PROTO: the plain httputil.ReverseProxy reference (bench/reverseproxy).
start_reverseproxy() {
	local proto=$1 dir=$TMP/reverseproxy-$1 upstream flag=
	mkdir -p "$dir"
	TARGET_PORT=$RP_PORT
	upstream=127.0.0.1:$BACKEND_H1_PORT
	if [ "$proto" = h2c ]; then upstream=127.0.0.1:$BACKEND_H2_PORT flag=-h2c; fi
	go build -o "$dir/reverseproxy" "$ROOT/bench/reverseproxy" || { NOTE="cannot build bench/reverseproxy"; return 1; }
	port_free "$RP_PORT" || { NOTE="port $RP_PORT in use"; return 1; }
	GOMAXPROCS=1 "${ON_PROXY_CPU[@]}" "$dir/reverseproxy" -listen "127.0.0.1:$RP_PORT" -upstream "$upstream" $flag >"$dir/rp.log" 2>&1 &
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	local mode=h1
	[ "$proto" = h2c ] && mode=h2c
	wait_http "http://127.0.0.1:$TARGET_PORT/" "$mode" || {
		NOTE="reverseproxy did not answer: $(tail -3 "$dir/rp.log" | tr '\n' ' ')"
		return 1
	}
}

# start_ferry_ha PROTO: Ferry with the resilience features configured (retries with a
# budget, circuit breaker, outlier detection, an active health check) on the same backend:
# on the happy path none of them fires, so the difference with start_ferry is their cost.
start_ferry_ha() {
	FERRY_UPSTREAM_EXTRA="retries: {attempts: 2, on: [connect-failure, reset, gateway-error], per_try_timeout: 2s, budget_percent: 20}, circuit_breaker: {max_connections: 1024, max_pending: 1024, max_requests: 1024}, outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}, health_check: {tcp: true, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}, " \
		start_ferry "$1"
}

start_ferry() {
	local proto=$1 dir=$TMP/ferry-$1${FERRY_UPSTREAM_EXTRA:+-ha} endpoint
	mkdir -p "$dir"
	TARGET_PORT=$FERRY_PORT
	endpoint=127.0.0.1:$BACKEND_H1_PORT
	[ "$proto" = h2c ] && endpoint=127.0.0.1:$BACKEND_H2_PORT
	if [ ! -x "$FERRY_BIN" ]; then
		NOTE="$FERRY_BIN not found (run 'make build')"
		return 1
	fi
	cat >"$dir/ferry.yaml" <<EOF
service: bench
admin: {address: $FERRY_ADMIN}
outbound:
  - {upstream: backend, address: 127.0.0.1:$FERRY_PORT, protocol: http}
upstreams:
  - {name: backend, endpoints: [$endpoint], lb: round_robin, ${FERRY_UPSTREAM_EXTRA:-}protocol: auto}
EOF
	port_free "$FERRY_PORT" || { NOTE="port $FERRY_PORT in use"; return 1; }
	port_free "${FERRY_ADMIN##*:}" || { NOTE="port ${FERRY_ADMIN##*:} in use"; return 1; }
	GOMAXPROCS=1 "${ON_PROXY_CPU[@]}" "$FERRY_BIN" run --config "$dir/ferry.yaml" >"$dir/ferry.log" 2>&1 &
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	local i
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		curl -fs --max-time 1 -o /dev/null "http://$FERRY_ADMIN/ready" && break
		if ! kill -0 "$PROXY_PID" 2>/dev/null; then
			NOTE="ferry exited: $(tail -3 "$dir/ferry.log" | tr '\n' ' ')"
			return 1
		fi
		sleep 0.1
	done
	curl -fs --max-time 1 -o /dev/null "http://$FERRY_ADMIN/ready" || {
		NOTE="ferry not ready after ${READY_TIMEOUT}s: $(tail -3 "$dir/ferry.log" | tr '\n' ' ')"
		return 1
	}
	local mode=h1
	[ "$proto" = h2c ] && mode=h2c
	wait_http "http://127.0.0.1:$TARGET_PORT/" "$mode" || {
		NOTE="ferry did not proxy a $proto request: $(tail -3 "$dir/ferry.log" | tr '\n' ' ')"
		return 1
	}
}

# ---------------------------------------------------------------- load generators
# Each sets REQS (completed requests), RPS, P50 and P99 (ms) and ERRS from one run.

REQS=0 RPS=0 P50=- P99=- ERRS=0

# to_ms VALUE: wrk's "850.00us" / "1.03ms" / "1.20s" in milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
		else printf "%s", v }'
}

run_wrk() { # run_wrk PORT SECONDS OUTFILE
	"${ON_LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"$2"s --latency "http://127.0.0.1:$1/" >"$3" 2>&1 || true
}

parse_wrk() {
	local f=$1 se non2xx
	REQS=$(awk '/ requests in /{print $1}' "$f")
	RPS=$(awk '/^Requests\/sec:/{printf "%.0f", $2}' "$f")
	P50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
	P99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
	se=$(awk -F'[ ,]+' '/Socket errors:/{print $4 + $6 + $8 + $10}' "$f")
	non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")
	ERRS=$((${se:-0} + ${non2xx:-0}))
	REQS=${REQS:-0} RPS=${RPS:-0}
}

run_h2load() { # run_h2load PORT SECONDS OUTFILE [LOGFILE]
	local extra=()
	[ -n "${4:-}" ] && extra=(--log-file="$4")
	"${ON_LOAD_CPU[@]}" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$2" "${extra[@]}" \
		"http://127.0.0.1:$1/" >"$3" 2>&1 || true
}

parse_h2load() {
	local f=$1 lf=$2 n non2xx
	REQS=$(awk '/^requests:/{print $6}' "$f")
	RPS=$(awk '/^finished in/{printf "%.0f", $4}' "$f")
	ERRS=$(awk '/^requests:/{print $10 + $12 + $14}' "$f")
	non2xx=$(awk '/^status codes:/{print $5 + $7 + $9}' "$f")
	ERRS=$((${ERRS:-0} + ${non2xx:-0}))
	REQS=${REQS:-0} RPS=${RPS:-0}
	# h2load prints no percentiles; its per-request log (start µs, status, duration µs) has them.
	P50=- P99=-
	if [ -s "$lf" ]; then
		sort -n -k3,3 "$lf" -o "$lf.sorted"
		n=$(wc -l <"$lf.sorted")
		P50=$(awk -v n="$n" 'NR == int(n * 0.50 + 0.5) {printf "%.3f", $3 / 1000}' "$lf.sorted")
		P99=$(awk -v n="$n" 'NR == int(n * 0.99 + 0.5) {printf "%.3f", $3 / 1000}' "$lf.sorted")
		rm -f "$lf.sorted"
	fi
}

# ---------------------------------------------------------------- one case

ROWS=() # "proto|label|rps|cpu_us|p50|p99|rss_mib|backend_us|other_pct|errs"
NOTES=()
declare -A CPU_PER_REQ

# measure PROTO PORT OUT: one measured run against PORT; sets the M_* results.
M_REQS=0 M_RPS=0 M_P50=- M_P99=- M_ERRS=0 M_CPU=- M_BCPU=- M_OTHER=0 M_OUT=
measure() {
	local proto=$1 port=$2 out=$3 lf=$3.h2log
	local bpids pids= s0 s1 b0 b1 c0 c1 l0 l1 t0 t1
	bpids=$(tree_pids "$BACKEND_PID")
	[ -n "$PROXY_PID" ] && pids=$(tree_pids "$PROXY_PID")
	t0=$(date +%s%N)
	s0=$(busy_ticks)
	b0=$(cpu_ticks $bpids)
	c0=$(cpu_ticks $pids)
	l0=$(child_ticks)
	if [ "$proto" = h1 ]; then
		run_wrk "$port" "$DURATION" "$out"
	else
		run_h2load "$port" "$DURATION" "$out" "$lf"
	fi
	l1=$(child_ticks)
	c1=$(cpu_ticks $pids)
	b1=$(cpu_ticks $bpids)
	s1=$(busy_ticks)
	t1=$(date +%s%N)

	if [ "$proto" = h1 ]; then parse_wrk "$out"; else parse_h2load "$out" "$lf"; fi
	rm -f "$lf"
	M_REQS=$REQS M_RPS=$RPS M_P50=$P50 M_P99=$P99 M_ERRS=$ERRS M_OUT=$out M_CPU=- M_BCPU=-
	# CPU used during the run by everything except the proxy, the backend and the load
	# generator (other processes; kernel work outside their contexts), in % of one core.
	M_OTHER=$(awk -v d=$(((s1 - s0) - (c1 - c0) - (b1 - b0) - (l1 - l0))) -v t="$TCK" -v ns=$((t1 - t0)) \
		'BEGIN {v = d / t / (ns / 1e9) * 100; if (v < 0) v = 0; printf "%.0f", v}')
	((REQS > 0)) || return 0
	M_BCPU=$(awk -v d=$((b1 - b0)) -v t="$TCK" -v n="$REQS" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
	if [ -n "$PROXY_PID" ]; then
		M_CPU=$(awk -v d=$((c1 - c0)) -v t="$TCK" -v n="$REQS" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
	fi
}

# run_case PROTO LABEL PROXY VARIANT: start the proxy (unless direct), warm up, measure
# (repeating a run that other processes disturbed, up to BENCH_RETRIES times, and keeping
# the least disturbed one), record a table row, stop the proxy.
run_case() {
	local proto=$1 label=$2 proxy=$3 variant=$4
	local port pids= rss=- attempt best_other=-1 out=$TMP/$proxy-$variant.out
	local b_reqs b_rps b_p50 b_p99 b_errs b_cpu b_bcpu b_out
	NOTE=
	PROXY_PID=
	if [ "$proxy" = direct ]; then
		port=$BACKEND_H1_PORT
		[ "$proto" = h2c ] && port=$BACKEND_H2_PORT
	else
		if ! "start_$proxy" "$variant"; then
			log "$label ($proto): skipped: $NOTE"
			NOTES+=("$label ($proto): not measured: $NOTE")
			ROWS+=("$proto|$label|-|-|-|-|-|-|-|-")
			[ -n "$PROXY_PID" ] && stop "$PROXY_PID"
			return 0
		fi
		port=$TARGET_PORT
	fi
	for ((attempt = 0; attempt <= RETRIES; attempt++)); do
		log "$label ($proto): warm-up ${WARMUP}s, then ${DURATION}s"
		if ((WARMUP > 0)); then
			if [ "$proto" = h1 ]; then run_wrk "$port" "$WARMUP" "$out.warm"; else run_h2load "$port" "$WARMUP" "$out.warm"; fi
		fi
		wait_quiet
		measure "$proto" "$port" "$out.$attempt"
		if ((best_other < 0 || M_OTHER < best_other)); then
			best_other=$M_OTHER b_reqs=$M_REQS b_rps=$M_RPS b_p50=$M_P50 b_p99=$M_P99
			b_errs=$M_ERRS b_cpu=$M_CPU b_bcpu=$M_BCPU b_out=$M_OUT
		fi
		((M_OTHER > QUIET_PERCENT)) || break
		if ((attempt < RETRIES)); then
			log "$label ($proto): other processes used ${M_OTHER}% of a core during the run; repeating it"
		fi
	done
	[ -n "$PROXY_PID" ] && pids=$(tree_pids "$PROXY_PID")

	if [ "${b_reqs:-0}" -eq 0 ]; then
		NOTES+=("$label ($proto): no request completed; load generator said: $(tail -3 "$b_out" | tr '\n' ' ')")
		ROWS+=("$proto|$label|0|-|-|-|-|-|-|-")
		[ -n "$PROXY_PID" ] && stop "$PROXY_PID"
		return 0
	fi
	if [ -n "$PROXY_PID" ]; then
		rss=$(awk -v k="$(hwm_kb $pids)" 'BEGIN {printf "%.1f", k / 1024}')
		CPU_PER_REQ[$proto/$proxy/$variant]=$b_cpu
	fi
	((b_errs > 0)) && NOTES+=("$label ($proto): $b_errs errors or non-2xx responses: $({ grep -E 'errors|Non-2xx|failed' "$b_out" || true; } | tr '\n' ' ')")
	((best_other > QUIET_PERCENT)) && NOTES+=("$label ($proto): other processes used ${best_other}% of a core during the run; its numbers may be disturbed")
	ROWS+=("$proto|$label|$b_rps|$b_cpu|$b_p50|$b_p99|$rss|$b_bcpu|$best_other|$b_errs")
	log "$label ($proto): $b_rps req/s, proxy CPU $b_cpu µs/req, p50 $b_p50 ms, p99 $b_p99 ms, RSS $rss MiB"

	if [ "$proxy" = ferry ] && [ "$proto" = h1 ] && [ "$PROFILE" = 1 ]; then
		profile_ferry "$port"
	fi
	[ -n "$PROXY_PID" ] && stop "$PROXY_PID"
	return 0
}

# profile_ferry PORT: a separate h1 load run on the still-running Ferry, during which the
# admin server's pprof endpoint records a CPU profile (kept out of the measured numbers).
profile_ferry() {
	local port=$1 url="http://$FERRY_ADMIN/debug/pprof/profile?seconds=$PROFILE_SECONDS"
	mkdir -p "$RESULTS"
	log "ferry (h1): ${PROFILE_SECONDS}s CPU profile under load"
	run_wrk "$port" $((PROFILE_SECONDS + 2)) "$TMP/ferry-profile.out" &
	local wrk_pid=$!
	sleep 1
	if curl -fs --max-time $((PROFILE_SECONDS + 30)) -o "$RESULTS/ferry-h1.pprof" "$url"; then
		wait "$wrk_pid" || true
		go tool pprof -top "$FERRY_BIN" "$RESULTS/ferry-h1.pprof" >"$TMP/ferry-h1.top" 2>&1 || true
		PROFILE_TOP=$(head -25 "$TMP/ferry-h1.top")
		NOTES+=("CPU profile of Ferry under h1 load (separate ${PROFILE_SECONDS}s run, not in the table): bench/results/ferry-h1.pprof")
	else
		wait "$wrk_pid" || true
		rm -f "$RESULTS/ferry-h1.pprof"
		PROFILE_TOP="no profile: $url did not answer"
		NOTES+=("BENCH_PROFILE=1: $url did not answer; no profile taken")
	fi
}
PROFILE_TOP=

# ---------------------------------------------------------------- mesh cases (issues 4 and 6)
# Two proxies in a row (client → A → B → backend), plaintext or mutual TLS between them; new
# mTLS handshakes per second per core; and the cost of an access policy on Ferry's inbound.
# Both proxies of a chain run on the proxy core (GOMAXPROCS=1 / nbthread 1 each), so their
# CPU per request adds up to what the path costs.

CHAIN_A_PORT=19111
CHAIN_B_PORT=19112
CHAIN_A_ADMIN=127.0.0.1:19911
CHAIN_B_ADMIN=127.0.0.1:19912
HAPROXY_A_PORT=19211
HAPROXY_B_PORT=19212
HAPROXY_B_STATS_PORT=19213
HAPROXY_B_STATS="
frontend stats
    bind 127.0.0.1:$HAPROXY_B_STATS_PORT
    stats enable
    stats uri /stats"
POLICY_OFF_PORT=19121
POLICY_ON_PORT=19122
POLICY_OFF_ADMIN=127.0.0.1:19921
POLICY_ON_ADMIN=127.0.0.1:19922
# The request of the policy cases: allowed by the last of the 20 rules, so that every rule
# is evaluated, and counted by the rate limit.
POLICY_PATH=/api/v1/orders/42
POLICY_HEADER="x-tenant: acme-corp"
# TLS 1.3 suites in Go's order, so that HAProxy (OpenSSL) negotiates what Ferry negotiates
# (OpenSSL would pick TLS_AES_256_GCM_SHA384 first).
HAPROXY_TLS13_SUITES=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

STARTED_PID=
CHAIN_PIDS=()   # the proxies measured together
CHAIN_ROWS=()   # "label|hop|rps|cpu_a|cpu_b|cpu_sum|p50|p99|conns|other|errs"
HS_ROWS=()      # "label|handshakes/s|server CPU µs per handshake|handshakes per CPU-second|p50|p99|tls|other|errs"
POLICY_ROWS=()  # "round|variant|rps|cpu|p50|p99|other|errs"
declare -A MESH_CPU
CERTS=

# make_certs: a dev CA from `ferry ca create` and two X509-SVIDs from `ferry ca issue`
# (backend: the server side B; client: the caller side A and the handshake client), plus
# the same certificate and key concatenated for HAProxy's crt.
make_certs() {
	[ -n "$CERTS" ] && return 0
	local d=$TMP/certs n
	mkdir -p "$d"
	"$FERRY_BIN" ca create --dir "$d/ca" >"$d/ca.log" 2>&1 || { NOTE="ferry ca create: $(tail -2 "$d/ca.log" | tr '\n' ' ')"; return 1; }
	for n in backend client; do
		"$FERRY_BIN" ca issue --dir "$d/ca" --service "$n" --out "$d" >>"$d/ca.log" 2>&1 ||
			{ NOTE="ferry ca issue: $(tail -2 "$d/ca.log" | tr '\n' ' ')"; return 1; }
		cat "$d/$n.pem" "$d/$n-key.pem" >"$d/$n-haproxy.pem"
	done
	CERTS=$d
	KEY_TYPE=$(openssl x509 -in "$d/backend.pem" -noout -text 2>/dev/null |
		awk '/Public Key Algorithm/{a=$NF} /NIST CURVE/{c=$NF} END{print a (c ? " " c : "")}') || KEY_TYPE=unknown
	return 0
}
KEY_TYPE=unknown

# launch_ferry NAME CONFIG ADMIN: validate CONFIG and run Ferry on it on the proxy core;
# sets STARTED_PID; fails (with NOTE) unless its /ready answers 200 in time.
launch_ferry() {
	local name=$1 cfg=$2 admin=$3 i
	STARTED_PID=
	[ -x "$FERRY_BIN" ] || { NOTE="$FERRY_BIN not found (run 'make build')"; return 1; }
	"$FERRY_BIN" validate --config "$cfg" >"$cfg.validate" 2>&1 ||
		{ NOTE="$name: $(tail -3 "$cfg.validate" | tr '\n' ' ')"; return 1; }
	port_free "${admin##*:}" || { NOTE="port ${admin##*:} in use"; return 1; }
	GOMAXPROCS=1 "${ON_PROXY_CPU[@]}" "$FERRY_BIN" run --config "$cfg" >"$cfg.log" 2>&1 &
	STARTED_PID=$!
	PIDS+=("$STARTED_PID")
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		curl -fs --max-time 1 -o /dev/null "http://$admin/ready" && return 0
		kill -0 "$STARTED_PID" 2>/dev/null || { NOTE="$name exited: $(tail -3 "$cfg.log" | tr '\n' ' ')"; return 1; }
		sleep 0.1
	done
	NOTE="$name not ready after ${READY_TIMEOUT}s: $(tail -3 "$cfg.log" | tr '\n' ' ')"
	return 1
}

# launch_haproxy NAME CONFIG PORT: run HAProxy on CONFIG on the proxy core; sets
# STARTED_PID; fails (with NOTE) unless PORT listens in time.
launch_haproxy() {
	local name=$1 cfg=$2 port=$3 i
	STARTED_PID=
	port_free "$port" || { NOTE="port $port in use"; return 1; }
	"${ON_PROXY_CPU[@]}" haproxy -db -f "$cfg" >"$cfg.log" 2>&1 &
	STARTED_PID=$!
	PIDS+=("$STARTED_PID")
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		port_free "$port" || return 0
		kill -0 "$STARTED_PID" 2>/dev/null || { NOTE="$name exited: $(tail -3 "$cfg.log" | tr '\n' ' ')"; return 1; }
		sleep 0.1
	done
	NOTE="$name not listening on $port after ${READY_TIMEOUT}s"
	return 1
}

# haproxy_cfg FILE FRONTEND_BIND SERVER_LINE [EXTRA [FRONTEND_RULES]]: an HAProxy
# configured as in start_haproxy, with EXTRA (more sections) appended and FRONTEND_RULES
# (lines) in its frontend.
haproxy_cfg() {
	cat >"$1" <<EOF
global
    nbthread 1
    maxconn 8192
    ssl-default-bind-ciphersuites $HAPROXY_TLS13_SUITES
    ssl-default-server-ciphersuites $HAPROXY_TLS13_SUITES

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse safe

frontend fe
    $2
    ${5:-# no header rules}
    default_backend be

backend be
    $3
${4:-}
EOF
}

# haproxy_mesh_rules SIDE MODE: the frontend lines that make HAProxy do the header work a
# sidecar does and Ferry does by default, so that the chains compare like for like (side a:
# the caller's outbound; b: the server's inbound; MODE plain or mtls):
# - both: X-Forwarded-For (option forwardfor; Ferry appends to the field, HAProxy adds a
#   second field line), and X-Forwarded-Proto when the request has none;
# - a: an X-Request-Id (a random UUID) when the request has none;
# - b with mTLS: X-Forwarded-Client-Cert in Envoy's format with the caller's identity,
#   replacing any such field from the caller. Ferry computes it once per connection; here
#   too: the value is kept in a session (connection) variable. HAProxy 2.6 cannot read a URI
#   SAN, so the caller's SPIFFE ID is its trust domain and /svc/ and the certificate's CN,
#   which `ferry ca issue` makes the service name: the same bytes as Ferry's value.
haproxy_mesh_rules() {
	local side=$1 mode=$2 id= td
	if [ "$side" = b ] && [ "$mode" = mtls ]; then
		id=$(openssl x509 -in "$CERTS/backend.pem" -noout -ext subjectAltName 2>/dev/null | grep -o 'spiffe://[^, ]*' | head -1) || true
		[[ $id == spiffe://*/svc/* ]] || { echo "no SPIFFE ID in $CERTS/backend.pem (openssl x509 -ext subjectAltName)"; return 1; }
		td=${id%%/svc/*}
	fi
	echo "option forwardfor"
	echo "    http-request set-header X-Forwarded-Proto http unless { req.hdr(x-forwarded-proto) -m found }"
	if [ "$side" = a ]; then
		echo "    http-request set-header X-Request-Id %[uuid()] unless { req.hdr(x-request-id) -m found }"
	elif [ -n "$id" ]; then
		echo "    http-request set-var-fmt(sess.xfcc) \"By=$id;Hash=%[ssl_c_der,sha2(256),hex,lower];URI=$td/svc/%[ssl_c_s_dn(CN)]\" unless { var(sess.xfcc) -m found }"
		echo "    http-request set-header X-Forwarded-Client-Cert %[var(sess.xfcc)]"
	fi
}

# ferry_b_cfg FILE MODE / ferry_a_cfg FILE MODE: the server-side sidecar B (inbound to the
# backend) and the caller-side sidecar A (outbound to B), with mTLS (MODE mtls, strict,
# certificates from files) or without an mtls block (MODE plain: plaintext on both hops).
ferry_b_cfg() {
	{
		echo "service: backend"
		echo "admin: {address: $CHAIN_B_ADMIN}"
		echo "inbound: {address: 127.0.0.1:$CHAIN_B_PORT, target: 127.0.0.1:$BACKEND_H1_PORT, protocol: http}"
		if [ "$2" = mtls ]; then
			echo "mtls: {mode: strict, source: files, cert_file: $CERTS/backend.pem, key_file: $CERTS/backend-key.pem, ca_file: $CERTS/bundle.pem}"
		fi
	} >"$1"
}
ferry_a_cfg() {
	local tls=
	[ "$2" = mtls ] && tls=", tls: mesh"
	{
		echo "service: client"
		echo "admin: {address: $CHAIN_A_ADMIN}"
		echo "outbound:"
		echo "  - {upstream: backend, address: 127.0.0.1:$CHAIN_A_PORT, protocol: http}"
		echo "upstreams:"
		echo "  - {name: backend, endpoints: [127.0.0.1:$CHAIN_B_PORT], lb: round_robin$tls}"
		if [ "$2" = mtls ]; then
			echo "mtls: {mode: strict, source: files, cert_file: $CERTS/client.pem, key_file: $CERTS/client-key.pem, ca_file: $CERTS/bundle.pem}"
		fi
	} >"$1"
}

# start_chain PROXY MODE: start B then A for PROXY (ferry | haproxy | haproxy_bare) and MODE
# (plain | mtls); sets CHAIN_PIDS and TARGET_PORT; fails (NOTE) unless a request goes
# through both.
start_chain() {
	local proxy=$1 mode=$2 dir=$TMP/chain-$1-$2 a b
	mkdir -p "$dir"
	CHAIN_PIDS=()
	if [ "$mode" = mtls ]; then make_certs || return 1; fi
	case $proxy in
	ferry)
		ferry_b_cfg "$dir/b.yaml" "$mode"
		ferry_a_cfg "$dir/a.yaml" "$mode"
		launch_ferry "ferry B" "$dir/b.yaml" "$CHAIN_B_ADMIN" || { [ -n "$STARTED_PID" ] && CHAIN_PIDS+=("$STARTED_PID"); return 1; }
		CHAIN_PIDS+=("$STARTED_PID")
		launch_ferry "ferry A" "$dir/a.yaml" "$CHAIN_A_ADMIN" || { [ -n "$STARTED_PID" ] && CHAIN_PIDS+=("$STARTED_PID"); return 1; }
		CHAIN_PIDS+=("$STARTED_PID")
		TARGET_PORT=$CHAIN_A_PORT
		;;
	haproxy | haproxy_bare)
		b="bind 127.0.0.1:$HAPROXY_B_PORT"
		a="server b 127.0.0.1:$HAPROXY_B_PORT"
		if [ "$mode" = mtls ]; then
			b+=" ssl crt $CERTS/backend-haproxy.pem ca-file $CERTS/bundle.pem verify required alpn h2,http/1.1"
			a+=" ssl crt $CERTS/client-haproxy.pem ca-file $CERTS/bundle.pem verify required"
		fi
		local rules_a= rules_b=
		if [ "$proxy" = haproxy ]; then
			rules_a=$(haproxy_mesh_rules a "$mode") || { NOTE="HAProxy A's header rules: $rules_a"; return 1; }
			rules_b=$(haproxy_mesh_rules b "$mode") || { NOTE="HAProxy B's header rules: $rules_b"; return 1; }
		fi
		haproxy_cfg "$dir/b.cfg" "$b" "server s1 127.0.0.1:$BACKEND_H1_PORT" "$HAPROXY_B_STATS" "$rules_b"
		haproxy_cfg "$dir/a.cfg" "bind 127.0.0.1:$HAPROXY_A_PORT" "$a" "" "$rules_a"
		launch_haproxy "HAProxy B" "$dir/b.cfg" "$HAPROXY_B_PORT" || { [ -n "$STARTED_PID" ] && CHAIN_PIDS+=("$STARTED_PID"); return 1; }
		CHAIN_PIDS+=("$STARTED_PID")
		launch_haproxy "HAProxy A" "$dir/a.cfg" "$HAPROXY_A_PORT" || { [ -n "$STARTED_PID" ] && CHAIN_PIDS+=("$STARTED_PID"); return 1; }
		CHAIN_PIDS+=("$STARTED_PID")
		TARGET_PORT=$HAPROXY_A_PORT
		;;
	esac
	wait_http "http://127.0.0.1:$TARGET_PORT/" || {
		NOTE="$proxy $mode chain did not answer: $(tail -2 "$dir"/*.log 2>/dev/null | tr '\n' ' ')"
		return 1
	}
}

stop_chain() {
	local p
	for p in "${CHAIN_PIDS[@]}"; do stop "$p"; done
	CHAIN_PIDS=()
}

# tls_probe ADDR: what the server at ADDR negotiates with an OpenSSL client presenting the
# client certificate and offering ALPN h2 and http/1.1 (as HAProxy A and Ferry A can).
tls_probe() {
	local out
	command -v openssl >/dev/null || { echo "not probed (no openssl command)"; return 0; }
	out=$(openssl s_client -connect "$1" -cert "$CERTS/client.pem" -key "$CERTS/client-key.pem" \
		-CAfile "$CERTS/bundle.pem" -alpn h2,http/1.1 </dev/null 2>&1) || true
	awk '/^New, /{p=$2; c=$NF} /^Server Temp Key:/{sub(/^Server Temp Key: /, ""); k=$0}
		/^ALPN protocol:/{a=$3} /^No ALPN/{a="none"}
		END{printf "%s %s, key exchange %s, ALPN %s", p, c, k, (a ? a : "none")}' <<<"$out"
}

# with_retries FUNC ARGS...: warm up and measure with FUNC (which sets M_OTHER and M_RES)
# until a run is undisturbed or BENCH_RETRIES repeats are spent; keeps the least disturbed
# run's M_RES in B_RES and its M_OTHER in B_OTHER.
B_RES= B_OTHER=0 M_RES=
with_retries() {
	local f=$1 attempt
	shift
	B_OTHER=-1
	for ((attempt = 0; attempt <= RETRIES; attempt++)); do
		"$f" warm "$@"
		wait_quiet
		"$f" measure "$@"
		if ((B_OTHER < 0 || M_OTHER < B_OTHER)); then B_OTHER=$M_OTHER B_RES=$M_RES; fi
		((M_OTHER > QUIET_PERCENT)) || break
		((attempt < RETRIES)) && log "other processes used ${M_OTHER}% of a core during the run; repeating it"
	done
	return 0
}

# other_pct S0 S1 T0 T1 OWN_TICKS: CPU used during a run by everything but our processes,
# in % of one core.
other_pct() {
	awk -v d=$((($2 - $1) - $5)) -v t="$TCK" -v ns=$(($4 - $3)) \
		'BEGIN {v = d / t / (ns / 1e9) * 100; if (v < 0) v = 0; printf "%.0f", v}'
}

# b_accepted: connections proxy B of the running chain has accepted so far (Ferry:
# ferry_downstream_connections_total; HAProxy: its frontend's stot in the stats CSV), or -.
ACCEPTED_OF=
b_accepted() {
	case $ACCEPTED_OF in
	ferry) curl -fs --max-time 2 "http://$CHAIN_B_ADMIN/metrics" |
		awk '/^ferry_downstream_connections_total/{s += $NF} END{printf "%d\n", s}' || echo - ;;
	haproxy | haproxy_bare) curl -fs --max-time 2 "http://127.0.0.1:$HAPROXY_B_STATS_PORT/stats;csv" |
		awk -F, '$1 == "fe" && $2 == "FRONTEND" {print $8}' || echo - ;;
	*) echo - ;;
	esac
}

# chain_load SECONDS OUT URL [wrk options...]: the load of a two-hop run: wrk as fast as the
# proxies answer (closed loop), or, with CHAIN_RATE > 0, h2load sending HTTP/1.1 requests at
# CHAIN_RATE requests/s in total (each of the CONNS connections at CHAIN_RATE/CONNS per
# second; open loop), with its per-request log in OUT.h2log.
CHAIN_RATE=0
chain_load() {
	local secs=$1 out=$2 url=$3
	shift 3
	if ((CHAIN_RATE > 0)); then
		"${ON_LOAD_CPU[@]}" h2load --h1 -t1 -c"$CONNS" --rps=$((CHAIN_RATE / CONNS)) -D "$secs" \
			--log-file="$out.h2log" "$url" >"$out" 2>&1
	else
		"${ON_LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"$secs"s --latency "$@" "$url" >"$out" 2>&1
	fi
}

# wrk_on_chain warm|measure OUT URL [wrk options...]: one wrk run through the proxies in
# CHAIN_PIDS; measure sets M_RES "rps|cpu_1 cpu_2 …|cpu_sum|p50|p99|errs" (CPU µs/req).
wrk_on_chain() {
	local phase=$1 out=$2 url=$3 p bpids t0 t1 s0 s1 b0 b1 l0 l1 own cpu sum=0 parts= acc0 acc1 acc=- cs0 cs1 us0 us1 allp=
	shift 3
	if [ "$phase" = warm ]; then
		((WARMUP > 0)) && { chain_load "$WARMUP" "$out.warm" "$url" "$@" || true; }
		return 0
	fi
	local -a c0=() c1=()
	bpids=$(tree_pids "$BACKEND_PID")
	acc0=$(b_accepted)
	for p in "${CHAIN_PIDS[@]}"; do allp+=" $(tree_pids "$p")"; done
	t0=$(date +%s%N) s0=$(busy_ticks) b0=$(cpu_ticks $bpids) l0=$(child_ticks)
	cs0=$(ctx_switches $allp) us0=$(user_sys_ticks $allp)
	for p in "${CHAIN_PIDS[@]}"; do c0+=("$(cpu_ticks $(tree_pids "$p"))"); done
	chain_load "$DURATION" "$out" "$url" "$@" || true
	for p in "${CHAIN_PIDS[@]}"; do c1+=("$(cpu_ticks $(tree_pids "$p"))"); done
	cs1=$(ctx_switches $allp) us1=$(user_sys_ticks $allp)
	l1=$(child_ticks) b1=$(cpu_ticks $bpids) s1=$(busy_ticks) t1=$(date +%s%N)
	acc1=$(b_accepted)
	[[ $acc0 =~ ^[0-9]+$ && $acc1 =~ ^[0-9]+$ ]] && acc=$((acc1 - acc0))
	if ((CHAIN_RATE > 0)); then parse_h2load "$out" "$out.h2log"; else parse_wrk "$out"; fi
	rm -f "$out.h2log"
	own=$(((b1 - b0) + (l1 - l0)))
	for p in "${!c0[@]}"; do
		own=$((own + c1[p] - c0[p]))
		cpu=$(awk -v d=$((c1[p] - c0[p])) -v t="$TCK" -v n="$REQS" 'BEGIN {printf "%.1f", (n > 0 ? d / t * 1e6 / n : 0)}')
		parts+="${parts:+ }$cpu"
		sum=$((sum + c1[p] - c0[p]))
	done
	M_OTHER=$(other_pct "$s0" "$s1" "$t0" "$t1" "$own")
	cpu=$(awk -v d="$sum" -v t="$TCK" -v n="$REQS" 'BEGIN {printf "%.1f", (n > 0 ? d / t * 1e6 / n : 0)}')
	# user and kernel CPU µs per request and context switches per request, A and B together.
	local split
	split=$(awk -v a="$us0" -v b="$us1" -v c0="$cs0" -v c1="$cs1" -v t="$TCK" -v n="$REQS" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		if (n > 0) printf "%.1f / %.1f|%.2f", (y[1] - x[1]) / t * 1e6 / n, (y[2] - x[2]) / t * 1e6 / n, (c1 - c0) / n
		else printf "-|-" }')
	M_RES="$RPS|$parts|$cpu|$P50|$P99|$ERRS|$REQS|$acc|$split"
}

# chain_case LABEL PROXY MODE: one row of the two-hop table.
chain_case() {
	local label=$1 proxy=$2 mode=$3 hop rps parts cpu p50 p99 errs reqs a b conns us cs key=$2/$3
	NOTE=
	((CHAIN_RATE > 0)) && key+="@$CHAIN_RATE"
	case $proxy/$mode in
	direct/*) hop="-" ;;
	ferry/plain | haproxy/plain) hop="HTTP/1.1, plaintext" ;;
	ferry/mtls) hop="HTTP/1.1 over TLS (ALPN http/1.1)" ;;
	haproxy/mtls | haproxy_bare/mtls) hop="HTTP/1.1 over TLS (no ALPN)" ;;
	esac
	if [ "$proxy" = direct ]; then
		CHAIN_PIDS=()
		TARGET_PORT=$BACKEND_H1_PORT
	elif ! start_chain "$proxy" "$mode"; then
		log "$label: skipped: $NOTE"
		NOTES+=("$label: not measured: $NOTE")
		CHAIN_ROWS+=("$label|$hop|-|-|-|-|-|-|-|-|-|$key|-|-")
		stop_chain
		return 0
	fi
	log "$label: warm-up ${WARMUP}s, then ${DURATION}s"
	ACCEPTED_OF=$proxy
	with_retries wrk_on_chain "$TMP/chain-${key//[\/@]/-}.out" "http://127.0.0.1:$TARGET_PORT/"
	ACCEPTED_OF=
	# conns: connections B accepted during the measured run; with A reusing its connections
	# to B this stays near the number of client connections, with churn it nears requests.
	IFS='|' read -r rps parts cpu p50 p99 errs reqs conns us cs <<<"$B_RES"
	read -r a b <<<"$parts"
	[ "$proxy" = direct ] && a=- b=- cpu=- conns=- us=- cs=-
	if [ "${reqs:-0}" -eq 0 ]; then
		NOTES+=("$label: no request completed")
		CHAIN_ROWS+=("$label|$hop|0|-|-|-|-|-|-|$B_OTHER|-|$key|-|-")
		stop_chain
		return 0
	fi
	((errs > 0)) && NOTES+=("$label: $errs errors or non-2xx responses")
	((B_OTHER > QUIET_PERCENT)) && NOTES+=("$label: other processes used ${B_OTHER}% of a core during the run; its numbers may be disturbed")
	MESH_CPU[$key]=$cpu
	CHAIN_ROWS+=("$label|$hop|$rps|${a:--}|${b:--}|$cpu|$p50|$p99|$conns|$B_OTHER|$errs|$key|${us:--}|${cs:--}")
	log "$label: $rps req/s, CPU A $a + B $b = $cpu µs/req, p99 $p99 ms"
	if [ "$key" = ferry/mtls ] && [ "$PROFILE" = 1 ]; then
		profile_during "$TMP/prof-mtls.out" "$CHAIN_A_ADMIN=ferry-mtls-a" "$CHAIN_B_ADMIN=ferry-mtls-b" -- \
			"${ON_LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d$((PROFILE_SECONDS + 2))s "http://127.0.0.1:$TARGET_PORT/"
	fi
	if [ "$mode" = mtls ] && [ "$proxy" != direct ]; then
		TLS_SEEN[$proxy]=$(tls_probe "127.0.0.1:$([ "$proxy" = ferry ] && echo $CHAIN_B_PORT || echo $HAPROXY_B_PORT)")
	fi
	stop_chain
}
declare -A TLS_SEEN

# round_cpu PROXY: one closed-loop run of PROXY's mTLS chain, as chain_case's; sets RC_CPU
# (CPU µs per request of A and B) or - when the chain did not start or answer.
ROUND_ROWS=()
RC_CPU=-
round_cpu() {
	local rps parts cpu rest
	RC_CPU=-
	NOTE=
	if start_chain "$1" mtls; then
		with_retries wrk_on_chain "$TMP/round-$1.out" "http://127.0.0.1:$TARGET_PORT/"
		IFS='|' read -r rps parts cpu rest <<<"$B_RES"
		[ "${cpu:-0}" != 0.0 ] && RC_CPU=$cpu
	else
		NOTES+=("alternating rounds, $1: not measured: $NOTE")
	fi
	stop_chain
}

# profile_during OUT ADMIN=NAME... -- LOAD COMMAND...: run the load command while the
# admin servers' pprof endpoints record CPU profiles (kept out of the measured numbers);
# saves bench/results/NAME.pprof and adds its top lines to PROFILE_TOPS.
PROFILE_TOPS=
profile_during() {
	local out=$1 spec name admin load_pid
	local -a specs=() curls=()
	shift
	while [ "$1" != -- ]; do specs+=("$1"); shift; done
	shift
	mkdir -p "$RESULTS"
	"$@" >"$out" 2>&1 &
	load_pid=$!
	sleep 1
	for spec in "${specs[@]}"; do
		admin=${spec%%=*} name=${spec#*=}
		curl -fs --max-time $((PROFILE_SECONDS + 30)) -o "$RESULTS/$name.pprof" \
			"http://$admin/debug/pprof/profile?seconds=$PROFILE_SECONDS" &
		curls+=($!)
	done
	for spec in "${!curls[@]}"; do
		name=${specs[spec]#*=}
		if wait "${curls[spec]}"; then
			PROFILE_TOPS+=$'\n'"go tool pprof -top bench/results/$name.pprof (first 20 lines):"$'\n```\n'
			go tool pprof -top "$FERRY_BIN" "$RESULTS/$name.pprof" >"$out.$name.top" 2>&1 || true
			PROFILE_TOPS+="$(head -20 "$out.$name.top")"$'\n```\n'
			NOTES+=("CPU profile ($name, separate ${PROFILE_SECONDS}s run, not in the tables): bench/results/$name.pprof")
		else
			rm -f "$RESULTS/$name.pprof"
			NOTES+=("BENCH_PROFILE=1: no $name profile (${specs[spec]%%=*} did not answer)")
		fi
	done
	wait "$load_pid" || true
}

# hs_run warm|measure OUT ADDR: the handshake tool against ADDR (the server in
# CHAIN_PIDS); measure sets M_RES "handshakes/s|µs server CPU per handshake|handshakes per
# server CPU-second|p50|p99|tls|errors|handshakes".
hs_run() {
	local phase=$1 out=$2 addr=$3 secs=$HS_DURATION p bpids t0 t1 s0 s1 b0 b1 l0 l1 c0 c1 pids line
	[ "$phase" = warm ] && secs=1
	local cmd=("${ON_LOAD_CPU[@]}" "$TMP/handshake" -addr "$addr" -cert "$CERTS/client.pem" -key "$CERTS/client-key.pem"
		-ca "$CERTS/bundle.pem" -workers "$HS_WORKERS" -duration "${secs}s" -curves "$HS_CURVES")
	if [ "$phase" = warm ]; then
		"${cmd[@]}" >"$out.warm" 2>&1 || true
		return 0
	fi
	pids=$(for p in "${CHAIN_PIDS[@]}"; do tree_pids "$p"; done)
	bpids=$(tree_pids "$BACKEND_PID")
	t0=$(date +%s%N) s0=$(busy_ticks) b0=$(cpu_ticks $bpids) l0=$(child_ticks) c0=$(cpu_ticks $pids)
	"${cmd[@]}" >"$out" 2>"$out.err" || true
	c1=$(cpu_ticks $pids) l1=$(child_ticks) b1=$(cpu_ticks $bpids) s1=$(busy_ticks) t1=$(date +%s%N)
	M_OTHER=$(other_pct "$s0" "$s1" "$t0" "$t1" $(((c1 - c0) + (b1 - b0) + (l1 - l0))))
	line=$(grep '^handshakes=' "$out" || true)
	kv() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$line"; }
	local n rate errs
	n=$(kv handshakes) rate=$(kv rate) errs=$(kv errors)
	n=${n:-0}
	M_RES="${rate:-0}|$(awk -v d=$((c1 - c0)) -v t="$TCK" -v n="$n" 'BEGIN {printf "%.0f", (n > 0 ? d / t * 1e6 / n : 0)}')"
	M_RES+="|$(awk -v d=$((c1 - c0)) -v t="$TCK" -v n="$n" 'BEGIN {printf "%.0f", (d > 0 ? n / (d / t) : 0)}')"
	M_RES+="|$(kv p50_ms)|$(kv p99_ms)|$(kv version) $(kv cipher) $(kv curve), ALPN $(kv alpn), resumed $(kv resumed)|${errs:-?}|$n"
	[ -s "$out.err" ] && NOTES+=("handshake tool against $addr: $(head -c 300 "$out.err" | tr '\n' ' ')")
	return 0
}

# hs_case LABEL PROXY: start only B (ferry | haproxy) with mTLS and measure handshakes.
hs_case() {
	local label=$1 proxy=$2 dir=$TMP/hs-$2 addr rate us per p50 p99 tls errs n
	NOTE=
	mkdir -p "$dir"
	CHAIN_PIDS=()
	if ! make_certs; then
		NOTES+=("$label: not measured: $NOTE")
		HS_ROWS+=("$label|-|-|-|-|-|-|-|-")
		return 0
	fi
	case $proxy in
	ferry)
		ferry_b_cfg "$dir/b.yaml" mtls
		launch_ferry "ferry B" "$dir/b.yaml" "$CHAIN_B_ADMIN" && addr=127.0.0.1:$CHAIN_B_PORT
		;;
	haproxy)
		haproxy_cfg "$dir/b.cfg" "bind 127.0.0.1:$HAPROXY_B_PORT ssl crt $CERTS/backend-haproxy.pem ca-file $CERTS/bundle.pem verify required alpn h2,http/1.1" \
			"server s1 127.0.0.1:$BACKEND_H1_PORT"
		launch_haproxy "HAProxy B" "$dir/b.cfg" "$HAPROXY_B_PORT" && addr=127.0.0.1:$HAPROXY_B_PORT
		;;
	esac
	[ -n "$STARTED_PID" ] && CHAIN_PIDS+=("$STARTED_PID")
	if [ -z "${addr:-}" ]; then
		log "$label: skipped: $NOTE"
		NOTES+=("$label: not measured: $NOTE")
		HS_ROWS+=("$label|-|-|-|-|-|-|-|-")
		stop_chain
		return 0
	fi
	log "$label: ${HS_DURATION}s of new mTLS connections, $HS_WORKERS workers"
	with_retries hs_run "$dir/hs.out" "$addr"
	IFS='|' read -r rate us per p50 p99 tls errs n <<<"$B_RES"
	((B_OTHER > QUIET_PERCENT)) && NOTES+=("$label: other processes used ${B_OTHER}% of a core during the run; its numbers may be disturbed")
	[ "$errs" != 0 ] && NOTES+=("$label: $errs failed connections")
	MESH_CPU[hs/$proxy]=$us
	HS_ROWS+=("$label|$rate|$us|$per|$p50|$p99|$tls|$B_OTHER|$errs")
	log "$label: $rate handshakes/s, $us µs server CPU per handshake ($per per CPU-second), $tls"
	if [ "$proxy" = ferry ] && [ "$PROFILE" = 1 ]; then
		profile_during "$dir/prof.out" "$CHAIN_B_ADMIN=ferry-handshake" -- "${ON_LOAD_CPU[@]}" "$TMP/handshake" -addr "$addr" \
			-cert "$CERTS/client.pem" -key "$CERTS/client-key.pem" -ca "$CERTS/bundle.pem" -workers "$HS_WORKERS" \
			-duration "$((PROFILE_SECONDS + 2))s" -curves "$HS_CURVES"
	fi
	stop_chain
}

# policy_cfg FILE PORT ADMIN on|off: Ferry's inbound (plaintext) to the backend, with
# (on) or without (off) a policy block of 20 access rules and a rate limit that never
# triggers.
policy_cfg() {
	{
		echo "service: api"
		echo "admin: {address: $3}"
		echo "inbound: {address: 127.0.0.1:$2, target: 127.0.0.1:$BACKEND_H1_PORT, protocol: http}"
		[ "$4" = on ] && cat "$ROOT/bench/policy-20-rules.yaml"
		return 0
	} >"$1"
}

# status_of URL [curl options...]: the HTTP status of one GET.
status_of() { curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$@" || true; }

# policy_cases: two Ferry processes side by side (no policy / the policy), measured in
# alternation BENCH_POLICY_ROUNDS times so that drift on the shared machine hits both alike.
policy_cases() {
	local dir=$TMP/policy r v port admin pid_off pid_on s rps cpu p50 p99 errs reqs parts
	mkdir -p "$dir"
	NOTE=
	CHAIN_PIDS=()
	policy_cfg "$dir/off.yaml" "$POLICY_OFF_PORT" "$POLICY_OFF_ADMIN" off
	policy_cfg "$dir/on.yaml" "$POLICY_ON_PORT" "$POLICY_ON_ADMIN" on
	if ! launch_ferry "ferry (no policy)" "$dir/off.yaml" "$POLICY_OFF_ADMIN"; then
		NOTES+=("policy cost: not measured: $NOTE")
		[ -n "$STARTED_PID" ] && stop "$STARTED_PID"
		return 0
	fi
	pid_off=$STARTED_PID
	if ! launch_ferry "ferry (policy)" "$dir/on.yaml" "$POLICY_ON_ADMIN"; then
		NOTES+=("policy cost: not measured: $NOTE")
		stop "$pid_off"
		[ -n "$STARTED_PID" ] && stop "$STARTED_PID"
		return 0
	fi
	pid_on=$STARTED_PID
	# The policy must really be in force: the measured request is allowed, others denied.
	s="$(status_of -H "$POLICY_HEADER" "http://127.0.0.1:$POLICY_ON_PORT$POLICY_PATH")"
	s+=" $(status_of "http://127.0.0.1:$POLICY_ON_PORT$POLICY_PATH")"
	s+=" $(status_of -H "$POLICY_HEADER" "http://127.0.0.1:$POLICY_ON_PORT/admin/x")"
	s+=" $(status_of -H "$POLICY_HEADER" "http://127.0.0.1:$POLICY_OFF_PORT$POLICY_PATH")"
	if [ "$s" != "200 403 403 200" ]; then
		NOTES+=("policy cost: not measured: the policy did not decide as expected (statuses $s, want 200 403 403 200)")
		stop "$pid_off"
		stop "$pid_on"
		return 0
	fi
	for ((r = 1; r <= POLICY_ROUNDS; r++)); do
		for v in off on; do
			if [ $v = off ]; then CHAIN_PIDS=("$pid_off") port=$POLICY_OFF_PORT; else CHAIN_PIDS=("$pid_on") port=$POLICY_ON_PORT; fi
			log "policy $v (round $r): warm-up ${WARMUP}s, then ${DURATION}s"
			with_retries wrk_on_chain "$dir/$v-$r.out" "http://127.0.0.1:$port$POLICY_PATH" -H "$POLICY_HEADER"
			IFS='|' read -r rps parts cpu p50 p99 errs reqs _ <<<"$B_RES"
			((${errs:-0} > 0)) && NOTES+=("policy $v round $r: $errs errors or non-2xx responses (a 429 would mean the rate limit triggered)")
			((B_OTHER > QUIET_PERCENT)) && NOTES+=("policy $v round $r: other processes used ${B_OTHER}% of a core during the run")
			POLICY_ROWS+=("$r|$v|$rps|$cpu|$p50|$p99|$B_OTHER|$errs")
			log "policy $v (round $r): $rps req/s, $cpu µs/req"
		done
	done
	CHAIN_PIDS=()
	if [ "$PROFILE" = 1 ]; then
		profile_during "$dir/prof.out" "$POLICY_ON_ADMIN=ferry-policy" -- "${ON_LOAD_CPU[@]}" wrk -t1 -c"$CONNS" \
			-d$((PROFILE_SECONDS + 2))s -H "$POLICY_HEADER" "http://127.0.0.1:$POLICY_ON_PORT$POLICY_PATH"
	fi
	stop "$pid_off"
	stop "$pid_on"
}

# ---------------------------------------------------------------- main

want() { [[ " $1 " == *" $2 "* ]]; }

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
log "backend: $BACKEND_KIND; ${DURATION}s per case after ${WARMUP}s warm-up; $CONNS connections"
start_backend

for proto in h1 h2c; do
	want "$SUITES" proxies || continue
	want "$PROTOCOLS" "$proto" || continue
	want "$PROXIES" direct && run_case "$proto" "direct" direct "$proto"
	if want "$PROXIES" haproxy; then
		if [ "$proto" = h1 ]; then
			run_case h1 "HAProxy" haproxy h1
		else
			run_case h2c "HAProxy (h2c upstream)" haproxy h2c
			run_case h2c "HAProxy (h1 upstream)" haproxy h2c-h1
		fi
	fi
	if want "$PROXIES" nginx; then
		if [ "$proto" = h1 ]; then
			run_case h1 "nginx" nginx h1
		else
			run_case h2c "nginx (h1 upstream)" nginx h2c
		fi
	fi
	if want "$PROXIES" reverseproxy; then
		if [ "$proto" = h1 ]; then
			run_case h1 "Go ReverseProxy (reference)" reverseproxy h1
		else
			run_case h2c "Go ReverseProxy (h2c upstream)" reverseproxy h2c
		fi
	fi
	if want "$PROXIES" ferry; then
		if [ "$proto" = h1 ]; then
			run_case h1 "Ferry" ferry h1
		else
			run_case h2c "Ferry (h2c upstream)" ferry h2c
		fi
	fi
	if want "$PROXIES" ferry_ha; then
		if [ "$proto" = h1 ]; then
			run_case h1 "Ferry + retries, breaker, outlier, health" ferry_ha h1
		else
			run_case h2c "Ferry + retries, breaker, outlier, health (h2c)" ferry_ha h2c
		fi
	fi
done

if want "$SUITES" mtls || want "$SUITES" handshake; then
	go build -o "$TMP/handshake" ./bench/handshake || die "cannot build bench/handshake"
fi
if want "$SUITES" mtls; then
	for proxy in $MTLS_PROXIES; do
		case $proxy in
		direct) chain_case "direct (no proxy)" direct - ;;
		haproxy)
			chain_case "HAProxy → HAProxy, plaintext" haproxy plain
			chain_case "HAProxy → HAProxy, mTLS" haproxy mtls
			;;
		haproxy_bare) chain_case "HAProxy → HAProxy, mTLS, no header rules" haproxy_bare mtls ;;
		ferry)
			chain_case "Ferry → Ferry, plaintext" ferry plain
			chain_case "Ferry → Ferry, mTLS" ferry mtls
			;;
		*) die "BENCH_MTLS_PROXIES: unknown path '$proxy' (direct, haproxy, haproxy_bare, ferry)" ;;
		esac
	done
	for CHAIN_RATE in $MTLS_RATES; do
		[[ $CHAIN_RATE =~ ^[1-9][0-9]*$ ]] && ((CHAIN_RATE >= CONNS)) ||
			die "BENCH_MTLS_RATES: '$CHAIN_RATE' is not a rate of at least $CONNS requests/s"
		want "$MTLS_PROXIES" haproxy && chain_case "HAProxy → HAProxy, mTLS at $CHAIN_RATE req/s offered" haproxy mtls
		want "$MTLS_PROXIES" ferry && chain_case "Ferry → Ferry, mTLS at $CHAIN_RATE req/s offered" ferry mtls
	done
	CHAIN_RATE=0
	if want "$MTLS_PROXIES" haproxy && want "$MTLS_PROXIES" ferry; then
		for ((r = 1; r <= MTLS_ROUNDS; r++)); do
			log "alternating mTLS chains, round $r of $MTLS_ROUNDS"
			round_cpu haproxy
			h=$RC_CPU
			hb=-
			if want "$MTLS_PROXIES" haproxy_bare; then
				round_cpu haproxy_bare
				hb=$RC_CPU
			fi
			round_cpu ferry
			ROUND_ROWS+=("$r|$h|$hb|$RC_CPU")
		done
	fi
fi
if want "$SUITES" handshake; then
	for proxy in $MTLS_PROXIES; do
		case $proxy in
		haproxy) hs_case "HAProxy (bind ssl … verify required)" haproxy ;;
		ferry) hs_case "Ferry inbound (mtls.mode: strict)" ferry ;;
		esac
	done
fi
want "$SUITES" policy && policy_cases

# ---------------------------------------------------------------- report

# mesh_report: the tables of the two-hop, handshake and policy cases (markdown on stdout).
mesh_report() {
	local r label hop rps a b cpu p50 p99 conns other errs rel f h us per tls round v n sum
	if ((${#CHAIN_ROWS[@]})); then
		echo "Two hops (client → proxy A → proxy B → backend), HTTP/1.1, both proxies on CPU $PROXY_CPU, CPU µs per request. Rows without a rate: wrk on $CONNS connections as fast as the chain answers (closed loop), so a faster chain also runs at a higher rate. Rows \"at N req/s offered\": h2load sending N requests/s over $CONNS connections (open loop), the same load for both proxies:"
		echo
		echo "| path | A → B | requests/s | CPU A | CPU B | CPU A+B µs/req | vs HAProxy, same hop | A+B user / kernel µs | A+B context switches/req | p50 ms | p99 ms | connections B accepted | other load % | errors |"
		echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
		for r in "${CHAIN_ROWS[@]}"; do
			IFS='|' read -r label hop rps a b cpu p50 p99 conns other errs key us cs <<<"$r"
			rel=-
			case $key in
			ferry/* | haproxy_bare/*) rel=$(ratio "$cpu" "${MESH_CPU[haproxy/${key#*/}]:-}") ;;
			haproxy/*) [ "$cpu" != - ] && rel=1.00× ;;
			esac
			echo "| $label | $hop | $rps | $a | $b | $cpu | $rel | $us | $cs | $p50 | $p99 | $conns | $other | $errs |"
		done
		echo
		for v in haproxy ferry; do
			f=${MESH_CPU[$v/mtls]:-} h=${MESH_CPU[$v/plain]:-}
			if [ -n "$f" ] && [ -n "$h" ]; then
				awk -v m="$f" -v p="$h" -v n="$v" 'BEGIN {printf "mTLS between the proxies costs %s %+.1f µs per request (%.2f× its plaintext two hops).\n\n", (n == "ferry" ? "Ferry" : "HAProxy"), m - p, m / p}'
			fi
		done
		if ((${#ROUND_ROWS[@]})); then
			echo "The mTLS chains again, closed loop as above, alternating (HAProxy, $(want "$MTLS_PROXIES" haproxy_bare && echo "HAProxy without header rules, ")then Ferry, $MTLS_ROUNDS times) so that drift on the shared machine hits all alike:"
			echo
			echo "| round | HAProxy A+B µs/req | HAProxy, no header rules | Ferry A+B µs/req | Ferry / HAProxy | Ferry / HAProxy, no header rules |"
			echo "|--:|--:|--:|--:|--:|--:|"
			local ratios=() bares=() hb relb
			for r in "${ROUND_ROWS[@]}"; do
				IFS='|' read -r round h hb f <<<"$r"
				rel=$(ratio "$f" "$h")
				relb=$(ratio "$f" "$hb")
				[ "$rel" != - ] && ratios+=("${rel%×}")
				[ "$relb" != - ] && bares+=("${relb%×}")
				echo "| $round | $h | $hb | $f | $rel | $relb |"
			done
			echo
			if ((${#ratios[@]})); then
				printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR] = $1} END {m = (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2); printf "Median Ferry / HAProxy over the %d rounds: **%.2f×** (range %.2f–%.2f×).\n\n", NR, m, v[1], v[NR]}'
			fi
			if ((${#bares[@]})); then
				printf '%s\n' "${bares[@]}" | sort -n | awk '{v[NR] = $1} END {m = (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2); printf "Median Ferry / HAProxy without header rules (HAProxy doing less than Ferry: no X-Forwarded-*, X-Request-Id or client-certificate header): %.2f× (range %.2f–%.2f×).\n\n", m, v[1], v[NR]}'
			fi
		fi
		for v in ferry haproxy; do
			[ -n "${TLS_SEEN[$v]:-}" ] && echo "TLS that proxy B ($v) negotiates with an OpenSSL client offering h2 and http/1.1 (openssl s_client): ${TLS_SEEN[$v]}."
		done
		echo
	fi
	if ((${#HS_ROWS[@]})); then
		echo "New mutual-TLS connections: bench/handshake, $HS_WORKERS workers for ${HS_DURATION}s, each connection a full handshake with a client certificate ($KEY_TYPE certificates from \`ferry ca issue\` on both servers; no session cache, no tickets; client groups $HS_CURVES), one GET, close. Server alone on CPU $PROXY_CPU (GOMAXPROCS=1 / nbthread 1), client and backend on CPU $LOAD_CPU:"
		echo
		echo "| server | handshakes/s | server CPU µs per handshake | handshakes per server CPU-second | p50 ms | p99 ms | negotiated (Go client) | other load % | errors |"
		echo "|---|--:|--:|--:|--:|--:|---|--:|--:|"
		for r in "${HS_ROWS[@]}"; do
			IFS='|' read -r label rps us per p50 p99 tls other errs <<<"$r"
			echo "| $label | $rps | $us | $per | $p50 | $p99 | $tls | $other | $errs |"
		done
		echo
		f=${MESH_CPU[hs/ferry]:-} h=${MESH_CPU[hs/haproxy]:-}
		[ -n "$f" ] && [ -n "$h" ] && echo "Ferry/HAProxy server CPU per new mTLS connection: **$(ratio "$f" "$h")** ($f vs $h µs)." && echo
	fi
	if ((${#POLICY_ROWS[@]})); then
		echo "Policy cost: Ferry's plaintext inbound (client → inbound → backend), GET $POLICY_PATH with \`$POLICY_HEADER\`, without a policy block and with 20 access rules (8 deny, 12 allow, default deny; the request is allowed by the last rule) and a client_ip rate limit that never triggers; the two processes measured in alternation:"
		echo
		echo "| round | policy | requests/s | proxy CPU µs/req | p50 ms | p99 ms | other load % | errors |"
		echo "|--:|---|--:|--:|--:|--:|--:|--:|"
		for r in "${POLICY_ROWS[@]}"; do
			IFS='|' read -r round v rps cpu p50 p99 other errs <<<"$r"
			echo "| $round | $v | $rps | $cpu | $p50 | $p99 | $other | $errs |"
		done
		echo
		printf '%s\n' "${POLICY_ROWS[@]}" | awk -F'|' '$4 ~ /^[0-9.]+$/ {s[$2] += $4; n[$2]++}
			END {if (n["on"] && n["off"]) printf "Policy cost per request: **%+.1f %%** (mean %.1f vs %.1f µs over %d rounds).\n\n", (s["on"] / n["on"] / (s["off"] / n["off"]) - 1) * 100, s["on"] / n["on"], s["off"] / n["off"], n["on"]}'
	fi
	return 0
}

ratio() { # ratio A B: A/B with two decimals, or "-"
	if [[ ${1:-} =~ ^[0-9.]+$ && ${2:-} =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then
		awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a / b}'
	else
		echo "-"
	fi
}

haproxy_ref() { # the HAProxy row a proxy's CPU is compared with: same protocol, same upstream protocol as Ferry
	echo "${CPU_PER_REQ[$1/haproxy/$1]:-}"
}

ver_haproxy=$( (haproxy -v 2>/dev/null || true) | awk 'NR == 1 {print $3}')
ver_nginx=$( (nginx -v 2>&1 || true) | sed 's/.*nginx\///')
ver_wrk=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}')
ver_h2load=$( (h2load --version 2>/dev/null || true) | awk '{print $2}')
ver_go=$(go env GOVERSION)
ver_ferry=-
[ -x "$FERRY_BIN" ] && ver_ferry=$("$FERRY_BIN" version 2>/dev/null | head -1 || echo unknown)
if git_rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null); then
	ver_ferry="$ver_ferry (source tree at git $git_rev)"
fi
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
overrides=$(env | grep -E '^(BENCH_[A-Z_]+|FERRY_BIN)=' | sort | tr '\n' ' ' || true)
overrides=${overrides% }

{
	echo "## Ferry benchmark, $START_DATE"
	echo
	echo "Host: $(nproc) × $cpu_model, Linux $(uname -r). Proxy on CPU $PROXY_CPU (GOMAXPROCS=1 /" \
		"nbthread 1 / worker_processes 1); client and backend on CPU $LOAD_CPU. 127.0.0.1 only, nice $NICE," \
		"keep-alive, $CONNS connections (h2load -m$H2_STREAMS), 13-byte responses, ${WARMUP}s warm-up then" \
		"${DURATION}s measured per case, a fresh proxy process per case. Backend: $BACKEND_KIND."
	echo "Versions: HAProxy $ver_haproxy, nginx $ver_nginx, wrk $ver_wrk, h2load $ver_h2load, $ver_go, ferry: $ver_ferry."
	echo "Environment overrides: ${overrides:-none}"
	echo
	((${#ROWS[@]})) && echo "| protocol | path | requests/s | proxy CPU µs/req | CPU/req vs HAProxy | p50 ms | p99 ms | proxy peak RSS MiB | backend CPU µs/req | other load % | errors |"
	((${#ROWS[@]})) && echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for r in "${ROWS[@]}"; do
		IFS='|' read -r proto label rps cpu p50 p99 rss bcpu other errs <<<"$r"
		rel=-
		[ "$cpu" != - ] && rel=$(ratio "$cpu" "$(haproxy_ref "$proto")")
		echo "| $proto | $label | $rps | $cpu | $rel | $p50 | $p99 | $rss | $bcpu | $other | $errs |"
	done
	echo
	for proto in h1 h2c; do
		f=${CPU_PER_REQ[$proto/ferry/$proto]:-}
		h=$(haproxy_ref "$proto")
		if [ -n "$f" ] && [ -n "$h" ]; then
			echo "Ferry/HAProxy CPU per request, $proto: **$(ratio "$f" "$h")** ($f vs $h µs)."
			echo
		fi
	done
	mesh_report
	if ((${#NOTES[@]})); then
		echo "Notes:"
		for n in "${NOTES[@]}"; do echo "- $n"; done
		echo
	fi
} >"$TMP/report.md"

mkdir -p "$RESULTS"
cp "$TMP/report.md" "$RESULTS/latest.md"
cat "$TMP/report.md"
[ -n "$PROFILE_TOPS" ] && echo "$PROFILE_TOPS"
if [ -n "$PROFILE_TOP" ]; then
	echo "go tool pprof -top bench/results/ferry-h1.pprof (first 25 lines):"
	echo '```'
	echo "$PROFILE_TOP"
	echo '```'
fi
log "results written to bench/results/latest.md"
exit 0
}
