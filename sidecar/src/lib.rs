//! weft-sidecar: the Weft data plane beside every service.
//!
//! From the bottom up (`sidecar/tests/module_graph.rs` keeps it so: no
//! import cycle, and no feature imports another or anything above it):
//!
//! * Shared plumbing, importing nothing above it:
//!   * `error` — the data path's error type and its kinds.
//!   * `model` — what every layer shares of a request: direction, peer
//!     identity, the response and future types, the `Exchange` trait.
//!   * `request_body`, `body` — the request body with its byte meter; the
//!     response body (and a gRPC answer's, which reports how it ended).
//!   * `mtls` — mutual TLS between sidecars, both sides of the handshake:
//!     the STRICT/PERMISSIVE mode, the inbound acceptor (which yields the
//!     caller's identity), the outbound connector and what a peer
//!     negotiated by ALPN, failed-handshake counts. Where the certificates
//!     come from is `identity`'s work; `mtls` reads them from the store.
//!   * `upstream` — pooled connections to endpoints, the HTTP/1 client,
//!     DNS; its mesh clients run `mtls`'s connector over its TCP one.
//!   * `matcher` — compiled path, header and method matchers, shared by
//!     the routes and the intentions.
//!   * `clock` — whole milliseconds in the breaker's and ejection's atomics.
//!   * `shutdown`, `backoff`, `nack`, `traceparent`, `xds_status` — drain
//!     and accept, reconnect backoff, a NACK's text, the W3C trace header,
//!     the config stream's status.
//! * Features, one folder each (config, compile step, layer, metrics hooks,
//!   tests), none importing another:
//!   * `authn` — JWT authentication of inbound requests.
//!   * `authz` — intentions: which services may call this one.
//!   * `cors` — cross-origin requests: preflights answered at the proxy,
//!     the CORS headers of answers.
//!   * `compression` — gzip, brotli and zstd responses chosen from
//!     Accept-Encoding, and the decoding of compressed request bodies.
//!   * `cache` — the response cache (RFC 9111) of a route or a service.
//!   * `validation` — JSON Schemas for request bodies, query parameters
//!     and headers; refusals as problem documents.
//!   * `ratelimit` — local token buckets and global Redis windows.
//!   * `retry` — retry policies, budgets and the retry layer.
//!   * `breaker` — circuit breaker, concurrency thresholds.
//!   * `ejection` — outlier ejection of failing endpoints, read by the
//!     balancer (`proxy::balance`).
//!   * `trace` — trace context propagation (W3C, B3), spans, OTLP export.
//!   * `metrics`, `access_log` — request metrics and `/metrics`; the
//!     JSON-lines access log.
//!   * `tcp` — opaque TCP: `--tcp-upstream` listeners, CONNECT tunnels over
//!     mTLS, the inbound side that accepts them.
//! * Assembly:
//!   * `table` — the compiled, immutable routing table holding the
//!     features' compiled state, and the request that points into it
//!     (`table::request`), which implements each feature's trait.
//!   * `proxy` — the layers both stacks share; `outbound`, `inbound` — the
//!     two stacks, top to bottom, with the layers only they have.
//!   * `xds` — the ADS client that builds the table from the agent's
//!     resources.
//!   * `server` — the HTTP server both listeners share; `config` —
//!     start-up settings; `identity` — the key, leaf and trust bundle, in
//!     the store `mtls` reads; `admin`, `app_health`, `call_report`.
//!
//! Embedders and tests call [`start`], which binds every listener and
//! returns a [`Running`] sidecar with its addresses and a [`ShutdownHandle`].
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app_health;
pub mod authn;
pub mod authz;
pub mod backoff;
pub mod body;
pub mod breaker;
pub mod cache;
pub mod call_report;
pub mod clock;
pub mod compression;
pub mod config;
pub mod cors;
pub mod ejection;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod inbound;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod mtls;
mod nack;
pub mod outbound;
pub mod process;
pub mod proxy;
pub mod ratelimit;
pub mod request_body;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod table;
pub mod tcp;
pub mod trace;
pub mod traceparent;
pub mod upstream;
pub mod validation;
pub mod xds;
pub mod xds_status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Role, Settings};

