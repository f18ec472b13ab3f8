#!/usr/bin/env bash
# bench/instructions.sh: CPU instructions Ferry executes per proxied HTTP/1.1 request, counted
# by valgrind's callgrind, for a plain upstream and for the same upstream with retries, a
# circuit breaker, outlier detection and a health check configured (none of which fires on
# this happy path). Instruction counts repeat to ~0.2 % whatever else the machine does, so
# they resolve differences that wall-clock CPU time (±15 % on a shared machine) cannot.
# GC is switched off (GOGC=off) so that a collection landing in the window does not swamp
# the difference; allocation work is still counted. Go's async preemption is switched off
# because callgrind cannot deliver its signals.
#
# It also counts the cost of an access policy (issue 6): Ferry's plaintext inbound with no
# policy block against the same inbound with bench/policy-20-rules.yaml (20 access rules and
# a rate limit that never triggers), on GET /api/v1/orders/42 with "x-tenant: acme-corp".
#
# With a Jaeger all-in-one binary (.deps/bin, from make deps-jaeger) it also compares tracing
# off with tracing at sample ratios 0.01 and 1.0, exporting over OTLP gRPC to that Jaeger.
#
# Usage: bench/instructions.sh [N requests, default 4000]   (needs valgrind, nginx, h2load)
# IR_SUITES picks the tables (default "resilience policy tracing"); "plain" alone measures
# only the plain upstream, twice: the quick check while working on the proxy path.
set -euo pipefail
cd "$(dirname "$0")/.."
# One run at a time on this machine: the ports below are fixed, and a second run would
# measure the first one's Ferry.
exec 9>/tmp/ferry-instructions.lock
flock 9
N=${1:-4000}
SUITES=" ${IR_SUITES:-resilience policy tracing} "
for s in $SUITES; do
	[[ " plain resilience policy tracing " == *" $s "* ]] || { echo "IR_SUITES: unknown suite '$s' (plain, resilience, policy, tracing)" >&2; exit 2; }
done
FERRY=${FERRY_BIN:-bin/ferry}
work=$(mktemp -d /tmp/ferry-ir.XXXXXX)
pids=()
# cleanup: TERM first, so that nginx's master stops its worker (a SIGKILLed master leaves
# the worker running, still listening on the backend port), then KILL what is left.
cleanup() {
	local p i
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19501; location / { return 200 "Hello, world\n"; } } }
EOF
taskset -c 1 nginx -c "$work/nginx.conf" >/dev/null 2>&1 &
pids+=($!)

ha='retries: {attempts: 2, on: [connect-failure, reset, gateway-error], per_try_timeout: 2s, budget_percent: 20}, circuit_breaker: {max_connections: 1024, max_pending: 1024, max_requests: 1024}, outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}, health_check: {tcp: true, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}, '
for v in plain ha; do
	extra=
	[ $v = ha ] && extra=$ha
	cat >"$work/$v.yaml" <<EOF
service: bench
admin: {address: 127.0.0.1:19611}
outbound:
  - {upstream: backend, address: 127.0.0.1:19601}
upstreams:
  - {name: backend, endpoints: [127.0.0.1:19501], lb: round_robin, ${extra}protocol: auto}
EOF
done

for v in inbound inbound-policy; do
	{
		echo "service: api"
		echo "admin: {address: 127.0.0.1:19611}"
		echo "inbound: {address: 127.0.0.1:19602, target: 127.0.0.1:19501, protocol: http}"
		[ $v = inbound-policy ] && cat bench/policy-20-rules.yaml
	} >"$work/$v.yaml"
done

JAEGER=${JAEGER_BIN:-.deps/bin/jaeger-all-in-one}
tracing=0
if [ -x "$JAEGER" ] && [[ $SUITES == *" tracing "* ]]; then
	tracing=1
	j=127.0.0.1
	"$JAEGER" --admin.http.host-port=$j:19714 --collector.grpc-server.host-port=$j:19715 \
		--collector.http-server.host-port=$j:19716 --collector.otlp.grpc.host-port=$j:19717 \
		--collector.otlp.http.host-port=$j:19718 --http-server.host-port=$j:19719 \
		--processor.jaeger-binary.server-host-port=$j:19720 --processor.jaeger-compact.server-host-port=$j:19721 \
		--processor.zipkin-compact.server-host-port=$j:19722 --query.grpc-server.host-port=$j:19723 \
		--query.http-server.host-port=$j:19724 >"$work/jaeger.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do curl -fs http://$j:19724/api/services >/dev/null 2>&1 && break; sleep 0.2; done
	for r in 0.01 1.0; do
		sed "s/^outbound:/telemetry: {tracing: {otlp_endpoint: $j:19717, protocol: grpc, sample_ratio: $r}}\noutbound:/" \
			"$work/plain.yaml" >"$work/trace-$r.yaml"
	done
fi

