//! A real `consul agent -dev` per test (the shared launcher of
//! `weft-test-support`) with the agent's own typed client pointed at it.
//! Shared by the Consul tests of this crate.
//!
//! A missing Consul fails the test loudly, saying how to install it: these
//! tests are the evidence that the client works against the real thing.

#![allow(dead_code)] // each test binary uses a different part of it

use weft_discovery::consul::{ConsulClient, ConsulConfig};
use weft_test_support::consul::{ConsulOptions, HttpsSettings};
#[allow(unused_imports)] // each test binary uses a different part of it
pub use weft_test_support::ports::free_port;
use weft_test_support::temp_dir::TempDir;

/// A running dev agent; killed when dropped, its log with it.
pub struct DevConsul {
    consul: weft_test_support::consul::DevConsul,
    pub http_port: u16,
    /// The HTTPS port, when started with [`DevConsul::start_https`].
    pub https_port: Option<u16>,
    /// The plain-HTTP client (readiness, test set-up): the HTTP port stays
    /// open beside HTTPS and never asks for a client certificate.
    pub client: ConsulClient,
    /// Its log and config files; dropped after `consul`, so the process is
    /// dead when its log goes.
    _log_dir: TempDir,
}

impl DevConsul {
    /// Starts a dev agent and returns once it has a leader and has
    /// registered its node.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    /// A dev agent that also serves HTTPS on [`https_port`](Self::https_port)
    /// with `https`'s certificates; ready like [`start`](Self::start).
    pub async fn start_https(https: &HttpsSettings) -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions {
            https: Some(https.clone()),
            ..ConsulOptions::default()
        })
        .await
    }

    /// A dev agent with ACLs on (`default_policy = "deny"`) whose master
    /// (bootstrap) token is `master_token`; [`client`](Self::client) sends
    /// it. Ready like [`start`](Self::start).
    pub async fn start_with_acls(master_token: &str) -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions {
            acl_master_token: Some(master_token.to_owned()),
            ..ConsulOptions::default()
        })
        .await
    }

    /// A dev agent started with `hcl` as an extra `-config-file` (e.g.
    /// `limits { http_max_conns_per_client = 5 }`). Ready like
    /// [`start`](Self::start).
    pub async fn start_with_hcl(hcl: &str) -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions {
            extra_hcl: Some(hcl.to_owned()),
            ..ConsulOptions::default()
        })
        .await
    }

    async fn start_with(options: ConsulOptions) -> anyhow::Result<Self> {
        let log_dir = TempDir::create("consul")?;
        let consul = weft_test_support::consul::DevConsul::start(log_dir.path(), &options).await?;
        let client = ConsulClient::new(ConsulConfig::new(
            &format!("127.0.0.1:{}", consul.http_port()),
            options.acl_master_token,
            None,
        )?)?;
        Ok(Self {
            http_port: consul.http_port(),
            https_port: consul.https_port(),
            consul,
            client,
            _log_dir: log_dir,
        })
    }

    /// `https://127.0.0.1:<https_port>` (empty without HTTPS).
    pub fn https_address(&self) -> String {
        self.consul.https_address()
    }

    /// Kills the agent and starts a fresh one on the same ports: a dev agent
    /// keeps no state, so this is a Consul whose index starts over.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.consul.start_again().await
    }

    /// Freezes the agent (SIGSTOP): its sockets stay open but nothing answers,
    /// like a hung or partitioned Consul.
    pub fn freeze(&mut self) -> anyhow::Result<()> {
        self.consul.pause()
    }

    /// Resumes a frozen agent (SIGCONT).
    pub fn thaw(&mut self) -> anyhow::Result<()> {
        self.consul.resume()
    }
}
