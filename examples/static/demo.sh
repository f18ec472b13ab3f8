#!/usr/bin/env bash
# make demo: a small local mesh with static discovery.
#
#   curl → web sidecar (inbound :21000) → web app (:8080)
#          web app → web sidecar (outbound :9191) → api-N sidecar (inbound :2100N) → api-N app (:808N)
#
# Every hop between sidecars is mutual TLS: demo.sh makes a development CA with
# `ferry ca create` and issues one certificate per service with `ferry ca issue` into its
# temporary directory, where the sidecars run (their configs read ./demo-certs). The api
# instances accept mTLS only; web also accepts plaintext (permissive) so that curl can
# call it from outside the mesh.
#
# Four real Ferry processes and four application processes on 127.0.0.1. It sends a few
# calls, shows how they were balanced and what the admin endpoints say, then keeps the mesh
# running until Ctrl-C (or exits at once when DEMO_WAIT=0 or stdin is not a terminal).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
FERRY=$(realpath "${FERRY:-bin/ferry}")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

go build -o "$work/backend" ./examples/static/backend
for p in 8080 8081 8082 8083 9191 9901 9902 9903 9904 21000 21001 21002 21003; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; stop what runs there and try again" >&2; exit 1
  fi
done

echo "== development CA and certificates (ferry ca) in $work/demo-certs"
"$FERRY" ca create --dir "$work/demo-certs"
for svc in web api; do "$FERRY" ca issue --dir "$work/demo-certs" --service "$svc"; done
echo

"$work/backend" -listen 127.0.0.1:8080 -name web -upstream http://127.0.0.1:9191 & pids+=($!)
for i in 1 2 3; do
  "$work/backend" -listen 127.0.0.1:808$i -name api-$i & pids+=($!)
  (cd "$work" && exec "$FERRY" run --config "$repo/examples/static/api-$i.yaml") >"$work/ferry-api-$i.log" 2>&1 & pids+=($!)
done
cp "$repo/examples/static/web.yaml" "$work/web.yaml" # the demo edits and reloads it below
(cd "$work" && exec "$FERRY" run --config "$work/web.yaml") >"$work/access.log" 2>"$work/ferry-web.log" & pids+=($!)
web_pid=$!

for port in 9901 9902 9903 9904; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { echo "sidecar with admin :$port not ready"; cat "$work"/ferry-*.log; exit 1; }
done
echo "== mesh is up: 4 Ferry sidecars, web + 3 api instances"
echo
echo "== 12 calls: curl → web's sidecar → web → web's sidecar → an api sidecar → api"
for i in $(seq 12); do
  curl -fsS "http://127.0.0.1:21000/call" | tee -a "$work/answers"
done
echo
echo "== the caller's SPIFFE ID each api instance saw (X-Forwarded-Client-Cert, set by its sidecar):"
grep -o 'caller [^ )]*' "$work/answers" | sort | uniq -c
echo
echo "== a plaintext call straight to api-1's sidecar is refused (mTLS only):"
curl -s -D - -o /dev/null http://127.0.0.1:21001/hello | tr -d '\r' | grep -iE '^(HTTP/|proxy-status)' || true
echo
echo "== web sidecar /certs (its own certificate):"
curl -fs http://127.0.0.1:9901/certs | grep -m1 -E '"spiffe_id"'
curl -fs http://127.0.0.1:9901/certs | grep -m1 -E '"not_after"'
curl -fs http://127.0.0.1:9901/certs | grep -m1 -E '"seconds_to_expiry"'
echo
echo "== how web's sidecar balanced them (least_request):"
grep -o 'hello from api-[0-9]' "$work/answers" | sort | uniq -c
echo
echo "== web sidecar /clusters (api upstream):"
curl -fs http://127.0.0.1:9901/clusters | sed -n '/"name": "api"/,/^    }/p' | grep -E '"(address|total_requests)"'
echo
echo "== stop api-2's sidecar: a call that picks it gets a 503 made by Ferry, which says why"
kill -TERM "${pids[4]}"; sleep 0.5
for i in $(seq 20); do
  hdr=$(curl -s -D - -o /dev/null http://127.0.0.1:9191/hello | tr -d '\r')
  if grep -q '^HTTP/1.1 503' <<<"$hdr"; then grep -iE '^(HTTP/|proxy-status)' <<<"$hdr"; break; fi
done
echo
echo "== add retries and outlier detection to web's api upstream and reload (SIGHUP): calls route around it"
sed -i 's/^    request_timeout: 5s$/&\n    retries: {attempts: 2, on: [connect-failure, gateway-error]}\n    outlier_detection: {consecutive_gateway_failure: 2, max_ejection_percent: 50}/' "$work/web.yaml"
grep -E '^    (retries|outlier_detection):' "$work/web.yaml"
kill -HUP "$web_pid"; sleep 0.5
fails=0
for _ in $(seq 30); do curl -fs -o /dev/null http://127.0.0.1:9191/hello || fails=$((fails+1)); done
echo "   30 calls after the reload: $fails failed"
curl -fs http://127.0.0.1:9901/clusters | grep -E '"(outlier|reason)"' | sort | uniq -c | head -4
echo
echo "== last access-log line of web's sidecar:"
tail -n 1 "$work/access.log"
echo
echo "Admin pages: http://127.0.0.1:9901/ (status), /clusters, /certs, /config_dump, /metrics"
if [ "${DEMO_WAIT:-1}" != 0 ] && [ -t 0 ]; then
  echo "The mesh keeps running; press Ctrl-C to stop it."
  while sleep 3600; do :; done
fi
