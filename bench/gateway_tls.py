#!/usr/bin/env python3
"""The edge gateway as a TLS-terminating reverse proxy, beside nginx and
HAProxy, in one run (issue 15): requests per second over TLS, and new
handshakes per second, each server on one core.

Targets, interleaved in every repetition (weft, nginx, haproxy, weft, ...):
  weft     weft-gateway --workers 1, its listener, certificate and route from
           a real weft-discovery agent (file backend): `gateways/bench-gw`
           (one https listener, the certificate read from files) and
           `routes/bench.example.com` sending `/` to the unmeshed service
           `bench-upstream`, spoken to in HTTP/1.1 (its destination
           document says `"protocol": "http1"`, as nginx and HAProxy do)
  nginx    one worker, `listen ... ssl http2`, proxy_pass with keep-alive
  haproxy  nbthread 1, `bind ... ssl crt <pem> alpn h2,http/1.1`
All three serve the same ECDSA P-256 leaf for bench.example.com, negotiate
TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519 (the clients offer only those,
through an OpenSSL config of their own; nginx and HAProxy are pinned to
them too; checked before measuring with `openssl s_client`, and in every
h2load run), offer h2 and http/1.1 by ALPN, add x-forwarded-for/-proto/-host
as an edge proxy does (the gateway always does), and proxy to the same
upstream: nginx with one worker answering 200 with a 100-byte body. Session settings are
each server's defaults (each issues TLS 1.3 tickets; the clients never use
them).

Layout (2 cores): the server under test pinned to CPU 1; the upstream, the
agent and the load generators pinned to CPU 0.

Measurements, per target and repetition:
  h1          wrk -t1 -c50 over TLS, HTTP/1.1 keep-alive: req/s, and the
              server's CPU seconds per 10,000 requests
  h2          h2load -c50 -m10 -t1 (ALPN h2), same figures
  handshakes  full TLS 1.3 handshakes, no resumption: several
              `openssl s_time -new` clients in parallel; per core =
              handshakes / the server's CPU seconds (utime + stime from
              /proc, summed over its process tree), and the wall-clock rate
Each run is preceded by a 2 s warm-up against the same target. The report
gives medians and min-max over the repetitions; raw outputs stay in --out.

Usage: python3 bench/gateway_tls.py [--reps 3] [--seconds 10] [--clients 3] [--out DIR]
                                    [--targets weft,nginx,haproxy] [--no-build]
Needs: nginx, haproxy, wrk, h2load, openssl
       (apt-get install -y nginx haproxy wrk nghttp2-client openssl).
Binaries come from $CARGO_TARGET_DIR/release (default target/release).
"""
import argparse, contextlib, io, json, os, re, shutil, ssl, socket, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mesh import BODY, LUA, REPO, cpu_seconds, start, stop_all, wait_http, wait_port  # noqa: E402

PORTS = dict(upstream=19680, agent=19610, agent_admin=19611, gateway_admin=19620,
             weft=19643, nginx=19644, haproxy=19645)
HOST = "bench.example.com"
SERVER_CPU, CLIENT_CPU = 1, 0
# One TLS 1.3 suite for every pair. The clients disagree by default (h2load
# prefers AES-128, wrk and openssl AES-256) and so do the servers (rustls
# follows the client's order, HAProxy its own), so the servers are pinned
# to it where they can be, and every client offers only it (CLIENT_ENV).
CIPHER = "TLS_AES_128_GCM_SHA256"
CLIENT_ENV = dict(os.environ)
# Idle upstream connections kept by the gateway and nginx. h2load keeps 500
# requests in flight (-c50 -m10); with both defaults (64) the gateway and
# nginx each opened a new upstream connection for about every second
# HTTP/2 request, measuring that churn rather than TLS termination. HAProxy
# has no such cap.
UPSTREAM_IDLE = 512


