//! What the CORS layer reads of a request: its route's policy (outbound),
//! or its inbound snapshot's (inbound).

use std::sync::Arc;

use super::{ProxyRequest, Routed, Snapshot};
use crate::cors::{CorsPolicy, CorsTarget};

impl CorsTarget for ProxyRequest<Routed> {
    #[inline]
    fn cors_policy(&self) -> Option<&Arc<CorsPolicy>> {
        self.target.route.route().cors.as_ref()
    }
}

impl CorsTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn cors_policy(&self) -> Option<&Arc<CorsPolicy>> {
        self.target.inbound_policy().cors.as_ref()
    }
}
