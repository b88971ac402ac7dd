//! The HTTP data path, one tower layer per file, read top to bottom:
//!
//! ```text
//! outbound: server -> error_response -> conformance -> request_id -> headers -> route -> split
//!           -> trace (CLIENT span) -> metrics -> rewrite -> ratelimit -> timeout -> retry -> breaker
//!           -> balance (outlier ejection) -> concurrency -> forward
//! inbound:  server (mTLS) -> error_response -> inbound_snapshot (the table and policy, once)
//!           -> conformance -> trace (SERVER span) -> metrics
//!           -> tunnel (CONNECT: tcp::inbound)
//!           -> upgrade (extended CONNECT: an HTTP/1.1 Upgrade) -> request_id -> headers
//!           -> jwt_authn -> authorize -> ratelimit -> static_target
//!           -> timeout -> balance -> concurrency -> forward
//! ```
//!
//! On the inbound side `jwt_authn` (the end user, from a token) runs before
//! `authorize` (the calling service, from the mTLS handshake), as Envoy
//! runs jwt_authn before RBAC: by the time intentions look at a request,
//! caller-sent `x-weft-jwt-*` headers are gone and the claim headers are
//! the verified ones, so an L7 permission may rely on them. The price is
//! that a token is verified before a caller no intention allows is
//! refused; a service without a JWT policy pays nothing (one atomic load),
//! and request-driven JWKS refetches are rate-limited per key set.
//!
//! Every layer takes and passes on a `ProxyRequest`: the HTTP request plus
//! a `RequestCtx` that layers fill in for the ones below them (the routing
//! table, the route, the cluster, the endpoint). That model lives in
//! `crate::table::request`, below the features, so that a feature's layer
//! never imports this module: only the assembly below knows every feature.
//! Layers below `error_response` fail with a
//! [`ProxyError`](crate::error::ProxyError); `error_response` is the one
//! place errors become responses. Every layer is always ready (limits fail
//! fast instead of applying backpressure), so the server calls a clone of
//! the stack without `poll_ready`. Later features (mTLS, authz, retries,
//! rate limits, metrics, tracing) are new layers in these chains.

pub mod balance;
pub mod conformance;
pub mod error_response;
pub mod forward;
pub mod headers;
pub mod inbound_snapshot;
pub mod on_demand;
pub mod request_id;
pub mod rewrite;
pub mod route;
pub mod split;
pub mod static_target;
pub mod timeout;
pub mod upgrade;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::ServiceBuilder;

use crate::table::RoutingTable;
use crate::table::request::HttpStack;

/// The outbound stack: the app's calls, routed by the xDS table.
pub fn outbound(
    table: Arc<ArcSwap<RoutingTable>>,
    on_demand: Arc<on_demand::OnDemand>,
    service: &str,
    tracer: crate::trace::Tracer,
) -> impl HttpStack {
    ServiceBuilder::new()
        .layer(error_response::ErrorResponseLayer)
        // A malformed request (two Host lines...) goes no further.
        .layer(conformance::ConformanceLayer)
        .layer(request_id::RequestIdLayer)
        .layer(headers::ProxyHeadersLayer)
        .layer(route::RouteLayer::new(table))
        // A destination not held yet is discovered here, on its first call.
        .layer(split::SplitLayer::on_demand(on_demand))
        // The CLIENT span knows its route and destination from here; the
        // request carries this span's `traceparent` below.
        .layer(crate::trace::TraceLayer::outbound(tracer))
        // Counted per destination from here: `split` chose it.
        .layer(crate::metrics::RequestMetricsLayer::outbound())
        .layer(rewrite::RewriteLayer)
        // Be a good client: the destination's limits, before any timeout
        // or endpoint is spent on a request that would be refused.
        .layer(crate::ratelimit::OutboundRateLimitLayer::new(service))
        .layer(timeout::TimeoutLayer)
        // Inside the overall timeout, which bounds every try and backoff.
        .layer(crate::retry::RetryLayer)
        // Every try passes the breaker, and its outcome counts there.
        .layer(crate::breaker::BreakerLayer)
        .layer(balance::BalanceLayer)
        .layer(crate::breaker::ConcurrencyLimitLayer)
        .service(forward::Forward)
}

/// The inbound stack: other sidecars' calls, to the local app. A plain
/// CONNECT (an opaque TCP tunnel) leaves it at the top for
/// `crate::tcp::inbound`; an extended CONNECT (a carried Upgrade) goes on
/// as the HTTP/1.1 request it carries.
pub fn inbound(
    app: static_target::AppTarget,
    table: Arc<ArcSwap<RoutingTable>>,
    tunnels: crate::tcp::inbound::Tunnels,
    tracer: crate::trace::Tracer,
) -> impl HttpStack {
    ServiceBuilder::new()
        .layer(error_response::ErrorResponseLayer)
        // One load of the table, whose inbound policy every layer below
        // judges the request by: all its parts from one version.
        .layer(inbound_snapshot::InboundSnapshotLayer::new(table))
        // Before anything reads the request, tunnels and carried Upgrades
        // included: a malformed one goes no further.
        .layer(conformance::ConformanceLayer)
        // The SERVER span covers every request to the app, refusals
        // included; everything below sees its `traceparent`.
        .layer(crate::trace::TraceLayer::inbound(tracer))
        // Every request to the app counts, the refused ones included.
        .layer(crate::metrics::RequestMetricsLayer::inbound(
            crate::table::request::metrics::ClusterSink::Stats(app.http1.shared.clone()),
        ))
        .layer(crate::tcp::inbound::TunnelLayer::new(tunnels))
        // A peer's WebSocket arrives as an extended CONNECT: rebuilt into
        // the Upgrade request before anything judges it.
        .layer(upgrade::UpgradeLayer)
        .layer(request_id::RequestIdLayer)
        .layer(headers::ProxyHeadersLayer)
        // Before anything reaches the app: who the end user is (JWT), then
        // who may call (intentions).
        .layer(crate::authn::JwtAuthnLayer)
        .layer(crate::authz::AuthorizeLayer)
        // Protect me: only allowed callers count against the limits.
        .layer(crate::ratelimit::InboundRateLimitLayer::inbound())
        .layer(static_target::StaticTargetLayer::new(app))
        .layer(timeout::TimeoutLayer)
        .layer(balance::BalanceLayer)
        .layer(crate::breaker::ConcurrencyLimitLayer)
        .service(forward::Forward)
}
