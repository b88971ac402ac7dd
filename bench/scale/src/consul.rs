//! The benchmark's Consul: a real `consul agent -dev` on loopback, filled
//! in bulk with Connect services the way `connect.sidecar_service` would
//! register them, and the health flips the changes are made of.
//!
//! The e2e harness (tests/src/harness/consul.rs) registers through the
//! local agent, one instance at a time, which takes minutes for 10,000
//! instances. Here the instances live on synthetic nodes (10 per node,
//! like a real datacenter's hosts) written with `/v1/catalog/register`,
//! two writes per instance (the app with its TTL check, the proxy with
//! Consul's two sidecar checks), 32 in flight: Raft batches concurrent
//! writes, so 10,000 instances take seconds. (`/v1/txn` would be fewer
//! writes, but Consul 1.8 drops a service's `Kind` and `Proxy` in a
//! transaction.) Nodes outside Serf are never reaped (this is how
//! Consul's external-services tooling works), and their checks are only
//! what the benchmark writes: a flip is a catalog write, not a timer.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use crate::http::HttpClient;

/// Instances per synthetic node.
const INSTANCES_PER_NODE: usize = 10;
/// Registrations in flight while filling: enough to keep Raft's batching
/// busy, few enough to stay far below Consul's connection limit.
const FILL_CONCURRENCY: usize = 32;
/// Consul's own default, which a stock agent has.
pub const STOCK_MAX_CONNS_PER_CLIENT: u32 = 200;

/// The source address of the benchmark's own Consul calls (see
/// [`HttpClient::new`]).
const BENCH_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A free loopback port (bound then released; the race with another
/// process taking it in between is acceptable for a benchmark).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("binding an ephemeral loopback port")?
        .local_addr()?
        .port())
}

/// The benchmark's mesh: S services × E instances, named so that sorting
/// the names sorts the services.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub services: usize,
    pub instances: usize,
}

impl Mesh {
    pub fn service(&self, s: usize) -> String {
        let width = self
            .services
            .saturating_sub(1)
            .max(1)
            .to_string()
            .len()
            .max(4);
        format!("svc-{s:0width$}")
    }

    pub fn service_names(&self) -> Vec<String> {
        (0..self.services).map(|s| self.service(s)).collect()
    }

    pub fn app_id(&self, s: usize, e: usize) -> String {
        format!("{}-{e}", self.service(s))
    }

    /// The proxy's service ID: what the agent puts in `instance_id`.
    pub fn proxy_id(&self, s: usize, e: usize) -> String {
        format!("{}-sidecar-proxy", self.app_id(s, e))
    }

    pub fn ttl_check_id(&self, s: usize, e: usize) -> String {
        format!("{}-ttl", self.app_id(s, e))
    }

    fn global(&self, s: usize, e: usize) -> usize {
        s * self.instances + e
    }

    pub fn node(&self, s: usize, e: usize) -> (String, String) {
        node_of(self.global(s, e) / INSTANCES_PER_NODE)
    }
}

/// Node `n`'s name and address (127.1.0.0/16 and up: loopback, never dialled).
fn node_of(n: usize) -> (String, String) {
    (
        format!("bench-node-{n:05}"),
        format!("127.{}.{}.{}", 1 + n / 65_536, (n / 256) % 256, n % 256),
    )
}

pub struct Consul {
    child: Child,
    pub http_port: u16,
    pub address: String,
    http: HttpClient,
    pub log: PathBuf,
}

