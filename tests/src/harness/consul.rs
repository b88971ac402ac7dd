//! A real Consul dev agent per test, on its own loopback ports, and the Consul
//! API calls the tests make (registration, checks, KV).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use weft_discovery::consul::{
    CheckRegistration, ConnectRegistration, ConsulClient, ConsulConfig, ServiceRegistration,
    Weights,
};
pub use weft_test_support::consul::{
    ConsulApi, ConsulOptions, DevConsul, HttpsSettings, READY_TIMEOUT, consul_binary, repo_root,
};

/// A `consul agent -dev` with in-memory state, killed on drop: the shared
/// launcher ([`DevConsul`], whose methods it has through `Deref`: address,
/// API calls, pause, stop, start again) with the project's typed client.
pub struct Consul {
    dev: DevConsul,
    /// The project's own typed client (weft_discovery::consul) for every
    /// write the tests make: registrations, checks, KV.
    client: ConsulClient,
}

impl std::ops::Deref for Consul {
    type Target = DevConsul;

    fn deref(&self) -> &DevConsul {
        &self.dev
    }
}

impl std::ops::DerefMut for Consul {
    fn deref_mut(&mut self) -> &mut DevConsul {
        &mut self.dev
    }
}

impl Consul {
    /// Starts a dev agent on free ports (DNS and gRPC off: nothing uses them)
    /// and waits until it has elected itself leader.
    pub async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_configured(log_dir, ConsulOptions::default()).await
    }

    /// Like [`Consul::start`] with `hcl` as an extra config file, e.g.
    /// `limits { http_max_conns_per_client = 5 }`.
    pub async fn start_with_hcl(log_dir: &Path, hcl: &str) -> anyhow::Result<Self> {
        let options = ConsulOptions {
            extra_hcl: Some(hcl.to_owned()),
            ..ConsulOptions::default()
        };
        Self::start_configured(log_dir, options).await
    }

    /// Like [`Consul::start`] with ACLs on, default deny, and
    /// `master_token` as the bootstrap token (also the agent's own, so it
    /// can register its node). Every call the harness makes sends it.
    pub async fn start_with_acls(log_dir: &Path, master_token: &str) -> anyhow::Result<Self> {
        let options = ConsulOptions {
            acl_master_token: Some(master_token.to_owned()),
            ..ConsulOptions::default()
        };
        Self::start_configured(log_dir, options).await
    }

    async fn start_configured(log_dir: &Path, options: ConsulOptions) -> anyhow::Result<Self> {
        let dev = DevConsul::start(log_dir, &options).await?;
        let address = dev.address();
        let client = ConsulConfig::new(&address, options.acl_master_token, None)
            .and_then(ConsulClient::new)
            .with_context(|| format!("building a Consul client for {address}"))?;
        Ok(Self { dev, client })
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

/// The id of the TTL check of instance `id`.
pub fn check_id(id: &str) -> String {
    format!("{id}-ttl")
}
