//! `weft-gateway`: the sidecar's proxy core run as the mesh's edge, one
//! entry point for outside clients.
//!
//! It is a mesh member like any sidecar: `--service` is its name, it gets
//! a SPIFFE identity from the agent and calls services over mTLS, so the
//! intentions of each service decide whether the gateway may call it. What
//! it has instead of an app is listeners, from the KV document
//! `gateways/<name>` (the `Gateway` resource): ports, plaintext or TLS, the
//! hosts each serves, certificates chosen by SNI.
//!
//! A request's path, top to bottom ([`stack`]): the edge's own layers
//! (`forwarded`: `x-forwarded-*` by trusted hops; `hosts`: only the hosts
//! bound to the listener), then the outbound stack from its route on
//! (`outbound::routed`), with the route tables of those hosts
//! (`routes/<host>` documents).
//!
//! * `compile` — the `Gateway` resource checked and compiled.
//! * `certificates` — the SNI certificate resolver, swapped on reload.
//! * `listeners` — binding, updating and stopping listeners as the
//!   resource changes; certificate files read again when they change.
//! * `policy`, `forwarded`, `hosts` — what a listener's layers read, and
//!   the layers.
//! * `metrics` — handshakes with outside clients, certificate reloads.

pub mod certificates;
pub mod compile;
pub mod forwarded;
pub mod hosts;
pub mod listeners;
pub mod metrics;
pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tower::ServiceBuilder;

use crate::proxy::{conformance, error_response, headers, request_id};
use crate::server::ServerSettings;
use crate::shutdown::Drain;
use crate::table::cluster::ClusterShared;
use crate::table::request::HttpStack;
use crate::table::{Cluster, ClusterSettings, RoutingTable};
use crate::upstream::Dns;
use crate::xds::XdsState;
use crate::{Running, Settings, ShutdownHandle, access_log, admin, outbound, trace, xds};
use listeners::{GatewayListeners, ListenerContext};
use policy::SharedListenerPolicy;

/// One listener's stack: the edge's layers, then the outbound stack from
/// its route on.
pub fn stack(
    policy: SharedListenerPolicy,
    table: Arc<ArcSwap<RoutingTable>>,
    on_demand: Arc<outbound::on_demand::OnDemand>,
    gateway: &str,
    tracer: trace::Tracer,
) -> impl HttpStack + use<> {
    ServiceBuilder::new()
        .layer(error_response::ErrorResponseLayer)
        .layer(conformance::ConformanceLayer)
        .layer(request_id::RequestIdLayer)
        // What earlier hops claim is judged before `headers` appends the
        // peer to `x-forwarded-for`.
        .layer(forwarded::ForwardedLayer::new(policy.clone()))
        .layer(headers::ProxyHeadersLayer)
        // Only the listener's hosts: never a mesh service by its own name.
        .layer(hosts::BoundHostsLayer::new(policy))
        .service(outbound::routed(table, on_demand, gateway, tracer))
}

