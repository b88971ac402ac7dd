//! What the compression layer reads of a request: its route's policy
//! (outbound), or its inbound snapshot's (inbound).

use std::sync::Arc;

use super::{ProxyRequest, Routed, Snapshot};
use crate::compression::{CompressionPolicy, CompressionTarget};

impl CompressionTarget for ProxyRequest<Routed> {
    #[inline]
    fn compression_policy(&self) -> Option<&Arc<CompressionPolicy>> {
        self.target.route.route().compression.as_ref()
    }
}

impl CompressionTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn compression_policy(&self) -> Option<&Arc<CompressionPolicy>> {
        self.target.inbound_policy().compression.as_ref()
    }
}