# total PID: instructions executed so far by the process under callgrind. On a busy machine
# callgrind_control can time out and print nothing or only part of its answer, which would
# turn into a nonsense per-request figure, so ask again, and fail rather than report it.
total() {
	local i t out prev=0
	for i in 1 2 3 4 5 6; do
		# a timed-out answer may list only some threads: use only a complete one
		out=$(timeout 30 callgrind_control -e "$1" 2>/dev/null) || continue
		t=$(awk '/^ *Th /{gsub(",","",$3); s+=$3} END{printf "%d\n", s}' <<<"$out")
		[ -n "${IR_DEBUG:-}" ] && grep -E "^ *Th " <<<"$out" >&2
		((t > 0)) || continue
		# The process is idle between load runs, so two complete answers agree to well
		# under 0.1 %; an answer that missed a thread does not agree with the next one.
		if ((prev > 0 && (t - prev) * 1000 < prev && (prev - t) * 1000 < prev)); then
			echo "$t"
			return 0
		fi
		prev=$t
	done
	echo "callgrind_control gave no stable instruction count for pid $1" >&2
	return 1
}
# measure CONFIG [URL [h2load options...]]: instructions per request of Ferry on CONFIG
# for N requests to URL (default: the outbound listener).
measure() {
	local url=${2:-http://127.0.0.1:19601/}
	local -a opts=("${@:3}")
	GOGC=off GODEBUG=asyncpreemptoff=1 GOMAXPROCS=1 taskset -c 0 valgrind --tool=callgrind --vgdb=yes \
		--callgrind-out-file=/dev/null "$FERRY" run --config "$work/$1.yaml" >"$work/$1.log" 2>&1 &
	local vpid=$!
	pids+=($vpid)
	for _ in $(seq 300); do curl -fs 127.0.0.1:19611/ready >/dev/null 2>&1 && break; sleep 0.2; done
	h2load --h1 -n 500 -c 10 "${opts[@]}" "$url" >/dev/null 2>&1 # fill the pools
	sleep 1
	local a b
	a=$(total $vpid) || exit 1
	h2load --h1 -n "$N" -c 10 "${opts[@]}" "$url" >"$work/$1.h2load" 2>&1
	# every request must succeed with a 2xx: a 403 or 429 would mean the policy decided wrong
	grep -q "$N succeeded" "$work/$1.h2load" && grep -q "status codes: $N 2xx" "$work/$1.h2load" || { echo "load failed: $(tail -3 "$work/$1.log")" >&2; exit 1; }
	b=$(total $vpid) || exit 1
	((b > a)) || { echo "instruction count went from $a to $b" >&2; exit 1; }
	kill -9 $vpid
	wait $vpid 2>/dev/null || true
	echo $(((b - a) / N))
}
p1=$(measure plain)
[[ $SUITES == *" resilience "* ]] && h1=$(measure ha)
p2=$(measure plain)
echo "| config | instructions/request (run 1) | (run 2) |"
echo "|---|--:|--:|"
echo "| plain upstream | $p1 | $p2 |"
if [[ $SUITES == *" resilience "* ]]; then
	h2=$(measure ha)
	echo "| + retries, breaker, outlier detection, health check | $h1 | $h2 |"
	awk -v p=$((p1 + p2)) -v h=$((h1 + h2)) 'BEGIN {printf "\nresilience cost on the happy path: %+.1f %% instructions per request\n", (h - p) * 100 / p}'
fi
[[ $SUITES == *" policy "* ]] || [[ $SUITES == *" tracing "* ]] || exit 0
purl=http://127.0.0.1:19602/api/v1/orders/42
phdr=(-H "x-tenant: acme-corp")
[[ $SUITES == *" policy "* ]] && {
i1=$(measure inbound "$purl" "${phdr[@]}")
q1=$(measure inbound-policy "$purl" "${phdr[@]}")
i2=$(measure inbound "$purl" "${phdr[@]}")
q2=$(measure inbound-policy "$purl" "${phdr[@]}")
echo
echo "| inbound (plaintext) | instructions/request (run 1) | (run 2) |"
echo "|---|--:|--:|"
echo "| no policy | $i1 | $i2 |"
echo "| 20 access rules + rate limit (bench/policy-20-rules.yaml) | $q1 | $q2 |"
awk -v p=$((i1 + i2)) -v q=$((q1 + q2)) 'BEGIN {printf "\npolicy cost: %+.1f %% instructions per request\n", (q - p) * 100 / p}'
}
[[ $SUITES == *" tracing "* ]] || exit 0
if [ $tracing = 1 ]; then
	t1a=$(measure trace-0.01)
	t2a=$(measure trace-1.0)
	t1b=$(measure trace-0.01)
	t2b=$(measure trace-1.0)
	echo
	echo "| tracing | instructions/request (run 1) | (run 2) |"
	echo "|---|--:|--:|"
	echo "| off | $p1 | $p2 |"
	echo "| sample_ratio 0.01 | $t1a | $t1b |"
	echo "| sample_ratio 1.0 | $t2a | $t2b |"
	awk -v p=$((p1 + p2)) -v a=$((t1a + t1b)) -v b=$((t2a + t2b)) 'BEGIN {printf "\ntracing cost: %+.1f %% at 0.01, %+.1f %% at 1.0 (instructions per request; the exporter goroutines run inside the process and are counted)\n", (a - p) * 100 / p, (b - p) * 100 / p}'
else
	echo "(no $JAEGER: tracing not measured; make deps-jaeger builds it)"
fi
