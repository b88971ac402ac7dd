//! The agent process: settings, and the wiring of source -> store ->
//! snapshot builder -> discovery server (with the identity service beside
//! it), plus the admin server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::ads::{AdsServer, SidecarRegistry, unix_now};
use crate::consul::{ConsulClient, ConsulConfig, ConsulError};
use crate::identity::{Identity, IdentityConfig, IdentitySource};
use crate::metrics::Metrics;
use crate::model::TrustRoots;
use crate::servicemap::{CallMap, CallReportsService};
use crate::snapshot::{self, DebounceConfig, SnapshotBuilder};
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
    /// CA certificate(s) (PEM) to verify Consul's HTTPS certificate; without
    /// it, the system bundle /etc/ssl/certs/ca-certificates.crt.
    #[arg(long, env = "CONSUL_CACERT")]
    pub consul_cacert: Option<PathBuf>,
    /// Reach Consul over HTTPS even when --consul is a bare host:port (or
    /// http://), as Consul's CLI does. `--consul-http-ssl` alone means true.
    #[arg(
        long,
        env = "CONSUL_HTTP_SSL",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = parse_consul_bool
    )]
    pub consul_http_ssl: bool,
    /// Client certificate (PEM) presented to Consul over HTTPS, for a Consul
    /// with verify_incoming; set with --consul-client-key.
    #[arg(long, env = "CONSUL_CLIENT_CERT")]
    pub consul_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --consul-client-cert.
    #[arg(long, env = "CONSUL_CLIENT_KEY")]
    pub consul_client_key: Option<PathBuf>,
    /// The name Consul's HTTPS certificate is verified against (and sent as
    /// SNI), e.g. server.dc1.consul; default: the host of --consul.
    #[arg(long, env = "CONSUL_TLS_SERVER_NAME")]
    pub consul_tls_server_name: Option<String>,
    /// Most TCP connections the agent opens to Consul at once, whatever the
    /// catalog's size (at least 7). A quarter (at least 5) is kept for its
    /// five blocking watches, the rest for reads of changed services,
    /// audits of every check and identity checks. Consul refuses connections over
    /// `limits.http_max_conns_per_client` (200 per client address by
    /// default, shared by every process on this address).
    #[arg(long, env = "WEFT_CONSUL_MAX_CONNECTIONS", default_value_t = crate::consul::DEFAULT_MAX_CONNECTIONS)]
    pub consul_max_connections: usize,
    /// How often the agent re-reads every service from Consul even when
    /// nothing told it of a change: a backstop for changes its watches
    /// cannot attribute (see `source::consul`). Each resync reads every
    /// catalog name once, on at most --consul-max-connections connections.
    #[arg(long, env = "WEFT_CONSUL_RESYNC", default_value = "5m", value_parser = parse_resync)]
    pub consul_resync: Duration,
    /// Serve from a directory of documents and static endpoints instead of
    /// Consul (the embedded file backend); takes precedence over --consul.
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Where sidecars connect (gRPC: the aggregated discovery service,
    /// certificate requests and call reports for the service map).
    #[arg(long, env = "WEFT_DISCOVERY_LISTEN", default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// Admin HTTP: /healthz, /readyz, /status, /metrics, and the service
    /// map at /ui.
    #[arg(long, env = "WEFT_DISCOVERY_ADMIN", default_value = "127.0.0.1:15011")]
    pub admin: SocketAddr,
    /// The KV folder that holds Weft's documents.
    #[arg(long, env = "WEFT_KV_PREFIX", default_value = "weft/")]
    pub kv_prefix: String,
    /// Quiet time after a change before a new snapshot is built (a burst of
    /// Consul updates becomes one push). Like `20ms`; a bare number is seconds.
    #[arg(long, env = "WEFT_DEBOUNCE", default_value = "20ms", value_parser = weft_rules::duration::parse_setting)]
    pub debounce: Duration,
    /// Who signs the mesh's leaves: `weft` (this agent's CA, --ca-dir) or
    /// `consul` (Consul's Connect CA: sidecars ask Consul, and Clusters
    /// name identities in Consul's form and trust domain, read from Consul
    /// at start; needs --consul, and agent:read for the datacenter).
    #[arg(long, env = "WEFT_IDENTITY_SOURCE", value_enum, default_value = "weft")]
    pub identity_source: IdentitySource,
    /// The mesh CA directory (from `weftctl ca init`). Set, the agent signs
    /// sidecars' certificates (weft.identity.v1, on --listen) and every
    /// Cluster names its destination's SPIFFE ID, so sidecars talk mTLS;
    /// unset, the mesh is plaintext. Reloaded when its files change
    /// (`weftctl ca rotate`).
    #[arg(long, env = "WEFT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Join tokens (JSON: {"<service>": "<token>" | ["<token>", ...]}): the
    /// credential a sidecar presents without Consul. With --consul, a Consul
    /// ACL token with service:write on the service works too.
    #[arg(long, env = "WEFT_JOIN_TOKENS")]
    pub join_tokens: Option<PathBuf>,
    /// How long a sidecar's leaf certificate is valid; sidecars renew at
    /// two thirds of it. A day: a stolen key is useful for hours, and a CA
    /// outage of 8 h goes unnoticed. Under a minute is for tests (warned).
    #[arg(long, env = "WEFT_LEAF_TTL", default_value = "24h", value_parser = parse_leaf_ttl)]
    pub leaf_ttl: Duration,
}

