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

for n in DURATION WARMUP CONNS H2_STREAMS PROFILE_SECONDS PROXY_CPU LOAD_CPU READY_TIMEOUT QUIET_TIMEOUT QUIET_PERCENT RETRIES; do
	[[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer, got '${!n}'"
done
((DURATION > 0)) || die "BENCH_DURATION must be > 0"
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
		PROFILE_TOP=$(go tool pprof -top "$FERRY_BIN" "$RESULTS/ferry-h1.pprof" 2>&1 | head -25)
		NOTES+=("CPU profile of Ferry under h1 load (separate ${PROFILE_SECONDS}s run, not in the table): bench/results/ferry-h1.pprof")
	else
		wait "$wrk_pid" || true
		rm -f "$RESULTS/ferry-h1.pprof"
		PROFILE_TOP="no profile: $url did not answer"
		NOTES+=("BENCH_PROFILE=1: $url did not answer; no profile taken")
	fi
}
PROFILE_TOP=

# ---------------------------------------------------------------- main

want() { [[ " $1 " == *" $2 "* ]]; }

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
log "backend: $BACKEND_KIND; ${DURATION}s per case after ${WARMUP}s warm-up; $CONNS connections"
start_backend

for proto in h1 h2c; do
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

# ---------------------------------------------------------------- report

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
	echo "| protocol | path | requests/s | proxy CPU µs/req | CPU/req vs HAProxy | p50 ms | p99 ms | proxy peak RSS MiB | backend CPU µs/req | other load % | errors |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
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
	if ((${#NOTES[@]})); then
		echo "Notes:"
		for n in "${NOTES[@]}"; do echo "- $n"; done
		echo
	fi
} >"$TMP/report.md"

mkdir -p "$RESULTS"
cp "$TMP/report.md" "$RESULTS/latest.md"
cat "$TMP/report.md"
if [ -n "$PROFILE_TOP" ]; then
	echo "go tool pprof -top bench/results/ferry-h1.pprof (first 25 lines):"
	echo '```'
	echo "$PROFILE_TOP"
	echo '```'
fi
log "results written to bench/results/latest.md"
exit 0
}