impl Consul {
    /// Starts a dev agent (in-memory state) on free loopback ports, with
    /// `limits { http_max_conns_per_client = max_conns }`, and waits for
    /// its leader.
    pub async fn start(binary: &Path, work: &Path, max_conns: u32) -> anyhow::Result<Self> {
        if !binary.is_file() {
            bail!(
                "CONSUL IS MISSING: {} is not a file. Install it with `bash deploy/local/install-consul.sh` and pass --consul-bin or set WEFT_CONSUL_BIN",
                binary.display()
            );
        }
        let http_port = free_port()?;
        let log = work.join("consul.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
                "-http-port",
                &http_port.to_string(),
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
                "-serf-lan-port",
                &free_port()?.to_string(),
                "-serf-wan-port",
                "-1",
                "-server-port",
                &free_port()?.to_string(),
                "-node",
                "weft-bench",
                "-log-level",
                "warn",
                "-hcl",
                &format!("limits {{ http_max_conns_per_client = {max_conns} }}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut consul = Self {
            child,
            http_port,
            address: format!("http://127.0.0.1:{http_port}"),
            http: HttpClient::new(Some(BENCH_SOURCE)),
            log,
        };
        consul.wait_for_leader().await?;
        Ok(consul)
    }

    async fn wait_for_leader(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/v1/status/leader", self.address);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "consul exited with {status} before electing a leader; see {}",
                    self.log.display()
                );
            }
            match self.http.get(&url).await {
                Ok(reply) if reply.status.is_success() && reply.text().contains(':') => {
                    return Ok(());
                }
                Ok(reply) => last = format!("{} {}", reply.status, reply.text()),
                Err(error) => last = format!("{error:#}"),
            }
            // Polling the readiness endpoint: Consul offers no push for it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "consul elected no leader within 30 s (last answer: {last}); see {}",
            self.log.display()
        )
    }

    /// Registers every instance (app, its proxy, their checks); returns
    /// how long it took.
    pub async fn fill(&self, mesh: &Mesh) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let permits = Arc::new(Semaphore::new(FILL_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        let url = format!("{}/v1/catalog/register", self.address);
        for s in 0..mesh.services {
            for e in 0..mesh.instances {
                for body in registrations(mesh, s, e) {
                    let permit = permits.clone().acquire_owned().await?;
                    let http = self.http.clone();
                    let url = url.clone();
                    let id = mesh.app_id(s, e);
                    tasks.spawn(async move {
                        let _permit = permit;
                        http.put_json(&url, &body)
                            .await
                            .with_context(|| format!("registering instance {id}"))
                            .map(drop)
                    });
                    while let Some(done) = tasks.try_join_next() {
                        done??;
                    }
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        self.verify_fill(mesh).await?;
        Ok(started.elapsed())
    }

    /// What the agent will see: every name in the catalog, every instance
    /// of the first and last service passing.
    async fn verify_fill(&self, mesh: &Mesh) -> anyhow::Result<()> {
        let services: Value = serde_json::from_slice(
            &self
                .http
                .get(&format!("{}/v1/catalog/services", self.address))
                .await?
                .body,
        )?;
        let names = services.as_object().map_or(0, |m| m.len());
        // Apps, their proxies, and Consul's own `consul`.
        if names != 2 * mesh.services + 1 {
            bail!(
                "after filling, Consul's catalog has {names} names, expected {}",
                2 * mesh.services + 1
            );
        }
        for s in [0, mesh.services - 1] {
            let name = mesh.service(s);
            let url = format!("{}/v1/health/connect/{name}?passing", self.address);
            let entries: Value = serde_json::from_slice(&self.http.get(&url).await?.body)?;
            let count = entries.as_array().map_or(0, Vec::len);
            if count != mesh.instances {
                bail!(
                    "after filling, {url} lists {count} passing proxies, expected {}",
                    mesh.instances
                );
            }
        }
        Ok(())
    }

    /// Sets instance (s, e)'s TTL check passing or critical with a
    /// catalog write; returns once Consul has committed it.
    pub async fn set_health(
        &self,
        mesh: &Mesh,
        s: usize,
        e: usize,
        passing: bool,
    ) -> anyhow::Result<()> {
        let (node, address) = mesh.node(s, e);
        let body = json!({
            "Node": node,
            "Address": address,
            "SkipNodeUpdate": true,
            "Check": app_check(mesh, s, e, &node, if passing { "passing" } else { "critical" }),
        });
        self.http
            .put_json(&format!("{}/v1/catalog/register", self.address), &body)
            .await
            .with_context(|| format!("setting {} {passing}", mesh.ttl_check_id(s, e)))
            .map(drop)
    }
}

/// The app's TTL check: what the benchmark flips.
fn app_check(mesh: &Mesh, s: usize, e: usize, node: &str, status: &str) -> Value {
    json!({
        "Node": node,
        "CheckID": mesh.ttl_check_id(s, e),
        "Name": "Application TTL",
        "Status": status,
        "ServiceID": mesh.app_id(s, e),
        "ServiceName": mesh.service(s),
        "Type": "ttl",
    })
}

/// Instance (s, e)'s two catalog writes: the app with its TTL check, and
/// its Connect proxy as `connect.sidecar_service` registers it (kind
/// connect-proxy, named <service>-sidecar-proxy, pointing at its app) with
/// the two checks Consul gives a sidecar.
fn registrations(mesh: &Mesh, s: usize, e: usize) -> [Value; 2] {
    let (node, address) = mesh.node(s, e);
    let (name, app_id, proxy_id) = (mesh.service(s), mesh.app_id(s, e), mesh.proxy_id(s, e));
    let slot = (mesh.global(s, e) % INSTANCES_PER_NODE) as u16;
    let (app_port, proxy_port) = (8000 + slot, 21000 + slot);
    let proxy_name = format!("{name}-sidecar-proxy");
    [
        json!({
            "Node": node, "Address": address,
            "Service": { "ID": app_id, "Service": name, "Port": app_port },
            "Checks": [app_check(mesh, s, e, &node, "passing")],
        }),
        json!({
            "Node": node, "Address": address,
            "Service": {
                "ID": proxy_id, "Service": proxy_name, "Port": proxy_port,
                "Kind": "connect-proxy",
                "Proxy": {
                    "DestinationServiceName": name,
                    "DestinationServiceID": app_id,
                    "LocalServiceAddress": "127.0.0.1",
                    "LocalServicePort": app_port,
                },
            },
            "Checks": [
                {
                    "Node": node, "CheckID": format!("service:{proxy_id}:1"),
                    "Name": "Connect Sidecar Listening", "Status": "passing",
                    "ServiceID": proxy_id, "ServiceName": proxy_name, "Type": "tcp",
                    "Definition": { "TCP": format!("{address}:{proxy_port}"), "Interval": "10s" },
                },
                {
                    "Node": node, "CheckID": format!("service:{proxy_id}:2"),
                    "Name": format!("Connect Sidecar Aliasing {app_id}"), "Status": "passing",
                    "ServiceID": proxy_id, "ServiceName": proxy_name, "Type": "alias",
                },
            ],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_share_nodes_ten_at_a_time_with_distinct_addresses() {
        let mesh = Mesh {
            services: 1000,
            instances: 10,
        };
        assert_eq!(mesh.node(0, 9), mesh.node(0, 0));
        assert_ne!(mesh.node(1, 0), mesh.node(0, 9));
        assert_eq!(mesh.node(999, 9).1, "127.1.3.231");
        assert_eq!(mesh.proxy_id(42, 3), "svc-0042-3-sidecar-proxy");
        let [app, proxy] = registrations(&mesh, 42, 3);
        assert_eq!(app["Checks"][0]["CheckID"], "svc-0042-3-ttl");
        assert_eq!(proxy["Service"]["Kind"], "connect-proxy");
        assert_eq!(
            proxy["Service"]["Proxy"]["DestinationServiceID"],
            "svc-0042-3"
        );
    }
}
