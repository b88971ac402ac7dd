//! What the authorization layer reads of a request: the intentions of its
//! inbound snapshot.

use super::ProxyRequest;
use crate::authz::{AuthzPolicy, AuthzTarget};

impl AuthzTarget for ProxyRequest {
    #[inline]
    fn authz_policy(&self) -> &AuthzPolicy {
        &self.ctx.inbound_policy().authz
    }
}
