//! The request as it travels down both stacks, with what each stage has
//! decided about it.
//!
//! Every layer takes and passes on a [`ProxyRequest<T>`]: the HTTP
//! request, a [`RequestCtx`] (the connection's facts and the few things a
//! request may or may not have: an upgrade, a retry's attempt, an
//! access-log record), and its target `T`, which says what the stages
//! above decided, in linkerd's spirit (Logical, Concrete, Endpoint):
//!
//! ```text
//! outbound: Received --route--> Routed --split--> Concrete<RouteRef> --balance--> ToEndpoint<RouteRef>
//! inbound:  Received --snapshot--> Snapshot --static_target--> Concrete --balance--> ToEndpoint
//! ```
//!
//! A layer that decides more changes the request's type, so a layer below
//! it only takes requests that have the decision it needs (`forward`
//! only a [`ToEndpoint`]): nothing checks at run time for a table, a
//! cluster or an endpoint that is not there. These are table types: a
//! request is served from one immutable table and points into it, so this
//! module is a child of `table`, above the features whose compiled state
//! the table holds.
//!
//! Features below the table never name [`ProxyRequest`]: their layers are
//! generic over a trait of their own (built on [`crate::model::Exchange`]),
//! which this module implements, one file per feature (`authn.rs`,
//! `authz.rs`, `breaker.rs`, `metrics.rs`, `ratelimit.rs`, `retry.rs`,
//! `tcp.rs`, `trace.rs`), for the stage where the stack places it. The
//! parts every layer shares (direction, peer identity, the response and
//! future types) live in `crate::model`, at the bottom, and are
//! re-exported here.
//!
//! Per-request state a layer leaves for the ones below (the in-flight
//! guards, the upgrade's [`BridgeSettings`]) is a small type defined here,
//! not in the layer that sets it. A retry's [`Attempt`] is the one made by
//! a feature below (`crate::retry`, generic over the endpoint type), named
//! here with the table's endpoint.

mod authn;
mod authz;
mod breaker;
mod cache;
mod compression;
mod cors;
mod in_flight;
pub mod metrics;
mod ratelimit;
mod retry;
mod tcp;
mod trace;
mod validation;

pub use in_flight::{ClusterGuard, InFlightGuard};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use tower::Service;

use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::shutdown::DrainToken;
use crate::table::{Cluster, Endpoint, InboundPolicy, Route, RoutingTable, VirtualHost};

pub use crate::model::{BoxFuture, Direction, Exchange, PeerIdentity, ProxyResponse, REQUEST_ID};

/// The request as it travels down the stack, with what the stages above
/// have decided about it: its target `T`. Each stage that decides more
/// turns the request into the next target type, so a layer below it takes
/// only requests that have that decision (`forward` only a
/// [`ToEndpoint`]), and nothing checks at run time for a part that is not
/// there (the linkerd way: Logical, then Concrete, then Endpoint).
pub struct ProxyRequest<T = Received> {
    pub http: Request<RequestBody>,
    pub ctx: RequestCtx,
    pub target: T,
}

impl<T> ProxyRequest<T> {
    /// The same request, having decided `target`.
    #[inline]
    pub fn to<U>(self, target: U) -> ProxyRequest<U> {
        ProxyRequest {
            http: self.http,
            ctx: self.ctx,
            target,
        }
    }

    /// The same request, its target taken on to the next stage.
    #[inline]
    pub fn map<U>(self, next: impl FnOnce(T) -> U) -> ProxyRequest<U> {
        ProxyRequest {
            http: self.http,
            ctx: self.ctx,
            target: next(self.target),
        }
    }
}

/// Nothing decided yet: the request as the server hands it to a stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct Received;

/// Outbound, routed: served from one table (kept to the end) by one of
/// its routes. Set by `route`.
#[derive(Clone)]
pub struct Routed {
    pub table: Arc<RoutingTable>,
    pub route: RouteRef,
}

/// Inbound: judged by one table's inbound policy, loaded once (kept to the
/// end). Set by `inbound::snapshot`.
#[derive(Clone)]
pub struct Snapshot {
    pub table: Arc<RoutingTable>,
}

