//! The request as it travels down both stacks, with what each stage has
//! decided about it.
//!
//! Every layer takes and passes on a [`ProxyRequest`], the HTTP request
//! plus a [`RequestCtx`] that the layers above fill in for the ones below.
//! What the stack decided (the table, the route's virtual host, the
//! cluster, the endpoint) are table types: a request is served from one
//! immutable table and points into it, so this module is a child of
//! `table`, above the features whose compiled state the table holds.
//!
//! Features below the table never name [`ProxyRequest`]: their layers are
//! generic over a trait of their own (built on [`crate::model::Exchange`]),
//! which this module implements, one file per feature (`authn.rs`,
//! `authz.rs`, `ratelimit.rs`, `tcp.rs`, `trace.rs`). The parts every layer shares (direction,
//! peer identity, the response and future types) live in `crate::model`,
//! at the bottom, and are re-exported here.
//!
//! Per-request state a layer leaves for the ones below (the in-flight
//! guards, the upgrade's [`BridgeSettings`]) is a small type defined here,
//! not in the layer that sets it. A retry's [`Attempt`] is the one made by
//! a feature below (`crate::retry`, generic over the endpoint type), named
//! here with the table's endpoint.

mod authn;
mod authz;
mod breaker;
mod in_flight;
pub mod metrics;
mod ratelimit;
mod retry;
mod tcp;
mod trace;

pub use in_flight::{ClusterGuard, InFlightGuard};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderValue, Request};
use tower::Service;

use crate::body::RequestBody;
use crate::shutdown::DrainToken;
use crate::table::{Cluster, Endpoint, InboundPolicy, Route, RoutingTable, VirtualHost};

pub use crate::model::{BoxFuture, Direction, Exchange, PeerIdentity, ProxyResponse, REQUEST_ID};

/// The request as it travels down the stack.
pub struct ProxyRequest {
    pub http: Request<RequestBody>,
    pub ctx: RequestCtx,
}

/// What the layers above learned about a request.
pub struct RequestCtx {
    pub direction: Direction,
    pub client_addr: SocketAddr,
    /// The client IP, formatted once per connection for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    /// The table this request is served from, kept to the end: set by
    /// `route` (outbound) or `inbound::snapshot` (inbound, for its
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

/// The policy of a request without a snapshot (a layer tested alone):
/// none, as before the first policy arrives.
static NO_POLICY: LazyLock<InboundPolicy> = LazyLock::new(InboundPolicy::default);

impl RequestCtx {
    /// The inbound policy this request is judged by: the one of the table
    /// `inbound::snapshot` loaded for it.
    #[inline]
    pub fn inbound_policy(&self) -> &InboundPolicy {
        match &self.table {
            Some(table) => &table.inbound,
            None => &NO_POLICY,
        }
    }
}

impl Exchange for ProxyRequest {
    #[inline]
    fn http(&self) -> &Request<RequestBody> {
        &self.http
    }

    #[inline]
    fn http_mut(&mut self) -> &mut Request<RequestBody> {
        &mut self.http
    }

    #[inline]
    fn direction(&self) -> Direction {
        self.ctx.direction
    }

    #[inline]
    fn client_addr(&self) -> SocketAddr {
        self.ctx.client_addr
    }

    #[inline]
    fn client_ip(&self) -> &HeaderValue {
        &self.ctx.client_ip
    }

    #[inline]
    fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.ctx.peer_identity.as_ref()
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

/// One try, as `balance` sees it (made by `retry` for each try of a
/// request with a retry policy): the endpoints earlier tries went to, and
/// a slot for the endpoint it picks.
pub type Attempt = crate::retry::Attempt<Arc<Endpoint>>;

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
