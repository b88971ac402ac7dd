//! What the authorization layer reads of a request: the intentions of its
//! inbound snapshot.

use super::{ProxyRequest, Snapshot};
use crate::authz::{AuthzPolicy, AuthzTarget};

impl AuthzTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn authz_policy(&self) -> &AuthzPolicy {
        &self.target.inbound_policy().authz
    }
}
