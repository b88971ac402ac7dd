//! A real Consul dev agent per test, on its own loopback ports, and the Consul
//! API calls the tests make (registration, checks, KV).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use weft_discovery::consul::{
    CheckRegistration, ConnectRegistration, ConsulClient, ConsulConfig, ServiceRegistration,
    Weights,
};

use super::eventually::eventually;
use super::http::HttpClient;
use super::ports::free_port;
use super::process::Process;

/// A dev agent elects itself in well under a second; 30 s leaves room for a
/// loaded CI machine.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The repository root (the workspace directory above `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A `consul agent -dev` with in-memory state, killed on drop.
pub struct Consul {
    process: Process,
    http_port: u16,
    /// For readiness polling and raw reads.
    http: HttpClient,
    /// The project's own typed client (weft_discovery::consul) for every
    /// write the tests make: registrations, checks, KV.
    client: ConsulClient,
    /// The ACL master token, when ACLs are on: sent with every call the
    /// harness makes.
    master_token: Option<String>,
    paused: bool,
    /// The command line, for [`Consul::start_again`].
    args: Vec<String>,
    log_dir: PathBuf,
}

impl Consul {
    /// Starts a dev agent on free ports (DNS and gRPC off: nothing uses them)
    /// and waits until it has elected itself leader.
    pub async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_configured(log_dir, None, None).await
    }

    /// Like [`Consul::start`] with `hcl` as an extra config file, e.g.
    /// `limits { http_max_conns_per_client = 5 }`.
    pub async fn start_with_hcl(log_dir: &Path, hcl: &str) -> anyhow::Result<Self> {
        Self::start_configured(log_dir, None, Some(hcl)).await
    }

    /// Like [`Consul::start`] with ACLs on, default deny, and
    /// `master_token` as the bootstrap token (also the agent's own, so it
    /// can register its node). Every call the harness makes sends it.
    pub async fn start_with_acls(log_dir: &Path, master_token: &str) -> anyhow::Result<Self> {
        Self::start_configured(log_dir, Some(master_token), None).await
    }

    async fn start_configured(
        log_dir: &Path,
        master_token: Option<&str>,
        extra_hcl: Option<&str>,
    ) -> anyhow::Result<Self> {
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
        if let Some(token) = master_token {
            let file = log_dir.join("consul-acl.hcl");
            std::fs::write(&file, acl_config(token))
                .with_context(|| format!("writing {}", file.display()))?;
            args.push(format!("-config-file={}", file.display()));
        }
        if let Some(hcl) = extra_hcl {
            let file = log_dir.join("consul-extra.hcl");
            std::fs::write(&file, hcl).with_context(|| format!("writing {}", file.display()))?;
            args.push(format!("-config-file={}", file.display()));
        }
        let process = Process::spawn("consul", &binary, &args, log_dir)?;
        let address = format!("http://127.0.0.1:{http_port}");
        let client = ConsulConfig::new(&address, master_token.map(str::to_owned), None)
            .and_then(ConsulClient::new)
            .with_context(|| format!("building a Consul client for {address}"))?;
        let mut consul = Self {
            process,
            http_port,
            http: HttpClient::new(),
            client,
            master_token: master_token.map(str::to_owned),
            paused: false,
            args,
            log_dir: log_dir.to_owned(),
        };
        consul.wait_for_leader().await?;
        Ok(consul)
    }

    async fn wait_for_leader(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/v1/status/leader", self.address());
        let node_url = format!(
            "{}/v1/health/node/{}",
            self.address(),
            node_name(self.http_port)
        );
        let http = self.api();
        // Check the process first so a crash (port taken) fails at once with its log.
        let process = &mut self.process;
        eventually(LEADER_TIMEOUT, "consul elects itself leader", || {
            let alive = process.check_running();
            let http = http.clone();
            let url = url.clone();
            let node_url = node_url.clone();
            async move {
                if let Err(error) = alive {
                    return Err(error);
                }
                let reply = http.get(&url).await?;
                let leader = reply.text();
                if !reply.status.is_success() || !leader.trim().trim_matches('"').contains(':') {
                    bail!("no leader yet: {} {leader}", reply.status)
                }
                // The leader registers the node's serfHealth check a moment
                // after the election; until then `?passing` lists nothing.
                let checks = http.get(&node_url).await?.json()?;
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

    /// Consul's HTTP API as the harness calls it: with the master token
    /// when ACLs are on.
    pub fn api(&self) -> ConsulApi {
        ConsulApi {
            http: self.http.clone(),
            token: self.master_token.clone(),
        }
    }

    /// `PUT <path>` with a JSON body (master token), Consul's answer as JSON
    /// (`null` for an empty one); an error unless 2xx.
    pub async fn api_put(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.address());
        let reply = self
            .api()
            .send(http::Method::PUT, &url, body.to_string())
            .await?;
        if !reply.status.is_success() {
            bail!("PUT {path}: {} {}", reply.status, reply.text());
        }
        if reply.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        reply.json().with_context(|| format!("PUT {path}"))
    }

    /// `GET <path>` (master token) as JSON; an error unless 2xx.
    pub async fn api_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.address());
        let reply = self.api().get(&url).await?;
        if !reply.status.is_success() {
            bail!("GET {path}: {} {}", reply.status, reply.text());
        }
        reply.json().with_context(|| format!("GET {path}"))
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
            LEADER_TIMEOUT,
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

    /// `http://127.0.0.1:<http port>`, what `--consul` takes.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The project's Consul client, pointed at this agent.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// Registers an instance with the local agent (`PUT /v1/agent/service/register`).
    pub async fn register(&self, instance: &Registration) -> anyhow::Result<()> {
        self.client
            .agent_service_register(&instance.to_registration())
            .await
            .with_context(|| format!("registering {}", instance.id))
    }

    /// Deregisters an instance (and the sidecar proxy Consul created for it).
    pub async fn deregister(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .agent_service_deregister(id)
            .await
            .with_context(|| format!("deregistering {id}"))
    }

    /// Sets a TTL check passing or critical (`/v1/agent/check/pass|fail/<id>`).
    pub async fn set_check(&self, check_id: &str, passing: bool) -> anyhow::Result<()> {
        let note = "set by weft-e2e";
        let result = if passing {
            self.client.agent_check_pass(check_id, note).await
        } else {
            self.client.agent_check_fail(check_id, note).await
        };
        result.with_context(|| {
            format!(
                "setting check {check_id} {}",
                if passing { "passing" } else { "critical" }
            )
        })
    }

    /// Sets every check of an instance (its app's and its proxy's) passing
    /// or critical: the instance turns healthy or unhealthy in Consul.
    pub async fn set_health(&self, instance: &Registration, passing: bool) -> anyhow::Result<()> {
        for check in instance.check_ids() {
            self.set_check(&check, passing).await?;
        }
        Ok(())
    }

    /// Writes a KV entry.
    pub async fn kv_put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let written = self
            .client
            .kv_put(key, value.to_owned())
            .await
            .with_context(|| format!("writing KV {key}"))?;
        anyhow::ensure!(written, "writing KV {key}: Consul answered false");
        Ok(())
    }

    /// Deletes a KV entry.
    pub async fn kv_delete(&self, key: &str) -> anyhow::Result<()> {
        self.client
            .kv_delete(key)
            .await
            .with_context(|| format!("deleting KV {key}"))?;
        Ok(())
    }

    /// Registers a synthetic catalog straight into Consul's catalog
    /// (`/v1/catalog/register`, no agent behind the nodes): `services`
    /// Connect services named `<prefix>-<n>`, each with `instances` app
    /// instances and one sidecar proxy per instance (kind `connect-proxy`,
    /// destination the app, upstream the next service), spread over `nodes`
    /// nodes. Every app and proxy has one passing check that only the test
    /// changes ([`Consul::set_synthetic_health`]). Registrations go 16 at a
    /// time: a 1,000-service catalog takes seconds, not minutes.
    pub async fn register_synthetic(
        &self,
        prefix: &str,
        services: usize,
        instances: usize,
        nodes: usize,
    ) -> anyhow::Result<Vec<SyntheticInstance>> {
        let mut all = Vec::with_capacity(services * instances);
        for service in 0..services {
            for instance in 0..instances {
                let node = (service * instances + instance) % nodes.max(1);
                all.push(SyntheticInstance {
                    node: format!("{prefix}-node-{node}"),
                    node_address: format!("10.77.{}.{}", node / 250, node % 250 + 1),
                    service: format!("{prefix}-{service}"),
                    id: format!("{prefix}-{service}-{instance}"),
                    port: 8000 + u16::try_from(instance % 1000).unwrap_or(0),
                    proxy_port: 21000 + u16::try_from(instance % 1000).unwrap_or(0),
                    upstream: format!("{prefix}-{}", (service + 1) % services.max(1)),
                });
            }
        }
        for chunk in all.chunks(16) {
            let writes = chunk.iter().flat_map(|instance| {
                [
                    instance.app_registration(true),
                    instance.proxy_registration(true),
                ]
            });
            let writes = writes.map(|body| async move {
                self.api_put("/v1/catalog/register", &body).await.map(drop)
            });
            for result in futures_util::future::join_all(writes).await {
                result?;
            }
        }
        Ok(all)
    }

    /// Registers one more synthetic instance (app and proxy, both checked).
    pub async fn register_synthetic_instance(
        &self,
        instance: &SyntheticInstance,
    ) -> anyhow::Result<()> {
        self.api_put("/v1/catalog/register", &instance.app_registration(true))
            .await?;
        self.api_put("/v1/catalog/register", &instance.proxy_registration(true))
            .await
            .map(drop)
    }

    /// Sets a synthetic instance's app check passing or critical (through
    /// the catalog, as there is no agent for its node).
    pub async fn set_synthetic_health(
        &self,
        instance: &SyntheticInstance,
        passing: bool,
    ) -> anyhow::Result<()> {
        self.api_put("/v1/catalog/register", &instance.app_registration(passing))
            .await
            .map(drop)
    }

    /// Registers a synthetic instance (app and proxy) with no check at
    /// all: changes only the catalog's index shows.
    pub async fn register_synthetic_checkless(
        &self,
        instance: &SyntheticInstance,
    ) -> anyhow::Result<()> {
        for mut body in [
            instance.app_registration(true),
            instance.proxy_registration(true),
        ] {
            if let Some(body) = body.as_object_mut() {
                body.remove("Checks");
            }
            self.api_put("/v1/catalog/register", &body).await?;
        }
        Ok(())
    }

    /// Removes a synthetic instance and its proxy from the catalog.
    pub async fn deregister_synthetic(&self, instance: &SyntheticInstance) -> anyhow::Result<()> {
        for id in [instance.id.clone(), instance.proxy_id()] {
            self.api_put(
                "/v1/catalog/deregister",
                &serde_json::json!({ "Node": instance.node, "ServiceID": id }),
            )
            .await?;
        }
        Ok(())
    }

    /// Freezes the Consul process (SIGSTOP): connections stay open, nothing answers.
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

    /// Starts Consul again after [`Consul::stop`], on the same ports with
    /// the same flags, and waits for its leader: as after a crash, with the
    /// dev-mode state (catalog, KV) empty. Its log is `consul-again.log`.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process =
            Process::spawn("consul-again", &consul_binary()?, &self.args, &self.log_dir)?;
        self.paused = false;
        self.wait_for_leader().await
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL, but thaw it anyway so
        // the kill is never left pending behind the stop.
        if self.paused {
            let _ = self.process.signal("CONT");
        }
    }
}

