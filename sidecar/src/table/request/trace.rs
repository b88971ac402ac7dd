//! What the trace layer reads of a request: the names of the route and
//! cluster it was sent by, for a CLIENT span.

use std::sync::Arc;

use super::ProxyRequest;
use crate::trace::TraceTarget;

impl TraceTarget for ProxyRequest {
    #[inline]
    fn route_name(&self) -> Option<&Arc<str>> {
        self.ctx.route.as_ref().map(|r| &r.route().name)
    }

    #[inline]
    fn cluster_name(&self) -> Option<&Arc<str>> {
        self.ctx.cluster.as_ref().map(|c| &c.name)
    }
}
