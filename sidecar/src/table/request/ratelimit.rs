//! What the rate limiting layers read of a request: the limits of its
//! cluster (outbound) or of its inbound snapshot (inbound), and its route.

use std::sync::Arc;

use super::ProxyRequest;
use crate::ratelimit::{RateLimitTarget, RateLimiter};

impl RateLimitTarget for ProxyRequest {
    #[inline]
    fn cluster_rate_limits(&self) -> Option<&Arc<RateLimiter>> {
        self.ctx.cluster.as_ref()?.settings.rate_limits.as_ref()
    }

    #[inline]
    fn inbound_rate_limits(&self) -> Option<&Arc<RateLimiter>> {
        self.ctx.inbound_policy().rate_limits.as_ref()
    }

    #[inline]
    fn route_name_and_index(&self) -> Option<(&str, usize)> {
        let route = self.ctx.route.as_ref()?;
        Some((&route.route().name, route.index))
    }
}
