#!/usr/bin/env python3
"""Weft mesh benchmark: app -> sidecar A -> sidecar B -> app, against app -> app,
and the same over mutual TLS (sidecar C -> sidecar D, HTTP/2 on the tunnel).

Measures, interleaved over REPS rounds (direct, mesh, direct, mesh, ...):
  max      wrk -t1 -c50, 100-byte body, HTTP/1.1 keep-alive: req/s, p50, p99
  rate     oha -q 2000 --latency-correction (open loop, corrects coordinated
           omission): p50, p90, p99, p99.9, and what the mesh adds
  cost     CPU microseconds per request of each sidecar (utime+stime from
           /proc before/after), at max load and at 2,000 req/s
  memory   RSS of each sidecar after >= 1,000,000 requests through the mesh

With --resilience, a fourth target, mesh-resilience: the same sidecars A -> B
as the plaintext mesh, to a destination `bench-res` whose document turns on
every caller-side feature of issue 4 (a breaker, outlier detection, retries
with a budget and max_retries, and a local per-client-IP rate limit set far
above the offered load, so nothing is refused or retried): what those
layers cost when they decide on every request but never trip.

With --tracing, two more targets over the same kind of plaintext pair as
`mesh`, with metrics on (they always are) and tracing on: mesh-trace-100
(every request sampled: a client span on the caller's sidecar and a server
span on the callee's, exported over OTLP/gRPC) and mesh-trace-1 (1 % sampled,
parent-based, so the callee follows the caller's decision). The spans go to
`weft-trace-sink --discard` (tests/src/bin), which accepts OTLP and drops it
unread, unpinned like nginx. Each tracing pair is its own pair of sidecars,
pinned like A and B.

Layout (2 cores): the callers' sidecars (A plaintext, C with mTLS) pinned to
CPU 0, the callees' (B, D) to CPU 1, each with one runtime thread; the load
generator and the upstream nginx are not pinned. The mesh is configured by a
real weft-discovery agent with the file backend and a CA made by
`weftctl ca init`; C and D get their certificates with join tokens, A and B
have none and talk plaintext.

Usage: python3 bench/mesh.py [--reps 3] [--resilience] [--tracing] [--out DIR]
Needs: nginx, wrk (apt-get install -y nginx wrk), oha (cargo install oha --locked).
Prints a markdown report; raw outputs stay in --out.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = "x" * 99 + "\\n"  # 100 bytes, as in ../shared/peerbench
PORTS = dict(upstream=19080, agent=19010, agent_admin=19011, a_out=19101, a_in=19106, a_admin=19120,
             b_out=19201, b_in=19206, b_admin=19220, c_out=19301, c_in=19306, c_admin=19320,
             d_out=19401, d_in=19406, d_admin=19420, e_out=19501, e_in=19506, e_admin=19520,
             f_out=19601, f_in=19606, f_admin=19620, g_out=19701, g_in=19706, g_admin=19720,
             h_out=19801, h_in=19806, h_admin=19820, sink=19317)
CLK = os.sysconf("SC_CLK_TCK")
procs = []


def start(argv, log, env=None, cpu=None):
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    p = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                         start_new_session=True)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_http(url, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{what} not ready at {url}")


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def cpu_seconds(pid, user_only=False):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + (0 if user_only else int(fields[12]))) / CLK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url, host, seconds, out):
    argv = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "5s", "-s", out + ".lua", url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    with open(out + ".lua", "w") as f:
        f.write(LUA)
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    open(out, "w").write(text)
    for line in text.splitlines():
        if line.startswith("WRK "):
            d = json.loads(line[4:])
            d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
            return d
    raise RuntimeError(f"no WRK line in {out}")


def oha(url, host, seconds, out, rate=2000):
    argv = ["oha", "--no-tui", "--output-format", "json", "-q", str(rate), "-z", f"{seconds}s", "-w", "-c", "50",
            "--latency-correction", "-t", "5s", url]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    open(out, "w").write(text)
    d = json.loads(text[text.find("{"):])
    lp = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution") or {}
    bad = sum(v for k, v in codes.items() if not str(k).startswith("2")) + sum((d.get("errorDistribution") or {}).values())
    total = sum(codes.values())
    return {"requests": total, "errors": bad, **{k: lp[k] * 1e6 for k in ("p50", "p90", "p99", "p99.9")}}


# Every caller-side resilience feature on, none tripping at the offered load.
RESILIENCE = {
    "retries": {"max_attempts": 2, "retry_on": ["gateway-error", "connect-failure", "reset"],
                "budget": {"ratio": 0.2, "min_retries_per_second": 10}},
    "circuit_breakers": {"max_retries": 100},
    "breaker": {"consecutive_failures": 5, "failure_ratio": 0.5, "min_requests": 20},
    "outlier_detection": {"consecutive_5xx": 5},
    "rate_limits": {"limits": [{"name": "per-ip", "key": "client_ip",
                                "local": {"requests": 10000000, "per": "1s", "burst": 10000000}}]},
}

LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p99":%d,"p999":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-seconds", type=int, default=10)
    ap.add_argument("--rate-seconds", type=int, default=15)
    ap.add_argument("--resilience", action="store_true",
                    help="also measure the plaintext mesh with breaker, retries and a local rate limit on")
    ap.add_argument("--tracing", action="store_true",
                    help="also measure plaintext pairs with tracing on at 100 %% and 1 %% sampling")
    ap.add_argument("--targets", default="",
                    help="comma-separated targets besides direct (default: all), e.g. mesh,mesh-resilience")
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="weft-mesh-bench."))
    a = ap.parse_args()
    for tool in ("nginx", "wrk", "oha", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: apt-get install -y nginx wrk; cargo install oha --locked")
    # One package per build, as bench/peerbench.sh does: building them together
    # unifies features differently and would relink a different sidecar binary.
    for package in ("weft-sidecar", "weft-discovery"):  # weftctl is in weft-discovery
        subprocess.run(["cargo", "build", "--release", "-q", "-p", package], cwd=REPO, check=True)
    if a.tracing:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft-e2e", "--bin", "weft-trace-sink"],
                       cwd=REPO, check=True)
    rel = os.path.join(REPO, "target", "release")
    out = a.out
    os.makedirs(out, exist_ok=True)
    try:
        # upstream: nginx, 1 worker, fixed 100-byte body
        up = os.path.join(out, "upstream")
        os.makedirs(os.path.join(up, "tmp"), exist_ok=True)
        with open(os.path.join(up, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {up}/nginx.pid; error_log {up}/error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path {up}/tmp; proxy_temp_path {up}/tmp; fastcgi_temp_path {up}/tmp; uwsgi_temp_path {up}/tmp; scgi_temp_path {up}/tmp;
  server {{ listen 127.0.0.1:{PORTS['upstream']} backlog=4096; location / {{ return 200 "{BODY}"; }} }} }}
""")
        start([shutil.which("nginx") or "/usr/sbin/nginx", "-p", up, "-c", os.path.join(up, "nginx.conf"), "-e",
               os.path.join(up, "error.log")], os.path.join(out, "upstream.log"))
        wait_port(PORTS["upstream"])

        # agent with the file backend: service "bench" is sidecar B's inbound
        # listener, "bench-tls" sidecar D's; a CA and join tokens for C and D
        cfg = os.path.join(out, "config")
        os.makedirs(cfg, exist_ok=True)
        with open(os.path.join(cfg, "endpoints.yaml"), "w") as f:
            f.write(f"services:\n  bench:\n    - {{ address: 127.0.0.1, port: {PORTS['b_in']}, meshed: true }}\n"
                    f"  bench-tls:\n    - {{ address: 127.0.0.1, port: {PORTS['d_in']}, meshed: true }}\n"
                    f"  bench-res:\n    - {{ address: 127.0.0.1, port: {PORTS['b_in']}, meshed: true }}\n"
                    f"  bench-trace-100:\n    - {{ address: 127.0.0.1, port: {PORTS['f_in']}, meshed: true }}\n"
                    f"  bench-trace-1:\n    - {{ address: 127.0.0.1, port: {PORTS['h_in']}, meshed: true }}\n")
        os.makedirs(os.path.join(cfg, "destinations"), exist_ok=True)
        with open(os.path.join(cfg, "destinations", "bench-res.json"), "w") as f:
            json.dump(RESILIENCE, f)
        ca = os.path.join(out, "ca")
        subprocess.run([os.path.join(rel, "weftctl"), "ca", "init", "--trust-domain", "bench.weft", "--out", ca,
                        "--force"], check=True, capture_output=True)
        tokens = {"client-tls": os.urandom(16).hex(), "bench-tls": os.urandom(16).hex()}
        with open(os.path.join(out, "join-tokens.json"), "w") as f:
            json.dump(tokens, f)
        start([os.path.join(rel, "weft-discovery"), "--config-dir", cfg, "--listen", f"127.0.0.1:{PORTS['agent']}",
               "--admin", f"127.0.0.1:{PORTS['agent_admin']}", "--ca-dir", ca,
               "--join-tokens", os.path.join(out, "join-tokens.json")], os.path.join(out, "agent.log"))
        wait_http(f"http://127.0.0.1:{PORTS['agent_admin']}/readyz", "weft-discovery")

        one = {"TOKIO_WORKER_THREADS": "1"}
        disc = f"http://127.0.0.1:{PORTS['agent']}"

        def sidecar(letter, service, app, cpu, token=None, sampling=None):
            argv = [os.path.join(rel, "weft-sidecar"), "--service", service, "--discovery", disc,
                    "--inbound", f"127.0.0.1:{PORTS[letter + '_in']}", "--app", app,
                    "--outbound", f"127.0.0.1:{PORTS[letter + '_out']}",
                    "--admin", f"127.0.0.1:{PORTS[letter + '_admin']}"]
            env = dict(one, **({"WEFT_IDENTITY_TOKEN": token} if token else {}))
            if sampling is not None:
                env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{PORTS['sink']}",
                           OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                           OTEL_TRACES_SAMPLER_ARG=str(sampling))
            return start(argv, os.path.join(out, f"sidecar-{letter}.log"), env, cpu=cpu)

        upstream = f"127.0.0.1:{PORTS['upstream']}"
        side_a = sidecar("a", "client", "127.0.0.1:9", 0)
        side_b = sidecar("b", "bench", upstream, 1)
        side_c = sidecar("c", "client-tls", "127.0.0.1:9", 0, tokens["client-tls"])
        side_d = sidecar("d", "bench-tls", upstream, 1, tokens["bench-tls"])
        letters = "abcd"
        if a.tracing:
            start([os.path.join(rel, "weft-trace-sink"), "--discard", "--grpc", f"127.0.0.1:{PORTS['sink']}"],
                  os.path.join(out, "trace-sink.log"))
            wait_port(PORTS["sink"])
            side_e = sidecar("e", "client-trace-100", "127.0.0.1:9", 0, sampling=1.0)
            side_f = sidecar("f", "bench-trace-100", upstream, 1, sampling=1.0)
            side_g = sidecar("g", "client-trace-1", "127.0.0.1:9", 0, sampling=0.01)
            side_h = sidecar("h", "bench-trace-1", upstream, 1, sampling=0.01)
            letters += "efgh"
        for letter in letters:
            wait_http(f"http://127.0.0.1:{PORTS[letter + '_admin']}/ready", f"sidecar {letter}")

        targets = {"direct": (f"http://127.0.0.1:{PORTS['upstream']}/", None, None),
                   "mesh": (f"http://127.0.0.1:{PORTS['a_out']}/", "bench", (side_a, side_b)),
                   "mesh-mtls": (f"http://127.0.0.1:{PORTS['c_out']}/", "bench-tls", (side_c, side_d))}
        if a.resilience:
            targets["mesh-resilience"] = (f"http://127.0.0.1:{PORTS['a_out']}/", "bench-res", (side_a, side_b))
        if a.tracing:
            targets["mesh-trace-100"] = (f"http://127.0.0.1:{PORTS['e_out']}/", "bench-trace-100", (side_e, side_f))
            targets["mesh-trace-1"] = (f"http://127.0.0.1:{PORTS['g_out']}/", "bench-trace-1", (side_g, side_h))
        if a.targets:
            keep = {"direct", "mesh", *a.targets.split(",")}
            targets = {name: t for name, t in targets.items() if name in keep}
        rows = {t: {"max": [], "rate": []} for t in targets}
        through = {name: 0 for name in targets if name != "direct"}
        for rep in range(a.reps):
            for name, (url, host, sides) in targets.items():
                wrk(url, host, 2, os.path.join(out, f"warm-{name}-{rep}.txt"))
                for kind in ("max", "rate"):
                    cpu0 = [cpu_seconds(p.pid) for p in sides or ()]
                    user0 = [cpu_seconds(p.pid, user_only=True) for p in sides or ()]
                    if kind == "max":
                        r = wrk(url, host, a.max_seconds, os.path.join(out, f"max-{name}-{rep}.txt"))
                    else:
                        r = oha(url, host, a.rate_seconds, os.path.join(out, f"rate-{name}-{rep}.json"))
                    if sides:
                        cpu1 = [cpu_seconds(p.pid) for p in sides]
                        user1 = [cpu_seconds(p.pid, user_only=True) for p in sides]
                        r["user_a_us"] = (user1[0] - user0[0]) / max(r["requests"], 1) * 1e6
                        r["cpu_a_us"] = (cpu1[0] - cpu0[0]) / max(r["requests"], 1) * 1e6
                        r["cpu_b_us"] = (cpu1[1] - cpu0[1]) / max(r["requests"], 1) * 1e6
                        through[name] += r["requests"]
                    rows[name][kind].append(r)
                print(f"rep {rep} {name}: {rows[name]['max'][-1]['rps']:.0f} req/s max, "
                      f"p99 {rows[name]['rate'][-1]['p99']:.0f} us at 2000 req/s", file=sys.stderr)
        while through["mesh"] < 1_000_000:
            through["mesh"] += wrk(targets["mesh"][0], "bench", 10, os.path.join(out, "fill.txt"))["requests"]
        total_mesh = through["mesh"]
        if a.tracing:
            # Spans the traced sidecars exported and dropped: a benchmark whose
            # spans never left would measure nothing.
            for letter in "efgh":
                page = urllib.request.urlopen(f"http://127.0.0.1:{PORTS[letter + '_admin']}/metrics", timeout=5).read().decode()
                counts = {k: sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines() if l.startswith(k))
                          for k in ("weft_trace_spans_exported_total", "weft_trace_spans_dropped_total")}
                print(f"sidecar {letter}: {counts['weft_trace_spans_exported_total']:,.0f} spans exported, "
                      f"{counts['weft_trace_spans_dropped_total']:,.0f} dropped", file=sys.stderr)
                if letter in "ef" and counts["weft_trace_spans_exported_total"] == 0:
                    sys.exit(f"sidecar {letter} exported no spans: see {out}/trace-sink.log and sidecar-{letter}.log")
        rss = (rss_mib(side_a.pid), rss_mib(side_b.pid))
        report(rows, total_mesh, rss, a)
        failed = {name: sum(x["errors"] for kind in ("max", "rate") for x in r[kind]) for name, r in rows.items()}
        if any(failed.values()):
            sys.exit(f"requests failed during the benchmark ({failed}): the figures above are not valid; "
                     f"logs in {out}")
    finally:
        stop_all()


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def paired(rows, other, base, kind, key):
    """Median over reps of other/base - 1. Each rep's two runs are minutes
    apart at most, so their ratio cancels most of this VM's slow drift."""
    return statistics.median(o[key] / b[key] - 1 for o, b in zip(rows[other][kind], rows[base][kind]))


