//! Upstream apps: `weft-testapp` processes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::binaries::binary;
use super::process::Process;

/// The app binds and prints READY in milliseconds; generous for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `weft-testapp` that answers as `service`/`instance`.
pub struct App {
    process: Process,
    pub service: String,
    pub instance: String,
    pub addr: SocketAddr,
}

impl App {
    /// Starts an app on a free port and waits for its READY line.
    pub async fn start(log_dir: &Path, service: &str, instance: &str) -> anyhow::Result<Self> {
        let args = vec![
            "--service".to_owned(),
            service.to_owned(),
            "--instance".to_owned(),
            instance.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        let mut process = Process::spawn(
            &format!("app-{instance}"),
            &binary("weft-testapp")?,
            &args,
            log_dir,
        )?;
        let line = process.ready_line(READY_TIMEOUT).await?;
        let addr = line
            .parse()
            .with_context(|| format!("app {instance} printed READY {line:?}, not an address"))?;
        Ok(Self {
            process,
            service: service.to_owned(),
            instance: instance.to_owned(),
            addr,
        })
    }

    /// The app's log so far (it logs every WebSocket upgrade it is asked
    /// for, with the path).
    pub fn log(&self) -> anyhow::Result<String> {
        let path = self.process.log_path();
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Kills the app (its instance stays registered: connections to it fail).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
