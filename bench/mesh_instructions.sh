#!/usr/bin/env bash
# User-space instructions per request on both sides of a mesh hop, in
# plaintext and over mutual TLS (callgrind: immune to this VM's timing
# noise). A weft-discovery agent (file backend, its own CA, join tokens)
# configures four sidecars, one runtime thread each, all under callgrind:
#   client -> bench          plaintext between the sidecars;
#   client-tls -> bench-tls  mutual TLS (SPIFFE identities, HTTP/2 tunnel).
# The callees' app is a local nginx (100-byte body). For each pair: 5,000
# warm-up requests through the caller's outbound listener, both counters
# zeroed, 20,000 requests from `oha -c 10`, both profiles dumped. Prints
# four numbers: outbound (the caller) and inbound (the callee), plaintext
# and mTLS. Profiles stay in the work dir for callgrind_annotate.
#
#   bench/mesh_instructions.sh [target/release]
#
# Needs: valgrind nginx (apt-get install -y valgrind nginx), oha (cargo install oha --locked).
set -euo pipefail
rel=$(realpath "${1:-target/release}")
. "$(dirname "$0")/callgrind-prereqs.sh"
require_callgrind_tools "$rel"
[[ -x $rel/weftctl ]] || { echo "missing $rel/weftctl: cargo build --release -p weft-discovery" >&2; exit 2; }
work=$(mktemp -d /tmp/weft-mesh-instructions.XXXXXX)
up_port=19680; agent_port=19681; agent_admin=19682
warmup=5000; requests=20000
. "$(dirname "$0")/upstream-nginx.sh"
write_upstream_conf "$work" "$up_port"
# Sidecar ports: inbound, outbound, admin.
declare -A inbound=([client]=19690 [bench]=19691 [client-tls]=19692 [bench-tls]=19693)
declare -A outbound=([client]=19700 [bench]=19701 [client-tls]=19702 [bench-tls]=19703)
declare -A admin=([client]=19710 [bench]=19711 [client-tls]=19712 [bench-tls]=19713)
mkdir -p "$work/config"
cat > "$work/config/endpoints.yaml" <<EOF
services:
  bench:
    - { address: 127.0.0.1, port: ${inbound[bench]}, meshed: true }
  bench-tls:
    - { address: 127.0.0.1, port: ${inbound[bench-tls]}, meshed: true }
EOF
"$rel/weftctl" ca init --trust-domain bench.weft --out "$work/ca" --force >/dev/null
token_tls_client=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
token_tls_bench=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '{ "client-tls": "%s", "bench-tls": "%s" }\n' "$token_tls_client" "$token_tls_bench" > "$work/join-tokens.json"
pids=()
# Wait for them too: a run started right after this one reuses the ports.
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$nginx_bin" -p "$work" -c "$work/up.conf" -e "$work/up.err" & pids+=($!)
"$rel/weft-discovery" --config-dir "$work/config" --listen "127.0.0.1:$agent_port" \
  --admin "127.0.0.1:$agent_admin" --ca-dir "$work/ca" --join-tokens "$work/join-tokens.json" \
  >"$work/agent.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$agent_admin/readyz" && break; sleep 0.1; done

declare -A pid_of
start_sidecar() { # service app [token]
  local service=$1 app=$2 token=${3:-}
  # A plaintext sidecar gets no identity token at all: the sidecar refuses an
  # empty one.
  env ${token:+WEFT_IDENTITY_TOKEN=$token} TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind \
    --callgrind-out-file="$work/$service.callgrind.out" \
    "$rel/weft-sidecar" --service "$service" --discovery "http://127.0.0.1:$agent_port" \
    --inbound "127.0.0.1:${inbound[$service]}" --app "$app" \
    --outbound "127.0.0.1:${outbound[$service]}" --admin "127.0.0.1:${admin[$service]}" \
    >"$work/sidecar-$service.log" 2>&1 &
  pid_of[$service]=$!; pids+=($!)
}
start_sidecar client 127.0.0.1:9
start_sidecar bench "127.0.0.1:$up_port"
start_sidecar client-tls 127.0.0.1:9 "$token_tls_client"
start_sidecar bench-tls "127.0.0.1:$up_port" "$token_tls_bench"
for service in client bench client-tls bench-tls; do
  for _ in $(seq 600); do curl -fs -o /dev/null "http://127.0.0.1:${admin[$service]}/ready" && break; sleep 0.2; done
  curl -fs -o /dev/null "http://127.0.0.1:${admin[$service]}/ready" || { echo "sidecar $service never ready: $work/sidecar-$service.log" >&2; exit 1; }
done

per_request() { # profile
  local total
  total=$(callgrind_annotate "$1" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo $((total / requests))
}
declare -A dumps=([client]=0 [bench]=0 [client-tls]=0 [bench-tls]=0)
dump() { # service -> path of its new profile
  local service=$1 path
  callgrind_control -d "${pid_of[$service]}" >/dev/null 2>&1
  dumps[$service]=$((dumps[$service] + 1))
  path="$work/$service.callgrind.out.${dumps[$service]}"
  for _ in $(seq 100); do [[ -s $path ]] && break; sleep 0.1; done
  echo "$path"
}
measure() { # label caller callee host
  local label=$1 caller=$2 callee=$3 host=$4 url out in
  url="http://127.0.0.1:${outbound[$caller]}/"
  for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "$url") == 200 ]] && break
    sleep 0.2
  done
  oha -n "$warmup" -c 10 --no-tui -H "Host: $host" "$url" >/dev/null
  callgrind_control -z "${pid_of[$caller]}" >/dev/null 2>&1
  callgrind_control -z "${pid_of[$callee]}" >/dev/null 2>&1
  oha -n "$requests" -c 10 --no-tui -H "Host: $host" "$url" >"$work/oha-$label.txt"
  grep -q 'Success rate:\s*100' "$work/oha-$label.txt" || { echo "requests of $label failed: $work/oha-$label.txt" >&2; exit 1; }
  out=$(dump "$caller"); in=$(dump "$callee")
  cp "$out" "$work/$label-outbound.callgrind"; cp "$in" "$work/$label-inbound.callgrind"
  printf '%-10s outbound %6d  inbound %6d instructions per request\n' "$label" \
    "$(per_request "$out")" "$(per_request "$in")"
}
measure plaintext client bench bench
measure mtls client-tls bench-tls bench-tls
echo "profiles: $work/<plaintext|mtls>-<outbound|inbound>.callgrind"
