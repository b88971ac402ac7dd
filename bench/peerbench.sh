#!/usr/bin/env bash
# Runs ../shared/peerbench (nginx, haproxy, direct) with Weft's sidecar added
# as one more proxy, in one interleaved run. The sidecar runs as a plain
# reverse proxy (its inbound path with a static upstream, no agent), one
# runtime thread, pinned to one core like the others.
#
#   bench/peerbench.sh                  # TARGETS="direct nginx haproxy weft", REPS=3
#   REPS=5 TARGETS="direct nginx weft" bench/peerbench.sh
#
# Needs: nginx haproxy wrk (apt-get install -y nginx haproxy wrk) and oha
# (cargo install oha --locked). Prints the markdown report; keeps everything
# in $OUT.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared="${PEERBENCH_DIR:-$repo/../shared/peerbench}"
[[ -d "$shared" ]] || { echo "peerbench not found at $shared (set PEERBENCH_DIR)" >&2; exit 2; }
for tool in nginx haproxy wrk oha taskset; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
    echo "missing $tool: apt-get install -y nginx haproxy wrk; cargo install oha --locked" >&2; exit 2; }
done

cargo build --release --manifest-path "$repo/Cargo.toml" -p weft-sidecar >&2
work=$(mktemp -d /tmp/weft-peerbench.XXXXXX)
cp -r "$shared/." "$work/"
chmod -R u+w "$work"
cat > "$work/proxies/weft.ini" <<INI
# Adapter: Weft's sidecar as a plain reverse proxy (inbound path, static upstream).
[proxy]
describe = weft-sidecar (release): inbound listener -> one static upstream, 1 runtime worker thread, no agent
cmd = $repo/target/release/weft-sidecar --inbound 127.0.0.1:{listen} --app 127.0.0.1:{upstream}
env = TOKIO_WORKER_THREADS=1
version = $repo/target/release/weft-sidecar --version
INI
export OUT="${OUT:-$work/out}"
TARGETS="${TARGETS:-direct nginx haproxy weft}" REPS="${REPS:-3}" "$work/run.sh"
