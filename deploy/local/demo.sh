#!/usr/bin/env bash
# A local Weft mesh in one command: Consul (dev agent), weft-discovery, and
# demo services (web, users, users-v2, orders, orders-v2), each an app with its
# own weft-sidecar, registered in Consul the Consul Connect way, and the edge
# gateway `edge` on https://127.0.0.1:8443. Writes example routes into Consul
# KV, sends traffic through the sidecars and the gateway, prints what
# happened and where to look, then keeps running until Ctrl-C.
#
#   ./deploy/local/demo.sh          # runs until Ctrl-C
#   ./deploy/local/demo.sh --once   # prints the results and stops (used by CI-style checks)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
once=false; [[ "${1:-}" == "--once" ]] && once=true

need() { command -v "$1" >/dev/null || { echo "demo: $1 is required: $2" >&2; exit 1; }; }
need cargo "install Rust (https://rustup.rs) — Weft builds with cargo 1.88 or newer"
if ! command -v openssl >/dev/null; then
  { apt-get update && apt-get install -y openssl; } >/dev/null 2>&1 || need openssl "apt-get install -y openssl"
fi
if ! command -v curl >/dev/null; then
  { apt-get update && apt-get install -y curl; } >/dev/null 2>&1 || need curl "apt-get install -y curl"
fi

consul=$(./deploy/local/install-consul.sh)
echo "== building Weft (cargo build --bins)"
cargo build --quiet --bins
bin="$repo/target/debug"

demo="$repo/.demo"
rm -rf "$demo"; mkdir -p "$demo"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # URL what
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo: $2 did not become ready at $1; logs are in $demo" >&2; exit 1
}

CONSUL_HTTP=18500
echo "== starting Consul dev agent on 127.0.0.1:$CONSUL_HTTP ($("$consul" version | head -n1))"
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $CONSUL_HTTP -dns-port -1 -grpc-port -1 \
  -serf-lan-port 18301 -serf-wan-port 18302 -server-port 18300 >"$demo/consul.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  leader=$(curl -fsS "http://127.0.0.1:$CONSUL_HTTP/v1/status/leader" 2>/dev/null || true)
  [[ "$leader" == *:* ]] && break; sleep 0.1
done
export CONSUL_HTTP_ADDR="http://127.0.0.1:$CONSUL_HTTP"

# The mesh's CA and a join token per service: every hop between sidecars is
# mutual TLS with SPIFFE identities.
"$bin/weftctl" ca init --trust-domain demo.weft --out "$demo/ca" --force >/dev/null
declare -A tokens
for name in web users users-v2 orders orders-v2 edge; do
  tokens[$name]=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
done
{ echo "{"; first=true
  for name in "${!tokens[@]}"; do
    $first || echo ","; first=false
    printf '  "%s": "%s"' "$name" "${tokens[$name]}"
  done
  echo; echo "}"; } >"$demo/join-tokens.json"
chmod 600 "$demo/join-tokens.json"
echo "== made a CA for trust domain demo.weft ($demo/ca) and join tokens ($demo/join-tokens.json)"

echo "== starting weft-discovery (ADS 127.0.0.1:18010, admin 127.0.0.1:18011)"
"$bin/weft-discovery" --consul "$CONSUL_HTTP_ADDR" --listen 127.0.0.1:18010 --admin 127.0.0.1:18011 \
  --ca-dir "$demo/ca" --join-tokens "$demo/join-tokens.json" >"$demo/weft-discovery.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18011/readyz weft-discovery

