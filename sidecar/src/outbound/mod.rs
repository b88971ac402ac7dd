//! The outbound stack: the app's calls to other services, routed by the
//! xDS table. It reads top to bottom; each line is one tower layer, named
//! by its folder. The layers only this stack has live here: `route` (the
//! table, once per request, and the route), `split` (the weighted
//! destination, discovered `on_demand` when the table does not hold it
//! yet) and `rewrite`. The ones both stacks share are in `crate::proxy`.
//! A gateway's listeners run the same layers from `route` down
//! ([`routed`]).

pub mod on_demand;
pub mod rewrite;
pub mod route;
pub mod split;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::ServiceBuilder;

use crate::proxy::{balance, conformance, error_response, forward, headers, request_id, timeout};
use crate::table::RoutingTable;
use crate::table::request::{HttpStack, RoutedStack};

/// The outbound stack: the app's calls, routed by the xDS table.
pub fn stack(
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
        .service(routed(table, on_demand, service, tracer))
}

/// From the route down: what the app's calls and a gateway's listeners
/// (`crate::gateway::stack`) share.
pub fn routed(
    table: Arc<ArcSwap<RoutingTable>>,
    on_demand: Arc<on_demand::OnDemand>,
    service: &str,
    tracer: crate::trace::Tracer,
) -> impl RoutedStack + use<> {
    ServiceBuilder::new()
        .layer(route::RouteLayer::new(table))
        // The route's CORS: a preflight is answered here, before a
        // destination is chosen or discovered for it.
        .layer(crate::cors::CorsLayer::outbound())
        // The route's compression: the answer is encoded as it streams
        // back, whichever destination and retry made it.
        .layer(crate::compression::CompressionLayer::outbound())
        // The route's validation: an invalid request needs no destination,
        // and is never answered from the cache.
        .layer(crate::validation::ValidationLayer::outbound())
        // The route's cache, inside compression: it stores answers as the
        // upstream sent them, and a hit is compressed like a miss.
        .layer(crate::cache::CacheLayer::outbound())
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
