//! The inbound stack: other sidecars' calls, to the local app. It reads
//! top to bottom; each line is one tower layer, named by its folder. The
//! layers only this stack has live here: `snapshot` (the table and its
//! inbound policy, loaded once per request) and `static_target` (the local
//! app as the one destination). The ones both stacks share are in
//! `crate::proxy`.
//!
//! `jwt_authn` (the end user, from a token) runs before `authorize` (the
//! calling service, from the mTLS handshake), as Envoy runs jwt_authn
//! before RBAC: by the time intentions look at a request, caller-sent
//! `x-weft-jwt-*` headers are gone and the claim headers are the verified
//! ones, so an L7 permission may rely on them. The price is that a token
//! is verified before a caller no intention allows is refused; a service
//! without a JWT policy pays nothing (one `None` check), and
//! request-driven JWKS refetches are rate-limited per key set.

pub mod snapshot;
pub mod static_target;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::ServiceBuilder;

use crate::proxy::{
    balance, conformance, error_response, forward, headers, request_id, timeout, upgrade,
};
use crate::table::RoutingTable;
use crate::table::request::HttpStack;

/// The inbound stack: other sidecars' calls, to the local app. A plain
/// CONNECT (an opaque TCP tunnel) leaves it at the top for
/// `crate::tcp::inbound`; an extended CONNECT (a carried Upgrade) goes on
/// as the HTTP/1.1 request it carries.
pub fn stack(
    app: static_target::AppTarget,
    table: Arc<ArcSwap<RoutingTable>>,
    tunnels: crate::tcp::inbound::Tunnels,
    tracer: crate::trace::Tracer,
) -> impl HttpStack {
    ServiceBuilder::new()
        .layer(error_response::ErrorResponseLayer)
        // One load of the table, whose inbound policy every layer below
        // judges the request by: all its parts from one version.
        .layer(snapshot::InboundSnapshotLayer::new(table))
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
        // A browser's preflight carries no credentials: answered here,
        // before JWT would refuse it (as Envoy runs cors before jwt_authn).
        .layer(crate::cors::CorsLayer::inbound())
        // The service's compression: its answers encoded as they stream.
        .layer(crate::compression::CompressionLayer::inbound())
        // Before anything reaches the app: who the end user is (JWT), then
        // who may call (intentions).
        .layer(crate::authn::JwtAuthnLayer)
        .layer(crate::authz::AuthorizeLayer)
        // Protect me: only allowed callers count against the limits (a
        // cache hit too, as Kong's rate limiting runs before its cache).
        .layer(crate::ratelimit::InboundRateLimitLayer::inbound())
        // The service's validation, after the limits so that a flood of
        // invalid requests is limited before its bodies are read.
        .layer(crate::validation::ValidationLayer::inbound())
        // The service's cache: only a request JWT, intentions, the limits
        // and validation admitted is answered from it; a hit never
        // reaches the app.
        .layer(crate::cache::CacheLayer::inbound())
        .layer(static_target::StaticTargetLayer::new(app))
        .layer(timeout::TimeoutLayer)
        .layer(balance::BalanceLayer)
        .layer(crate::breaker::ConcurrencyLimitLayer)
        .service(forward::Forward)
}
