//! What the JWT authentication layer reads of a request: the JWT policy of
//! its inbound snapshot.

use std::sync::Arc;

use http::Request;

use super::{ProxyRequest, Snapshot};
use crate::authn::{Authenticator, AuthnTarget};
use crate::body::RequestBody;

impl AuthnTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn authenticator_and_http(
        &mut self,
    ) -> (Option<&Arc<Authenticator>>, &mut Request<RequestBody>) {
        (self.target.inbound_policy().authn.as_ref(), &mut self.http)
    }
}
