#!/usr/bin/env bash
# examples/consul/run.sh: a small mesh discovered through a real Consul dev agent.
#
#   curl → web sidecar (inbound :21000) → web app (:8080)
#          web app → web sidecar (outbound :9191) → [Consul: api's connect-proxies] →
#          api-N sidecar (inbound :2100N) → api-N app (:808N)
#
# One `consul agent -dev` (built by `make deps-consul` into .deps/bin/consul) on
# 127.0.0.1:18500, two services (web, and api with two instances), each instance with a
# Ferry sidecar that registers the app and itself (kind connect-proxy) in Consul. web's
# sidecar discovers api through blocking queries. Sidecars talk mTLS with certificates from
# Consul Connect's CA, and api's sidecars enforce Consul intentions: the script writes an
# L7 intention that lets web call api except on /admin, sends calls (one to /admin, denied
# by api's sidecar), stops one api sidecar (it deregisters first, so no call fails), shows
# the catalog, the certificates and /clusters, then keeps the mesh up until Ctrl-C (or
# exits at once when DEMO_WAIT=0 or stdin is not a terminal).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
make -s build deps-consul
FERRY=$(realpath "${FERRY:-bin/ferry}")
CONSUL=$(realpath "${CONSUL:-.deps/bin/consul}")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for p in 8080 8081 8082 9191 9901 9902 9903 21000 21001 21002 18500 18300 18301 18302; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; stop what runs there and try again" >&2; exit 1
  fi
done
go build -o "$work/backend" ./examples/static/backend

echo "== consul agent -dev on 127.0.0.1:18500"
env -u CONSUL_HTTP_ADDR -u CONSUL_HTTP_TOKEN "$CONSUL" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -node ferry-demo \
  -http-port 18500 -server-port 18300 -serf-lan-port 18301 -serf-wan-port 18302 \
  -dns-port -1 -grpc-port -1 -grpc-tls-port -1 >"$work/consul.log" 2>&1 & pids+=($!)
for _ in $(seq 150); do
  [ "$(curl -fs http://127.0.0.1:18500/v1/status/leader 2>/dev/null)" != "" ] && \
    [ "$(curl -fs http://127.0.0.1:18500/v1/status/leader)" != '""' ] && break
  sleep 0.1
done
curl -fs http://127.0.0.1:18500/v1/status/leader >/dev/null || { echo "consul did not start"; cat "$work/consul.log"; exit 1; }
export CONSUL_HTTP_ADDR=127.0.0.1:18500

echo "== intentions for api (L7 intentions need the service's protocol: service-defaults http)"
curl -fsS -X PUT http://127.0.0.1:18500/v1/config -d '{"Kind": "service-defaults", "Name": "api", "Protocol": "http"}' >/dev/null
curl -fsS -X PUT http://127.0.0.1:18500/v1/config -d '{
  "Kind": "service-intentions", "Name": "api",
  "Sources": [
    {"Name": "web", "Permissions": [
      {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
      {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
    {"Name": "*", "Action": "deny"}]}' >/dev/null
curl -fsS http://127.0.0.1:18500/v1/config/service-intentions/api | tr -d ' \n' | grep -oE '"Sources":\[.*\]' | head -c 400; echo

"$work/backend" -listen 127.0.0.1:8080 -name web -upstream http://127.0.0.1:9191 & pids+=($!)
api_ferry=()
for i in 1 2; do
  "$work/backend" -listen 127.0.0.1:808$i -name api-$i & pids+=($!)
  "$FERRY" run --config "$repo/examples/consul/api-$i.yaml" >"$work/ferry-api-$i.log" 2>&1 & pids+=($!); api_ferry+=($!)
done
"$FERRY" run --config "$repo/examples/consul/web.yaml" >"$work/access.log" 2>"$work/ferry-web.log" & pids+=($!)

for port in 9901 9902 9903; do
  for _ in $(seq 150); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { echo "sidecar with admin :$port not ready"; cat "$work"/ferry-*.log; exit 1; }
done
echo "== waiting until Consul's checks pass and web's sidecar sees both api sidecars"
for _ in $(seq 200); do
  n=$(curl -fs http://127.0.0.1:9901/clusters | grep -c '"address": "127.0.0.1:2100[12]"' || true)
  [ "$n" = 2 ] && break
  sleep 0.1
done
echo
echo "== the Consul catalog (services registered by the sidecars):"
curl -fs http://127.0.0.1:18500/v1/catalog/services; echo
echo "== api's connect-proxies that pass their checks (what web's sidecar balances over):"
curl -fs 'http://127.0.0.1:18500/v1/health/connect/api?passing=1' | grep -oE '"ID": ?"api-[0-9]-sidecar-proxy"' | sort -u || true
echo
echo "== 8 calls: curl → web's sidecar → web → web's sidecar =mTLS=> an api sidecar (found in Consul) → api"
for _ in $(seq 8); do curl -fsS http://127.0.0.1:21000/call; done
echo
echo "== a call to api's /admin: the intention denies it at api's sidecar, the api app never sees it"
curl -fsS http://127.0.0.1:21000/call/admin/users; echo
echo
echo "== certificates from Consul Connect's CA (api-1's sidecar /certs):"
curl -fs http://127.0.0.1:9902/certs | grep -oE '"(source|spiffe_id|not_after)": ?"[^"]*"' | sort -u
echo
echo "== api-2's sidecar drains (SIGTERM): it deregisters from Consul before its listener closes"
kill -TERM "${api_ferry[1]}"
fails=0
for _ in $(seq 20); do curl -fsS -o /dev/null http://127.0.0.1:21000/call || fails=$((fails+1)); sleep 0.1; done
echo "   20 calls during the drain: $fails failed"
for _ in $(seq 8); do curl -fsS http://127.0.0.1:21000/call; done
echo
echo "== web sidecar /clusters, upstream api (discovery state and endpoints):"
curl -fs http://127.0.0.1:9901/clusters | sed -n '/"name": "api"/,/"endpoints"/p' | grep -E '"(source|service|ready|last_contact|stale_since|stale_seconds)"'
echo
echo "== discovery metrics:"
curl -fs http://127.0.0.1:9901/metrics | grep -E '^ferry_(discovery|consul)_' || true
echo
if [ "${DEMO_WAIT:-1}" != 0 ] && [ -t 0 ]; then
  echo "mesh running: Consul UI at http://127.0.0.1:18500/ui, web at http://127.0.0.1:21000/call; Ctrl-C to stop"
  wait
fi