# Traces: to your collector if OTEL_EXPORTER_OTLP_ENDPOINT is set (Jaeger's
# OTLP port, say), else to weft-trace-sink, which shows each trace as a tree.
if [[ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
  echo "== starting weft-trace-sink (OTLP 127.0.0.1:18317 gRPC, :18318 HTTP; traces at http://127.0.0.1:18316/traces/<id>)"
  "$bin/weft-trace-sink" --grpc 127.0.0.1:18317 --http 127.0.0.1:18318 --show 127.0.0.1:18316 >"$demo/trace-sink.log" 2>&1 &
  pids+=($!)
  export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc
  trace_sink=http://127.0.0.1:18316
  for _ in $(seq 1 100); do grep -q READY "$demo/trace-sink.log" 2>/dev/null && break; sleep 0.1; done
fi

# name app inbound outbound admin
services=(
  "web 18081 18601 18501 18701"
  "users 18082 18602 18502 18702"
  "users-v2 18083 18603 18503 18703"
  "orders 18084 18604 18504 18704"
  "orders-v2 18085 18605 18505 18705"
)
for line in "${services[@]}"; do
  read -r name app inbound outbound admin <<<"$line"
  # --outbound: the app calls onward (/call/<service>/...) through its
  # sidecar, forwarding the trace headers as a traced app does.
  "$bin/weft-testapp" --service "$name" --instance "$name-1" --listen "127.0.0.1:$app" \
    --outbound "127.0.0.1:$outbound" >"$demo/app-$name.log" 2>&1 &
  pids+=($!)
  WEFT_IDENTITY_TOKEN="${tokens[$name]}" \
  "$bin/weft-sidecar" --service "$name" --instance "$name-1" --discovery http://127.0.0.1:18010 \
    --inbound "127.0.0.1:$inbound" --app "127.0.0.1:$app" --outbound "127.0.0.1:$outbound" \
    --admin "127.0.0.1:$admin" >"$demo/sidecar-$name.log" 2>&1 &
  pids+=($!)
  cat >"$demo/register-$name.json" <<JSON
{ "service": {
    "name": "$name", "id": "$name-1", "address": "127.0.0.1", "port": $app,
    "check": { "name": "app answers", "http": "http://127.0.0.1:$app/health", "interval": "1s" },
    "connect": { "sidecar_service": {
        "port": $inbound,
        "check": { "name": "sidecar ready", "http": "http://127.0.0.1:$admin/ready", "interval": "1s" } } } } }
JSON
  "$consul" services register "$demo/register-$name.json" >/dev/null
done
echo "== registered web, users, users-v2, orders, orders-v2 in Consul, each with a Connect sidecar"

"$consul" kv put weft/routes/users @deploy/local/demo/routes-users.json >/dev/null
"$consul" kv put weft/routes/orders @deploy/local/demo/routes-orders.json >/dev/null
echo "== wrote weft/routes/users and weft/routes/orders into Consul KV"

# The edge gateway: its certificate (self-signed here; in production the
# files a certificate manager renews, or a certificates/<name> KV document),
# its listener and the public host's routes, all in KV.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=api.example.com" -addext "subjectAltName=DNS:api.example.com,DNS:localhost" \
  -keyout "$demo/edge.key" -out "$demo/edge.crt" 2>/dev/null
cat >"$demo/gateway-edge.json" <<JSON
{ "listeners": [
    { "name": "public", "address": "127.0.0.1", "port": 8443, "protocol": "https",
      "hosts": ["api.example.com", "localhost", "127.0.0.1"],
      "certificates": [ { "chain_file": "$demo/edge.crt", "private_key_file": "$demo/edge.key" } ] } ] }
JSON
"$consul" kv put weft/routes/api.example.com @deploy/local/demo/routes-api.example.com.json >/dev/null
"$consul" kv put weft/gateways/edge @"$demo/gateway-edge.json" >/dev/null
WEFT_IDENTITY_TOKEN="${tokens[edge]}" \
"$bin/weft-gateway" --service edge --instance edge-1 --discovery http://127.0.0.1:18010 \
  --admin 127.0.0.1:18709 >"$demo/gateway-edge.log" 2>&1 &
pids+=($!)
cat >"$demo/register-edge.json" <<JSON
{ "service": { "name": "edge", "id": "edge-1", "address": "127.0.0.1", "port": 8443,
    "check": { "name": "gateway ready", "http": "http://127.0.0.1:18709/ready", "interval": "1s" } } }
JSON
"$consul" services register "$demo/register-edge.json" >/dev/null
echo "== started the edge gateway (https://127.0.0.1:8443; wrote weft/gateways/edge and weft/routes/api.example.com)"

for line in "${services[@]}"; do
  read -r name _ _ _ admin <<<"$line"
  wait_http "http://127.0.0.1:$admin/ready" "sidecar of $name"
done
wait_http "http://127.0.0.1:18709/ready" "the edge gateway"

echo "== waiting for Consul's first health checks to pass (they run every second)"
for _ in $(seq 1 100); do
  [[ "$(curl -fsS "$CONSUL_HTTP_ADDR/v1/health/state/critical" 2>/dev/null)" == "[]" ]] && break; sleep 0.1
done
web_out=http://127.0.0.1:18501
# Wait until the routes from KV reached web's sidecar and users-v2 passes its
# first Consul health check (checks run every second).
for _ in $(seq 1 100); do
  answer=$(curl -s -H 'Host: users' -H 'x-api-version: v2' "$web_out/api/v1/users/42" || true)
  [[ "$answer" == *'"instance":"users-v2-1"'* ]] && break; sleep 0.1
done

# The instance that answered, from the test app's JSON echo (which ends without a newline).
served_by() { { cat; echo; } | sed -n 's/.*"instance":"\([^"]*\)".*/\1/p'; }
echo
echo "== traffic from web's sidecar (outbound $web_out)"
problems=()
echo "-- GET http://users/api/v1/users/42 (prefix route, rewritten to /42):"
answer=$(curl -sS -H 'Host: users' "$web_out/api/v1/users/42"); echo "$answer"
[[ "$answer" == *'"path":"/42"'* ]] || problems+=("the prefix route did not rewrite /api/v1/users/42 to /42")
echo "-- same with x-api-version: v2 (header route -> users-v2):"
answer=$(curl -sS -H 'Host: users' -H 'x-api-version: v2' "$web_out/api/v1/users/42" | served_by); echo "$answer"
[[ "$answer" == users-v2-1 ]] || problems+=("the header route did not reach users-v2")
echo "-- 200 requests to http://orders/ (90/10 split between orders and orders-v2):"
tally=$(for _ in $(seq 1 200); do curl -sS -H 'Host: orders' "$web_out/" | served_by; done | sort | uniq -c)
echo "$tally"
v1=$(awk '$2 == "orders-1" { print $1 }' <<<"$tally"); v2=$(awk '$2 == "orders-v2-1" { print $1 }' <<<"$tally")
(( ${v1:-0} + ${v2:-0} == 200 )) || problems+=("not every request to orders was answered")
(( ${v2:-0} >= 5 && ${v2:-0} <= 40 )) || problems+=("orders-v2 got ${v2:-0} of 200 requests, expected about 20")
echo "-- who called, as users' app sees it (the caller's SPIFFE ID from the mTLS handshake):"
answer=$(curl -sS -H 'Host: users' "$web_out/whoami"); echo "$answer" | grep -o '"x-weft-peer-identity":"[^"]*"' || true
[[ "$answer" == *'"x-weft-peer-identity":"spiffe://demo.weft/ns/default/svc/web"'* ]] \
  || problems+=("users' app did not see web's SPIFFE ID: the hop was not mutual TLS")
echo "-- plaintext straight to users' sidecar (127.0.0.1:18602), which accepts only mTLS:"
if answer=$(curl -sS --max-time 5 -H 'Host: users' http://127.0.0.1:18602/ 2>&1); then
  echo "$answer"; problems+=("users' inbound listener answered plaintext")
else
  echo "refused: no HTTP answer (curl: ${answer##*curl: })"
fi
echo "-- a chain web -> users -> orders; the apps forward the trace headers, so both hops are one trace:"
answer=$(curl -sS -H 'Host: users' "$web_out/call/orders/")
traces=$(grep -o '"traceparent":"[^"]*"' <<<"$answer" | cut -d- -f2 | sort -u)
echo "traceparent trace ids seen by users' and orders' apps: $(echo $traces)"
[[ -n "$traces" && $(wc -l <<<"$traces") == 1 && "$answer" == *'"downstream":{'* ]] \
  || problems+=("the chain web -> users -> orders was not one trace: $answer")
if [[ -n "${trace_sink:-}" && -n "$traces" ]]; then
  echo "-- that trace, as the sidecars exported it (4 spans: each hop's client and server side):"
  if tree=$(curl -fsS --max-time 15 "$trace_sink/traces/$traces?spans=4"); then
    echo "$tree"
  else
    problems+=("the chain's 4 spans did not reach the trace sink: $tree")
  fi
fi
echo
echo "== through the edge gateway (https://127.0.0.1:8443, its certificate self-signed: curl -k)"
edge=https://127.0.0.1:8443
echo "-- GET $edge/api/v1/users/42 (TLS, then mTLS into the mesh as edge):"
answer=$(curl -sSk "$edge/api/v1/users/42"); echo "$answer"
[[ "$answer" == *'"path":"/42"'* && "$answer" == *'"x-weft-peer-identity":"spiffe://demo.weft/ns/default/svc/edge"'* ]] \
  || problems+=("the gateway did not carry /api/v1/users/42 to users as edge")
echo "-- HTTP/2, negotiated by ALPN:"
answer=$(curl -sSk --http2 -o /dev/null -w '%{http_version}' "$edge/api/v1/orders/"); echo "HTTP/$answer"
[[ "$answer" == 2 ]] || problems+=("the gateway did not speak HTTP/2")
echo "-- a CORS preflight from https://app.example.com, answered by the gateway itself:"
answer=$(curl -sSk -D - -o /dev/null -X OPTIONS -H 'Origin: https://app.example.com' \
  -H 'Access-Control-Request-Method: PUT' "$edge/api/v1/users/42" | grep -i -E '^(HTTP|access-control-allow-origin)'); echo "$answer"
[[ "$answer" == *"204"*"https://app.example.com"* ]] || problems+=("the gateway did not answer the CORS preflight")
echo "-- gzip at the edge: a 6 KB answer (the app echoes the body it got), as sent and as received:"
body=$(head -c 6000 /dev/zero | tr '\0' 'x')
answer=$(curl -sSk -D - -o "$demo/gzipped.out" -H 'Accept-Encoding: gzip' -H 'Content-Type: text/plain' --data "$body" \
  "$edge/api/v1/users/echo" | grep -i -E '^(content-encoding|vary)'); echo "$answer"
echo "$(wc -c <"$demo/gzipped.out") bytes on the wire, $(gzip -dc <"$demo/gzipped.out" | wc -c) decoded"
[[ "$answer" == *"gzip"* ]] && gzip -dc <"$demo/gzipped.out" | grep -q "$body" \
  || problems+=("the gateway did not gzip a large answer")
echo "-- the response cache: the same GET twice (the route keeps answers 30 s):"
curl -sSk -o /dev/null "$edge/api/v1/orders/list" >/dev/null
answer=$(curl -sSk -D - -o /dev/null "$edge/api/v1/orders/list" | grep -i -E '^(x-cache|age):'); echo "$answer"
[[ "$answer" == *"HIT"* ]] || problems+=("the gateway did not answer the second GET from its cache")
echo "-- request validation: a new user without an email, and with a name that is not a string:"
answer=$(curl -sSk -w '\n%{http_code}' -H 'Content-Type: application/json' --data '{"name": 7}' "$edge/api/v1/users/"); echo "$answer"
[[ "$answer" == *"400"* && "$answer" == *"/name"* && "$answer" == *"email"* ]] \
  || problems+=("the gateway did not refuse an invalid body with each field named")
echo "-- a mesh service by its own name is no host of the gateway:"
answer=$(curl -sSk -D - -o /dev/null -H 'Host: users' "$edge/" | grep -i -E '^(HTTP|x-weft-error)'); echo "$answer"
[[ "$answer" == *"404"*"no-route"* ]] || problems+=("the gateway routed Host: users")
echo
echo "-- a host the mesh does not know:"
answer=$(curl -sS -D - -o /dev/null -H 'Host: nowhere' "$web_out/" | grep -i -E '^(HTTP|x-weft-error)'); echo "$answer"
[[ "$answer" == *"404"*"no-route"* ]] || problems+=("an unknown host did not get 404 no-route")
echo
cat <<TXT
== where to look
  Consul UI:            http://127.0.0.1:$CONSUL_HTTP/ui  (services, their Connect sidecars, KV weft/)
  agent status:         curl -s http://127.0.0.1:18011/status | jq   (or: $bin/weftctl status --admin http://127.0.0.1:18011)
  agent metrics:        curl -s http://127.0.0.1:18011/metrics
  service map:          http://127.0.0.1:18011/ui  (services, sidecars, live calls between services)
  web sidecar:          curl -s http://127.0.0.1:18701/clusters | jq ; curl -s http://127.0.0.1:18701/config_dump | jq
  web's identity:       curl -s http://127.0.0.1:18701/identity | jq
  the edge gateway:     curl -k https://127.0.0.1:8443/api/v1/users/7 ; curl -s http://127.0.0.1:18709/config_dump | jq .Gateway
  call through the mesh: curl -H 'Host: users' $web_out/api/v1/users/7
  change a route:       $consul kv put weft/routes/orders '{"routes":[{"match":{"path_prefix":"/"},"destination":"orders-v2"}]}'
  a trace:              curl -s ${trace_sink:-http://127.0.0.1:18316}/traces/<trace id>   (the id: 2nd field of the traceparent the apps echo)
  traces elsewhere:     set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318, Jaeger's OTLP/HTTP port) before
                        running this script and every sidecar sends its spans there; try curl -H 'Host: users' $web_out/call/orders/
  logs:                 $demo/
TXT
if (( ${#problems[@]} > 0 )); then
  printf 'demo: PROBLEM: %s\n' "${problems[@]}" >&2
  exit 1
fi
if $once; then exit 0; fi
echo "== the mesh keeps running; Ctrl-C stops it"
wait
