//! A real Consul dev agent per test, on its own loopback ports, so tests run
//! in parallel; and its HTTP API as tests call it (JSON in and out, with the
//! ACL master token when ACLs are on).
//!
//! The binary comes from `WEFT_CONSUL_BIN`, a `consul` on PATH, or the
//! project's installer (`deploy/local/install-consul.sh`). A missing Consul
//! fails the test loudly, saying how to install it: these tests are the
//! evidence that Weft works against the real thing.
//!
//! The typed client each crate tests (`weft_discovery::consul`) is not used
//! here: this crate must not depend on the crates whose tests use it. The
//! e2e harness and the agent's tests wrap [`DevConsul`] with that client.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::eventually::eventually;
use crate::ports::free_port;
use crate::process::Process;

/// A dev agent elects itself in well under a second; 30 s leaves room for a
/// loaded CI machine running many agents at once.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every call to Consul's API: far above a local agent's latency, short
/// enough that a hung (or frozen) Consul fails the call quickly.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a dev agent is started on fresh ports when it exits before
/// becoming ready: a port picked free can be taken before Consul binds it.
const START_ATTEMPTS: usize = 3;

/// Where the Consul binary is: `WEFT_CONSUL_BIN`, a `consul` on PATH, or what
/// the project's installer (deploy/local/install-consul.sh) prints, which
/// installs Debian's 1.8.7 into the git-ignored .tools/ if needed.
pub fn consul_binary() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_consul().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow::anyhow!(error))
}