def pin_clients(out):
    """An OpenSSL config for the load generators (all OpenSSL clients): TLS
    1.3, CIPHER and X25519 only, as their system default."""
    path = os.path.join(out, "client-openssl.cnf")
    with open(path, "w") as f:
        f.write("openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\n"
                "system_default = system_default_sect\n[system_default_sect]\n"
                f"MinProtocol = TLSv1.3\nCiphersuites = {CIPHER}\nGroups = X25519\n")
    CLIENT_ENV["OPENSSL_CONF"] = path
TARGETS = ("weft", "nginx", "haproxy")


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def which(tool):
    return shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.path.exists(p)), None)


def certificate(out):
    """A throwaway CA and an ECDSA P-256 leaf for HOST signed by it. Returns
    (leaf chain, leaf key, chain+key in one file for HAProxy)."""
    d = os.path.join(out, "certs")
    os.makedirs(d, exist_ok=True)
    p = lambda name: os.path.join(d, name)
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("ca.key"))
    sh("openssl", "req", "-x509", "-new", "-key", p("ca.key"), "-subj", "/CN=Weft bench CA", "-days", "2",
       "-sha256", "-out", p("ca.pem"))
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("leaf.key"))
    sh("openssl", "req", "-new", "-key", p("leaf.key"), "-subj", f"/CN={HOST}", "-out", p("leaf.csr"))
    with open(p("leaf.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{HOST}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
       "-CAcreateserial", "-days", "2", "-sha256", "-extfile", p("leaf.ext"), "-out", p("leaf.pem"))
    with open(p("haproxy.pem"), "w") as f:
        f.write(open(p("leaf.pem")).read() + open(p("leaf.key")).read())
    return p("leaf.pem"), p("leaf.key"), p("haproxy.pem")


def tree_cpu_seconds(root):
    """utime + stime of `root` and every live descendant (nginx's master and
    worker; the others are one process)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
        todo += children.get(pid, [])
    return total


def write_upstream(out):
    d = os.path.join(out, "upstream")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{PORTS['upstream']} backlog=4096; location / {{ return 200 "{BODY}"; }} }} }}
""")
    return d, conf


def write_nginx(out, chain, key):
    """As ../shared/peerbench/templates/nginx.conf.tmpl, with TLS on the listener."""
    d = os.path.join(out, "nginx")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; master_process on; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  # nginx closes keep-alive connections (HTTP/1.1 and HTTP/2) after 1000
  # requests by default; the gateway and HAProxy do not.
  keepalive_requests 100000000; keepalive_timeout 300s;
  upstream up {{ server 127.0.0.1:{PORTS['upstream']}; keepalive {UPSTREAM_IDLE}; keepalive_requests 100000000; keepalive_timeout 300s; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl http2 backlog=4096;
    server_name {HOST};
    ssl_certificate {chain}; ssl_certificate_key {key};
    ssl_protocols TLSv1.3; ssl_ecdh_curve X25519; ssl_conf_command Ciphersuites {CIPHER};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;          # required for upstream keep-alive
      proxy_set_header Connection "";  # do not send "Connection: close"
      # what the gateway adds to every request (trusted_hops 0)
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }} }} }}
""")
    return d, conf


def write_haproxy(out, pem):
    """As ../shared/peerbench/templates/haproxy.cfg.tmpl, with TLS on the bind."""
    d = os.path.join(out, "haproxy")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    nbthread 1
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:{PORTS['haproxy']} ssl crt {pem} alpn h2,http/1.1 ssl-min-ver TLSv1.3 curves X25519 ciphersuites {CIPHER}
    # what the gateway adds to every request (trusted_hops 0)
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be
backend be
    server up 127.0.0.1:{PORTS['upstream']}
""")
    return conf