use crate::model::Direction;
use crate::server::{ServerSettings, Transport};
use crate::shutdown::Drain;
use crate::table::cluster::{ClusterShared, Health, Protocol};
use crate::table::{Cluster, ClusterSettings, EndpointAddr, RoutingTable};
use crate::upstream::{Dns, PoolSettings};
use crate::xds::XdsState;
use crate::xds::compile::EndpointSpec;

/// Starts shutdown (stop accepting, drain) when triggered. Cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.tx.borrow()
    }
}

/// A started sidecar.
pub struct Running {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    /// `None` in static mode.
    pub xds: Option<Arc<XdsState>>,
    pub table: Arc<ArcSwap<RoutingTable>>,
    shutdown: ShutdownHandle,
    drain: Drain,
    drain_timeout: Duration,
    listeners: Vec<JoinHandle<()>>,
    /// The span export task (tracing on): it sends what is queued at
    /// shutdown, and is waited for briefly.
    span_export: Option<JoinHandle<()>>,
}

/// How shutdown ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the drain timeout.
    Clean,
    /// The drain timeout passed with connections still open.
    TimedOut,
}

impl Running {
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits for shutdown to be triggered, then for listeners to stop and
    /// in-flight requests to finish (at most the drain timeout).
    pub async fn wait(self) -> Drained {
        let mut rx = self.shutdown.tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        for l in self.listeners {
            let _ = l.await;
        }
        let drained = match tokio::time::timeout(self.drain_timeout, self.drain.wait()).await {
            Ok(()) => Drained::Clean,
            Err(_) => Drained::TimedOut,
        };
        if let Some(export) = self.span_export {
            // Its last export has a 2 s deadline of its own.
            let _ = tokio::time::timeout(Duration::from_secs(3), export).await;
        }
        drained
    }
}

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what} ({flag}): is the port already in use?")
    })
}

/// The one-endpoint cluster of the local app, as one view per protocol
/// (`inbound/static_target.rs` chooses per request).
fn app_cluster(
    settings: &Settings,
    dns: &Dns,
) -> anyhow::Result<inbound::static_target::AppTarget> {
    let cluster_settings = ClusterSettings {
        request_timeout: settings.proxy.app_request_timeout,
        max_requests: settings.proxy.app_max_requests,
        pool: PoolSettings {
            connect_timeout: settings.proxy.app_connect_timeout,
            max_idle_per_endpoint: settings.proxy.max_idle_per_endpoint,
            idle_timeout: settings.proxy.idle_timeout,
        },
        ..ClusterSettings::default()
    };
    let spec = EndpointSpec {
        addr: EndpointAddr::Ip(settings.app),
        health: Health::Healthy,
        weight: 1,
        meshed: false,
        instance_id: settings.instance.clone(),
        zone: String::new(),
    };
    let shared = Arc::new(ClusterShared {
        app_health: Some(Arc::new(app_health::AppHealth::new(settings.app))),
        ..ClusterShared::default()
    });
    let endpoint = xds::compile::endpoint(
        &spec,
        &cluster_settings.pool,
        None,
        None,
        dns,
        &shared.connections,
    )
    .context("the --app address cannot be used as an HTTP authority")?;
    let view = |protocol| {
        let settings = ClusterSettings {
            protocol,
            ..cluster_settings.clone()
        };
        Arc::new(Cluster::new(
            "inbound".into(),
            settings,
            vec![endpoint.clone()],
            shared.clone(),
        ))
    };
    Ok(inbound::static_target::AppTarget {
        http1: view(Protocol::Http1),
        http2: view(Protocol::Http2),
    })
}

