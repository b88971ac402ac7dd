//! The parts of the request model that every layer shares, at the bottom
//! of the sidecar: which way a request travels, who the verified caller
//! is, and the response and future types every layer returns.
//!
//! The request itself ([`crate::table::request::ProxyRequest`]) points into
//! the compiled table (its route, cluster and endpoint), so it sits with the
//! table, above the features. A feature's layer does not name it: it reads
//! what it needs through a small trait of its own, which the table's
//! request implements (the way linkerd's layers ask their target for a
//! `Param`). So a feature depends on this module and nothing above.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Request, Response};

use crate::body::{ProxyBody, RequestBody};
use crate::error::ProxyError;

pub type ProxyResponse = Response<ProxyBody>;
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<ProxyResponse, ProxyError>> + Send>>;

/// Which listener a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, to other services.
    Outbound,
    /// From other sidecars, to the local app.
    Inbound,
}

/// A verified peer identity with its header value made once per
/// connection.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    pub id: Arc<weft_certs::SpiffeId>,
    pub header: HeaderValue,
}

impl PeerIdentity {
    pub fn new(id: weft_certs::SpiffeId) -> Self {
        let header =
            HeaderValue::from_str(&id.to_string()).unwrap_or(HeaderValue::from_static("invalid"));
        Self {
            id: Arc::new(id),
            header,
        }
    }
}

/// The header that identifies a request across every hop's logs and
/// traces: set by `proxy::request_id` on each request that lacks one, read
/// by the trace and access-log layers (so it is part of the model they
/// share, not of the layer that sets it).
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What any feature's layer may read of a request, whatever the stack has
/// decided about it. A feature that needs more (its compiled policy, the
/// route or cluster it applies to) declares a trait of its own on top of
/// this one, and the table's request implements it.
pub trait Exchange: Send + 'static {
    fn http(&self) -> &Request<RequestBody>;
    fn http_mut(&mut self) -> &mut Request<RequestBody>;
    fn direction(&self) -> Direction;
    fn client_addr(&self) -> SocketAddr;
    /// The client IP, formatted once per connection for `x-forwarded-for`.
    fn client_ip(&self) -> &HeaderValue;
    /// The caller's verified SPIFFE ID, when it came over mTLS.
    fn peer_identity(&self) -> Option<&PeerIdentity>;
}

/// How a request was answered, as the metrics layer saw it: what it tells
/// the request's access-log record. Declared here, below both, so that
/// neither imports the other.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub cause: Option<&'static str>,
    pub attempts: Option<u32>,
    pub response_head: std::time::Duration,
}
