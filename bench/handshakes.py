#!/usr/bin/env python3
"""New mTLS connections per second per core: a Weft sidecar's inbound
listener against nginx configured the same way (TLS 1.3, client certificate
required and verified against the same mesh root), measured in one run.

Each connection is a full handshake: no session resumption (`openssl s_time
-new`), an ECDSA P-256 client leaf with a SPIFFE URI SAN signed by a root from
`weftctl ca init`, X25519 key exchange. The server under test is pinned to
CPU 1 with one thread (the sidecar with TOKIO_WORKER_THREADS=1, nginx with one
worker); the clients (several `openssl s_time` processes) to CPU 0. The
figure per core is connections divided by the server's own CPU seconds
(utime + stime from /proc), so it does not depend on the clients keeping the
server saturated; the wall-clock rate is printed beside it.

The sidecar gets its leaf from a real weft-discovery agent (file backend,
join token), exactly as in a mesh.

Usage: python3 bench/handshakes.py [--reps 3] [--seconds 10] [--clients 3] [--out DIR]
Needs: nginx, openssl (apt-get install -y nginx openssl).
"""
import argparse, os, re, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mesh import REPO, cpu_seconds, start, stop_all, wait_http, wait_port  # noqa: E402

PORTS = dict(upstream=19580, agent=19510, agent_admin=19511, sidecar_in=19506, sidecar_out=19501, sidecar_admin=19520,
             nginx_tls=19543)
TRUST_DOMAIN = "bench.weft"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def leaf(ca, out, name, spiffe):
    """An ECDSA P-256 leaf signed by the mesh root, identity in the URI SAN only."""
    key, csr, crt, ext = (os.path.join(out, f"{name}.{s}") for s in ("key", "csr", "pem", "ext"))
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    openssl("req", "-new", "-key", key, "-subj", "/O=Weft bench", "-out", csr)
    with open(ext, "w") as f:
        f.write(f"subjectAltName=critical,URI:{spiffe}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", os.path.join(ca, "ca.pem"), "-CAkey", os.path.join(ca, "ca.key"),
            "-CAcreateserial", "-days", "1", "-sha256", "-extfile", ext, "-out", crt)
    return crt, key