def write_mesh_config(out, chain, key):
    """The agent's file backend: the upstream as an unmeshed service, the
    route for HOST, and the gateway's listener."""
    cfg = os.path.join(out, "config")
    for sub in ("routes", "gateways"):
        os.makedirs(os.path.join(cfg, sub), exist_ok=True)
    with open(os.path.join(cfg, "endpoints.yaml"), "w") as f:
        f.write(f"services:\n  bench-upstream:\n    - {{ address: 127.0.0.1, port: {PORTS['upstream']}, meshed: false }}\n")
    # HTTP/1.1 to the upstream, as nginx and HAProxy speak to it: with the
    # default `auto` the gateway would forward an outside client's HTTP/2
    # as h2c, which the upstream does not speak (502 upstream-reset). Idle
    # connections: see UPSTREAM_IDLE.
    os.makedirs(os.path.join(cfg, "destinations"), exist_ok=True)
    with open(os.path.join(cfg, "destinations", "bench-upstream.json"), "w") as f:
        json.dump({"protocol": "http1", "connection_pool": {"max_idle_per_endpoint": UPSTREAM_IDLE}}, f)
    with open(os.path.join(cfg, "routes", f"{HOST}.json"), "w") as f:
        json.dump({"routes": [{"match": {"path_prefix": "/"}, "destination": "bench-upstream"}]}, f)
    with open(os.path.join(cfg, "gateways", "bench-gw.json"), "w") as f:
        json.dump({"listeners": [{"name": "public", "address": "127.0.0.1", "port": PORTS["weft"],
                                  "protocol": "https", "hosts": [HOST],
                                  "certificates": [{"chain_file": chain, "private_key_file": key}]}]}, f)
    return cfg


def tls_parameters(port):
    """Protocol, cipher suite and key exchange group a default OpenSSL client
    negotiates with the server on `port` (as wrk, h2load and s_time would)."""
    text = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"], input="",
                          capture_output=True, text=True, timeout=10, env=CLIENT_ENV).stderr
    get = lambda label: (re.search(rf"^{label}: (.+)$", text, re.M) or [None, "?"])[1].strip()
    return {"protocol": get("Protocol version"), "cipher": get("Ciphersuite"),
            "group": get("(?:Server Temp Key|Peer Temp Key|Negotiated TLS1.3 group)")}


def get_over_tls(port):
    """GET / over TLS (HTTP/1.1, SNI and Host HOST); returns the raw reply."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def check_target(name, port):
    """The target must answer 200 with the upstream's body over TLS, by
    HTTP/1.1 and by HTTP/2, with TLS 1.3 and X25519: otherwise the figures
    would not compare like with like."""
    params = tls_parameters(port)
    if params["protocol"] != "TLSv1.3" or params["cipher"] != CIPHER or not params["group"].startswith("X25519"):
        sys.exit(f"{name} negotiated {params}, not TLS 1.3, {CIPHER} and X25519")
    reply = get_over_tls(port)
    head, _, body = reply.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or len(body) != 100:
        sys.exit(f"{name} did not answer GET / over TLS with 200 and the upstream's 100 bytes:\n{reply[:500]!r}")
    h2 = subprocess.run(["h2load", "-n", "20", "-c", "1", "--tls13-ciphers", CIPHER, "-H", f":authority: {HOST}",
                         f"https://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=30, env=CLIENT_ENV).stdout
    if "20 2xx" not in h2 or "Application protocol: h2" not in h2:
        sys.exit(f"{name} did not answer 20 GETs over HTTP/2 with 2xx:\n{h2}")
    return params


def wrk(url, seconds, out):
    """As bench/mesh.py's, pinned to the client CPU."""
    with open(out + ".lua", "w") as f:
        f.write(LUA)
    argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "5s",
            "-H", f"Host: {HOST}", "-s", out + ".lua", url]
    text = subprocess.run(argv, capture_output=True, text=True, check=True, env=CLIENT_ENV).stdout
    open(out, "w").write(text)
    line = next((l for l in text.splitlines() if l.startswith("WRK ")), None)
    if not line:
        sys.exit(f"wrk output not understood (see {out}):\n{text[-2000:]}")
    d = json.loads(line[4:])
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    return d