impl Settings {
    /// The identity part of the settings.
    pub fn identity_config(&self) -> IdentityConfig {
        IdentityConfig {
            source: self.identity_source,
            ca_dir: self.ca_dir.clone(),
            join_tokens: self.join_tokens.clone(),
            leaf_ttl: self.leaf_ttl,
        }
    }
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let store = Arc::new(MeshStore::new());
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(SidecarRegistry::default());
    let calls = Arc::new(CallMap::default());
    let (publish, snapshots) = watch::channel(None);

    let ads_listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen for sidecars on --listen {}", settings.listen))?;
    let admin_listener = admin::bind(settings.admin).await?;

    // The Consul client when Consul is the backend; identity checks ACL
    // tokens against the same Consul.
    let consul = match (&settings.config_dir, &settings.consul) {
        (None, Some(address)) => {
            let config = consul_config(&settings, address)
                .with_context(|| format!("invalid Consul settings for --consul {address:?}"))?;
            Some(ConsulClient::new(config).context("cannot create the Consul client")?)
        }
        _ => None,
    };
    let identity_config = settings.identity_config();
    let identity = match identity_config.source {
        IdentitySource::Weft => Identity::start(&identity_config, consul.clone(), metrics.clone()),
        IdentitySource::Consul => {
            Identity::start_consul(&identity_config, consul.as_ref(), metrics.clone()).await
        }
    }
    .map_err(|reason| anyhow::anyhow!("identity: {reason}"))?;
    if let Some(bundle) = identity.trust_bundle() {
        tokio::spawn(publish_trust_bundle(bundle, store.clone()));
    }

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
    } else if let (Some(client), Some(address)) = (consul, &settings.consul) {
        let description = format!("consul {address}");
        let store = store.clone();
        let prefix = settings.kv_prefix.clone();
        let options = crate::source::consul::ConsulSourceOptions {
            kv_prefix: prefix,
            resync: settings.consul_resync,
            ..crate::source::consul::ConsulSourceOptions::default()
        };
        let source = crate::source::consul::ConsulSource::with_options(client, options)
            .with_metrics(metrics.clone());
        tokio::spawn(source.run(store));
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

    let builder = match identity.service_identities() {
        Some(identities) => SnapshotBuilder::with_identities(identities),
        None => SnapshotBuilder::new(),
    };
    tokio::spawn(snapshot::run_builder_with(
        builder,
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
            calls: calls.clone(),
        }),
    ));

    let reports = CallReportsService::new(calls, metrics.clone()).into_service();
    let ads = AdsServer::new(snapshots, registry, metrics).into_service();
    tonic::transport::Server::builder()
        // Find dead sidecars (and let them find a dead agent) within 30 s.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(ads)
        .add_service(identity.service())
        .add_service(reports)
        // Not tonic's own accept loop: on an accept error it polls again at
        // once, spinning a core while descriptors are out. `incoming` pauses
        // (and sets TCP_NODELAY, which the builder's setting no longer does).
        .serve_with_incoming_shutdown(
            weft_runtime::incoming(ads_listener, "grpc"),
            shutdown_signal(),
        )
        .await
        .context("discovery server failed")?;
    tracing::info!("weft-discovery stopped");
    Ok(())
}