/// One service instance as the tests register it.
///
/// Every instance gets a TTL check (`<id>-ttl`, passing at registration) that
/// the test sets with [`Consul::set_check`], so "the health check turns
/// critical" happens exactly when the test says. A meshed instance is
/// registered the Consul way, with `connect.sidecar_service` on the sidecar's
/// inbound port, so Consul creates the `<id>-sidecar-proxy` service (kind
/// `connect-proxy`), which is what other sidecars are sent to.
///
/// The proxy gets its own TTL check (`<id>-sidecar-ttl`) instead of Consul's
/// defaults. The default TCP check runs every 10 s: too slow for 1 s tests.
/// An alias check of the parent is what Consul suggests, but on 1.8.7 its
/// status reaches the catalog only with the agent's next sync for some other
/// reason: measured here, 0.5 ms to 3 s after the parent's TTL check changed
/// (and a new proxy stays critical for up to 3 s). A TTL check is synced the
/// moment it is set, so [`Registration::check_ids`] lists both and the tests
/// set them together.
#[derive(Clone, Debug)]
pub struct Registration {
    pub id: String,
    pub service: String,
    pub port: u16,
    /// The sidecar's inbound port, for a meshed instance.
    pub sidecar_port: Option<u16>,
    /// Consul `Weights.Passing`; Consul's default (1) when `None`.
    pub weight: Option<u32>,
}

