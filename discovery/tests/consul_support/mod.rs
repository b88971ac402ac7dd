//! A real `consul agent -dev` per test, on its own loopback ports, so tests
//! run in parallel. Shared by `consul_client.rs` and `consul_source.rs`.
//!
//! The binary comes from `WEFT_CONSUL_BIN`, else from the project's
//! installer (`deploy/local/install-consul.sh`, which prefers a `consul` on
//! PATH). A missing Consul fails the test loudly: these tests are the
//! evidence that the client works against the real thing.

#![allow(dead_code)] // each test binary uses a different part of it

pub mod certs;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use weft_discovery::consul::{ConsulClient, ConsulConfig, QueryOptions};

/// How long a dev agent may take to elect itself leader. Usually ~1 s; a
/// loaded CI machine running many agents at once needs more.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running dev agent; killed when dropped.
pub struct DevConsul {
    child: Child,
    binary: PathBuf,
    /// HTTP, Serf LAN, Serf WAN, server RPC.
    ports: [u16; 4],
    pub http_port: u16,
    /// The HTTPS port, when started with [`DevConsul::start_https`].
    pub https_port: Option<u16>,
    /// The plain-HTTP client (readiness, test set-up): the HTTP port stays
    /// open beside HTTPS and never asks for a client certificate.
    pub client: ConsulClient,
    log: PathBuf,
    /// The `-config-file` enabling HTTPS or ACLs, removed on drop.
    config_file: Option<PathBuf>,
}

/// What a dev agent needs to serve HTTPS (Consul's own config keys).
#[derive(Clone, Debug)]
pub struct HttpsSettings {
    /// `cert_file`: the server certificate (SANs 127.0.0.1 and localhost).
    pub cert_file: PathBuf,
    /// `key_file`.
    pub key_file: PathBuf,
    /// `ca_file`: the CA client certificates must chain to.
    pub ca_file: PathBuf,
    /// `verify_incoming`: in 1.8 the HTTPS listener then refuses clients
    /// without a certificate signed by `ca_file`.
    pub verify_incoming: bool,
}

impl DevConsul {
    /// Starts a dev agent and returns once it has a leader and has
    /// registered itself in the catalog (the `consul` service).
    pub async fn start() -> anyhow::Result<Self> {
        let binary = consul_binary()?;
        let mut last_error = None;
        // A port picked free can be taken by someone else before Consul binds
        // it; a second try with new ports makes that race harmless.
        for _ in 0..3 {
            match Self::try_start(&binary, None, None, None).await {
                Ok(consul) => return Ok(consul),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("consul did not start")))
    }

    /// A dev agent that also serves HTTPS on [`https_port`](Self::https_port)
    /// with `https`'s certificates; ready like [`start`](Self::start).
    pub async fn start_https(https: &HttpsSettings) -> anyhow::Result<Self> {
        let binary = consul_binary()?;
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(&binary, Some(https), None, None).await {
                Ok(consul) => return Ok(consul),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("consul did not start")))
    }

    /// A dev agent with ACLs on (`default_policy = "deny"`) whose master
    /// (bootstrap) token is `master_token`; [`client`](Self::client) sends
    /// it. Ready like [`start`](Self::start).
    pub async fn start_with_acls(master_token: &str) -> anyhow::Result<Self> {
        let binary = consul_binary()?;
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(&binary, None, Some(master_token), None).await {
                Ok(consul) => return Ok(consul),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("consul did not start")))
    }

    /// A dev agent started with `hcl` as an extra `-config-file` (e.g.
    /// `limits { http_max_conns_per_client = 5 }`). Ready like
    /// [`start`](Self::start).
    pub async fn start_with_hcl(hcl: &str) -> anyhow::Result<Self> {
        let binary = consul_binary()?;
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(&binary, None, None, Some(hcl)).await {
                Ok(consul) => return Ok(consul),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("consul did not start")))
    }

    /// `https://127.0.0.1:<https_port>` (empty without HTTPS).
    pub fn https_address(&self) -> String {
        self.https_port
            .map(|port| format!("https://127.0.0.1:{port}"))
            .unwrap_or_default()
    }

    async fn try_start(
        binary: &PathBuf,
        https: Option<&HttpsSettings>,
        acl_master_token: Option<&str>,
        extra_hcl: Option<&str>,
    ) -> anyhow::Result<Self> {
        let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
        let http = ports[0];
        let log = std::env::temp_dir().join(format!("weft-consul-{http}.log"));
        let (https_port, config_file) = match (https, acl_master_token) {
            (Some(_), Some(_)) => {
                bail!("a dev agent with both HTTPS and ACLs is not supported here")
            }
            (Some(https), None) => {
                let port = free_port()?;
                let file = std::env::temp_dir().join(format!("weft-consul-{http}-https.json"));
                write_https_config(&file, port, https)?;
                (Some(port), Some(file))
            }
            (None, Some(token)) => {
                let file = std::env::temp_dir().join(format!("weft-consul-{http}-acl.hcl"));
                write_acl_config(&file, token)?;
                (None, Some(file))
            }
            (None, None) => match extra_hcl {
                Some(hcl) => {
                    let file = std::env::temp_dir().join(format!("weft-consul-{http}-extra.hcl"));
                    std::fs::write(&file, hcl)
                        .with_context(|| format!("writing consul config {}", file.display()))?;
                    (None, Some(file))
                }
                None => (None, None),
            },
        };
        let child = spawn_agent(binary, ports, &log, config_file.as_deref())?;
        let client = ConsulClient::new(ConsulConfig::new(
            &format!("127.0.0.1:{http}"),
            acl_master_token.map(str::to_owned),
            None,
        )?)?;
        let mut consul = Self {
            child,
            binary: binary.clone(),
            ports,
            http_port: http,
            https_port,
            client,
            log,
            config_file,
        };
        consul.wait_ready().await?;
        Ok(consul)
    }

    /// Kills the agent and starts a fresh one on the same ports: a dev agent
    /// keeps no state, so this is a Consul whose index starts over.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_agent(
            &self.binary,
            self.ports,
            &self.log,
            self.config_file.as_deref(),
        )?;
        self.wait_ready().await
    }

    /// Polls the readiness signals (a leader, then the `consul` service in
    /// the catalog) every 50 ms until both hold.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "consul exited with {status} before becoming ready; log {}:\n{}",
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let leader = self.client.status_leader().await.unwrap_or_default();
            if !leader.is_empty() {
                let services = self.client.catalog_services(&QueryOptions::default()).await;
                if services.is_ok_and(|(services, _)| services.contains_key("consul")) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "consul on port {} has no leader after {START_TIMEOUT:?}; log {}",
                    self.http_port,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes the agent (SIGSTOP): its sockets stay open but nothing answers,
    /// like a hung or partitioned Consul.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Resumes a frozen agent (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {} failed: {status}", self.child.id());
        }
        Ok(())
    }
}

