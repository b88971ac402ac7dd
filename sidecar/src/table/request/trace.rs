//! What the trace layer reads of a request: the names of the route and
//! cluster it was sent by, for a CLIENT span (a SERVER span has neither).

use std::sync::Arc;

use super::{Concrete, ProxyRequest, RouteRef, Snapshot};
use crate::trace::TraceTarget;

impl TraceTarget for ProxyRequest<Concrete<RouteRef>> {
    #[inline]
    fn route_name(&self) -> Option<&Arc<str>> {
        Some(&self.target.route.route().name)
    }

    #[inline]
    fn cluster_name(&self) -> Option<&Arc<str>> {
        Some(&self.target.cluster.name)
    }
}

impl TraceTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn route_name(&self) -> Option<&Arc<str>> {
        None
    }

    #[inline]
    fn cluster_name(&self) -> Option<&Arc<str>> {
        None
    }
}
