#!/usr/bin/env bash
# A/B two sidecar binaries as a plain reverse proxy, interleaved, to judge a
# performance change on a noisy machine: A B A B ... ROUNDS times, each run
# `wrk -t1 -c50` for SECONDS against a local nginx upstream (100-byte body),
# the sidecar pinned to CPU 0 with one runtime thread, wrk and the upstream on
# CPU 1. Prints each run and the medians of req/s and CPU µs per request.
#
#   bench/ab.sh /tmp/weft-sidecar-before target/release/weft-sidecar [ROUNDS=5] [SECONDS=8]
#
# For a noise-free view of user-space cost, count instructions instead:
# bench/instructions.sh BINARY.
set -euo pipefail
a=${1:?binary A}; b=${2:?binary B}; rounds=${3:-5}; seconds=${4:-8}
for tool in nginx wrk taskset; do command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
  echo "missing $tool: apt-get install -y nginx wrk" >&2; exit 2; }; done
work=$(mktemp -d /tmp/weft-ab.XXXXXX)
up_port=19380; proxy_port=19381
. "$(dirname "$0")/upstream-nginx.sh"
write_upstream_conf "$work" "$up_port"
taskset -c 1 "$(command -v nginx || echo /usr/sbin/nginx)" -p "$work" -c "$work/up.conf" -e "$work/up.err" &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$up_port/" && break; sleep 0.1; done

run() { # label binary
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$2" --inbound "127.0.0.1:$proxy_port" --app "127.0.0.1:$up_port" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$proxy_port/" && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c50 -d2s "http://127.0.0.1:$proxy_port/" >/dev/null
  local before after rps
  before=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  rps=$(taskset -c 1 wrk -t1 -c50 -d"${seconds}s" "http://127.0.0.1:$proxy_port/" | awk '/Requests\/sec/ { print $2 }')
  after=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local cpu; cpu=$(awk -v b="$before" -v a="$after" -v r="$rps" -v s="$seconds" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f", (a - b) / hz / (r * s) * 1e6 }')
  echo "$1 $rps $cpu" | tee -a "$work/results"
}
echo "label req/s cpu_us_per_req"
for _ in $(seq "$rounds"); do run A "$a"; run B "$b"; done
for label in A B; do
  awk -v l="$label" '$1 == l { print $2, $3 }' "$work/results" | sort -n | awk -v l="$label" '
    { rps[NR] = $1; cpu[NR] = $2 } END { m = int((NR + 1) / 2); printf "%s median: %s req/s\n", l, rps[m] }'
  awk -v l="$label" '$1 == l { print $3 }' "$work/results" | sort -n | awk -v l="$label" '
    { c[NR] = $1 } END { m = int((NR + 1) / 2); printf "%s median: %s us CPU per request\n", l, c[m] }'
done