impl Registration {
    pub fn plain(service: &str, id: &str, port: u16) -> Self {
        Self {
            id: id.to_owned(),
            service: service.to_owned(),
            port,
            sidecar_port: None,
            weight: None,
        }
    }

    pub fn meshed(service: &str, id: &str, port: u16, sidecar_port: u16) -> Self {
        Self {
            sidecar_port: Some(sidecar_port),
            ..Self::plain(service, id, port)
        }
    }

    /// The TTL check of the app instance.
    pub fn check_id(&self) -> String {
        check_id(&self.id)
    }

    /// The TTL check of the instance's sidecar proxy (meshed instances).
    pub fn proxy_check_id(&self) -> Option<String> {
        self.sidecar_port
            .map(|_| format!("{}-sidecar-ttl", self.id))
    }

    /// Every check that decides whether this instance gets traffic.
    pub fn check_ids(&self) -> Vec<String> {
        std::iter::once(self.check_id())
            .chain(self.proxy_check_id())
            .collect()
    }

    /// The registration as the project's Consul client sends it.
    pub fn to_registration(&self) -> ServiceRegistration {
        ServiceRegistration {
            id: self.id.clone(),
            name: self.service.clone(),
            address: "127.0.0.1".to_owned(),
            port: self.port,
            weights: self.weight.map(|passing| Weights {
                passing,
                warning: 1,
            }),
            checks: Some(vec![ttl_check(self.check_id())]),
            connect: self.sidecar_port.map(|port| ConnectRegistration {
                sidecar_service: Some(Box::new(ServiceRegistration {
                    port,
                    checks: Some(self.proxy_check_id().into_iter().map(ttl_check).collect()),
                    ..ServiceRegistration::default()
                })),
                ..ConnectRegistration::default()
            }),
            ..ServiceRegistration::default()
        }
    }
}

