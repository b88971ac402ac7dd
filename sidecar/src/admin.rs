//! The admin listener: `/ready`, `/live`, `/metrics`, `/config_dump`,
//! `/clusters`, `/identity`, `/tcp`.
//! Plain HTTP/1.1, one small handler; it reads shared state and never
//! touches the data path's locks (there are none).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_proto::type_url;

use crate::mtls::Negotiated;
use crate::shutdown::DrainToken;
use crate::table::{Cluster, RoutingTable};
use crate::xds::{XdsState, dump};

#[derive(Clone)]
pub struct AdminState {
    /// `None` in static mode (no agent).
    pub xds: Option<Arc<XdsState>>,
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The inbound (local app) cluster.
    pub inbound: Arc<Cluster>,
    pub shutdown: watch::Receiver<bool>,
    /// The mesh identity, when mTLS is on.
    pub identity: Option<Arc<weft_certs::IdentityStore>>,
    /// Opaque TCP counters (`/tcp`).
    pub tcp: Arc<crate::tcp::TcpStats>,
    /// Prometheus metrics (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// On-demand discovery (`None` in static mode): its clock dates the
    /// last use of each held cluster in /config_dump.
    pub on_demand: Option<Arc<crate::xds::OnDemand>>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `(ready, reason if not)`.
pub fn readiness(state: &AdminState) -> (bool, String) {
    if *state.shutdown.borrow() {
        return (false, "draining".into());
    }
    if let Some(why) = state
        .inbound
        .shared
        .app_health
        .as_ref()
        .and_then(|app| app.unreachable())
    {
        return (false, why);
    }
    match &state.xds {
        None => (true, String::new()),
        Some(x) => {
            let s = x.lock();
            if s.ready {
                (true, String::new())
            } else {
                let mut why = format!(
                    "waiting for {}",
                    if s.waiting_for.is_empty() {
                        "config"
                    } else {
                        &s.waiting_for
                    }
                );
                if !s.connected {
                    why.push_str(" (not connected to the discovery agent)");
                }
                (false, why)
            }
        }
    }
}

/// The cluster's retry policy in brief, its budget window and counters
/// (the counters survive config updates; a route's own policy is in
/// /config_dump).
fn retries(c: &Cluster) -> Value {
    let state = &c.shared.retry;
    let (requests, retries) = state.budget.window();
    json!({
        "policy": c.settings.retry.as_ref().map(|p| json!({
            "max_attempts": p.max_attempts,
            "per_try_timeout_ms": p.per_try_timeout.map(|d| d.as_millis() as u64),
            "budget_ratio": p.budget.ratio,
            "budget_min_retries_per_second": p.budget.min_retries_per_second,
            "retry_non_idempotent": p.retry_non_idempotent,
            "max_body_bytes": p.max_body_bytes,
            "grpc_statuses": &p.grpc_statuses,
        })),
        "window_requests": requests,
        "window_retries": retries,
        "retries_total": state.retries.load(Ordering::Relaxed),
        "budget_exhausted_total": state.budget_exhausted.load(Ordering::Relaxed),
        "per_try_timeouts_total": state.per_try_timeouts.load(Ordering::Relaxed),
    })
}

fn cluster_json(c: &Cluster, direction: &str) -> Value {
    let now = tokio::time::Instant::now();
    json!({
        "name": &*c.name,
        "direction": direction,
        "lb_policy": format!("{:?}", c.settings.lb),
        "max_requests": c.settings.max_requests,
        "in_flight": c.shared.in_flight.load(Ordering::Relaxed),
        "overflows_total": c.shared.overflows.load(Ordering::Relaxed),
        "retries_in_flight": c.shared.retries.in_flight.load(Ordering::Relaxed),
        "retry_overflows_total": c.shared.retries.overflows.load(Ordering::Relaxed),
        "connections": connections_json(c),
        "breaker": breaker_json(c, now),
        "retries": retries(c),
        "endpoints": c.endpoints.iter().map(|e| json!({
            "address": e.addr.to_string(),
            "health": e.health.as_str(),
            "weight": e.weight,
            "meshed": e.meshed,
            // What the peer selected by ALPN on its last mTLS handshake
            // (`null`: not over mTLS, or no connection yet).
            "peer_alpn": e.client.mesh.as_ref().and_then(|m| m.connector.negotiated()).map(Negotiated::as_str),
            "instance_id": e.instance_id,
            "zone": e.zone,
            "in_flight": e.stats.in_flight.load(Ordering::Relaxed),
            "requests_total": e.stats.requests.load(Ordering::Relaxed),
            "failures_total": e.stats.failures.load(Ordering::Relaxed),
            "ejected_for_ms": e.stats.outlier.ejected_for(now).map(|d| d.as_millis() as u64),
            "times_ejected": e.stats.outlier.times_ejected(),
            "ejections_total": e.stats.outlier.ejections_total.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
    })
}

/// Connections open to the cluster and requests waiting for one, against
/// `circuit_breakers.max_connections` / `max_pending_requests` (`null`:
/// no cap).
fn connections_json(c: &Cluster) -> Value {
    let limit = &c.shared.connections;
    let thresholds = &c.settings.thresholds;
    json!({
        "open": limit.open(),
        "max": thresholds.max_connections,
        "pending": limit.pending(),
        "max_pending": thresholds.max_pending_requests,
        "waited_total": limit.waited_total.load(Ordering::Relaxed),
        "pending_overflows_total": limit.pending_overflows_total.load(Ordering::Relaxed),
        "idle_closed_total": limit.idle_closed_total.load(Ordering::Relaxed),
    })
}

/// The breaker's state and counters; `null` for a cluster without one.
fn breaker_json(c: &Cluster, now: tokio::time::Instant) -> Value {
    let Some(settings) = &c.settings.breaker else {
        return Value::Null;
    };
    let b = &c.shared.breaker;
    let (requests, failures) = b.window_counts(settings, now);
    json!({
        "state": b.state().as_str(),
        "open_remaining_ms": b.open_remaining(now).map(|d| d.as_millis() as u64),
        "grpc_statuses": &settings.failure_on.grpc_statuses,
        "window_requests": requests,
        "window_failures": failures,
        "opened_total": b.opened_total.load(Ordering::Relaxed),
        "half_opened_total": b.half_opened_total.load(Ordering::Relaxed),
        "closed_total": b.closed_total.load(Ordering::Relaxed),
        "rejected_total": b.rejected_total.load(Ordering::Relaxed),
    })
}

pub fn clusters(state: &AdminState) -> Value {
    let table = state.table.load();
    let mut names: Vec<_> = table.clusters.keys().collect();
    names.sort();
    let mut list: Vec<Value> = names
        .into_iter()
        .map(|n| cluster_json(&table.clusters[n], "outbound"))
        .collect();
    list.push(cluster_json(&state.inbound, "inbound"));
    json!({ "clusters": list })
}

pub fn config_dump(state: &AdminState) -> Value {
    let Some(x) = &state.xds else {
        return json!({"mode": "static", "inbound": cluster_json(&state.inbound, "inbound")});
    };
    let s = x.lock();
    let ty = |t: &str, resources: Vec<Value>| {
        let ts = s.types.get(t).cloned().unwrap_or_default();
        json!({
            "type_url": t,
            "version": ts.version,
            "nonce": ts.nonce,
            "last_nack": ts.last_nack,
            "resources": resources,
        })
    };
    json!({
        "mode": "xds",
        "node": s.node.as_ref().map(|n| json!({"id": n.id, "service": n.service, "instance": n.instance, "build_version": n.build_version})),
        "connected": s.connected,
        "ready": s.ready,
        "waiting_for": s.waiting_for,
        "subscribed_clusters": s.subscribed_clusters,
        "held_clusters": held_clusters(state, &s.held),
        "awaited_clusters": state.on_demand.as_ref().map(|d| d.pending()).unwrap_or_default(),
        "RouteConfiguration": ty(type_url::ROUTE_CONFIGURATION, s.accepted.routes.values().map(dump::route_configuration).collect()),
        "Cluster": ty(type_url::CLUSTER, s.accepted.clusters.values().map(dump::cluster).collect()),
        "ClusterLoadAssignment": ty(type_url::CLUSTER_LOAD_ASSIGNMENT, s.accepted.assignments.values().map(dump::assignment).collect()),
        "InboundPolicy": ty(type_url::INBOUND_POLICY, s.accepted.policy.iter().map(dump::inbound_policy).collect()),
        "TrustBundle": ty(type_url::TRUST_BUNDLE, s.accepted.trust_bundle.iter().map(|b| json!({"trust_domain": b.trust_domain, "roots_pem": b.roots_pem})).collect()),
        "Gateway": ty(type_url::GATEWAY, s.accepted.gateway.iter().map(dump::gateway).collect()),
    })
}

/// Each subscribed cluster: why it is held (`preload`, `tcp-upstream`,
/// `policy-upstream`, `on-demand`), whether it is in the routing table
/// yet, and how many seconds ago a request last chose it (`null`: never).
fn held_clusters(state: &AdminState, held: &[crate::xds::HeldCluster]) -> Value {
    let table = state.table.load();
    let now = state.on_demand.as_ref().map_or(0, |d| d.now());
    let list: Vec<Value> = held
        .iter()
        .map(|h| {
            let cluster = table.cluster(&h.name);
            let last_use = cluster
                .map(|c| {
                    c.shared
                        .last_used
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .filter(|used| *used != 0)
                .map(|used| now.saturating_sub(used));
            json!({
                "name": h.name,
                "reason": h.reason,
                "in_table": cluster.is_some(),
                "last_use_seconds_ago": last_use,
                "asked_seconds_ago": h.asked_at.map(|at| now.saturating_sub(at)),
            })
        })
        .collect();
    Value::Array(list)
}

/// The current leaf and trust bundle (no key material): every root with
/// its subject, serial, SHA-256 fingerprint (as `weftctl ca` prints it)
/// and validity.
fn identity(store: &weft_certs::IdentityStore) -> serde_json::Value {
    let leaf = store.leaf();
    let bundle = store.bundle();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    serde_json::json!({
        "spiffe_id": leaf.identity().to_string(),
        "serial": leaf.serial(),
        "issuer": leaf.issuer(),
        "not_before_unix": unix(leaf.not_before()),
        "not_after_unix": unix(leaf.not_after()),
        "renew_at_unix": unix(leaf.rotate_at()),
        "trusted_roots": bundle.len(),
        "roots": bundle
            .describe()
            .into_iter()
            .zip(bundle.roots())
            .map(|(root, der)| json!({
                "subject": root.subject,
                "serial": root.serial,
                "sha256_fingerprint": hex::encode(sha2::Sha256::digest(der)),
                "not_before_unix": unix(root.not_before),
                "not_after_unix": unix(root.not_after),
            }))
            .collect::<Vec<_>>(),
    })
}

pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/ready" => match readiness(state) {
            (true, _) => text(StatusCode::OK, "ready\n"),
            (false, why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/live" => text(StatusCode::OK, "live\n"),
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }
        "/config_dump" => json_response(&config_dump(state)),
        "/clusters" => json_response(&clusters(state)),
        "/tcp" => json_response(&state.tcp.json()),
        "/identity" => match &state.identity {
            Some(store) => json_response(&identity(store)),
            None => text(StatusCode::NOT_FOUND, "mTLS is off: no identity\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /ready /live /metrics /config_dump /clusters /identity /tcp\n",
        ),
    }
}

pub async fn serve(listener: TcpListener, state: AdminState, drain: DrainToken) {
    let mut shutdown = state.shutdown.clone();
    let mut errors = weft_runtime::AcceptErrors::new("admin");
    while let Some((stream, _)) =
        crate::shutdown::accept(&listener, &mut errors, &mut shutdown).await
    {
        let state = state.clone();
        let token = drain.clone();
        tokio::spawn(async move {
            let _token = token;
            let svc = hyper::service::service_fn(move |req| {
                let resp = handle(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                // One request per connection: admin callers are probes.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}
