//! A whole test mesh: Consul (or a config directory), the agent, and helpers
//! that start instances the way an operator would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;

use super::agent::{Agent, Backend};
use super::app::App;
use super::consul::{Consul, Registration};
use super::consul_proxy::ConsulProxy;
use super::eventually::eventually;
use super::http::{Call, Echo, HttpClient};
use super::identity::MeshCa;
use super::ports::free_port;
use super::sidecar::{Sidecar, SidecarSpec};
use crate::TestCtx;

/// Time a setup step (a new route, a new instance) gets to show up before
/// the test gives up; the 1 s convergence budgets are asserted separately.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// An app with its sidecar.
pub struct MeshedInstance {
    pub app: App,
    pub sidecar: Sidecar,
    pub registration: Registration,
}

/// An app behind Consul's own Connect proxy.
pub struct ConsulProxiedInstance {
    pub app: App,
    pub proxy: ConsulProxy,
    pub registration: Registration,
}

/// Consul, the agent on Consul, and the test's HTTP client.
pub struct Mesh {
    pub log_dir: PathBuf,
    pub consul: Consul,
    pub agent: Agent,
    pub http: HttpClient,
}

impl Mesh {
    /// Starts Consul and the agent, both ready.
    pub async fn start(ctx: &TestCtx) -> anyhow::Result<Self> {
        Self::start_with(ctx, &[]).await
    }

    /// Like [`Mesh::start`], with more agent flags (e.g. a CA's).
    pub async fn start_with(ctx: &TestCtx, agent_args: &[String]) -> anyhow::Result<Self> {
        let consul = Consul::start(&ctx.log_dir).await?;
        Self::start_on(ctx, consul, agent_args).await
    }

    /// The agent (with `agent_args`) on a Consul the test started itself
    /// (e.g. with ACLs on).
    pub async fn start_on(
        ctx: &TestCtx,
        consul: Consul,
        agent_args: &[String],
    ) -> anyhow::Result<Self> {
        let agent =
            Agent::start_with(&ctx.log_dir, &Backend::Consul(consul.address()), agent_args).await?;
        Ok(Self {
            log_dir: ctx.log_dir.clone(),
            consul,
            agent,
            http: HttpClient::new(),
        })
    }

    /// Starts an app and registers it as a plain (not meshed) instance:
    /// sidecars reach it directly, in plaintext.
    pub async fn plain_instance(&self, service: &str, id: &str) -> anyhow::Result<App> {
        self.plain_instance_with(service, id, |_| {}).await
    }

    /// Like [`Mesh::plain_instance`], adjusting the registration (a weight, say).
    pub async fn plain_instance_with(
        &self,
        service: &str,
        id: &str,
        adjust: impl FnOnce(&mut Registration),
    ) -> anyhow::Result<App> {
        let app = App::start(&self.log_dir, service, id).await?;
        let mut registration = Registration::plain(service, id, app.port());
        adjust(&mut registration);
        self.consul.register(&registration).await?;
        Ok(app)
    }

    /// Starts an app, registers it meshed (Connect sidecar service on the
    /// sidecar's inbound port) and starts its sidecar.
    pub async fn meshed_instance(&self, service: &str, id: &str) -> anyhow::Result<MeshedInstance> {
        self.meshed_instance_with(service, id, &[]).await
    }

    /// Like [`Mesh::meshed_instance`], with more sidecar flags.
    pub async fn meshed_instance_with(
        &self,
        service: &str,
        id: &str,
        sidecar_args: &[String],
    ) -> anyhow::Result<MeshedInstance> {
        self.meshed_app_with(service, id, &[], sidecar_args).await
    }

    /// Like [`Mesh::meshed_instance_with`], with more app flags too
    /// (`--speaks http1`, say).
    pub async fn meshed_app_with(
        &self,
        service: &str,
        id: &str,
        app_args: &[String],
        sidecar_args: &[String],
    ) -> anyhow::Result<MeshedInstance> {
        // The app learns its sidecar's outbound listener, to call onward
        // (`/call/<service>/...`).
        let outbound = format!("127.0.0.1:{}", free_port()?);
        let app_args = [app_args, &["--outbound".to_owned(), outbound.clone()]].concat();
        let app = App::start_with(&self.log_dir, service, id, &app_args).await?;
        let sidecar_args = [sidecar_args, &["--outbound".to_owned(), outbound]].concat();
        let (sidecar, registration) = self
            .sidecar_for(service, id, app.port(), &sidecar_args)
            .await?;
        Ok(MeshedInstance {
            app,
            sidecar,
            registration,
        })
    }