fn find_consul() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_CONSUL_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "WEFT_CONSUL_BIN={} is not a file. Unset it, or install Consul with `bash deploy/local/install-consul.sh`",
                path.display()
            );
        }
        return Ok(path);
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("consul"))
        .find(|candidate| candidate.is_file())
    {
        return Ok(path);
    }
    let installer = repo_root().join("deploy/local/install-consul.sh");
    let output = std::process::Command::new("bash")
        .arg(&installer)
        .output()
        .with_context(|| format!("running {}", installer.display()))?;
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || printed.is_empty() {
        bail!(
            "CONSUL IS MISSING: the end-to-end tests need a real Consul (1.8+).\n\
             Install it with `bash deploy/local/install-consul.sh` and/or set WEFT_CONSUL_BIN=/path/to/consul.\n\
             The installer ({}) failed with {}:\n{}",
            installer.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(PathBuf::from(printed))
}

/// The repository root (two levels above this crate, `tests/support/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map(Path::to_owned)
        .unwrap_or_else(|| manifest.to_owned())
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

/// How a dev agent is configured beyond the defaults (in-memory state, DNS
/// and gRPC off).
#[derive(Clone, Debug, Default)]
pub struct ConsulOptions {
    /// ACLs on, default deny, with this master (bootstrap) token, also the
    /// agent's own so it can register its node. Every API call sends it.
    pub acl_master_token: Option<String>,
    /// An extra `-config-file`, e.g. `limits { http_max_conns_per_client = 5 }`.
    pub extra_hcl: Option<String>,
    /// An HTTPS port beside the HTTP one (which stays open and never asks
    /// for a client certificate: readiness and test set-up use it).
    pub https: Option<HttpsSettings>,
}

/// A `consul agent -dev`, logging to `<log dir>/consul.log`, killed on drop.
pub struct DevConsul {
    process: Process,
    http_port: u16,
    https_port: Option<u16>,
    api: ConsulApi,
    paused: bool,
    /// The command line, for [`DevConsul::start_again`].
    args: Vec<String>,
    log_dir: PathBuf,
}

impl DevConsul {
    /// Starts a dev agent on free ports and waits until it is ready: it has
    /// elected itself leader and registered its node (serfHealth passing).
    pub async fn start(log_dir: &Path, options: &ConsulOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            let mut consul = Self::spawn(log_dir, options)?;
            match consul.wait_ready().await {
                Ok(()) => return Ok(consul),
                Err(error) => {
                    // Only an agent that died (a port taken meanwhile) is
                    // worth another try; a slow one would only be slower.
                    if attempt == START_ATTEMPTS || consul.process.check_running().is_ok() {
                        return Err(error);
                    }
                }
            }
            attempt += 1;
        }
    }

    fn spawn(log_dir: &Path, options: &ConsulOptions) -> anyhow::Result<Self> {
        let binary = consul_binary()?;
        let http_port = free_port()?;
        let mut args: Vec<String> = vec![
            "agent".into(),
            "-dev".into(),
            "-bind".into(),
            "127.0.0.1".into(),
            "-client".into(),
            "127.0.0.1".into(),
            "-http-port".into(),
            http_port.to_string(),
            "-dns-port".into(),
            "-1".into(),
            "-grpc-port".into(),
            "-1".into(),
            "-serf-lan-port".into(),
            free_port()?.to_string(),
            "-serf-wan-port".into(),
            "-1".into(),
            "-server-port".into(),
            free_port()?.to_string(),
            "-node".into(),
            node_name(http_port),
            "-log-level".into(),
            "debug".into(),
        ];
        let mut config_file = |name: &str, contents: &str| -> anyhow::Result<()> {
            let file = log_dir.join(format!("consul-{http_port}-{name}"));
            std::fs::write(&file, contents)
                .with_context(|| format!("writing {}", file.display()))?;
            args.push(format!("-config-file={}", file.display()));
            Ok(())
        };
        if let Some(token) = &options.acl_master_token {
            config_file("acl.hcl", &acl_config(token))?;
        }
        if let Some(hcl) = &options.extra_hcl {
            config_file("extra.hcl", hcl)?;
        }
        let https_port = match &options.https {
            Some(https) => {
                let port = free_port()?;
                config_file("https.json", &https_config(port, https).to_string())?;
                Some(port)
            }
            None => None,
        };
        let process = Process::spawn("consul", &binary, &args, log_dir)?;
        Ok(Self {
            process,
            http_port,
            https_port,
            api: ConsulApi::new(http_port, options.acl_master_token.clone()),
            paused: false,
            args,
            log_dir: log_dir.to_owned(),
        })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let node = node_name(self.http_port);
        let api = self.api.clone();
        // Check the process first so a crash (port taken) fails at once with its log.
        let process = &mut self.process;
        eventually(READY_TIMEOUT, "consul elects itself leader", || {
            let alive = process.check_running();
            let api = api.clone();
            let node = node.clone();
            async move {
                alive?;
                let (status, body) = api.send(Method::GET, "/v1/status/leader", "").await?;
                let leader = String::from_utf8_lossy(&body);
                if !status.is_success() || !leader.trim().trim_matches('"').contains(':') {
                    bail!("no leader yet: {status} {leader}")
                }
                // The leader registers the node's serfHealth check (and the
                // `consul` service) a moment after the election; until then
                // `?passing` lists nothing.
                let checks = api.get(&format!("/v1/health/node/{node}")).await?;
                let serf_passing = checks.as_array().is_some_and(|checks| {
                    checks.iter().any(|check| {
                        check["CheckID"] == "serfHealth" && check["Status"] == "passing"
                    })
                });
                if !serf_passing {
                    bail!("the node's serfHealth check is not passing yet: {checks}")
                }
                Ok(())
            }
        })
        .await
        .map_err(|error| anyhow::anyhow!("{error:#}\n{}", self.process.tail()))
    }

    /// `http://127.0.0.1:<http port>`, what `--consul` takes.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The HTTPS port, when started with [`ConsulOptions::https`].
    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }

    /// `https://127.0.0.1:<https port>` (empty without HTTPS).
    pub fn https_address(&self) -> String {
        self.https_port
            .map(|port| format!("https://127.0.0.1:{port}"))
            .unwrap_or_default()
    }

    /// The HTTP API (plain HTTP, master token when ACLs are on).
    pub fn api(&self) -> &ConsulApi {
        &self.api
    }

    /// `PUT <path>` with a JSON body, Consul's answer as JSON (`null` for an
    /// empty one); an error unless 2xx.
    pub async fn api_put(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.api.put(path, body).await
    }

    /// `GET <path>` as JSON; an error unless 2xx.
    pub async fn api_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.api.get(path).await
    }

    /// An ACL policy `name` with `rules` and a token holding it (ACLs on);
    /// returns the token's secret.
    pub async fn acl_token(&self, name: &str, rules: &str) -> anyhow::Result<String> {
        self.api_put(
            "/v1/acl/policy",
            &serde_json::json!({ "Name": name, "Rules": rules }),
        )
        .await?;
        let token = self
            .api_put(
                "/v1/acl/token",
                &serde_json::json!({ "Description": name, "Policies": [{ "Name": name }] }),
            )
            .await?;
        token["SecretID"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no SecretID in {token}"))
    }

    /// Waits until the Connect CA has an active root (a dev agent sets it
    /// up a moment after electing itself) and returns the roots answer.
    pub async fn connect_ca_ready(&self) -> anyhow::Result<serde_json::Value> {
        eventually(
            READY_TIMEOUT,
            "Consul's Connect CA has an active root",
            || async {
                let roots = self.api_get("/v1/agent/connect/ca/roots").await?;
                let active = roots["Roots"]
                    .as_array()
                    .is_some_and(|roots| roots.iter().any(|root| root["Active"] == true));
                if !active {
                    bail!("no active root yet: {roots}");
                }
                Ok(roots)
            },
        )
        .await
    }

    /// Freezes the Consul process (SIGSTOP): connections stay open, nothing
    /// answers, like a hung or partitioned Consul.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.process.signal("STOP")?;
        self.paused = true;
        Ok(())
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.process.signal("CONT")?;
        self.paused = false;
        Ok(())
    }

    /// Kills Consul (SIGKILL, like a crash): its port refuses connections
    /// and every open blocking query breaks. Its dev-mode state is gone.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts Consul again (after [`DevConsul::stop`], or killing it first),
    /// on the same ports with the same flags, and waits until it is ready:
    /// as after a crash, with the dev-mode state (catalog, KV) empty and
    /// the index starting over. Its log is `consul-again.log`.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process =
            Process::spawn("consul-again", &consul_binary()?, &self.args, &self.log_dir)?;
        self.paused = false;
        self.wait_ready().await
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }
}

