#!/usr/bin/env bash
# examples/tracing/run.sh: three services in a chain, each with a Ferry sidecar, traced in
# Jaeger.
#
#   curl → frontend sidecar (:22000) → frontend app (:28080)
#          frontend app → frontend sidecar (outbound :29191) → middle sidecar (:22001) → middle app (:28081)
#          middle app   → middle sidecar (outbound :29192)   → backend sidecar (:22002) → backend app (:28082)
#
# It starts Jaeger all-in-one (.deps/bin/jaeger-all-in-one, built by `make deps-jaeger`;
# every listener on 127.0.0.1, in-memory storage), the three applications and their
# sidecars, sends traffic, and prints the Jaeger UI link and a trace ID. The mesh keeps
# running until Ctrl-C (or the script exits at once when DEMO_WAIT=0 or stdin is not a
# terminal).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

JAEGER=${JAEGER:-.deps/bin/jaeger-all-in-one}
if [ ! -x "$JAEGER" ]; then
  echo "== building Jaeger all-in-one (make deps-jaeger)"
  make deps-jaeger
fi
if [ -n "${FERRY:-}" ]; then
  cp "$FERRY" "$work/ferry"
else
  go build -o "$work/ferry" ./cmd/ferry
fi
go build -o "$work/backend" ./examples/static/backend

ports=(22000 22001 22002 28080 28081 28082 29191 29192 29901 29902 29903
       24250 24268 24269 24317 24318 25775 25778 26685 26686 26831 26832)
for p in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; stop what runs there and try again" >&2; exit 1
  fi
done

echo "== starting Jaeger (UI and query API on http://127.0.0.1:26686)"
env SPAN_STORAGE_TYPE=memory OTEL_TRACES_SAMPLER=always_off \
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:24317 \
  "$JAEGER" \
  --admin.http.host-port=127.0.0.1:24269 \
  --collector.grpc-server.host-port=127.0.0.1:24250 \
  --collector.http-server.host-port=127.0.0.1:24268 \
  --collector.otlp.grpc.host-port=127.0.0.1:24317 \
  --collector.otlp.http.host-port=127.0.0.1:24318 \
  --http-server.host-port=127.0.0.1:25778 \
  --processor.jaeger-binary.server-host-port=127.0.0.1:26832 \
  --processor.jaeger-compact.server-host-port=127.0.0.1:26831 \
  --processor.zipkin-compact.server-host-port=127.0.0.1:25775 \
  --query.grpc-server.host-port=127.0.0.1:26685 \
  --query.http-server.host-port=127.0.0.1:26686 \
  >"$work/jaeger.log" 2>&1 & pids+=($!)
for _ in $(seq 300); do
  curl -fs http://127.0.0.1:26686/api/services >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs http://127.0.0.1:26686/api/services >/dev/null || { echo "Jaeger did not start:"; tail -n 30 "$work/jaeger.log"; exit 1; }

echo "== starting three applications, each with a Ferry sidecar"
"$work/backend" -listen 127.0.0.1:28080 -name frontend -upstream http://127.0.0.1:29191 -upstream-path /call & pids+=($!)
"$work/backend" -listen 127.0.0.1:28081 -name middle -upstream http://127.0.0.1:29192 & pids+=($!)
"$work/backend" -listen 127.0.0.1:28082 -name backend & pids+=($!)
for svc in frontend middle backend; do
  "$work/ferry" run --config "examples/tracing/$svc.yaml" >"$work/access-$svc.log" 2>"$work/ferry-$svc.log" & pids+=($!)
done
for port in 29901 29902 29903; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { echo "sidecar with admin :$port not ready"; cat "$work"/ferry-*.log; exit 1; }
done

echo "== 10 calls: curl → frontend → middle → backend, each hop through two sidecars"
for i in $(seq 10); do
  curl -fsS http://127.0.0.1:22000/call
done
# One more call that starts the trace itself, so we know its ID.
trace_id=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
span_id=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
curl -fsS -H "traceparent: 00-$trace_id-$span_id-01" http://127.0.0.1:22000/call

echo
echo "== waiting for the trace in Jaeger"
spans=0
for _ in $(seq 100); do
  spans=$(curl -fs "http://127.0.0.1:26686/api/traces/$trace_id" 2>/dev/null | grep -o '"operationName"' | wc -l || true)
  [ "$spans" -ge 7 ] && break
  sleep 0.1
done
echo "trace $trace_id has $spans spans (7 expected: a server span for each of the three"
echo "inbound hops, and a server and a client span for each of the two outbound hops)"
echo
echo "== the frontend sidecar's access-log line for it:"
grep "$trace_id" "$work/access-frontend.log" | tail -n 1
echo
echo "== span export counters of the frontend sidecar:"
curl -fs http://127.0.0.1:29901/metrics | grep '^ferry_trace_spans' || true
echo
echo "Jaeger UI:  http://127.0.0.1:26686/search?service=frontend"
echo "This trace: http://127.0.0.1:26686/trace/$trace_id"
echo "Trace ID:   $trace_id"
if [ "${DEMO_WAIT:-1}" != 0 ] && [ -t 0 ]; then
  echo "The mesh keeps running; press Ctrl-C to stop it."
  while sleep 3600; do :; done
fi
