//! The discovery agent (`weft-discovery`) as a child process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::binaries::binary;
use super::eventually::eventually;
use super::http::HttpClient;
use super::ports::free_port;
use super::process::Process;

/// Time for the agent to start and finish its first full sync (`/readyz`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the agent gets the mesh from.
#[derive(Clone, Debug)]
pub enum Backend {
    /// `--consul <address>`.
    Consul(String),
    /// `--config-dir <dir>`: the embedded file backend.
    ConfigDir(PathBuf),
}

/// A running `weft-discovery`, restartable on the same ports.
pub struct Agent {
    process: Process,
    listen_port: u16,
    admin_port: u16,
    http: HttpClient,
}

impl Agent {
    /// Starts the agent on free ports and waits for `/readyz`.
    pub async fn start(log_dir: &Path, backend: &Backend) -> anyhow::Result<Self> {
        Self::start_with(log_dir, backend, &[]).await
    }

    /// Like [`Agent::start`], with more flags (`--ca-dir ...`).
    pub async fn start_with(
        log_dir: &Path,
        backend: &Backend,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_under(log_dir, backend, extra_args, &[]).await
    }

    /// Like [`Agent::start_with`], run by `launcher` (a command that execs
    /// its last argument, such as `prlimit --nofile=1024:1024`; empty: none).
    pub async fn start_under(
        log_dir: &Path,
        backend: &Backend,
        extra_args: &[String],
        launcher: &[String],
    ) -> anyhow::Result<Self> {
        let mut agent = Self::spawn_under(log_dir, backend, extra_args, launcher)?;
        agent.wait_ready().await?;
        Ok(agent)
    }

    /// Starts the agent without waiting for it to be ready: for tests that
    /// watch it while it syncs (then [`Agent::wait_ready`]) or that expect
    /// it never to get there.
    pub fn spawn(log_dir: &Path, backend: &Backend, extra_args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_under(log_dir, backend, extra_args, &[])
    }

    /// [`Agent::spawn`] run by `launcher` (see [`Agent::start_under`]).
    fn spawn_under(
        log_dir: &Path,
        backend: &Backend,
        extra_args: &[String],
        launcher: &[String],
    ) -> anyhow::Result<Self> {
        let listen_port = free_port()?;
        let admin_port = free_port()?;
        let mut args = match backend {
            Backend::Consul(address) => vec!["--consul".to_owned(), address.clone()],
            Backend::ConfigDir(dir) => vec!["--config-dir".to_owned(), dir.display().to_string()],
        };
        args.extend([
            "--listen".to_owned(),
            format!("127.0.0.1:{listen_port}"),
            "--admin".to_owned(),
            format!("127.0.0.1:{admin_port}"),
        ]);
        args.extend_from_slice(extra_args);
        let (program, args) = launched(launcher, binary("weft-discovery")?, args);
        let process = Process::spawn_with_env(
            "weft-discovery",
            &program,
            &args,
            &[("RUST_LOG", "info,weft_discovery=debug"), ("NO_COLOR", "1")],
            log_dir,
        )?;
        Ok(Self {
            process,
            listen_port,
            admin_port,
            http: HttpClient::new(),
        })
    }

    /// What a sidecar's `--discovery` takes.
    pub fn discovery_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listen_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Waits until `/readyz` answers 200 (first full sync done).
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.admin_url());
        wait_for_200(&mut self.process, &self.http, &url, READY_TIMEOUT).await
    }

    /// Kills the agent (SIGKILL: like a crash, nothing gets a goodbye) and
    /// starts it again on the same ports, then waits for `/readyz`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart()?;
        self.wait_ready().await
    }

    /// The agent's `/status` JSON.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let reply = self
            .http
            .get(&format!("{}/status", self.admin_url()))
            .await?;
        if !reply.status.is_success() {
            bail!("agent /status answered {}: {}", reply.status, reply.text());
        }
        reply.json().context("agent /status")
    }

    /// `/metrics`, parsed (and checked to be OpenMetrics text).
    pub async fn metrics(&self) -> anyhow::Result<super::metrics::MetricsPage> {
        let reply = self
            .http
            .get(&format!("{}/metrics", self.admin_url()))
            .await?;
        if !reply.status.is_success() {
            bail!("agent /metrics answered {}: {}", reply.status, reply.text());
        }
        super::metrics::MetricsPage::parse(&reply.text()).context("agent /metrics")
    }

    /// `/readyz`'s status right now (200 once the first full sync is done).
    pub async fn readyz(&self) -> anyhow::Result<http::StatusCode> {
        let reply = self
            .http
            .get(&format!("{}/readyz", self.admin_url()))
            .await?;
        Ok(reply.status)
    }

    /// `/ui/graph.json`: every service the agent serves with its instances
    /// (`address`, `healthy`, `meshed`).
    pub async fn graph(&self) -> anyhow::Result<serde_json::Value> {
        let reply = self
            .http
            .get(&format!("{}/ui/graph.json", self.admin_url()))
            .await?;
        if !reply.status.is_success() {
            bail!(
                "agent /ui/graph.json answered {}: {}",
                reply.status,
                reply.text()
            );
        }
        reply.json().context("agent /ui/graph.json")
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// The program and arguments that run `binary args` under `launcher` (its
/// first word is the program; the binary becomes an argument), or the
/// binary itself when `launcher` is empty.
pub(crate) fn launched(
    launcher: &[String],
    binary: PathBuf,
    args: Vec<String>,
) -> (PathBuf, Vec<String>) {
    match launcher.split_first() {
        None => (binary, args),
        Some((program, launcher_args)) => {
            let mut all = launcher_args.to_vec();
            all.push(binary.display().to_string());
            all.extend(args);
            (PathBuf::from(program), all)
        }
    }
}

/// Polls `url` until it answers 200, failing at once (with the log) if the
/// process dies meanwhile.
pub(crate) async fn wait_for_200(
    process: &mut Process,
    http: &HttpClient,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = process.name().to_owned();
    let result = eventually(timeout, &format!("{name} answers 200 on {url}"), || {
        let alive = process.check_running();
        let http = http.clone();
        async move {
            alive?;
            let reply = http.get(url).await?;
            if reply.status.is_success() {
                Ok(())
            } else {
                bail!("{} {}", reply.status, reply.text())
            }
        }
    })
    .await;
    result.map_err(|error| {
        anyhow::anyhow!(
            "{error:#}\nlast lines of {}:\n{}",
            process.log_path().display(),
            process.tail()
        )
    })
}