def report(rows, total, rss, a):
    d = rows["direct"]
    names = list(rows)
    print(f"## Mesh benchmark: app -> sidecar -> sidecar -> app (medians of {a.reps} interleaved reps)\n")
    print("mesh: plaintext between the sidecars; mesh-mtls: mutual TLS (SPIFFE identities, HTTP/2 on the tunnel).\n")
    print("| target | max req/s | % of direct | p50 us | p99 us | errors | caller sidecar CPU us/req | callee sidecar CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        r = rows[name]
        cpu = (f"{med(r['max'], 'cpu_a_us'):.1f} | {med(r['max'], 'cpu_b_us'):.1f}" if name != "direct" else "- | -")
        print(f"| {name} | {med(r['max'], 'rps'):,.0f} | {100 * med(r['max'], 'rps') / med(d['max'], 'rps'):.0f}% | "
              f"{med(r['max'], 'p50'):,.0f} | {med(r['max'], 'p99'):,.0f} | {sum(x['errors'] for x in r['max'])} | {cpu} |")
    print(f"\n### Fixed rate 2,000 req/s (oha, latency-corrected), {a.rate_seconds} s\n")
    print("| target | p50 us | p90 us | p99 us | p99.9 us | added p50 | added p99 | added p99.9 | errors | caller sidecar CPU us/req | callee sidecar CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        rr = rows[name]["rate"]
        add = lambda k: "-" if name == "direct" else f"+{med(rr, k) - med(d['rate'], k):,.0f}"
        cpu = (f"{med(rr, 'cpu_a_us'):.1f} | {med(rr, 'cpu_b_us'):.1f}" if name != "direct" else "- | -")
        print(f"| {name} | {med(rr, 'p50'):,.0f} | {med(rr, 'p90'):,.0f} | {med(rr, 'p99'):,.0f} | {med(rr, 'p99.9'):,.0f} | "
              f"{add('p50')} | {add('p99')} | {add('p99.9')} | {sum(x['errors'] for x in rr)} | {cpu} |")
    if "mesh-resilience" in rows:
        ratio = lambda kind, key: 100 * paired(rows, "mesh-resilience", "mesh", kind, key)
        plain = rows["mesh"]
        print(f"\nResilience layers on (breaker, outlier detection, retries, local rate limit) vs off, same sidecars, "
              f"median of per-rep ratios: max throughput {ratio('max', 'rps'):+.1f} %, "
              f"p99 at 2,000 req/s {ratio('rate', 'p99'):+.0f} %, "
              f"caller CPU per request at max {ratio('max', 'cpu_a_us'):+.1f} % "
              f"(user space {ratio('max', 'user_a_us'):+.1f} %; user space is "
              f"{100 * med(plain['max'], 'user_a_us') / med(plain['max'], 'cpu_a_us'):.0f} % of the caller's CPU).")
    for name, what in (("mesh-trace-100", "100 %"), ("mesh-trace-1", "1 %")):
        if name not in rows:
            continue
        ratio = lambda kind, key: 100 * paired(rows, name, "mesh", kind, key)
        print(f"\nTracing at {what} sampling vs tracing off (metrics on in both), median of per-rep ratios: "
              f"max throughput {ratio('max', 'rps'):+.1f} %, p99 at max {ratio('max', 'p99'):+.0f} %, "
              f"p99 at 2,000 req/s {ratio('rate', 'p99'):+.0f} %, "
              f"caller CPU per request at max {ratio('max', 'cpu_a_us'):+.1f} %, "
              f"callee {ratio('max', 'cpu_b_us'):+.1f} %.")
    if "mesh-mtls" in rows:
        plain, tls = med(rows["mesh"]["rate"], "p99"), med(rows["mesh-mtls"]["rate"], "p99")
        print(f"\nmTLS vs plaintext mesh at 2,000 req/s: p99 {tls:,.0f} vs {plain:,.0f} us "
              f"({100 * (tls / plain - 1):+.0f} %).")
    print(f"\nRSS after {total:,} requests through the plaintext mesh: sidecar A {rss[0]:.1f} MiB, sidecar B {rss[1]:.1f} MiB.")


if __name__ == "__main__":
    main()