impl Drop for DevConsul {
    fn drop(&mut self) {
        // A frozen agent ignores SIGTERM but not SIGKILL, which kill() sends.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        if let Some(file) = &self.config_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A `-config-file` that opens the HTTPS port with `https`'s files.
fn write_https_config(file: &Path, port: u16, https: &HttpsSettings) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "ports": { "https": port },
        "cert_file": https.cert_file,
        "key_file": https.key_file,
        "ca_file": https.ca_file,
        "verify_incoming": https.verify_incoming,
    });
    std::fs::write(file, config.to_string())
        .with_context(|| format!("writing consul config {}", file.display()))
}

/// A `-config-file` turning ACLs on, default deny, in Consul 1.8's syntax
/// (`tokens.master`; later versions call it `initial_management`). The agent
/// token lets the dev agent register itself in the catalog.
fn write_acl_config(file: &Path, master_token: &str) -> anyhow::Result<()> {
    let config = format!(
        r#"acl {{
  enabled = true
  default_policy = "deny"
  tokens {{
    master = "{master_token}"
    agent = "{master_token}"
  }}
}}
"#
    );
    std::fs::write(file, config)
        .with_context(|| format!("writing consul config {}", file.display()))
}

fn spawn_agent(
    binary: &PathBuf,
    ports: [u16; 4],
    log: &PathBuf,
    config_file: Option<&Path>,
) -> anyhow::Result<Child> {
    let [http, serf_lan, serf_wan, server] = ports;
    let log_file = std::fs::File::create(log)
        .with_context(|| format!("creating consul log {}", log.display()))?;
    let mut command = Command::new(binary);
    command
        .args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args(["-node", &format!("weft-test-{http}")])
        .args(["-http-port", &http.to_string()])
        .args(["-dns-port", "-1", "-grpc-port", "-1"])
        .args(["-serf-lan-port", &serf_lan.to_string()])
        .args(["-serf-wan-port", &serf_wan.to_string()])
        .args(["-server-port", &server.to_string()]);
    if let Some(file) = config_file {
        command.arg(format!("-config-file={}", file.display()));
    }
    command
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// `WEFT_CONSUL_BIN`, else whatever the project's installer prints.
fn consul_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINARY.get_or_init(|| {
        if let Ok(binary) = std::env::var("WEFT_CONSUL_BIN") {
            return Ok(PathBuf::from(binary));
        }
        let installer =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/install-consul.sh");
        let output = Command::new("bash")
            .arg(&installer)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|error| format!("running {}: {error}", installer.display()))?;
        let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || path.is_empty() {
            return Err(format!(
                "no Consul binary: {} failed ({}); set WEFT_CONSUL_BIN",
                installer.display(),
                output.status
            ));
        }
        Ok(PathBuf::from(path))
    });
    found.clone().map_err(|error| anyhow::anyhow!(error))
}

/// A loopback port free for TCP and UDP (Serf uses both) that this process
/// has not handed out before, below the ephemeral range so outgoing
/// connections do not take it meanwhile.
pub fn free_port() -> anyhow::Result<u16> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(20_000..32_000);
        // A poisoned set is still a valid set of numbers.
        if !taken
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port)
        {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free loopback port after 1000 tries")
}