def h2load(port, seconds, out):
    argv = ["taskset", "-c", str(CLIENT_CPU), "h2load", "-t1", "-c50", "-m10", "-D", str(seconds), "--tls13-ciphers", CIPHER,
            "-H", f":authority: {HOST}", f"https://127.0.0.1:{port}/"]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, env=CLIENT_ENV).stdout
    open(out, "w").write(text)
    if f"Cipher: {CIPHER}" not in text:
        sys.exit(f"h2load negotiated another suite than {CIPHER} (see {out})")
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                     r"(\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx", text)
    took = re.search(r"finished in ([\d.]+)(m?s)", text)
    if not (done and codes and took):
        sys.exit(f"h2load output not understood (see {out}):\n{text[-2000:]}")
    ok = int(codes.group(1))
    secs = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    errors = int(done.group(1)) - ok + sum(int(done.group(i)) for i in (3, 4, 5))
    return {"requests": ok, "rps": ok / secs, "errors": errors}


def s_time(port, seconds, clients, out):
    """`clients` openssl s_time loops on the client CPU; returns handshakes made."""
    argv = ["taskset", "-c", str(CLIENT_CPU), "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
            "-tls1_3", "-ciphersuites", CIPHER, "-time", str(seconds)]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=CLIENT_ENV)
            for _ in range(clients)]
    total = 0
    for i, p in enumerate(runs):
        text = p.communicate(timeout=seconds + 30)[0]
        open(f"{out}-{i}.txt", "w").write(text)
        m = re.search(r"(\d+) connections in [\d.]+ real seconds", text)
        if not m or p.returncode != 0:
            sys.exit(f"openssl s_time failed against port {port} (see {out}-{i}.txt):\n{text[-2000:]}")
        total += int(m.group(1))
    return total


RESULTS = ("completed", "failed", "closed", "timed_out")