/// Starts a gateway: its identity, its ADS stream (listeners follow its
/// `Gateway` resource) and its admin listener. Must run inside a tokio
/// runtime.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let Some(discovery) = settings.discovery.clone() else {
        anyhow::bail!("a gateway needs --discovery: its listeners come from the agent");
    };
    let Some(admin_addr) = settings.admin else {
        anyhow::bail!("a gateway needs --admin");
    };
    let dns = Dns::default();
    let (tx, shutdown_rx) = watch::channel(false);
    let shutdown = ShutdownHandle { tx: Arc::new(tx) };
    let drain = Drain::default();
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    if let Some(access_log) = &settings.access_log {
        access_log::install(access_log, &settings.service)?;
    }
    let started = crate::identity::start(&settings, &dns, shutdown_rx.clone()).await?;
    let agent_bundle = started.as_ref().and_then(|s| s.agent_bundle.clone());
    let identity = started.map(|s| s.store);
    let (tracer, span_export) = trace::Tracer::start(
        &settings.tracing,
        &settings.service,
        &settings.instance,
        shutdown_rx.clone(),
    )?;

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
        client_features: vec![weft_proto::client_features::INCREMENTAL.into()],
    };
    let demand = Arc::new(xds::OnDemand::new(
        table.clone(),
        settings.discovery_timeout,
    ));
    tokio::spawn(demand.clone().run_clock(shutdown_rx.clone()));

    let mut listeners = GatewayListeners::new(ListenerContext {
        stack: {
            let (table, demand, tracer) = (table.clone(), demand.clone(), tracer.clone());
            let gateway = settings.service.clone();
            move |policy| {
                stack(
                    policy,
                    table.clone(),
                    demand.clone(),
                    &gateway,
                    tracer.clone(),
                )
            }
        },
        server: ServerSettings {
            header_read_timeout: settings.proxy.header_read_timeout,
            upgrade_idle_timeout: settings.proxy.tcp_idle_timeout,
        },
        shutdown: shutdown_rx.clone(),
        drain: drain.late_tokens(),
    });
    let sink: xds::GatewaySink = Box::new(move |resource| {
        let compiled = match resource {
            Some(resource) => compile::compile(resource)?,
            None => {
                tracing::warn!(
                    "the agent has no `gateways/<name>` document for this gateway: no listener"
                );
                compile::CompiledGateway {
                    trusted_hops: 0,
                    listeners: Vec::new(),
                }
            }
        };
        listeners.apply(compiled)?;
        tracing::info!(listeners = ?listeners.addresses(), "gateway listeners applied");
        Ok(())
    });

    let mut core = xds::Core::new(node, table.clone(), dns.clone())
        .with_on_demand(demand.clone(), settings.discovery_idle_timeout)
        .with_gateway(sink);
    if let Some(store) = &identity {
        core = core.with_identity(store.clone());
    }
    if let Some(trust_domain) = agent_bundle {
        core = core.with_trust_bundle_updates(trust_domain);
    }
    tokio::spawn(xds::client::run(
        xds::client::ClientSettings::new(discovery),
        core,
        state.clone(),
        dns.clone(),
        shutdown_rx.clone(),
    ));

    // A gateway has no app: an empty cluster stands in where the admin
    // endpoints and metrics read the sidecar's.
    let no_app = Arc::new(Cluster::new(
        "inbound".into(),
        ClusterSettings::default(),
        Vec::new(),
        Arc::new(ClusterShared::default()),
    ));
    let admin = crate::bind(admin_addr, "the admin endpoints", "--admin").await?;
    let admin_addr = admin.local_addr()?;
    let mut metrics = crate::metrics::Metrics::new(crate::metrics::collector::SidecarCollector {
        source: Arc::new(crate::table::metrics::TableMetrics {
            table: table.clone(),
            inbound: no_app.clone(),
            service: settings.service.as_str().into(),
        }),
        xds: Some(state.clone()),
        features: vec![
            access_log::metrics::encode,
            crate::cors::metrics::encode,
            self::metrics::encode,
        ],
    });
    if let Some(counters) = tracer.counters() {
        metrics.register(Box::new(trace::export::ExportCollector(counters)));
    }
    let admin_state = admin::AdminState {
        xds: Some(state.clone()),
        table: table.clone(),
        inbound: no_app,
        metrics: Arc::new(metrics),
        shutdown: shutdown_rx.clone(),
        identity: identity.clone(),
        tcp: Arc::new(crate::tcp::TcpStats::new(&[])),
        on_demand: Some(demand),
    };
    let admin_task = tokio::spawn(admin::serve(admin, admin_state, drain.token()));
    tracing::info!(
        gateway = %settings.service,
        admin = %admin_addr,
        mtls = identity.is_some(),
        "weft-gateway started; listeners follow its `gateways/{}` document",
        settings.service
    );
    Ok(Running {
        inbound_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        outbound_addr: None,
        admin_addr: Some(admin_addr),
        xds: Some(state),
        table,
        shutdown,
        drain,
        drain_timeout: settings.drain_timeout,
        listeners: vec![admin_task],
        span_export,
    })
}