/// A TTL check, passing from the start, that only the test changes: its TTL
/// is far longer than any test.
fn ttl_check(check_id: String) -> CheckRegistration {
    CheckRegistration {
        check_id,
        name: "set by the test".to_owned(),
        ttl: Some(Duration::from_secs(3_600)),
        status: "passing".to_owned(),
        ..CheckRegistration::default()
    }
}

/// One app instance of a synthetic catalog ([`Consul::register_synthetic`]),
/// with its sidecar proxy `<id>-sidecar-proxy` on the same node.
#[derive(Clone, Debug)]
pub struct SyntheticInstance {
    pub node: String,
    pub node_address: String,
    pub service: String,
    pub id: String,
    pub port: u16,
    pub proxy_port: u16,
    /// The service its proxy declares as upstream.
    pub upstream: String,
}

impl SyntheticInstance {
    pub fn proxy_id(&self) -> String {
        format!("{}-sidecar-proxy", self.id)
    }

    /// The address a meshed endpoint of it has: its node's, proxy port.
    pub fn proxy_address(&self) -> String {
        format!("{}:{}", self.node_address, self.proxy_port)
    }

    fn app_registration(&self, passing: bool) -> serde_json::Value {
        serde_json::json!({
            "Node": self.node,
            "Address": self.node_address,
            "Service": { "ID": self.id, "Service": self.service, "Port": self.port },
            "Checks": [{
                "CheckID": format!("{}-ttl", self.id),
                "Name": "set by the test",
                "ServiceID": self.id,
                "Status": if passing { "passing" } else { "critical" },
            }],
        })
    }

    fn proxy_registration(&self, passing: bool) -> serde_json::Value {
        serde_json::json!({
            "Node": self.node,
            "Address": self.node_address,
            "Service": {
                "Kind": "connect-proxy",
                "ID": self.proxy_id(),
                "Service": format!("{}-sidecar-proxy", self.service),
                "Port": self.proxy_port,
                "Proxy": {
                    "DestinationServiceName": self.service,
                    "DestinationServiceID": self.id,
                    "Upstreams": [{ "DestinationName": self.upstream, "LocalBindPort": 9000 }],
                },
            },
            "Checks": [{
                "CheckID": format!("{}-sidecar-ttl", self.id),
                "Name": "set by the test",
                "ServiceID": self.proxy_id(),
                "Status": if passing { "passing" } else { "critical" },
            }],
        })
    }
}

/// Consul's HTTP API through the test client, with a token when set.
#[derive(Clone)]
pub struct ConsulApi {
    http: HttpClient,
    token: Option<String>,
}

impl ConsulApi {
    pub async fn get(&self, url: &str) -> anyhow::Result<super::http::Reply> {
        self.send(http::Method::GET, url, String::new()).await
    }

    async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: String,
    ) -> anyhow::Result<super::http::Reply> {
        let mut request = http::Request::builder().method(method.clone()).uri(url);
        if let Some(token) = &self.token {
            request = request.header("x-consul-token", token);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .with_context(|| format!("building {method} {url}"))?;
        self.http.send(request).await
    }
}

/// A `-config-file` turning ACLs on, default deny, in Consul 1.8's syntax
/// (`tokens.master`; later versions say `initial_management`).
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

/// The dev agent's node name: unique per test, and known before it starts.
fn node_name(http_port: u16) -> String {
    format!("weft-e2e-{http_port}")
}

/// The id of the TTL check of instance `id`.
pub fn check_id(id: &str) -> String {
    format!("{id}-ttl")
}
