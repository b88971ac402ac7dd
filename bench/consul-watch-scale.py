#!/usr/bin/env python3
"""One-off measurement of the agent's Consul watches at scale (issue 12).

Starts a Consul dev agent, registers a synthetic Connect catalog straight
into its catalog (SERVICES services x INSTANCES instances, each an app and
its connect-proxy, with one passing check each, over NODES nodes), starts
a weft-discovery binary against it and reports:

- time from process start to /readyz 200 (first full sync);
- the most TCP connections the agent held to Consul's HTTP port while it
  synced, and after (sampled from /proc every few ms);
- for ROUNDS single check changes: time from the catalog write returning
  to the agent's next snapshot build (/status counters.snapshot_builds_total,
  which includes the builder's 20 ms debounce).

Usage:
  WEFT_CONSUL_BIN=... bench/consul-watch-scale.py --agent target/debug/weft-discovery
  # an agent with one connection per catalog name needs Consul's limit raised:
  bench/consul-watch-scale.py --agent OLD --consul-hcl 'limits { http_max_conns_per_client = 10000 }'
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body))
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def connections(pid, port):
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    remote = f":{port:04X}"
    # A set, not a count: /proc/net/tcp is read in chunks while the table
    # changes, and can list a socket twice.
    matched = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            cols = line.split()
            if cols[2].endswith(remote) and cols[3] == "01" and cols[9] in inodes:
                matched.add(cols[9])
    return len(matched)


def registrations(args):
    for s in range(args.services):
        for i in range(args.instances):
            n = (s * args.instances + i) % args.nodes
            node, addr = f"node-{n}", f"10.77.{n // 250}.{n % 250 + 1}"
            sid = f"svc-{s}-{i}"
            yield {"Node": node, "Address": addr,
                   "Service": {"ID": sid, "Service": f"svc-{s}", "Port": 8000 + i},
                   "Checks": [{"CheckID": f"{sid}-ttl", "Name": "t", "ServiceID": sid, "Status": "passing"}]}
            yield {"Node": node, "Address": addr,
                   "Service": {"Kind": "connect-proxy", "ID": f"{sid}-sidecar-proxy",
                               "Service": f"svc-{s}-sidecar-proxy", "Port": 21000 + i,
                               "Proxy": {"DestinationServiceName": f"svc-{s}", "DestinationServiceID": sid}},
                   "Checks": [{"CheckID": f"{sid}-sidecar-ttl", "Name": "t",
                               "ServiceID": f"{sid}-sidecar-proxy", "Status": "passing"}]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", required=True)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--consul-hcl", default="")
    parser.add_argument("--agent-arg", action="append", default=[])
    args = parser.parse_args()

    consul_bin = os.environ.get("WEFT_CONSUL_BIN") or shutil.which("consul")
    if not consul_bin:
        sys.exit("set WEFT_CONSUL_BIN")
    work = tempfile.mkdtemp(prefix="weft-scale-")
    http_port = free_port()
    consul_args = [consul_bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
                   "-http-port", str(http_port), "-dns-port", "-1", "-grpc-port", "-1",
                   "-serf-lan-port", str(free_port()), "-serf-wan-port", "-1",
                   "-server-port", str(free_port())]
    if args.consul_hcl:
        with open(f"{work}/extra.hcl", "w") as f:
            f.write(args.consul_hcl)
        consul_args.append(f"-config-file={work}/extra.hcl")
    consul = subprocess.Popen(consul_args, stdout=open(f"{work}/consul.log", "w"), stderr=subprocess.STDOUT)
    agent = None
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                status, body = request(http_port, "GET", "/v1/status/leader")
                if status == 200 and b":" in body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for status, body in pool.map(lambda b: request(http_port, "PUT", "/v1/catalog/register", b),
                                         registrations(args)):
                if status != 200:
                    sys.exit(f"register: {status} {body[:200]}")
        print(f"registered {args.services} x {args.instances} Connect instances "
              f"({2 * args.services} names) in {time.time() - started:.1f} s")

        admin = free_port()
        agent = subprocess.Popen([args.agent, "--consul", f"http://127.0.0.1:{http_port}",
                                  "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}",
                                  *args.agent_arg],
                                 env={"RUST_LOG": "info", **os.environ, "NO_COLOR": "1"},
                                 stdout=open(f"{work}/agent.log", "w"), stderr=subprocess.STDOUT)
        started = time.monotonic()
        peak = [0, 0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], connections(agent.pid, http_port))
                    peak[1] += 1
                except OSError:
                    pass
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        synced = None
        while time.monotonic() - started < 120:
            if agent.poll() is not None:
                break
            try:
                if request(admin, "GET", "/readyz", timeout=2)[0] == 200:
                    synced = time.monotonic() - started
                    break
            except OSError:
                pass
            time.sleep(0.005)
        stop.set()
        sampler.join()
        if synced is None:
            print(f"NO first sync within 120 s; peak connections {peak[0]}; agent log: {work}/agent.log")
            return
        print(f"first sync: {synced * 1000:.0f} ms; peak connections during sync: {peak[0]} ({peak[1]} samples)")
        time.sleep(1)
        print(f"connections held when idle: {connections(agent.pid, http_port)}")

        def builds():
            return json.loads(request(admin, "GET", "/status")[1])["counters"]["snapshot_builds_total"]

        took = []
        target = args.services // 2
        for round_ in range(args.rounds):
            instance = min(3, args.instances - 1)
            body = next(b for b in registrations(args)
                        if b["Service"]["ID"] == f"svc-{target}-{instance}")
            body["Checks"][0]["Status"] = "critical" if round_ % 2 == 0 else "passing"
            before = builds()
            t0 = time.monotonic()
            request(http_port, "PUT", "/v1/catalog/register", body)
            written = time.monotonic()
            while builds() == before:
                if time.monotonic() - t0 > 30:
                    print("no snapshot within 30 s")
                    break
                time.sleep(0.002)
            took.append((time.monotonic() - written) * 1000)
            time.sleep(0.5)
        print("check change -> snapshot (ms): " + ", ".join(f"{t:.0f}" for t in took)
              + f"; median {statistics.median(took):.0f}")
        def timed(method, path, body):
            before = builds()
            t0 = time.monotonic()
            request(http_port, method, path, body)
            written = time.monotonic()
            while builds() == before and time.monotonic() - t0 < 30:
                time.sleep(0.002)
            return (time.monotonic() - written) * 1000

        # A new instance's sidecar proxy: a new meshed endpoint of svc-<target>.
        extra = next(b for b in registrations(args)
                     if b["Service"]["ID"] == f"svc-{target}-0-sidecar-proxy")
        extra = json.loads(json.dumps(extra))
        extra["Service"]["ID"] = f"svc-{target}-new-sidecar-proxy"
        extra["Service"]["Port"] = 29999
        extra["Service"]["Proxy"]["DestinationServiceID"] = f"svc-{target}-new"
        extra["Checks"][0]["CheckID"] = f"svc-{target}-new-sidecar-ttl"
        extra["Checks"][0]["ServiceID"] = f"svc-{target}-new-sidecar-proxy"
        registered = timed("PUT", "/v1/catalog/register", extra)
        time.sleep(0.5)
        deregistered = timed("PUT", "/v1/catalog/deregister",
                             {"Node": extra["Node"], "ServiceID": f"svc-{target}-new-sidecar-proxy"})
        print(f"new instance -> snapshot: {registered:.0f} ms; its deregistration -> snapshot: {deregistered:.0f} ms")
        print(f"connections held after the changes: {connections(agent.pid, http_port)}")
    finally:
        if agent:
            agent.kill()
        consul.kill()
        print(f"logs in {work}")


if __name__ == "__main__":
    main()