def s_time(port, cert, key, ca, seconds, clients, out):
    """Runs `clients` openssl s_time loops on CPU 0; returns connections made."""
    argv = ["taskset", "-c", "0", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time",
            str(seconds), "-cert", cert, "-key", key, "-CAfile", os.path.join(ca, "bundle.pem")]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def get_over_tls(port, ca, cert=None, key=None):
    """One HTTP/1.1 GET over TLS with openssl s_client; returns the output."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-CAfile", os.path.join(ca, "bundle.pem")]
    if cert:
        argv += ["-cert", cert, "-key", key]
    req = "GET / HTTP/1.1\r\nHost: hs-server\r\nConnection: close\r\n\r\n"
    return subprocess.run(argv, input=req, capture_output=True, text=True, timeout=10).stdout


def check_mtls(name, port, ca, cert, key):
    """Both servers must answer a client with a mesh leaf and refuse one without."""
    if " 200 " not in get_over_tls(port, ca, cert, key):
        sys.exit(f"{name} did not answer a GET over mTLS with 200: the benchmark would measure nothing useful")
    if " 200 " in get_over_tls(port, ca):
        sys.exit(f"{name} answered a client without a certificate: client certificates are not enforced")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="weft-handshake-bench."))
    a = ap.parse_args()
    for tool in ("nginx", "openssl", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"missing {tool}: apt-get install -y nginx openssl util-linux")
    for package in ("weft-sidecar", "weft-discovery"):  # one package per build, as in mesh.py
        subprocess.run(["cargo", "build", "--release", "-q", "-p", package], cwd=REPO, check=True)
    rel = os.path.join(REPO, "target", "release")
    out = a.out
    os.makedirs(out, exist_ok=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        ca = os.path.join(out, "ca")
        subprocess.run([os.path.join(rel, "weftctl"), "ca", "init", "--trust-domain", TRUST_DOMAIN, "--out", ca,
                        "--force"], check=True, capture_output=True)
        client_crt, client_key = leaf(ca, out, "client", f"spiffe://{TRUST_DOMAIN}/ns/default/svc/hs-client")
        nginx_crt, nginx_key = leaf(ca, out, "nginx", f"spiffe://{TRUST_DOMAIN}/ns/default/svc/hs-server")

        # nginx: the plain upstream behind the sidecar, and the TLS baseline
        ng = os.path.join(out, "nginx")
        os.makedirs(os.path.join(ng, "tmp"), exist_ok=True)
        with open(os.path.join(ng, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1; worker_cpu_affinity 10; daemon off; pid {ng}/nginx.pid; error_log {ng}/error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off;
  client_body_temp_path {ng}/tmp; proxy_temp_path {ng}/tmp; fastcgi_temp_path {ng}/tmp; uwsgi_temp_path {ng}/tmp; scgi_temp_path {ng}/tmp;
  server {{ listen 127.0.0.1:{PORTS['upstream']}; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{PORTS['nginx_tls']} ssl backlog=4096;
    ssl_certificate {nginx_crt}; ssl_certificate_key {nginx_key};
    ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    ssl_verify_client on; ssl_client_certificate {ca}/bundle.pem; ssl_verify_depth 2;
    location / {{ return 200 "ok\\n"; }} }} }}
""")
        nginx_proc = start([nginx, "-p", ng, "-c", os.path.join(ng, "nginx.conf"), "-e", os.path.join(ng, "error.log")],
                           os.path.join(out, "nginx.log"))
        wait_port(PORTS["upstream"])
        wait_port(PORTS["nginx_tls"])
        worker = subprocess.run(["pgrep", "-P", str(nginx_proc.pid)], capture_output=True, text=True).stdout.split()
        if len(worker) != 1:
            sys.exit(f"expected one nginx worker, found {worker}")
        nginx_worker = int(worker[0])

        cfg = os.path.join(out, "config")
        os.makedirs(cfg, exist_ok=True)
        with open(os.path.join(cfg, "endpoints.yaml"), "w") as f:
            f.write(f"services:\n  hs-server:\n    - {{ address: 127.0.0.1, port: {PORTS['sidecar_in']}, meshed: true }}\n")
        token = os.urandom(16).hex()
        with open(os.path.join(out, "join-tokens.json"), "w") as f:
            f.write(f'{{"hs-server": "{token}"}}')
        start([os.path.join(rel, "weft-discovery"), "--config-dir", cfg, "--listen", f"127.0.0.1:{PORTS['agent']}",
               "--admin", f"127.0.0.1:{PORTS['agent_admin']}", "--ca-dir", ca,
               "--join-tokens", os.path.join(out, "join-tokens.json")], os.path.join(out, "agent.log"))
        wait_http(f"http://127.0.0.1:{PORTS['agent_admin']}/readyz", "weft-discovery")
        sidecar = start([os.path.join(rel, "weft-sidecar"), "--service", "hs-server",
                         "--discovery", f"http://127.0.0.1:{PORTS['agent']}",
                         "--inbound", f"127.0.0.1:{PORTS['sidecar_in']}", "--outbound", f"127.0.0.1:{PORTS['sidecar_out']}",
                         "--app", f"127.0.0.1:{PORTS['upstream']}",
                         "--admin", f"127.0.0.1:{PORTS['sidecar_admin']}"],
                        os.path.join(out, "sidecar.log"), {"TOKIO_WORKER_THREADS": "1", "WEFT_IDENTITY_TOKEN": token},
                        cpu=1)
        wait_http(f"http://127.0.0.1:{PORTS['sidecar_admin']}/ready", "weft-sidecar")

        servers = {"nginx": (PORTS["nginx_tls"], nginx_worker), "weft": (PORTS["sidecar_in"], sidecar.pid)}
        for name, (port, _) in servers.items():
            check_mtls(name, port, ca, client_crt, client_key)
        rows = {name: [] for name in servers}
        for rep in range(a.reps):
            for name, (port, pid) in servers.items():
                s_time(port, client_crt, client_key, ca, 2, a.clients, os.path.join(out, f"warm-{name}-{rep}"))
                cpu0, t0 = cpu_seconds(pid), time.monotonic()
                n = s_time(port, client_crt, client_key, ca, a.seconds, a.clients, os.path.join(out, f"{name}-{rep}"))
                cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
                rows[name].append({"conns": n, "per_core": n / cpu, "wall_rate": n / wall, "cpu_share": cpu / wall})
                print(f"rep {rep} {name}: {n / cpu:,.0f} handshakes per CPU second, {n / wall:,.0f}/s wall, "
                      f"server CPU {100 * cpu / wall:.0f} %", file=sys.stderr)
        report(rows, a)
    finally:
        stop_all()


def report(rows, a):
    med = lambda name, key: statistics.median(r[key] for r in rows[name])
    print(f"## New mTLS connections per second per core (medians of {a.reps} interleaved reps, {a.seconds} s each)\n")
    print("Full TLS 1.3 handshakes with a verified ECDSA P-256 client leaf (SPIFFE URI SAN), no resumption.\n")
    print("| server | handshakes per CPU second | range | wall-clock rate | server CPU busy | vs nginx |")
    print("|---|---:|---:|---:|---:|---:|")
    base = med("nginx", "per_core")
    for name in rows:
        lo, hi = min(r["per_core"] for r in rows[name]), max(r["per_core"] for r in rows[name])
        print(f"| {name} | {med(name, 'per_core'):,.0f} | {lo:,.0f}–{hi:,.0f} | {med(name, 'wall_rate'):,.0f}/s | "
              f"{100 * med(name, 'cpu_share'):.0f} % | {med(name, 'per_core') / base:.2f} |")


if __name__ == "__main__":
    main()
