//! Runs [`Core`] over one ADS stream to the agent, reconnecting with
//! backoff. While the agent is away the last good table keeps serving.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

use super::{Core, XdsState};
use crate::backoff::Backoff;
use crate::upstream::Dns;

/// Connection settings of the ADS client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub discovery: Uri,
    /// Default 2 s: the agent runs beside the sidecar or in the same DC.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; 10 s per proto/README.md.
    pub keepalive_interval: Duration,
    /// Drop the stream after this long without a ping answer; 20 s per README.
    pub keepalive_timeout: Duration,
}

impl ClientSettings {
    pub fn new(discovery: Uri) -> Self {
        Self {
            discovery,
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Replaces a DNS host in the agent URL by an address from hickory, so
/// tonic never calls the blocking system resolver.
async fn resolve(uri: &Uri, dns: &Dns) -> Result<Uri, String> {
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(uri.clone());
    }
    let port = uri.port_u16().unwrap_or(80);
    let addrs = dns.resolve(host, port).await.map_err(|e| e.to_string())?;
    let addr = addrs[0];
    format!("http://{addr}")
        .parse()
        .map_err(|e| format!("resolved address {addr} is not a URI: {e}"))
}

pub(crate) async fn connect(settings: &ClientSettings, dns: &Dns) -> Result<Channel, String> {
    let uri = resolve(&settings.discovery, dns).await?;
    Endpoint::from(uri)
        .connect_timeout(settings.connect_timeout)
        .timeout(Duration::from_secs(3600 * 24 * 365))
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })
}

/// One stream: open, subscribe, answer responses until it ends.
/// Returns whether any response arrived (then the backoff resets).
async fn run_stream(
    settings: &ClientSettings,
    core: &mut Core,
    state: &XdsState,
    dns: &Dns,
    got_response: &mut bool,
) -> Result<(), String> {
    let channel = connect(settings, dns).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    // Bounded: we send at most a handful of requests per response.
    let (tx, rx) = mpsc::channel(16);
    // Names asked for while disconnected join the opening subscription.
    if let Some(names) = core.on_demand().map(|d| d.take_new()) {
        core.demand(names);
    }
    for r in core.initial_requests() {
        tx.send(r)
            .await
            .map_err(|_| "request stream closed".to_owned())?;
    }
    let responses = client
        .stream_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("opening the ADS stream: {s}"))?;
    // Incremental responses only from an agent that says it sends them.
    let incremental = responses
        .metadata()
        .get(weft_proto::client_features::AGENT_FEATURES_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|features| {
            features
                .split(',')
                .any(|f| f.trim() == weft_proto::client_features::INCREMENTAL)
        });
    core.set_incremental(incremental);
    let mut responses = responses.into_inner();
    state.lock().connected = true;
    tracing::info!(agent = %settings.discovery, "connected to the discovery agent");
    let demand = core.on_demand().cloned();
    // The idle sweep's pace: the coarse clock's (1 s) resolution.
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let requests = tokio::select! {
            message = responses.message() => {
                let resp = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("the agent closed the stream".into()),
                    Err(s) => return Err(format!("stream error: {s}")),
                };
                *got_response = true;
                core.handle(resp)
            }
            // A request chose a destination not held yet: subscribe.
            () = wanted(demand.as_deref()) => {
                let names = demand.as_ref().map(|d| d.take_new()).unwrap_or_default();
                core.demand(names)
            }
            _ = sweep.tick() => core.sweep(),
        };
        if requests.is_empty() {
            continue;
        }
        core.publish(&mut state.lock());
        for r in requests {
            tx.send(r)
                .await
                .map_err(|_| "request stream closed".to_owned())?;
        }
    }
}

/// Resolves when a request asks for a cluster not held yet; never without
/// on-demand discovery.
async fn wanted(demand: Option<&super::OnDemand>) {
    match demand {
        Some(d) => d.wanted().await,
        None => std::future::pending().await,
    }
}

/// Runs until `shutdown` turns true.
pub async fn run(
    settings: ClientSettings,
    mut core: Core,
    state: Arc<XdsState>,
    dns: Dns,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    core.publish(&mut state.lock());
    loop {
        let mut got_response = false;
        let result = tokio::select! {
            r = run_stream(&settings, &mut core, &state, &dns, &mut got_response) => r,
            _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
        };
        state.lock().connected = false;
        if got_response {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        if let Err(e) = result {
            tracing::warn!(
                agent = %settings.discovery,
                error = %e,
                retry_in = ?delay,
                "discovery agent unavailable (is weft-discovery running and reachable?); serving the last good config"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
        }
    }
}
