//! Connections to upstream endpoints: pooled clients per endpoint.
//!
//! Each endpoint gets its own clients whose connector always dials that
//! endpoint, so pools are naturally per endpoint and bounded by
//! `max_idle_per_endpoint`, with the Cluster's connect and idle timeouts.
//! HTTP/1.1 uses the sidecar's own client, [`H1Pool`] (cheapest per request); HTTP/2 uses hyper-util's
//! client, which multiplexes requests on one connection, with the request
//! URI carrying the *logical* authority (sent as `:authority`). Clients are
//! carried over between table swaps while their settings do not change, so
//! pooled connections survive config updates. A meshed endpoint's clients
//! run `crate::mtls`'s [`TlsConnector`] over the endpoint's [`Connector`].

mod address;
pub mod connection_limit;
mod connector;
mod dns;
mod http1;

pub use address::EndpointAddr;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use connection_limit::ConnectionLimit;
pub use connector::{ConnectError, Connector, UpstreamTcp};
pub use dns::Dns;
pub use http1::{H1Error, H1Pool, ProtocolError, ResponseBody, Upgraded};

use crate::mtls::{MeshTls, PeerProtocol, TlsConnector};
use crate::request_body::RequestBody;

/// Connection settings of one cluster (from `Cluster.connect_timeout` and
/// `Cluster.connection_pool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// TCP connect timeout. Default 1 s: endpoints are in the same data
    /// centre; a slow connect means a dead host, and failing fast lets the
    /// caller (or a later retry layer) try another.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per endpoint. Default 64 (proto).
    pub max_idle_per_endpoint: usize,
    /// Idle connections are closed after this long. Default 90 s (proto).
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            max_idle_per_endpoint: 64,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

pub type HttpClient = Client<Connector, RequestBody>;
/// mTLS over the endpoint's own TCP connector.
pub type MeshConnector = TlsConnector<Connector>;
pub type MeshClient = Client<MeshConnector, RequestBody>;
/// Opens opaque TCP tunnels (HTTP/2 CONNECT streams, `crate::tcp`) to a
/// peer sidecar over mTLS. Its own client because a CONNECT carries no
/// request body, which the HTTP client's body type (the app's) cannot say.
pub type TunnelClient = Client<MeshConnector, http_body_util::Empty<bytes::Bytes>>;

/// The pooled HTTP/1.1 and HTTP/2 clients of one endpoint. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    pub settings: PoolSettings,
    /// HTTP/1.1: a bounded pool of keep-alive connections.
    pub h1: H1Pool,
    /// HTTP/2 with prior knowledge: one multiplexed connection per authority.
    pub h2: HttpClient,
    /// To a meshed endpoint while mTLS is on. When set, every request goes
    /// this way.
    pub mesh: Option<MeshClients>,
    /// Beside `mesh`: tunnels for opaque TCP, multiplexed on one mTLS
    /// connection per endpoint (opened on the first tunnel).
    pub tunnel: Option<TunnelClient>,
}

impl UpstreamClient {
    /// `mesh_tls`: set for a meshed endpoint of a cluster with an identity,
    /// while this sidecar has one. Every connection counts against the
    /// cluster's `limit`.
    pub fn new(
        addr: EndpointAddr,
        settings: PoolSettings,
        dns: Dns,
        mesh_tls: Option<MeshTls>,
        limit: Arc<ConnectionLimit>,
    ) -> Self {
        let connector = Connector::new(addr, settings.connect_timeout, dns).limited(limit);
        let h1 = H1Pool::new(connector.clone(), settings.clone());
        let h2 = h2_client(&settings).build(connector.clone());
        let (mesh, tunnel) = match mesh_tls {
            Some(tls) => {
                let peer = Arc::new(PeerProtocol::default());
                let h2_only = TlsConnector::new(connector.clone(), tls.clone(), peer.clone(), true);
                let by_alpn = TlsConnector::new(connector, tls.clone(), peer, false);
                let tunnel = h2_client(&settings).build(h2_only.clone());
                let clients = MeshClients {
                    h2: h2_client(&settings).build(h2_only),
                    by_alpn: alpn_client(&settings).build(by_alpn.clone()),
                    connector: by_alpn,
                    tls,
                };
                (Some(clients), Some(tunnel))
            }
            None => (None, None),
        };
        Self {
            settings,
            h1,
            h2,
            mesh,
            tunnel,
        }
    }

    /// The identity required of this endpoint, if reached over mTLS.
    pub fn mesh_identity(&self) -> Option<&MeshTls> {
        self.mesh.as_ref().map(|mesh| &mesh.tls)
    }
}

/// The clients of one meshed endpoint over mTLS, sharing what its peer
/// negotiated ([`PeerProtocol`]): a pool per protocol, so the choice costs
/// no handshake per request.
#[derive(Clone)]
pub struct MeshClients {
    /// The identity the peer must present.
    pub tls: MeshTls,
    /// HTTP/2: to a Weft sidecar (ALPN `weft-mesh/h2`: one multiplexed
    /// connection), or with prior knowledge to another peer when the
    /// request needs HTTP/2 (gRPC, a destination with `protocol: http2`).
    pub h2: MeshClient,
    /// HTTP/1.1 keep-alive connections to a peer that is not a Weft
    /// sidecar, when the request goes as HTTP/1.1 (HTTP/2 on a connection
    /// that selected `weft-mesh/h2`, should the peer have changed).
    pub by_alpn: MeshClient,
    /// Learns what the peer negotiates before its first request.
    pub connector: MeshConnector,
}

fn alpn_client(settings: &PoolSettings) -> hyper_util::client::legacy::Builder {
    let mut b = h2_client(settings);
    b.http2_only(false);
    b
}

fn h2_client(settings: &PoolSettings) -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_max_idle_per_host(settings.max_idle_per_endpoint)
        // A pooled connection the upstream closed just as we reused it:
        // the request never left, so sending it on a fresh connection is
        // safe (hyper only does this for unsent requests).
        .retry_canceled_requests(true)
        // The app's Host header is forwarded as is; never invent one.
        .set_host(false)
        .http2_only(true)
        // Detect dead HTTP/2 connections (same values as the ADS stream).
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(20));
    b
}