/// Binds every listener and starts serving. Must run inside a tokio runtime.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let dns = Dns::default();
    let (tx, shutdown_rx) = watch::channel(false);
    let shutdown = ShutdownHandle { tx: Arc::new(tx) };
    let drain = Drain::default();
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let server_settings = ServerSettings {
        header_read_timeout: settings.proxy.header_read_timeout,
        upgrade_idle_timeout: settings.proxy.tcp_idle_timeout,
    };
    let mut listeners = Vec::new();
    if let Some(access_log) = &settings.access_log {
        access_log::install(access_log, &settings.service)?;
    }

    // Mesh identity first: without it the inbound listener could not
    // accept mTLS. Waits while the agent is unreachable; a refusal (bad
    // token, no CA) fails the start with the agent's reason.
    let started = identity::start(&settings, &dns, shutdown_rx.clone()).await?;
    let agent_bundle = started.as_ref().and_then(|s| s.agent_bundle.clone());
    let identity = started.map(|s| s.store);
    // The inbound policy lives in the routing table (`table.inbound`),
    // swapped with it as one value; until the agent sends one: allow every
    // caller (intentions), no JWT checks, mTLS only.
    let inbound_transport = match &identity {
        Some(store) => Transport::mtls(store, table.clone()),
        None => Transport::Plain,
    };

    let tcp_stats = Arc::new(tcp::TcpStats::new(&settings.tcp_upstreams));
    let tunnels = tcp::inbound::Tunnels {
        service: settings.service.as_str().into(),
        app: upstream::Connector::new(
            EndpointAddr::Ip(settings.app),
            settings.proxy.app_connect_timeout,
            dns.clone(),
        ),
        idle_timeout: settings.proxy.tcp_idle_timeout,
        stats: tcp_stats.clone(),
    };

    let (tracer, span_export) = trace::Tracer::start(
        &settings.tracing,
        &settings.service,
        &settings.instance,
        shutdown_rx.clone(),
    )?;

    let inbound = bind(settings.inbound, "inbound traffic", "--inbound").await?;
    let inbound_addr = inbound.local_addr()?;
    let app = app_cluster(&settings, &dns)?;
    listeners.push(tokio::spawn(server::serve(
        inbound,
        inbound::stack(app.clone(), table.clone(), tunnels, tracer.clone()),
        Direction::Inbound,
        inbound_transport,
        server_settings.clone(),
        shutdown_rx.clone(),
        drain.token(),
    )));

    let mut outbound_addr = None;
    let mut xds_state = None;
    let mut on_demand = None;
    if let Some(discovery) = &settings.discovery {
        let state = Arc::new(XdsState::default());
        let node = weft_proto::discovery::v1::Node {
            id: format!(
                "{}-{:06x}",
                settings.instance,
                rand::random::<u32>() & 0xff_ffff
            ),
            service: settings.service.clone(),
            instance: settings.instance.clone(),
            build_version: env!("CARGO_PKG_VERSION").into(),
            metadata: Default::default(),
            // Responses carry what changed only (proto/README.md).
            client_features: vec![weft_proto::client_features::INCREMENTAL.into()],
        };
        if !settings.call_report_interval.is_zero() {
            let reporter = call_report::CallReporter {
                agent: xds::client::ClientSettings::new(discovery.clone()),
                dns: dns.clone(),
                table: table.clone(),
                node_id: node.id.clone(),
                service: settings.service.clone(),
                instance: settings.instance.clone(),
                interval: settings.call_report_interval,
            };
            tokio::spawn(reporter.run(shutdown_rx.clone()));
        }
        let demand = Arc::new(xds::OnDemand::new(
            table.clone(),
            settings.discovery_timeout,
        ));
        tokio::spawn(demand.clone().run_clock(shutdown_rx.clone()));
        on_demand = Some(demand.clone());
        let mut core = xds::Core::new(node, table.clone(), dns.clone())
            .with_tcp_upstreams(settings.tcp_upstreams.iter().map(|u| u.service.clone()))
            .with_required_clusters(settings.upstreams.iter().cloned())
            .with_on_demand(demand.clone(), settings.discovery_idle_timeout);
        if let Some(store) = &identity {
            core = core.with_identity(store.clone());
        }
        if let Some(trust_domain) = agent_bundle {
            core = core.with_trust_bundle_updates(trust_domain);
        }
        tokio::spawn(xds::client::run(
            xds::client::ClientSettings::new(discovery.clone()),
            core,
            state.clone(),
            dns.clone(),
            shutdown_rx.clone(),
        ));
        xds_state = Some(state);
        if let Some(addr) = settings.outbound {
            let outbound = bind(addr, "the app's outbound calls", "--outbound").await?;
            outbound_addr = Some(outbound.local_addr()?);
            listeners.push(tokio::spawn(server::serve(
                outbound,
                outbound::stack(
                    table.clone(),
                    demand.clone(),
                    &settings.service,
                    tracer.clone(),
                ),
                Direction::Outbound,
                Transport::Plain,
                server_settings.clone(),
                shutdown_rx.clone(),
                drain.token(),
            )));
        }
        for (upstream, counters) in &tcp_stats.upstreams {
            let flag = format!("--tcp-upstream {}", upstream.service);
            let listener = bind(upstream.listen, "an opaque TCP destination", &flag).await?;
            let served = Arc::new(tcp::outbound::Upstream {
                service: upstream.service.as_str().into(),
                table: table.clone(),
                dns: dns.clone(),
                idle_timeout: settings.proxy.tcp_idle_timeout,
                counters: counters.clone(),
            });
            listeners.push(tokio::spawn(tcp::outbound::serve(
                listener,
                served,
                shutdown_rx.clone(),
                drain.token(),
            )));
        }
    }

    let mut admin_addr = None;
    if let Some(addr) = settings.admin {
        let admin = bind(addr, "the admin endpoints", "--admin").await?;
        admin_addr = Some(admin.local_addr()?);
        let mut metrics = metrics::Metrics::new(metrics::collector::SidecarCollector {
            source: Arc::new(table::metrics::TableMetrics {
                table: table.clone(),
                inbound: app.http1.clone(),
                service: settings.service.as_str().into(),
            }),
            xds: xds_state.clone(),
            features: vec![
                access_log::metrics::encode,
                cors::metrics::encode,
                compression::metrics::encode,
                cache::metrics::encode,
                validation::metrics::encode,
            ],
        });
        if let Some(counters) = tracer.counters() {
            metrics.register(Box::new(trace::export::ExportCollector(counters)));
        }
        let metrics = Arc::new(metrics);
        let state = admin::AdminState {
            xds: xds_state.clone(),
            table: table.clone(),
            inbound: app.http1.clone(),
            metrics,
            shutdown: shutdown_rx.clone(),
            identity: identity.clone(),
            tcp: tcp_stats.clone(),
            on_demand,
        };
        listeners.push(tokio::spawn(admin::serve(admin, state, drain.token())));
    }

    tracing::info!(
        service = %settings.service,
        inbound = %inbound_addr,
        app = %settings.app,
        outbound = ?outbound_addr,
        admin = ?admin_addr,
        tcp_upstreams = ?settings.tcp_upstreams.iter().map(|u| format!("{}={}", u.service, u.listen)).collect::<Vec<_>>(),
        mode = if settings.discovery.is_some() { "xds" } else { "static" },
        mtls = identity.is_some(),
        traces_to = settings.tracing.export.as_ref().map(|e| e.endpoint.as_str()),
        "weft-sidecar started"
    );
    Ok(Running {
        inbound_addr,
        outbound_addr,
        admin_addr,
        xds: xds_state,
        table,
        shutdown,
        drain,
        drain_timeout: settings.drain_timeout,
        listeners,
        span_export,
    })
}