    /// Registers an app already listening on `app_port` (any server, e.g.
    /// Redis) as a meshed instance and starts its sidecar.
    pub async fn sidecar_for(
        &self,
        service: &str,
        id: &str,
        app_port: u16,
        sidecar_args: &[String],
    ) -> anyhow::Result<(Sidecar, Registration)> {
        let inbound_port = free_port()?;
        let registration = Registration::meshed(service, id, app_port, inbound_port);
        self.consul.register(&registration).await?;
        let sidecar = Sidecar::start(
            &self.log_dir,
            SidecarSpec {
                service: service.to_owned(),
                instance: id.to_owned(),
                discovery: self.agent.discovery_url(),
                app_port,
                inbound_port: Some(inbound_port),
                extra_args: sidecar_args.to_vec(),
            },
        )
        .await?;
        Ok((sidecar, registration))
    }

    /// Starts an app (with `app_args`) fronted by Consul's own
    /// `consul connect proxy` as its registered Connect sidecar, the way a
    /// service not yet moved to Weft runs in a mixed mesh.
    pub async fn consul_proxied_instance(
        &self,
        service: &str,
        id: &str,
        app_args: &[String],
    ) -> anyhow::Result<ConsulProxiedInstance> {
        let app = App::start_with(&self.log_dir, service, id, app_args).await?;
        let public_port = free_port()?;
        let registration = Registration::meshed(service, id, app.port(), public_port);
        self.consul.register(&registration).await?;
        let proxy = ConsulProxy::sidecar_for(&self.consul, &self.log_dir, id, public_port).await?;
        Ok(ConsulProxiedInstance {
            app,
            proxy,
            registration,
        })
    }

    /// The calling side of most tests: a meshed `client` service whose
    /// sidecar's outbound listener the test sends requests to.
    pub async fn client(&self) -> anyhow::Result<MeshedInstance> {
        self.meshed_instance("client", "client-1").await
    }

    /// Writes a document under the agent's KV prefix: `key` is
    /// `routes/<host>`, `destinations/<svc>` or `policies/<svc>`.
    pub async fn put_document(
        &self,
        key: &str,
        document: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.consul
            .kv_put(&format!("weft/{key}"), &document.to_string())
            .await
    }

    /// Writes raw bytes (for invalid documents) under the KV prefix.
    /// A meshed `users-1` and the `client` that calls it, the route in place.
    pub async fn users_and_client(&self) -> anyhow::Result<(MeshedInstance, MeshedInstance)> {
        self.users_and_client_with(&[]).await
    }

    /// Like [`Mesh::users_and_client`], with more flags for the client's
    /// sidecar (tracing, an access log...).
    pub async fn users_and_client_with(
        &self,
        client_args: &[String],
    ) -> anyhow::Result<(MeshedInstance, MeshedInstance)> {
        let users = self.meshed_instance("users", "users-1").await?;
        let client = self
            .meshed_instance_with("client", "client-1", client_args)
            .await?;
        wait_for_instances(
            &self.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1"],
        )
        .await?;
        Ok((users, client))
    }

    pub async fn put_raw_document(&self, key: &str, document: &str) -> anyhow::Result<()> {
        self.consul.kv_put(&format!("weft/{key}"), document).await
    }
}

/// The mesh of the identity tests: a CA whose leaves are valid `leaf_ttl`,
/// `users` and `client` meshed with their join tokens (instances `users-1`
/// and `client-1`), and the client's route to users working.
pub async fn mtls_users_and_client(
    ctx: &TestCtx,
    leaf_ttl: &str,
) -> anyhow::Result<(MeshCa, Mesh, MeshedInstance, MeshedInstance)> {
    let ca = MeshCa::create(&ctx.log_dir, &["client", "users"])?;
    let mesh = Mesh::start_with(ctx, &ca.agent_args(leaf_ttl)).await?;
    let users = mesh
        .meshed_instance_with("users", "users-1", &ca.sidecar_args("users"))
        .await?;
    let client = mesh
        .meshed_instance_with("client", "client-1", &ca.sidecar_args("client"))
        .await?;
    wait_for_instances(
        &mesh.http,
        client.sidecar.outbound,
        Call::get("users", "/"),
        &["users-1"],
    )
    .await?;
    Ok((ca, mesh, users, client))
}

