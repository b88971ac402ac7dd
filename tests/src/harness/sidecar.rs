//! Sidecars (`weft-sidecar`) as child processes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::agent::{launched, wait_for_200};
use super::binaries::binary;
use super::http::HttpClient;
use super::ports::free_port;
use super::process::Process;

/// Time for a sidecar to start, connect and receive its first complete config.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a sidecar is started with.
#[derive(Clone, Debug)]
pub struct SidecarSpec {
    pub service: String,
    pub instance: String,
    pub discovery: String,
    pub app_port: u16,
    /// The inbound port, when it must be known before the sidecar starts
    /// (it is registered in Consul first); a free one otherwise.
    pub inbound_port: Option<u16>,
    /// More flags (`--identity-token ...`).
    pub extra_args: Vec<String>,
}

/// A running sidecar.
pub struct Sidecar {
    process: Process,
    pub service: String,
    pub instance: String,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    http: HttpClient,
}

impl Sidecar {
    /// Starts a sidecar and waits for its `/ready`.
    pub async fn start(log_dir: &Path, spec: SidecarSpec) -> anyhow::Result<Self> {
        Self::start_under(log_dir, spec, &[]).await
    }

    /// Like [`Sidecar::start`], run by `launcher` (a command that execs its
    /// last argument, such as `prlimit --nofile=1024:1024`; empty: none).
    pub async fn start_under(
        log_dir: &Path,
        spec: SidecarSpec,
        launcher: &[String],
    ) -> anyhow::Result<Self> {
        let mut sidecar = Self::spawn_under(log_dir, spec, launcher)?;
        let url = format!("http://{}/ready", sidecar.admin);
        wait_for_200(&mut sidecar.process, &sidecar.http, &url, READY_TIMEOUT).await?;
        Ok(sidecar)
    }

    /// Starts a sidecar without waiting for it to be ready (say, to watch
    /// it try to reach an agent that is not there).
    pub fn spawn_under(
        log_dir: &Path,
        spec: SidecarSpec,
        launcher: &[String],
    ) -> anyhow::Result<Self> {
        let inbound = loopback(match spec.inbound_port {
            Some(port) => port,
            None => free_port()?,
        });
        // An outbound port chosen by the caller (its app was told it).
        let chosen_outbound = spec
            .extra_args
            .iter()
            .position(|a| a == "--outbound")
            .and_then(|i| spec.extra_args.get(i + 1))
            .map(|addr| addr.parse::<SocketAddr>())
            .transpose()
            .context("--outbound in the sidecar's extra args")?;
        let outbound = chosen_outbound.unwrap_or(loopback(free_port()?));
        let admin = loopback(free_port()?);
        let args = vec![
            "--service".to_owned(),
            spec.service.clone(),
            "--instance".to_owned(),
            spec.instance.clone(),
            "--discovery".to_owned(),
            spec.discovery.clone(),
            "--inbound".to_owned(),
            inbound.to_string(),
            "--app".to_owned(),
            loopback(spec.app_port).to_string(),
            "--admin".to_owned(),
            admin.to_string(),
        ];
        let args = if chosen_outbound.is_some() {
            args
        } else {
            [args, vec!["--outbound".to_owned(), outbound.to_string()]].concat()
        };
        let args = [args, spec.extra_args.clone()].concat();
        let (program, args) = launched(launcher, binary("weft-sidecar")?, args);
        let process = Process::spawn_with_env(
            &format!("sidecar-{}", spec.instance),
            &program,
            &args,
            &[("RUST_LOG", "info,weft_sidecar=debug"), ("NO_COLOR", "1")],
            log_dir,
        )?;
        Ok(Self {
            process,
            service: spec.service,
            instance: spec.instance,
            inbound,
            outbound,
            admin,
            http: HttpClient::new(),
        })
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_json("/config_dump").await
    }

    /// `/identity` as JSON (mTLS on).
    pub async fn identity(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_json("/identity").await
    }

    /// What the sidecar trusts and presents, from `/identity`.
    pub async fn trust(&self) -> anyhow::Result<Trust> {
        let identity = self.identity().await?;
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        Ok(Trust {
            roots: identity["roots"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|root| text(&root["subject"]))
                .collect(),
            issuer: text(&identity["issuer"]),
            serial: text(&identity["serial"]),
        })
    }

    /// `/clusters` as JSON.
    pub async fn clusters(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_json("/clusters").await
    }

    /// `/metrics`, checked to be OpenMetrics text (content type and form).
    pub async fn metrics(&self) -> anyhow::Result<super::metrics::MetricsPage> {
        let url = format!("http://{}/metrics", self.admin);
        let reply = self.http.get(&url).await?;
        let content_type = reply
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !reply.status.is_success() || !content_type.starts_with("application/openmetrics-text") {
            bail!(
                "sidecar {} /metrics answered {} ({content_type}): {}",
                self.instance,
                reply.status,
                reply.text()
            );
        }
        super::metrics::MetricsPage::parse(&reply.text())
            .with_context(|| format!("sidecar {} /metrics", self.instance))
    }

    /// `/ready` right now: its status and the reason it gives.
    pub async fn readiness(&self) -> anyhow::Result<(http::StatusCode, String)> {
        let reply = self
            .http
            .get(&format!("http://{}/ready", self.admin))
            .await?;
        Ok((reply.status, reply.text()))
    }

    /// This sidecar's view of the outbound cluster `name` in `/clusters`.
    pub async fn outbound_cluster(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let clusters = self.clusters().await?;
        clusters["clusters"]
            .as_array()
            .context("/clusters has no list")?
            .iter()
            .find(|c| c["name"] == name && c["direction"] == "outbound")
            .cloned()
            .with_context(|| format!("no outbound cluster {name} in /clusters: {clusters}"))
    }

    /// `/tcp` (opaque TCP counters) as JSON.
    pub async fn tcp_stats(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_json("/tcp").await
    }

    /// The sidecar's log so far.
    pub fn log(&self) -> anyhow::Result<String> {
        let path = self.process.log_path();
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }

    /// An error (with the log) if the sidecar died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    async fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let reply = self
            .http
            .get(&format!("http://{}{path}", self.admin))
            .await?;
        if !reply.status.is_success() {
            bail!(
                "sidecar {} {path} answered {}: {}",
                self.instance,
                reply.status,
                reply.text()
            );
        }
        reply
            .json()
            .with_context(|| format!("sidecar {} {path}", self.instance))
    }
}

/// A sidecar's trust bundle and leaf, as `/identity` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    /// The subject of every trusted root, in bundle order.
    pub roots: Vec<String>,
    /// The subject of the CA that signed the leaf.
    pub issuer: String,
    /// The leaf's serial.
    pub serial: String,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
