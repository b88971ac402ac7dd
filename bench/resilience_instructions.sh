#!/usr/bin/env bash
# What issue 4's caller-side layers cost per request, in user-space
# instructions (callgrind: immune to this VM's timing noise). One caller
# sidecar, configured by a real weft-discovery agent (file backend), one
# runtime thread, under callgrind; its outbound listener reaches a local
# nginx (100-byte body) as two destinations:
#   res-nothing  no resilience settings (the foundation's path);
#   res-all-on   a breaker, outlier detection, retries with a budget and
#                max_retries, and a local per-client-IP rate limit far above
#                the load: every layer decides on every request, none trips.
# For each: 5,000 warm-up requests, counters zeroed, 20,000 requests from
# `oha -c 10`, instructions per request. The difference is what the layers
# cost when configured; res-breaker, res-outlier, res-retries and
# res-ratelim have one feature each, to say which costs what. Profiles
# stay in the work dir for callgrind_annotate.
#
#   bench/resilience_instructions.sh [target/release]
#
# Needs: valgrind nginx (apt-get install -y valgrind nginx), oha (cargo install oha --locked).
set -euo pipefail
rel=$(realpath "${1:-target/release}")
. "$(dirname "$0")/callgrind-prereqs.sh"
require_callgrind_tools "$rel"
work=$(mktemp -d /tmp/weft-res-instructions.XXXXXX)
up_port=19580; agent_port=19581; agent_admin=19582; out_port=19583; in_port=19584; admin_port=19585
warmup=5000; requests=20000
. "$(dirname "$0")/upstream-nginx.sh"
write_upstream_conf "$work" "$up_port"
mkdir -p "$work/config/destinations"
# Each destination is nginx; res-all-on has the settings of
# bench/mesh.py --resilience, the others one feature of it each. The names
# have one length: the Host header's length alone moves the count by a
# few hundred instructions (parsing, hashing the route lookup).
declare -A docs=(
  [res-breaker]='{ "breaker": { "consecutive_failures": 5, "failure_ratio": 0.5, "min_requests": 20 } }'
  [res-outlier]='{ "outlier_detection": { "consecutive_5xx": 5 } }'
  [res-retries]='{ "retries": { "max_attempts": 2, "retry_on": ["gateway-error", "connect-failure", "reset"], "budget": { "ratio": 0.2, "min_retries_per_second": 10 } }, "circuit_breakers": { "max_retries": 100 } }'
  [res-ratelim]='{ "rate_limits": { "limits": [ { "name": "per-ip", "key": "client_ip", "local": { "requests": 10000000, "per": "1s", "burst": 10000000 } } ] } }'
  [res-all-on]='{ "retries": { "max_attempts": 2, "retry_on": ["gateway-error", "connect-failure", "reset"], "budget": { "ratio": 0.2, "min_retries_per_second": 10 } },
    "circuit_breakers": { "max_retries": 100 },
    "breaker": { "consecutive_failures": 5, "failure_ratio": 0.5, "min_requests": 20 },
    "outlier_detection": { "consecutive_5xx": 5 },
    "rate_limits": { "limits": [ { "name": "per-ip", "key": "client_ip", "local": { "requests": 10000000, "per": "1s", "burst": 10000000 } } ] } }'
)
hosts=(res-nothing res-breaker res-outlier res-retries res-ratelim res-all-on)
echo "services:" > "$work/config/endpoints.yaml"
for host in "${hosts[@]}"; do
  printf '  %s:\n    - { address: 127.0.0.1, port: %s }\n' "$host" "$up_port" >> "$work/config/endpoints.yaml"
  [[ -n ${docs[$host]:-} ]] && echo "${docs[$host]}" > "$work/config/destinations/$host.json"
done
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$nginx_bin" -p "$work" -c "$work/up.conf" -e "$work/up.err" & pids+=($!)
"$rel/weft-discovery" --config-dir "$work/config" --listen "127.0.0.1:$agent_port" \
  --admin "127.0.0.1:$agent_admin" >"$work/agent.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$agent_admin/readyz" && break; sleep 0.1; done
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$rel/weft-sidecar" --service client --discovery "http://127.0.0.1:$agent_port" \
  --inbound "127.0.0.1:$in_port" --app 127.0.0.1:9 --outbound "127.0.0.1:$out_port" \
  --admin "127.0.0.1:$admin_port" >"$work/sidecar.log" 2>&1 & sidecar=$!; pids+=($sidecar)
for host in "${hosts[@]}"; do
  for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:$out_port/") == 200 ]] && break
    sleep 0.2
  done
done
dumps=0
declare -A per
for host in "${hosts[@]}"; do
  oha -n "$warmup" -c 10 --no-tui -H "Host: $host" "http://127.0.0.1:$out_port/" >/dev/null
  callgrind_control -z "$sidecar" >/dev/null 2>&1
  oha -n "$requests" -c 10 --no-tui -H "Host: $host" "http://127.0.0.1:$out_port/" >"$work/oha-$host.txt"
  callgrind_control -d "$sidecar" >/dev/null 2>&1
  dumps=$((dumps + 1))
  for _ in $(seq 100); do [[ -s $work/callgrind.out.$dumps ]] && break; sleep 0.1; done
  cp "$work/callgrind.out.$dumps" "$work/$host.callgrind"
  grep -q 'Success rate:\s*100' "$work/oha-$host.txt" || { echo "requests to $host failed: $work/oha-$host.txt" >&2; exit 1; }
  total=$(callgrind_annotate "$work/$host.callgrind" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  per[$host]=$((total / requests))
  awk -v h="$host" -v a="${per[res-nothing]}" -v b="${per[$host]}" \
    'BEGIN { printf "%-16s %6d instructions per request  %+6d (%+.1f %%)\n", h, b, b - a, (b - a) * 100 / a }'
done
echo "profiles: $work/<destination>.callgrind"