/// Copies the CA's trust bundle into the store as it changes (a
/// `weftctl ca rotate`), so the next snapshot pushes it to every sidecar
/// subscribed to the `TrustBundle` resource.
async fn publish_trust_bundle(
    mut bundle: watch::Receiver<weft_proto::config::v1::TrustBundle>,
    store: Arc<MeshStore>,
) {
    loop {
        let current = bundle.borrow_and_update().clone();
        store.set_trust_roots(TrustRoots {
            trust_domain: current.trust_domain,
            roots_pem: current.roots_pem,
        });
        if bundle.changed().await.is_err() {
            return;
        }
    }
}

/// The Consul client settings from the `--consul*` flags (each also its
/// `CONSUL_*` variable).
fn consul_config(settings: &Settings, address: &str) -> Result<ConsulConfig, ConsulError> {
    ConsulConfig::new(
        address,
        settings.consul_token.clone(),
        settings.consul_cacert.clone(),
    )?
    .with_http_ssl(settings.consul_http_ssl)?
    .with_client_cert(
        settings.consul_client_cert.clone(),
        settings.consul_client_key.clone(),
    )
    .map(|config| config.with_tls_server_name(settings.consul_tls_server_name.clone()))?
    .with_max_connections(settings.consul_max_connections)
}

/// `--consul-resync`: a setting's duration (`5m`, or bare seconds) of at
/// least a second (a shorter one would re-read the whole catalog back to
/// back).
fn parse_resync(text: &str) -> Result<Duration, String> {
    let every = weft_rules::duration::parse_setting(text)?;
    if every < Duration::from_secs(1) {
        return Err("a full resync re-reads every service; use at least 1s, e.g. 5m".into());
    }
    Ok(every)
}

/// `--leaf-ttl`: a certificate lifetime (`24h`, `7d`) longer than zero.
fn parse_leaf_ttl(text: &str) -> Result<Duration, String> {
    let ttl = weft_rules::duration::parse_lifetime(text)?;
    if ttl.is_zero() {
        return Err("a leaf must be valid for some time, e.g. 24h".into());
    }
    Ok(ttl)
}

