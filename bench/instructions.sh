#!/usr/bin/env bash
# Counts the user-space instructions per request of a sidecar build under
# callgrind: immune to this VM's timing noise, so it judges a hot-path
# change where wall-clock runs cannot. The sidecar runs as a plain reverse
# proxy (one runtime thread) to a local nginx upstream (100-byte body);
# 5,000 warm-up requests, counters zeroed, then 20,000 requests from
# `oha -c 10`.
#
#   bench/instructions.sh target/release/weft-sidecar
#
# Needs: valgrind nginx (apt-get install -y valgrind nginx), oha (cargo install oha --locked).
set -euo pipefail
bin=$(realpath "${1:?sidecar binary}")
for tool in valgrind callgrind_control callgrind_annotate oha; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind nginx; cargo install oha --locked" >&2; exit 2; }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $nginx_bin ]] || { echo "missing nginx: apt-get install -y nginx" >&2; exit 2; }
work=$(mktemp -d /tmp/weft-instructions.XXXXXX)
up_port=19480; proxy_port=19481; requests=20000
. "$(dirname "$0")/upstream-nginx.sh"
write_upstream_conf "$work" "$up_port"
"$nginx_bin" -p "$work" -c "$work/up.conf" -e "$work/up.err" &
upstream=$!
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$bin" --inbound "127.0.0.1:$proxy_port" --app "127.0.0.1:$up_port" >"$work/sidecar.log" 2>&1 &
sidecar=$!
trap 'kill $sidecar $upstream 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$proxy_port/" && break; sleep 0.2; done
oha -n 5000 -c 10 --no-tui "http://127.0.0.1:$proxy_port/" >/dev/null
callgrind_control -z "$sidecar" >/dev/null
oha -n "$requests" -c 10 --no-tui "http://127.0.0.1:$proxy_port/" >/dev/null
callgrind_control -d "$sidecar" >/dev/null
for _ in $(seq 50); do [[ -s $work/callgrind.out.1 ]] && break; sleep 0.1; done
total=$(callgrind_annotate "$work/callgrind.out.1" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$((total / requests)) instructions per request ($total over $requests requests); profile: $work/callgrind.out.1"
