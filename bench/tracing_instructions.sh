#!/usr/bin/env bash
# What tracing costs per request on the caller sidecar, in user-space
# instructions (callgrind: immune to this VM's timing noise). One caller
# sidecar configured by a real weft-discovery agent (file backend), one
# runtime thread, under callgrind, its outbound listener reaching a local
# nginx (100-byte body); requests carry no trace context, so the sidecar
# starts every trace. Three runs of the same sidecar:
#   off          no OTLP endpoint: propagation only (a traceparent is
#                still written into every request);
#   sampled-100  --trace-sampling 1: a CLIENT span per request, exported
#                over OTLP/HTTP to a second nginx that accepts them;
#   sampled-1    --trace-sampling 0.01: one request in a hundred.
# For each: 5,000 warm-up requests, counters zeroed, 20,000 requests from
# `oha -c 10`, instructions per request (the export task included: it runs
# on the same thread). Profiles stay in the work dir for callgrind_annotate.
#
#   bench/tracing_instructions.sh [target/release]
#
# Needs: valgrind nginx (apt-get install -y valgrind nginx), oha (cargo install oha --locked).
set -euo pipefail
rel=$(realpath "${1:-target/release}")
. "$(dirname "$0")/callgrind-prereqs.sh"
require_callgrind_tools "$rel"
work=$(mktemp -d /tmp/weft-trace-instructions.XXXXXX)
up_port=19680; agent_port=19681; agent_admin=19682; out_port=19683; in_port=19684; admin_port=19685
collector_port=19686
warmup=5000; requests=20000
. "$(dirname "$0")/upstream-nginx.sh"
write_upstream_conf "$work" "$up_port"
# The collector: accepts every OTLP/HTTP export (an empty answer is an
# empty ExportTraceServiceResponse).
mkdir -p "$work/collector"
cat > "$work/collector.conf" <<CONF
worker_processes 1; daemon off; pid $work/collector.pid; error_log $work/collector.err warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work/collector; client_max_body_size 64m;
  server { listen 127.0.0.1:$collector_port;
    location /v1/traces { default_type application/x-protobuf; return 200; } } }
CONF
mkdir -p "$work/config"
printf 'services:\n  traced:\n    - { address: 127.0.0.1, port: %s }\n' "$up_port" > "$work/config/endpoints.yaml"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$nginx_bin" -p "$work" -c "$work/up.conf" -e "$work/up.err" & pids+=($!)
"$nginx_bin" -p "$work" -c "$work/collector.conf" -e "$work/collector.err" & pids+=($!)
"$rel/weft-discovery" --config-dir "$work/config" --listen "127.0.0.1:$agent_port" \
  --admin "127.0.0.1:$agent_admin" >"$work/agent.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$agent_admin/readyz" && break; sleep 0.1; done
declare -A per
modes=(off sampled-100 sampled-1)
for mode in "${modes[@]}"; do
  case $mode in
    off) tracing=() ;;
    sampled-100) tracing=(--otlp-endpoint "http://127.0.0.1:$collector_port" --otlp-protocol http/protobuf --trace-sampling 1) ;;
    sampled-1) tracing=(--otlp-endpoint "http://127.0.0.1:$collector_port" --otlp-protocol http/protobuf --trace-sampling 0.01) ;;
  esac
  TOKIO_WORKER_THREADS=1 OTEL_BSP_SCHEDULE_DELAY=1000 valgrind --tool=callgrind --callgrind-out-file="$work/callgrind-$mode.out" \
    "$rel/weft-sidecar" --service client --discovery "http://127.0.0.1:$agent_port" \
    --inbound "127.0.0.1:$in_port" --app 127.0.0.1:9 --outbound "127.0.0.1:$out_port" \
    --admin "127.0.0.1:$admin_port" "${tracing[@]}" >"$work/sidecar-$mode.log" 2>&1 & sidecar=$!
  for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: traced" "http://127.0.0.1:$out_port/") == 200 ]] && break
    sleep 0.2
  done
  oha -n "$warmup" -c 10 --no-tui -H "Host: traced" "http://127.0.0.1:$out_port/" >/dev/null
  callgrind_control -z "$sidecar" >/dev/null 2>&1
  oha -n "$requests" -c 10 --no-tui -H "Host: traced" "http://127.0.0.1:$out_port/" >"$work/oha-$mode.txt"
  callgrind_control -d "$sidecar" >/dev/null 2>&1
  for _ in $(seq 100); do [[ -s $work/callgrind-$mode.out.1 ]] && break; sleep 0.1; done
  grep -q 'Success rate:\s*100' "$work/oha-$mode.txt" || { echo "requests failed ($mode): $work/oha-$mode.txt" >&2; exit 1; }
  spans=$(curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E '^weft_trace_spans_(exported|dropped)_total' | tr '\n' ' ' || true)
  kill "$sidecar"; wait "$sidecar" 2>/dev/null || true
  total=$(callgrind_annotate "$work/callgrind-$mode.out.1" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  per[$mode]=$((total / requests))
  awk -v m="$mode" -v a="${per[off]}" -v b="${per[$mode]}" -v s="$spans" \
    'BEGIN { printf "%-12s %6d instructions per request  %+6d (%+.1f %%)  %s\n", m, b, b - a, (b - a) * 100 / a, s }'
done
echo "profiles: $work/callgrind-<mode>.out.1"
