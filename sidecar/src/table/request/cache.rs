//! What the cache layer reads of a request: its route's policy (outbound),
//! or its inbound snapshot's (inbound).

use std::sync::Arc;

use super::{ProxyRequest, Routed, Snapshot};
use crate::cache::{CachePolicy, CacheTarget};

impl CacheTarget for ProxyRequest<Routed> {
    #[inline]
    fn cache_policy(&self) -> Option<&Arc<CachePolicy>> {
        self.target.route.route().cache.as_ref()
    }
}

impl CacheTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn cache_policy(&self) -> Option<&Arc<CachePolicy>> {
        self.target.inbound_policy().cache.as_ref()
    }
}
