//! The request model: what travels down both stacks.
//!
//! Every layer takes and passes on a [`ProxyRequest`], the HTTP request
//! plus a [`RequestCtx`] that the layers above fill in for the ones below.
//! The model sits below `proxy` (which assembles the stacks) and below the
//! features, so that a feature's layer imports this module and the error
//! type, never the assembly: a new policy depends downwards only.
//!
//! Where each part of the context lives, and why:
//!
//! * What the stack decided (the table, the route's virtual host, the
//!   cluster, the endpoint) are table types: a request is served from one
//!   immutable table and points into it. So the model is a child of
//!   `table`, not a sibling: a sibling `request` importing `table` would
//!   sit in one import cycle with it for as long as the table holds
//!   features' compiled state (`table/cluster.rs`, `table/inbound.rs`:
//!   retry policy, breaker, rate limiter, pools, authn, authz). Those are
//!   the edges to cut next; then `table` with this model leaves the cycle.
//! * Per-request state a layer leaves for the ones below (the in-flight
//!   guards, a retry's [`Attempt`], the upgrade's [`BridgeSettings`]) is a
//!   small type defined here, not in the layer that sets it: otherwise the
//!   model would import `proxy`.
//! * The access log's record is still the access log's own type.

mod in_flight;

pub use in_flight::{ClusterGuard, InFlightGuard};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower::Service;

use crate::body::{ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::shutdown::DrainToken;
use crate::table::{Cluster, Endpoint, Route, RoutingTable, VirtualHost};

pub type ProxyResponse = Response<ProxyBody>;
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<ProxyResponse, ProxyError>> + Send>>;

/// The request as it travels down the stack.
pub struct ProxyRequest {
    pub http: Request<RequestBody>,
    pub ctx: RequestCtx,
}

/// Which listener a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, to other services.
    Outbound,
    /// From other sidecars, to the local app.
    Inbound,
}

/// What the layers above learned about a request.
pub struct RequestCtx {
    pub direction: Direction,
    pub client_addr: SocketAddr,
    /// The client IP, formatted once per connection for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    /// The table this request is served from, kept to the end: set by
    /// `route` (outbound) or `inbound_snapshot` (inbound, for its
    /// `InboundPolicy`).
    pub table: Option<Arc<RoutingTable>>,
    /// Set by `route`.
    pub route: Option<RouteRef>,
    /// Set by `split` (outbound) or `static_target` (inbound).
    pub cluster: Option<Arc<Cluster>>,
    /// Response-header deadline, set with the cluster.
    pub timeout: Option<Duration>,
    /// Set by `balance`.
    pub endpoint: Option<Arc<Endpoint>>,
    /// Released when the request finishes (it lives as long as the ctx).
    pub endpoint_guard: Option<InFlightGuard>,
    pub cluster_guard: Option<ClusterGuard>,
    /// Set by `headers` for an HTTP/1.1 Upgrade (WebSocket) request.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Set by the server for a request that may switch protocols: what the
    /// bridge of the upgraded connection needs.
    pub bridge: Option<BridgeSettings>,
    /// The caller's verified SPIFFE ID: set per connection when it arrived
    /// over mTLS (inbound), `None` for plaintext.
    pub peer_identity: Option<PeerIdentity>,
    /// Set by `retry` for each try of a request with a retry policy: the
    /// endpoints `balance` should avoid, and where it sent this try.
    pub attempt: Option<Arc<Attempt>>,
    /// Set by the metrics layer when the access log is on: the line in
    /// the making, where `forward` notes the endpoint.
    pub access_log: Option<Arc<crate::access_log::Record>>,
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

impl RequestCtx {
    pub fn new(direction: Direction, client_addr: SocketAddr, client_ip: HeaderValue) -> Self {
        Self {
            direction,
            client_addr,
            client_ip,
            table: None,
            route: None,
            cluster: None,
            timeout: None,
            endpoint: None,
            endpoint_guard: None,
            cluster_guard: None,
            upgrade: None,
            bridge: None,
            peer_identity: None,
            attempt: None,
            access_log: None,
        }
    }
}

/// A route inside the table a request started with.
#[derive(Clone)]
pub struct RouteRef {
    pub vhost: Arc<VirtualHost>,
    pub index: usize,
}

impl RouteRef {
    pub fn route(&self) -> &Route {
        &self.vhost.routes[self.index]
    }
}

/// Trait alias for a complete stack, as the server runs it.
pub trait HttpStack:
    Service<ProxyRequest, Response = ProxyResponse, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpStack for S where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The header that identifies a request across every hop's logs and
/// traces: set by `proxy::request_id` on each request that lacks one, read
/// by the trace and access-log layers (so it is part of the model they
/// share, not of the layer that sets it).
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// One try, as `balance` sees it: the endpoints earlier tries went to (to
/// avoid, where another serves) and a slot for the endpoint it picks. Made
/// by `retry` for each try of a request with a retry policy.
#[derive(Debug, Default)]
pub struct Attempt {
    pub excluded: Vec<Arc<Endpoint>>,
    /// Set once, by `balance` (a `OnceLock`: cheaper than a swappable
    /// slot for a value written once and read once).
    pub picked: OnceLock<Arc<Endpoint>>,
}

/// What the bridge of an upgraded connection needs. The server hands it
/// to requests that may switch protocols; `proxy::upgrade` bridges them.
#[derive(Clone)]
pub struct BridgeSettings {
    /// Held until the bridge ends, so that shutdown waits for it (up to
    /// the drain timeout) like for an opaque TCP connection.
    pub drain: Option<DrainToken>,
    /// No byte either way for this long ends the bridge
    /// (`--tcp-idle-timeout`).
    pub idle_timeout: Duration,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        Self {
            drain: None,
            // The default of `--tcp-idle-timeout`.
            idle_timeout: Duration::from_secs(3600),
        }
    }
}