/// The mesh of the resilience tests: plain (unmeshed) `users` instances
/// with these ids, the destination document (if any) in KV before the
/// client starts, and the client's sidecar reaching every instance.
pub async fn plain_users_behind_client(
    ctx: &TestCtx,
    ids: &[&str],
    destination: Option<&serde_json::Value>,
) -> anyhow::Result<(Mesh, Vec<App>, MeshedInstance)> {
    let mesh = Mesh::start(ctx).await?;
    let mut apps = Vec::new();
    for id in ids {
        apps.push(mesh.plain_instance("users", id).await?);
    }
    if let Some(document) = destination {
        mesh.put_document("destinations/users", document).await?;
    }
    let client = mesh.client().await?;
    wait_for_instances(
        &mesh.http,
        client.sidecar.outbound,
        Call::get("users", "/"),
        ids,
    )
    .await?;
    Ok((mesh, apps, client))
}

/// The agent on the embedded file backend: no Consul at all.
pub struct FileMesh {
    pub log_dir: PathBuf,
    pub config_dir: PathBuf,
    pub agent: Agent,
    pub http: HttpClient,
}

impl FileMesh {
    /// Writes `files` (path relative to the config dir -> content) into a
    /// fresh config dir under the test's log dir, then starts the agent on it.
    pub async fn start(ctx: &TestCtx, files: &[(&str, String)]) -> anyhow::Result<Self> {
        let config_dir = ctx.log_dir.join("config");
        for (path, content) in files {
            write_file(&config_dir.join(path), content)?;
        }
        let agent = Agent::start(&ctx.log_dir, &Backend::ConfigDir(config_dir.clone())).await?;
        Ok(Self {
            log_dir: ctx.log_dir.clone(),
            config_dir,
            agent,
            http: HttpClient::new(),
        })
    }

    /// Starts an app and a sidecar with no registration (the config dir says
    /// where services are).
    pub async fn sidecar(&self, service: &str, id: &str) -> anyhow::Result<(App, Sidecar)> {
        let app = App::start(&self.log_dir, service, id).await?;
        let sidecar = Sidecar::start(
            &self.log_dir,
            SidecarSpec {
                service: service.to_owned(),
                instance: id.to_owned(),
                discovery: self.agent.discovery_url(),
                app_port: app.port(),
                inbound_port: None,
                extra_args: Vec::new(),
            },
        )
        .await?;
        Ok((app, sidecar))
    }

    /// Rewrites one file of the config dir (atomically: write then rename, so
    /// the watcher never sees half a document).
    pub fn write(&self, path: &str, content: &str) -> anyhow::Result<()> {
        write_file(&self.config_dir.join(path), content)
    }
}

fn write_file(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let staging = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|name| name.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&staging, content).with_context(|| format!("writing {}", staging.display()))?;
    std::fs::rename(&staging, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Waits until a call through `outbound` is answered by an app for which
/// `expect` holds, and returns that answer. For setup steps; convergence
/// times are measured by the tests themselves.
pub async fn wait_for_route(
    http: &HttpClient,
    outbound: SocketAddr,
    call: Call<'_>,
    what: &str,
    expect: impl Fn(&Echo) -> bool,
) -> anyhow::Result<Echo> {
    eventually(SETUP_TIMEOUT, what, || {
        let call = call.clone();
        let expect = &expect;
        async move {
            let echo = http.call(outbound, call).await?.echo()?;
            if expect(&echo) {
                Ok(echo)
            } else {
                bail!(
                    "answered by {} ({}) at path {}",
                    echo.instance,
                    echo.service,
                    echo.path
                )
            }
        }
    })
    .await
}

/// Waits until every one of `instances` has answered a call through
/// `outbound`: the route and all those endpoints are in place. For setup,
/// before steady traffic starts.
pub async fn wait_for_instances(
    http: &HttpClient,
    outbound: SocketAddr,
    call: Call<'_>,
    instances: &[&str],
) -> anyhow::Result<()> {
    // Shared by the attempts, each holding it only between awaits.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let what = format!(
        "every one of {instances:?} answers {}{}",
        call.host, call.path
    );
    eventually(SETUP_TIMEOUT, &what, || {
        let call = call.clone();
        let seen = &seen;
        async move {
            let echo = http.call(outbound, call).await?.echo()?;
            let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            seen.insert(echo.instance);
            let missing: Vec<&&str> = instances.iter().filter(|i| !seen.contains(**i)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                bail!("not answered yet by {missing:?}")
            }
        }
    })
    .await
}

/// Sends `count` calls (16 at a time) and counts the answering instances.
/// Any failed call fails the tally.
pub async fn tally(
    http: &HttpClient,
    outbound: SocketAddr,
    call: Call<'_>,
    count: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let results: Vec<anyhow::Result<Echo>> = futures_util::stream::iter(0..count)
        .map(|_| {
            let call = call.clone();
            async move { http.call(outbound, call).await?.echo() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut counts = BTreeMap::new();
    for result in results {
        *counts.entry(result?.instance).or_default() += 1;
    }
    Ok(counts)
}
