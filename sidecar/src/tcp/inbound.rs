//! The callee's side: a tower layer at the top of the inbound stack that
//! answers plain HTTP/2 CONNECT requests (tunnels from `outbound.rs`) and
//! passes every other request on untouched.
//!
//! A tunnel is accepted only when all of these hold, else it is answered
//! with an error (403 `denied` names the caller and the rule) and the app
//! is never touched:
//! 1. it arrived over mTLS from a verified peer (a plaintext caller in
//!    PERMISSIVE mode has no identity for an L4 intention to judge);
//! 2. this service is marked `protocol: tcp` (an HTTP service's L7 rules
//!    must not be bypassed by a raw tunnel);
//! 3. `:authority` names this service;
//! 4. the L4 intention for the caller (or the default) allows it.
//!
//! Then the sidecar connects to its app, answers 200, and bridges the
//! stream with the app's socket. The log line `tcp tunnel opened` names the
//! caller and the sidecar's local address of the app connection (what the
//! app sees as its client, e.g. in Redis's `CLIENT LIST`).
//!
//! The layer reads the request through [`TunnelTarget`]: whether the
//! service takes tunnels and the L4 decision, both from the request's
//! inbound snapshot.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Method, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::{Layer, Service};

use super::copy;
use super::{Counters, TcpStats};
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::model::{BoxFuture, Exchange, ProxyResponse};
use crate::upstream::Connector;

/// What accepting a tunnel reads of a request beyond [`Exchange`]: the
/// service's policy for opaque TCP, as its inbound snapshot has it.
pub trait TunnelTarget: Exchange {
    /// The service speaks opaque TCP (`protocol: tcp`), so it takes
    /// tunnels.
    fn takes_tunnels(&self) -> bool;
    /// The L4 decision on a tunnel from the service `caller`.
    fn decide_tunnel(&self, caller: &str) -> Result<(), TunnelDenial>;
}

/// Why a tunnel was denied: which rule, for the caller and the log.
pub struct TunnelDenial {
    pub origin: Arc<str>,
    pub reason: String,
}

/// What accepting tunnels needs; one per sidecar.
pub struct Tunnels {
    /// This sidecar's service: the only `:authority` accepted.
    pub service: Arc<str>,
    /// The local app, with the app connect timeout.
    pub app: Connector,
    pub idle_timeout: Duration,
    pub stats: Arc<TcpStats>,
}

#[derive(Clone)]
pub struct TunnelLayer {
    tunnels: Arc<Tunnels>,
}

impl TunnelLayer {
    pub fn new(tunnels: Tunnels) -> Self {
        Self {
            tunnels: Arc::new(tunnels),
        }
    }
}

impl<S> Layer<S> for TunnelLayer {
    type Service = Tunnel<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Tunnel {
            tunnels: self.tunnels.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Tunnel<S> {
    tunnels: Arc<Tunnels>,
    inner: S,
}

/// A plain CONNECT; an extended CONNECT (`:protocol`: an HTTP/1.1 Upgrade
/// a peer sidecar carries) is an HTTP request for the app and goes on to
/// `proxy::upgrade`, below.
fn is_tunnel<B>(req: &http::Request<B>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none()
}

impl<S, R> Service<R> for Tunnel<S>
where
    R: TunnelTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if is_tunnel(req.http()) {
            Either::Right(Box::pin(self.tunnels.clone().accept(req)))
        } else {
            Either::Left(self.inner.call(req))
        }
    }
}

impl Tunnels {
    async fn accept(
        self: Arc<Self>,
        mut req: impl TunnelTarget,
    ) -> Result<ProxyResponse, ProxyError> {
        let client = req.client_addr();
        let Some(peer) = req.peer_identity().cloned() else {
            return Err(ProxyError::new(
                ErrorKind::Denied,
                "opaque TCP needs a verified mesh identity, and this CONNECT arrived without mTLS",
            ));
        };
        let caller = peer.id.service();
        let counters = self.stats.caller(caller);
        let refuse = |kind: ErrorKind, reason: String| {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            ProxyError::new(kind, reason)
        };
        // Both the protocol and the intentions are those of the request's
        // inbound snapshot.
        if !req.takes_tunnels() {
            return Err(refuse(
                ErrorKind::Unsupported,
                format!(
                    "{} is not an opaque TCP service (weft/destinations/{} does not say \"protocol\": \"tcp\"), so it takes no tunnels",
                    self.service, self.service
                ),
            ));
        }
        if req.http().version() != Version::HTTP_2 {
            return Err(refuse(
                ErrorKind::BadRequest,
                "a tunnel is an HTTP/2 CONNECT stream".into(),
            ));
        }
        let asked = req.http().uri().authority().map(|a| a.host()).unwrap_or("");
        if asked != &*self.service {
            return Err(refuse(
                ErrorKind::BadRequest,
                format!("this sidecar serves {}, not {asked:?}", self.service),
            ));
        }
        if let Err(denial) = req.decide_tunnel(caller) {
            counters.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                caller,
                %client,
                rule = %denial.origin,
                "tcp connection denied"
            );
            return Err(ProxyError::new(ErrorKind::Denied, denial.reason));
        }
        let app = self.app.connect().await.map_err(|e| {
            refuse(
                ErrorKind::ConnectFailed,
                format!("cannot connect to the app: {e}"),
            )
        })?;
        let upgrade = hyper::upgrade::on(req.http_mut());
        let tunnels = self.clone();
        let caller: Arc<str> = caller.into();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(stream) => {
                    tunnels
                        .bridge(TokioIo::new(stream), app, &caller, counters, client)
                        .await
                }
                Err(e) => tracing::debug!(error = %e, %caller, "tunnel upgrade failed"),
            }
        });
        let mut ok = Response::new(ProxyBody::empty());
        *ok.status_mut() = StatusCode::OK;
        Ok(ok)
    }

    async fn bridge(
        &self,
        mut tunnel: TokioIo<hyper::upgrade::Upgraded>,
        mut app: TcpStream,
        caller: &str,
        counters: Arc<Counters>,
        client: std::net::SocketAddr,
    ) {
        let _active = counters.open();
        let app_side = app.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(caller, %client, app_side, "tcp tunnel opened");
        let bridged = copy::bridge(&mut tunnel, &mut app, self.idle_timeout).await;
        counters.record(&bridged);
        tracing::info!(
            caller,
            %client,
            app_side,
            sent = bridged.a_to_b,
            received = bridged.b_to_a,
            end = ?bridged.end,
            "tcp tunnel closed"
        );
    }
}
