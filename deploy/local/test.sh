#!/usr/bin/env bash
# The whole test suite, installing what it needs: the command the README
# names and CI (.ci/run) runs.
#
#   bash deploy/local/test.sh [extra `cargo test` arguments...]
#
# 1. Consul: deploy/local/install-consul.sh prints a consul binary (PATH,
#    .tools/, or Debian's 1.8.7 fetched into .tools/); exported as
#    WEFT_CONSUL_BIN for the end-to-end tests.
# 2. Redis: the opaque TCP and rate limit tests (tests/tests/tcp.rs,
#    rate_limits.rs) and the test-support crate's own tests
#    (tests/support/tests/launchers.rs) run a real redis-server; installed
#    with apt-get (sudo when not root) if missing.
# 3. Chromium: the service map and CORS tests (tests/tests/service_map.rs,
#    cors.rs) run headless Chromium; installed with apt-get like Redis.
#    Prometheus: the dashboard runs its queries on a real one (dashboard.rs),
#    and promtool tests the alert rules (deploy_observability.rs);
#    Debian's prometheus package, installed the same way.
# 4. `cargo build --workspace --bins`: the end-to-end tests run the real
#    weft-discovery, weft-sidecar and weft-testapp binaries.
# 5. `cargo test --workspace`, every test even after a failure.
# 6. The demo (deploy/local/demo.sh --once) as a smoke test of the README.
#
# Each end-to-end test runs Consul, the agent, several sidecars and apps and
# asserts 1 s convergence budgets, so tests run WEFT_TEST_THREADS at a time
# (default 2, for a 2-core machine). Logs of every process are in
# target/e2e-logs/<test binary>/<test>/ (a failed test prints their tails);
# the latencies the tests measured are printed at the end.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
say() { echo "test.sh: $*" >&2; }

WEFT_CONSUL_BIN=$(bash deploy/local/install-consul.sh) || {
  say "could not install Consul (see above); the end-to-end tests need it"
  exit 1
}
export WEFT_CONSUL_BIN
say "consul: $WEFT_CONSUL_BIN ($("$WEFT_CONSUL_BIN" version | head -n1))"

# apt_install PACKAGE VARIABLE WHY: installs Debian's PACKAGE (sudo when not
# root), logging to target/PACKAGE-install.log; on failure says how to
# install it by hand or where to point VARIABLE instead, and stops.
apt_install() {
  local package=$1 variable=$2 why=$3 sudo=""
  say "installing $package (apt-get): $why"
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  mkdir -p target
  { $sudo apt-get update && $sudo apt-get install -y "$package"; } >"target/$package-install.log" 2>&1 || {
    tail -n 20 "target/$package-install.log" >&2
    say "could not install $package; install it (sudo apt-get install -y $package) or set $variable"
    exit 1
  }
}

if ! command -v redis-server >/dev/null 2>&1 && [[ -z "${WEFT_REDIS_BIN:-}" ]]; then
  apt_install redis-server WEFT_REDIS_BIN "the opaque TCP and rate limit tests run it"
fi
say "redis: $(command -v redis-server || echo "$WEFT_REDIS_BIN") ($("${WEFT_REDIS_BIN:-redis-server}" --version | head -n1))"

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
  && [[ -z "${WEFT_CHROMIUM_BIN:-}" ]]; then
  apt_install chromium WEFT_CHROMIUM_BIN "the service map and CORS tests run it headless"
fi
say "chromium: ${WEFT_CHROMIUM_BIN:-$(command -v chromium || command -v chromium-browser)}"

if ! command -v promtool >/dev/null 2>&1 && [[ -z "${WEFT_PROMTOOL_BIN:-}" ]]; then
  apt_install prometheus WEFT_PROMTOOL_BIN "the dashboard and alert tests run prometheus and promtool"
fi
say "promtool: ${WEFT_PROMTOOL_BIN:-$(command -v promtool)}"

threads=${WEFT_TEST_THREADS:-2}
measurements=target/e2e-logs/measurements.tsv
mkdir -p target/e2e-logs
rm -f "$measurements"

# A one-off build (CI, a fresh clone) gains nothing from incremental
# compilation data, which would take gigabytes of disk.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi

start=$(date +%s)
say "cargo build --workspace --bins"
cargo build --workspace --bins
say "cargo test --workspace (--test-threads=$threads)"
status=0
cargo test --workspace --no-fail-fast "$@" -- --test-threads="$threads" || status=$?

# The README's other command, as a smoke test: the demo mesh comes up from
# this checkout and routes as it says (it exits non-zero when it does not).
if [[ $status -eq 0 ]]; then
  say "deploy/local/demo.sh --once"
  ./deploy/local/demo.sh --once > target/e2e-logs/demo.out 2>&1 || {
    status=$?
    tail -n 40 target/e2e-logs/demo.out >&2
    say "the demo failed; its process logs are in .demo/"
  }
fi

if [[ -s "$measurements" ]]; then
  echo
  echo "Measured by the end-to-end tests (test, what, value):"
  sort "$measurements" | column -t -s $'\t' || cat "$measurements"
fi
echo
if [[ $status -eq 0 ]]; then
  say "all tests passed in $(( $(date +%s) - start )) s"
else
  say "FAILED (cargo test exited $status) after $(( $(date +%s) - start )) s; process logs: target/e2e-logs/"
fi
exit "$status"