/// `CONSUL_HTTP_SSL` / `--consul-http-ssl` read as Consul's CLI reads it.
fn parse_consul_bool(text: &str) -> Result<bool, String> {
    crate::consul::parse_bool(text)
        .ok_or_else(|| format!("{text:?} is not a boolean; use true or false"))
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("weft-discovery").chain(args.iter().copied()))
    }

    #[test]
    fn tls_flags_reach_the_consul_config() {
        let parsed = settings(&[
            "--consul",
            "127.0.0.1:8501",
            "--consul-http-ssl",
            "--consul-cacert",
            "/etc/consul/ca.pem",
            "--consul-client-cert",
            "/etc/consul/client.pem",
            "--consul-client-key",
            "/etc/consul/client-key.pem",
            "--consul-tls-server-name",
            "server.dc1.consul",
        ]);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => panic!("valid flags rejected: {error}"),
        };
        let config = match consul_config(&parsed, "127.0.0.1:8501") {
            Ok(config) => config,
            Err(error) => panic!("valid settings rejected: {error}"),
        };
        assert_eq!(config.address.to_string(), "https://127.0.0.1:8501/");
        assert_eq!(config.ca_cert, Some(PathBuf::from("/etc/consul/ca.pem")));
        assert_eq!(
            config.client_cert,
            Some(PathBuf::from("/etc/consul/client.pem"))
        );
        assert_eq!(
            config.client_key,
            Some(PathBuf::from("/etc/consul/client-key.pem"))
        );
        assert_eq!(config.tls_server_name.as_deref(), Some("server.dc1.consul"));
    }

    #[test]
    fn consul_http_ssl_takes_consuls_booleans() {
        let ssl = |args: &[&str]| settings(args).map(|parsed| parsed.consul_http_ssl).ok();
        assert_eq!(ssl(&["--consul-http-ssl=false"]), Some(false));
        assert_eq!(ssl(&["--consul-http-ssl=1"]), Some(true));
        assert_eq!(ssl(&["--consul-http-ssl=maybe"]), None);
    }

    #[test]
    fn identity_flags_reach_the_identity_config() {
        let parsed = settings(&[
            "--config-dir",
            "/etc/weft",
            "--ca-dir",
            "/etc/weft/ca",
            "--join-tokens",
            "/etc/weft/tokens.json",
            "--leaf-ttl",
            "10s",
        ])
        .map(|parsed| parsed.identity_config());
        let config = match parsed {
            Ok(config) => config,
            Err(error) => panic!("valid flags rejected: {error}"),
        };
        assert_eq!(config.ca_dir, Some(PathBuf::from("/etc/weft/ca")));
        assert_eq!(
            config.join_tokens,
            Some(PathBuf::from("/etc/weft/tokens.json"))
        );
        assert_eq!(config.leaf_ttl, Duration::from_secs(10));
        assert_eq!(config.source, IdentitySource::Weft, "the default");
        let consul = settings(&["--identity-source", "consul"])
            .map(|parsed| parsed.identity_config().source);
        assert_eq!(consul.ok(), Some(IdentitySource::Consul));
        assert!(settings(&["--identity-source", "vault"]).is_err());
        let default_ttl = settings(&[]).map(|parsed| parsed.leaf_ttl).ok();
        assert_eq!(default_ttl, Some(Duration::from_secs(24 * 3600)));
        let zero = settings(&["--leaf-ttl", "0s"]).err().map(|e| e.to_string());
        assert!(zero.is_some_and(|error| error.contains("valid for some time")));
    }

    #[test]
    fn a_client_certificate_without_its_key_stops_start_up_naming_it() {
        let parsed = settings(&["--consul-client-cert", "/etc/consul/client.pem"]);
        let error = parsed
            .map_err(anyhow::Error::from)
            .and_then(|parsed| Ok(consul_config(&parsed, "127.0.0.1:8500")?))
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_CLIENT_KEY"), "{error}");
    }

    #[test]
    fn consul_connections_default_to_32_and_too_few_are_refused_naming_the_flag() {
        let limit = |args: &[&str]| {
            settings(args)
                .map_err(anyhow::Error::from)
                .and_then(|parsed| Ok(consul_config(&parsed, "127.0.0.1:8500")?))
                .map(|config| config.max_connections)
                .map_err(|error| format!("{error:#}"))
        };
        assert_eq!(limit(&[]), Ok(32));
        assert_eq!(limit(&["--consul-max-connections", "8"]), Ok(8));
        let refused = limit(&["--consul-max-connections", "3"])
            .err()
            .unwrap_or_default();
        assert!(refused.contains("--consul-max-connections"), "{refused}");
        let resync = settings(&["--consul-resync", "10ms"]);
        assert!(resync.is_err(), "a resync under a second is refused");
    }

    #[test]
    fn duration_flags_take_weft_durations_and_name_the_units_they_take() {
        let leaf_ttl = settings(&["--leaf-ttl", "7d"]).map(|parsed| parsed.leaf_ttl);
        assert_eq!(leaf_ttl.ok(), Some(Duration::from_secs(7 * 86_400)));
        let debounce = settings(&["--debounce", "20"]).map(|parsed| parsed.debounce);
        assert_eq!(debounce.ok(), Some(Duration::from_secs(20)), "bare seconds");
        let resync = settings(&["--consul-resync", "90"]).map(|parsed| parsed.consul_resync);
        assert_eq!(resync.ok(), Some(Duration::from_secs(90)), "bare seconds");
        let refused = settings(&["--leaf-ttl", "30days"])
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(refused.contains("(ms, s, m, h, d)"), "{refused}");
    }
}