def gateway_handshakes(port):
    """The gateway's own handshake counters, by result."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = 'weft_gateway_tls_handshakes_total{{result="{}"}}'
    return {r: sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines() if l.startswith(line.format(r)))
            for r in RESULTS}


def start_gateway(out, rel, chain, key):
    """The agent on the file backend, then the gateway it configures."""
    cfg = write_mesh_config(out, chain, key)
    start([os.path.join(rel, "weft-discovery"), "--config-dir", cfg, "--listen", f"127.0.0.1:{PORTS['agent']}",
           "--admin", f"127.0.0.1:{PORTS['agent_admin']}"], os.path.join(out, "agent.log"), cpu=CLIENT_CPU)
    wait_http(f"http://127.0.0.1:{PORTS['agent_admin']}/readyz", "weft-discovery")
    gateway = start([os.path.join(rel, "weft-gateway"), "--service", "bench-gw", "--workers", "1",
                     "--discovery", f"http://127.0.0.1:{PORTS['agent']}",
                     "--admin", f"127.0.0.1:{PORTS['gateway_admin']}"],
                    os.path.join(out, "gateway.log"), cpu=SERVER_CPU)
    # Ready = its listener serves the route. Not /ready: when the Gateway
    # resource is the last type to arrive (as from the file backend), /ready
    # stays 503 until the first request makes the table rebuild (the
    # readiness check in accept_gateway runs before the type is marked
    # accepted), though the listener already serves.
    wait_port(PORTS["weft"], timeout=30)
    deadline, reply = time.time() + 30, b""
    while not reply.startswith(b"HTTP/1.1 200") and time.time() < deadline:
        try:
            reply = get_over_tls(PORTS["weft"])
        except OSError:
            time.sleep(0.1)
    if not reply.startswith(b"HTTP/1.1 200"):
        sys.exit(f"weft-gateway did not route GET / to the upstream within 30 s:\n{reply[:500]!r}")
    return gateway


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="length of each measured run")
    ap.add_argument("--clients", type=int, default=3, help="parallel openssl s_time clients")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already built")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ", ".join(TARGETS))
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="weft-gateway-bench."))
    a = ap.parse_args()
    targets = [t for t in TARGETS if t in a.targets.split(",")]
    if not targets:
        sys.exit(f"--targets: none of {TARGETS}")
    tools = {t: which(t) for t in ("nginx", "haproxy", "wrk", "h2load", "openssl", "taskset")}
    if not all(tools.values()):
        sys.exit(f"missing {[t for t, p in tools.items() if not p]}: "
                 "apt-get install -y nginx haproxy wrk nghttp2-client openssl util-linux")
    if not a.no_build and "weft" in targets:
        # One package per build, as bench/mesh.py does.
        for package in ("weft-sidecar", "weft-discovery"):
            subprocess.run(["cargo", "build", "--release", "-q", "-p", package], cwd=REPO, check=True)
    rel = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"), "release")
    out = a.out
    os.makedirs(out, exist_ok=True)
    try:
        chain, key, pem = certificate(out)
        pin_clients(out)

        up_dir, up_conf = write_upstream(out)
        start([tools["nginx"], "-p", up_dir, "-c", up_conf, "-e", os.path.join(up_dir, "error.log")],
              os.path.join(out, "upstream.log"), cpu=CLIENT_CPU)
        wait_port(PORTS["upstream"])

        servers = {}
        if "weft" in targets:
            servers["weft"] = start_gateway(out, rel, chain, key).pid
        if "nginx" in targets:
            ng_dir, ng_conf = write_nginx(out, chain, key)
            servers["nginx"] = start([tools["nginx"], "-p", ng_dir, "-c", ng_conf, "-e", os.path.join(ng_dir, "error.log")],
                                     os.path.join(out, "nginx.log"), cpu=SERVER_CPU).pid
        if "haproxy" in targets:
            servers["haproxy"] = start([tools["haproxy"], "-db", "-f", write_haproxy(out, pem)],
                                       os.path.join(out, "haproxy.log"), cpu=SERVER_CPU).pid
        for name in targets:
            wait_port(PORTS[name])
        params = {name: check_target(name, PORTS[name]) for name in targets}
        for name, p in params.items():
            print(f"{name}: {p['protocol']}, {p['cipher']}, {p['group']}", file=sys.stderr)

        rows = {name: {"h1": [], "h2": [], "hs": []} for name in targets}
        counted = {"s_time": 0, **{r: 0.0 for r in RESULTS}}
        for rep in range(a.reps):
            for name in targets:
                port, pid = PORTS[name], servers[name]
                url = f"https://127.0.0.1:{port}/"

                def measured(run):
                    cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
                    r = run()
                    r["cpu"], r["wall"] = tree_cpu_seconds(pid) - cpu0, time.monotonic() - t0
                    return r

                wrk(url, 2, os.path.join(out, f"warm-h1-{name}-{rep}.txt"))
                r = measured(lambda: wrk(url, a.seconds, os.path.join(out, f"h1-{name}-{rep}.txt")))
                rows[name]["h1"].append(r)

                h2load(port, 2, os.path.join(out, f"warm-h2-{name}-{rep}.txt"))
                r = measured(lambda: h2load(port, a.seconds, os.path.join(out, f"h2-{name}-{rep}.txt")))
                rows[name]["h2"].append(r)

                s_time(port, 2, a.clients, os.path.join(out, f"warm-hs-{name}-{rep}"))
                before = gateway_handshakes(PORTS["gateway_admin"]) if name == "weft" else {}
                r = measured(lambda: {"conns": s_time(port, a.seconds, a.clients, os.path.join(out, f"hs-{name}-{rep}"))})
                if name == "weft":
                    counted["s_time"] += r["conns"]
                    after = gateway_handshakes(PORTS["gateway_admin"])
                    for result in RESULTS:
                        counted[result] += after[result] - before[result]
                rows[name]["hs"].append(r)

                h1, h2, hs = rows[name]["h1"][-1], rows[name]["h2"][-1], rows[name]["hs"][-1]
                print(f"rep {rep} {name}: h1 {h1['rps']:,.0f} req/s, h2 {h2['rps']:,.0f} req/s, "
                      f"{hs['conns'] / hs['cpu']:,.0f} handshakes per CPU second ({hs['conns'] / hs['wall']:,.0f}/s wall, "
                      f"server CPU {100 * hs['cpu'] / hs['wall']:.0f} %)", file=sys.stderr)
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            report(rows, params, counted, a)
        print(text.getvalue(), end="")
        open(os.path.join(out, "report.md"), "w").write(text.getvalue())
        failed = {name: sum(x["errors"] for kind in ("h1", "h2") for x in r[kind]) for name, r in rows.items()}
        if any(failed.values()):
            sys.exit(f"requests failed during the benchmark ({failed}): the figures above are not valid; logs in {out}")
    finally:
        stop_all()
        print(f"raw outputs and logs: {out}", file=sys.stderr)


def report(rows, params, counted, a):
    def cell(xs, fmt="{:,.0f}"):
        return f"{fmt.format(statistics.median(xs))} | {fmt.format(min(xs))}–{fmt.format(max(xs))}"

    def vs(name, kind, value):
        if "nginx" not in rows:
            return "–"
        base = statistics.median(value(r) for r in rows["nginx"][kind])
        return f"{statistics.median(value(r) for r in rows[name][kind]) / base:.2f}"

    per_10k = lambda r: r["cpu"] / max(r["requests"], 1) * 1e4
    print(f"## Edge gateway: TLS termination (medians of {a.reps} interleaved reps, {a.seconds} s each)\n")
    print(f"Each server pinned to CPU {SERVER_CPU} with one worker; upstream (nginx, 100-byte body) and load "
          f"generators on CPU {CLIENT_CPU}. Negotiated: " +
          "; ".join(f"{n} {p['protocol']} {p['cipher']} {p['group']}" for n, p in params.items()) + ".\n")
    for kind, title in (("h1", "Keep-alive requests over TLS, HTTP/1.1 (wrk -t1 -c50)"),
                        ("h2", "Keep-alive requests over TLS, HTTP/2 (h2load -t1 -c50 -m10)")):
        print(f"### {title}\n")
        print("| server | req/s | range | server CPU s per 10k req | range | server CPU busy | req/s vs nginx | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            xs = r[kind]
            busy = statistics.median(100 * x["cpu"] / x["wall"] for x in xs)
            print(f"| {name} | {cell([x['rps'] for x in xs])} | {cell([per_10k(x) for x in xs], '{:.3f}')} | "
                  f"{busy:.0f} % | {vs(name, kind, lambda x: x['rps'])} | {sum(x['errors'] for x in xs)} |")
        print()
    print("Requests per second compare servers only where they were busy near 100 %; below that the clients "
          "or the upstream set the pace, and CPU per request is the figure to compare.\n")
    print(f"### New TLS 1.3 handshakes, no resumption (openssl s_time -new, {a.clients} clients)\n")
    print("| server | handshakes per CPU second | range | wall-clock rate | range | server CPU busy | per core vs nginx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        xs = r["hs"]
        busy = statistics.median(100 * x["cpu"] / x["wall"] for x in xs)
        print(f"| {name} | {cell([x['conns'] / x['cpu'] for x in xs])} | {cell([x['conns'] / x['wall'] for x in xs])} | "
              f"{busy:.0f} % | {vs(name, 'hs', lambda x: x['conns'] / x['cpu'])} |")
    if "weft" in rows:
        # s_time hangs up as soon as its handshake is done, without reading
        # the session tickets the server sends after it: the gateway counts
        # a handshake whose last writes met the closed socket as closed.
        print(f"\nThe clients made {counted['s_time']:,} handshakes with the gateway; it counted "
              f"{sum(counted[r] for r in RESULTS):,.0f} (weft_gateway_tls_handshakes_total: " +
              ", ".join(f"{counted[r]:,.0f} {r}" for r in RESULTS) +
              "; s_time closes right after its handshake, before reading the session tickets, "
              "so most count as closed by the client).")


if __name__ == "__main__":
    main()
