//! Consul's own built-in Connect proxy (`consul connect proxy`), for the
//! mixed-mesh tests: a service fronted by it, or a caller going out
//! through it, on the same Connect CA as Weft sidecars started with
//! `--identity-source consul`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::consul::{Consul, consul_binary};
use super::eventually::eventually;
use super::ports::free_port;
use super::process::Process;

/// Consul's proxy fetches its leaf and roots, then listens: seconds on a
/// loaded machine.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `consul connect proxy`, killed on drop.
pub struct ConsulProxy {
    process: Process,
    /// Where it listens: the public mTLS listener of a sidecar, or the
    /// plaintext port of a caller's upstream.
    pub listen: SocketAddr,
}

impl ConsulProxy {
    /// Consul's sidecar for the instance `id` (registered with a
    /// `connect.sidecar_service` on `public_port`): mTLS on `public_port`,
    /// plaintext TCP to the instance's own port.
    pub async fn sidecar_for(
        consul: &Consul,
        log_dir: &Path,
        id: &str,
        public_port: u16,
    ) -> anyhow::Result<Self> {
        let args = [
            "connect",
            "proxy",
            "-http-addr",
            &consul.address(),
            "-sidecar-for",
            id,
        ]
        .map(str::to_owned);
        Self::start(&format!("consul-proxy-{id}"), &args, log_dir, public_port).await
    }

    /// A caller's proxy: `service`'s identity, and a plaintext listener
    /// whose connections it carries over mTLS to `upstream` (its Connect
    /// endpoints, Weft sidecars included). Returns with `listen` that port.
    pub async fn caller(
        consul: &Consul,
        log_dir: &Path,
        service: &str,
        upstream: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let args = [
            "connect".to_owned(),
            "proxy".to_owned(),
            "-http-addr".to_owned(),
            consul.address(),
            "-service".to_owned(),
            service.to_owned(),
            "-upstream".to_owned(),
            format!("{upstream}:{port}"),
        ];
        Self::start(&format!("consul-proxy-{service}"), &args, log_dir, port).await
    }

    async fn start(name: &str, args: &[String], log_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let process = RefCell::new(Process::spawn(name, &consul_binary()?, args, log_dir)?);
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        // It opens its listeners once its leaf and roots are loaded: an
        // accepted connection is its readiness (it prints no marker line).
        eventually(
            LISTEN_TIMEOUT,
            &format!("{name} listens on {listen}"),
            || async {
                process.borrow_mut().check_running()?;
                tokio::net::TcpStream::connect(listen)
                    .await
                    .with_context(|| format!("connecting to {listen}"))?;
                Ok(())
            },
        )
        .await?;
        Ok(Self {
            process: process.into_inner(),
            listen,
        })
    }

    /// Its log so far.
    pub fn log(&self) -> anyhow::Result<String> {
        let path = self.process.log_path();
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}
