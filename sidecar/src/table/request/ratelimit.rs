//! What the rate limiting layers read of a request: the limits of its
//! cluster and its route (outbound), or of its inbound snapshot (inbound).

use std::sync::Arc;

use super::{Concrete, ProxyRequest, RouteRef, Snapshot};
use crate::ratelimit::{RateLimitTarget, RateLimiter};

/// Outbound: the destination's limits, keyed by route.
impl RateLimitTarget for ProxyRequest<Concrete<RouteRef>> {
    #[inline]
    fn cluster_rate_limits(&self) -> Option<&Arc<RateLimiter>> {
        self.target.cluster.settings.rate_limits.as_ref()
    }

    #[inline]
    fn inbound_rate_limits(&self) -> Option<&Arc<RateLimiter>> {
        None
    }

    #[inline]
    fn route_name_and_index(&self) -> Option<(&str, usize)> {
        let route = &self.target.route;
        Some((&route.route().name, route.index))
    }
}

/// Inbound: the service's own limits; no route.
impl RateLimitTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn cluster_rate_limits(&self) -> Option<&Arc<RateLimiter>> {
        None
    }

    #[inline]
    fn inbound_rate_limits(&self) -> Option<&Arc<RateLimiter>> {
        self.target.inbound_policy().rate_limits.as_ref()
    }

    #[inline]
    fn route_name_and_index(&self) -> Option<(&str, usize)> {
        None
    }
}
