//! Inbound: every request goes to the local app, a fixed one-endpoint
//! cluster built from `--app` (no routing table involved), spoken to in
//! the protocol the service's own configuration names.
//!
//! The rule (docs/CONSUL-INTEROP.md, "The protocol spoken to the app"):
//! the `protocol` of the service's own `weft/destinations/<service>`
//! document, sent by the agent in its inbound policy: `http1` or `http2`
//! (h2c with prior knowledge) always; `auto` (the default): a gRPC request
//! (`content-type: application/grpc`, `+…`, `;…`; not gRPC-Web) as h2c,
//! anything else as HTTP/1.1 (an HTTP/1.0 request stays 1.0). Never a header the caller sends: a
//! caller that is not a Weft sidecar (a Connect-native app, Envoy, Consul's
//! proxy) sending HTTP/2 to an HTTP/1.1 app gets the same answer as a Weft
//! sidecar, and the `x-weft-orig-proto` of older sidecars is ignored.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Version, header};
use tower::{Layer, Service};

use crate::table::Cluster;
use crate::table::cluster::Protocol;
use crate::table::request::{Concrete, ProxyRequest, Snapshot};

/// The local app as two views of one cluster (same endpoint, pools and
/// counters), one per protocol, chosen per request without rebuilding
/// anything.
#[derive(Clone, Debug)]
pub struct AppTarget {
    pub http1: Arc<Cluster>,
    pub http2: Arc<Cluster>,
}

impl AppTarget {
    /// The view a request takes, with `protocol` from the service's
    /// policy: see the module docs. `tcp` speaks to the app as `auto`
    /// would: its opaque tunnels never come this way, and an HTTP request
    /// that does still needs an answer.
    fn for_request(
        &self,
        protocol: Protocol,
        version: Version,
        headers: &HeaderMap,
    ) -> &Arc<Cluster> {
        let h2 = match protocol {
            Protocol::Http1 => false,
            Protocol::Http2 => true,
            Protocol::Auto | Protocol::Tcp => version == Version::HTTP_2 && is_grpc(headers),
        };
        if h2 { &self.http2 } else { &self.http1 }
    }
}

/// `content-type: application/grpc`, `application/grpc+proto`, ... but
/// not gRPC-Web (`application/grpc-web*`), which apps serve over HTTP/1.1.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    })
}

#[derive(Clone)]
pub struct StaticTargetLayer {
    app: AppTarget,
}

impl StaticTargetLayer {
    pub fn new(app: AppTarget) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for StaticTargetLayer {
    type Service = StaticTarget<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StaticTarget {
            app: self.app.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct StaticTarget<S> {
    app: AppTarget,
    inner: S,
}

impl<S: Service<ProxyRequest<Concrete>>> Service<ProxyRequest<Snapshot>> for StaticTarget<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest<Snapshot>) -> Self::Future {
        // The protocol of the request's inbound snapshot's policy.
        let protocol = req.target.inbound_policy().app_protocol;
        let cluster = self
            .app
            .for_request(protocol, req.http.version(), req.http.headers())
            .clone();
        let timeout = cluster.settings.request_timeout;
        self.inner.call(req.map(|snapshot| Concrete {
            table: snapshot.table,
            route: (),
            cluster,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        headers
    }

    fn chosen(protocol: Protocol, version: Version, headers: &HeaderMap) -> Protocol {
        let view = |protocol| {
            let settings = crate::table::ClusterSettings {
                protocol,
                ..Default::default()
            };
            Arc::new(Cluster::new("app".into(), settings, vec![], Arc::default()))
        };
        let app = AppTarget {
            http1: view(Protocol::Http1),
            http2: view(Protocol::Http2),
        };
        app.for_request(protocol, version, headers)
            .settings
            .protocol
    }

    #[test]
    fn auto_sends_grpc_as_h2c_and_everything_else_as_http1_whatever_the_caller_spoke() {
        let plain = HeaderMap::new();
        assert_eq!(
            chosen(Protocol::Auto, Version::HTTP_2, &grpc()),
            Protocol::Http2
        );
        assert_eq!(
            chosen(Protocol::Auto, Version::HTTP_2, &plain),
            Protocol::Http1
        );
        assert_eq!(
            chosen(Protocol::Auto, Version::HTTP_11, &plain),
            Protocol::Http1
        );
        // gRPC over HTTP/1.1 is not gRPC: the app gets what arrived.
        assert_eq!(
            chosen(Protocol::Auto, Version::HTTP_11, &grpc()),
            Protocol::Http1
        );
        let mut grpc_web = HeaderMap::new();
        grpc_web.insert(
            header::CONTENT_TYPE,
            "application/grpc-web+proto".parse().unwrap(),
        );
        assert_eq!(
            chosen(Protocol::Auto, Version::HTTP_2, &grpc_web),
            Protocol::Http1
        );
    }

    #[test]
    fn a_configured_protocol_wins_over_the_request() {
        let plain = HeaderMap::new();
        assert_eq!(
            chosen(Protocol::Http2, Version::HTTP_11, &plain),
            Protocol::Http2
        );
        assert_eq!(
            chosen(Protocol::Http1, Version::HTTP_2, &grpc()),
            Protocol::Http1
        );
        assert_eq!(
            chosen(Protocol::Tcp, Version::HTTP_2, &plain),
            Protocol::Http1
        );
    }
}