impl Drop for DevConsul {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL, but thaw it anyway so
        // the kill is never left pending behind the stop.
        if self.paused {
            let _ = self.process.signal("CONT");
        }
    }
}

/// Consul's HTTP API on loopback, JSON in and out, with a token when set.
/// Cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct ConsulApi {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl ConsulApi {
    fn new(http_port: u16, token: Option<String>) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            base: format!("http://127.0.0.1:{http_port}"),
            token,
        }
    }

    /// The same API with no token: what an anonymous client is allowed.
    pub fn without_token(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    /// `GET <path>` as JSON; an error unless 2xx.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.send(Method::GET, path, "").await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// `PUT <path>` with a JSON body, the answer as JSON (`null` when
    /// empty); an error unless 2xx.
    pub async fn put(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, answer) = self.send(Method::PUT, path, &body.to_string()).await?;
        if !status.is_success() {
            bail!("PUT {path}: {status} {}", String::from_utf8_lossy(&answer));
        }
        if answer.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&answer).with_context(|| format!("PUT {path}: not JSON"))
    }

    /// Any call: the status and the whole body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let what = format!("{method} {path}");
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("x-consul-token", token);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .with_context(|| format!("building {what}"))?;
        let call = async {
            let response = self.http.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(API_TIMEOUT, call)
            .await
            .with_context(|| format!("{what}: no answer within {API_TIMEOUT:?}"))?
            .with_context(|| format!("{what}: request failed"))
    }
}

/// A `-config-file` turning ACLs on, default deny, in Consul 1.8's syntax
/// (`tokens.master`; later versions say `initial_management`). The agent
/// token lets the dev agent register itself in the catalog.
fn acl_config(master_token: &str) -> String {
    format!(
        r#"acl {{
  enabled = true
  default_policy = "deny"
  tokens {{
    master = "{master_token}"
    agent = "{master_token}"
  }}
}}
"#
    )
}

/// A `-config-file` that opens the HTTPS port with `https`'s files.
fn https_config(port: u16, https: &HttpsSettings) -> serde_json::Value {
    serde_json::json!({
        "ports": { "https": port },
        "cert_file": https.cert_file,
        "key_file": https.key_file,
        "ca_file": https.ca_file,
        "verify_incoming": https.verify_incoming,
    })
}

/// The dev agent's node name: unique per test, and known before it starts.
fn node_name(http_port: u16) -> String {
    format!("weft-e2e-{http_port}")
}