impl Snapshot {
    /// The inbound policy a request is judged by.
    #[inline]
    pub fn inbound_policy(&self) -> &InboundPolicy {
        &self.table.inbound
    }
}

/// Sent to one destination: set by `split` (outbound, `R` the
/// [`RouteRef`] that chose it) or `static_target` (inbound, the local app:
/// no route, `R = ()`).
#[derive(Clone)]
pub struct Concrete<R = ()> {
    pub table: Arc<RoutingTable>,
    pub route: R,
    pub cluster: Arc<Cluster>,
    /// Response-header deadline (`None`: none).
    pub timeout: Option<Duration>,
}

/// Sent to one endpoint of the destination: set by `balance`.
pub struct ToEndpoint<R = ()> {
    pub concrete: Concrete<R>,
    pub endpoint: Arc<Endpoint>,
    /// Released when the request finishes (it lives as long as the
    /// request's context and target).
    pub guard: InFlightGuard,
}

/// What the layers above learned about a request.
pub struct RequestCtx {
    pub direction: Direction,
    pub client_addr: SocketAddr,
    /// The client IP, formatted once per connection for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    /// Set by `concurrency` (the cluster's `max_requests`), released when
    /// the request finishes.
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
            cluster_guard: None,
            upgrade: None,
            bridge: None,
            peer_identity: None,
            attempt: None,
            access_log: None,
        }
    }
}

impl<T: Send + 'static> Exchange for ProxyRequest<T> {
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

/// Trait alias for a stack from its route on, below the layers that turn
/// errors into responses.
pub trait RoutedStack:
    Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> RoutedStack for S where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError, Future: Send + 'static>
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

/// Requests at each stage, for the layers' unit tests.
#[cfg(test)]
pub mod for_tests {
    use super::*;
    use crate::body::BufferedBody;
    use crate::table::{Destination, HeaderMutation, RouteAction, RouteMatch};

    /// The context of a request from 127.0.0.1:1.
    pub fn ctx(direction: Direction) -> RequestCtx {
        RequestCtx::new(
            direction,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            HeaderValue::from_static("127.0.0.1"),
        )
    }

    /// An empty GET of `/`.
    pub fn empty_http() -> Request<RequestBody> {
        Request::new(RequestBody::Buffered(BufferedBody::default()))
    }

    /// As the server hands it to a stack.
    pub fn received(direction: Direction, http: Request<RequestBody>) -> ProxyRequest {
        ProxyRequest {
            http,
            ctx: ctx(direction),
            target: Received,
        }
    }

    /// Inbound, judged by `table`'s policy.
    pub fn snapshot(
        table: Arc<RoutingTable>,
        http: Request<RequestBody>,
    ) -> ProxyRequest<Snapshot> {
        received(Direction::Inbound, http).to(Snapshot { table })
    }

    /// Outbound, sent to `cluster` by the one route (`test`, matching
    /// anything) of a table that holds only it.
    pub fn concrete(
        cluster: &Arc<Cluster>,
        http: Request<RequestBody>,
    ) -> ProxyRequest<Concrete<RouteRef>> {
        let vhost = Arc::new(VirtualHost {
            name: "test/test".into(),
            routes: vec![Route {
                name: "test".into(),
                matcher: RouteMatch::any(),
                action: RouteAction {
                    destination: Destination::Cluster(cluster.name.clone()),
                    prefix_rewrite: None,
                    host_rewrite: None,
                    timeout: None,
                    retry: None,
                },
                request_headers: HeaderMutation::default(),
                response_headers: HeaderMutation::default(),
                cors: None,
                compression: None,
                cache: None,
                validation: None,
            }],
        });
        let mut table = RoutingTable::default();
        table.clusters.insert(cluster.name.clone(), cluster.clone());
        let timeout = cluster.settings.request_timeout;
        received(Direction::Outbound, http).to(Concrete {
            table: Arc::new(table),
            route: RouteRef { vhost, index: 0 },
            cluster: cluster.clone(),
            timeout,
        })
    }
}
