//! The agent process: settings, and the wiring of source -> store ->
//! snapshot builder -> discovery server, plus the admin server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminState};
use crate::ads::{AdsServer, SidecarRegistry, unix_now};
use crate::consul::{ConsulClient, ConsulConfig};
use crate::metrics::Metrics;
use crate::snapshot::{self, DebounceConfig};
use crate::store::MeshStore;

/// Command-line settings (each also from the environment variable named).
#[derive(Debug, clap::Parser)]
#[command(name = "weft-discovery", version, about = "Weft's discovery agent")]
pub struct Settings {
    /// Consul's HTTP address. Either this or --config-dir.
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    pub consul: Option<String>,
    /// ACL token sent to Consul.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// CA certificate (PEM) to verify Consul's HTTPS certificate.
    #[arg(long, env = "CONSUL_CACERT")]
    pub consul_cacert: Option<PathBuf>,
    /// Serve from a directory of documents and static endpoints instead of
    /// Consul (the embedded file backend); takes precedence over --consul.
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Where sidecars connect (gRPC, the aggregated discovery service).
    #[arg(long, env = "WEFT_DISCOVERY_LISTEN", default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// Admin HTTP: /healthz, /readyz, /status, /metrics.
    #[arg(long, env = "WEFT_DISCOVERY_ADMIN", default_value = "127.0.0.1:15011")]
    pub admin: SocketAddr,
    /// The KV folder that holds Weft's documents.
    #[arg(long, env = "WEFT_KV_PREFIX", default_value = "weft/")]
    pub kv_prefix: String,
    /// Quiet time after a change before a new snapshot is built (a burst of
    /// Consul updates becomes one push).
    #[arg(long, env = "WEFT_DEBOUNCE", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let store = Arc::new(MeshStore::new());
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(SidecarRegistry::default());
    let (publish, snapshots) = watch::channel(None);

    let ads_listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen for sidecars on --listen {}", settings.listen))?;
    let admin_listener = admin::bind(settings.admin).await?;

    let backend = if let Some(dir) = &settings.config_dir {
        let dir = dir.clone();
        let description = format!("config-dir {}", dir.display());
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::source::file::run(dir, store).await {
                tracing::error!("file backend stopped: {error:#}");
            }
        });
        description
    } else if let Some(address) = &settings.consul {
        let config = ConsulConfig::new(
            address,
            settings.consul_token.clone(),
            settings.consul_cacert.clone(),
        )
        .with_context(|| format!("invalid --consul / CONSUL_HTTP_ADDR {address:?}"))?;
        let client = ConsulClient::new(config).context("cannot create the Consul client")?;
        let description = format!("consul {address}");
        let store = store.clone();
        let prefix = settings.kv_prefix.clone();
        tokio::spawn(crate::source::consul::ConsulSource::new(client, prefix).run(store));
        description
    } else {
        anyhow::bail!(
            "no backend: set --consul URL (or CONSUL_HTTP_ADDR) to read Consul, or --config-dir DIR to serve from files"
        );
    };
    tracing::info!(%backend, listen = %settings.listen, admin = %settings.admin, "weft-discovery starting");

    // While the backend loads its first state.
    tokio::task::spawn_blocking(crate::documents::schema::precompile)
        .await
        .context("compiling the document schema")?
        .map_err(|reason| anyhow::anyhow!("the embedded document schema is broken: {reason}"))?;

    tokio::spawn(snapshot::run_builder(
        store.clone(),
        DebounceConfig {
            quiet: settings.debounce,
            ..DebounceConfig::default()
        },
        publish,
        metrics.clone(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(AdminState {
            backend,
            started_at_unix: unix_now(),
            store,
            snapshots: snapshots.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
        }),
    ));

    let ads = AdsServer::new(snapshots, registry, metrics).into_service();
    tonic::transport::Server::builder()
        // Find dead sidecars (and let them find a dead agent) within 30 s.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .add_service(ads)
        .serve_with_incoming_shutdown(TcpListenerStream::new(ads_listener), shutdown_signal())
        .await
        .context("discovery server failed")?;
    tracing::info!("weft-discovery stopped");
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
