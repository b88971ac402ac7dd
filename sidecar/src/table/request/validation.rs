//! What the validation layer reads of a request: its route's policy
//! (outbound), or its inbound snapshot's (inbound).

use std::sync::Arc;

use super::{ProxyRequest, Routed, Snapshot};
use crate::validation::{ValidationPolicy, ValidationTarget};

impl ValidationTarget for ProxyRequest<Routed> {
    #[inline]
    fn validation_policy(&self) -> Option<&Arc<ValidationPolicy>> {
        self.target.route.route().validation.as_ref()
    }
}

impl ValidationTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn validation_policy(&self) -> Option<&Arc<ValidationPolicy>> {
        self.target.inbound_policy().validation.as_ref()
    }
}
