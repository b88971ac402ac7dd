//! Sends the request to the chosen endpoint over its pooled client and
//! returns the response headers; the body streams through untouched.
//!
//! HTTP version: to a peer sidecar over mTLS, always HTTP/2 (one
//! multiplexed connection per endpoint); otherwise the cluster's
//! `protocol`, or (AUTO) the one the caller used, so gRPC arriving as
//! HTTP/2 leaves as HTTP/2. HTTP/1.1 goes out in origin form with the
//! Host header as sent (or rewritten) over the endpoint's keep-alive pool;
//! HTTP/2 carries the logical authority as `:authority`.
//!
//! A `101 Switching Protocols` answer to an Upgrade request is bridged: both
//! sides are taken over with `hyper::upgrade::on` and bytes are copied both
//! ways until either side closes.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, StatusCode, Version, header};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tower::Service;

use super::{BoxFuture, ProxyRequest};
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::table::{Endpoint, cluster::Protocol};
use crate::upstream::{ConnectError, H1Error, Upgraded};

/// The HTTP version the app's request had before the sidecar-to-sidecar
/// hop carried it as HTTP/2. Set by the calling sidecar, honoured and
/// removed by the receiving one (only from a verified mesh peer).
pub const ORIGINAL_PROTOCOL: http::HeaderName = http::HeaderName::from_static("x-weft-orig-proto");

#[derive(Clone, Copy, Debug, Default)]
pub struct Forward;

fn prepare(
    req: &mut http::Request<hyper::body::Incoming>,
    endpoint: &Endpoint,
    h2: bool,
) -> Result<(), ProxyError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        // HTTP/2 carries the host as :authority, taken from the URI.
        let authority: Authority = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .or_else(|| req.uri().authority().cloned())
            .unwrap_or_else(|| endpoint.authority.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(pq);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| {
            ProxyError::new(ErrorKind::BadRequest, "cannot build the upstream URI").with_cause(e)
        })?;
        *req.version_mut() = Version::HTTP_2;
    } else {
        // HTTP/1.1: origin-form request line, the host in Host.
        if !req.headers().contains_key(header::HOST) {
            let host = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or_else(|| {
                    HeaderValue::from_str(endpoint.authority.as_str())
                        .unwrap_or(HeaderValue::from_static("localhost"))
                });
            req.headers_mut().insert(header::HOST, host);
        }
        *req.uri_mut() = Uri::from(pq);
        if req.version() != Version::HTTP_10 {
            *req.version_mut() = Version::HTTP_11;
        }
    }
    Ok(())
}

fn classify(e: hyper_util::client::legacy::Error, endpoint: &Endpoint) -> ProxyError {
    let is_connect = e.is_connect()
        || std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<ConnectError>().is_some());
    if is_connect {
        ProxyError::new(
            ErrorKind::ConnectFailed,
            format!("cannot connect to {}", endpoint.addr),
        )
        .with_cause(e)
    } else {
        ProxyError::new(
            ErrorKind::UpstreamReset,
            format!("{} closed the connection before responding", endpoint.addr),
        )
        .with_cause(e)
    }
}

fn classify_h1(e: H1Error, endpoint: &Endpoint) -> ProxyError {
    let (kind, reason) = match &e {
        H1Error::Connect(_) => (
            ErrorKind::ConnectFailed,
            format!("cannot connect to {}", endpoint.addr),
        ),
        H1Error::Closed(_) | H1Error::Write(_) | H1Error::Read(_) => (
            ErrorKind::UpstreamReset,
            format!("{} closed the connection before responding", endpoint.addr),
        ),
        H1Error::Protocol(_) => (
            ErrorKind::UpstreamProtocol,
            format!("{} sent an invalid HTTP/1.1 response", endpoint.addr),
        ),
        H1Error::RequestBody(_) => (
            ErrorKind::BadRequest,
            "the request body ended with an error".to_string(),
        ),
    };
    ProxyError::new(kind, reason).with_cause(e)
}

impl Service<ProxyRequest> for Forward {
    type Response = super::ProxyResponse;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        Box::pin(async move {
            let ProxyRequest { mut http, mut ctx } = req;
            let (Some(endpoint), Some(cluster)) = (ctx.endpoint.clone(), ctx.cluster.as_ref())
            else {
                return Err(ProxyError::new(
                    ErrorKind::Internal,
                    "forward without an endpoint",
                ));
            };
            if cluster.settings.protocol == Protocol::Tcp {
                return Err(ProxyError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} is an opaque TCP service (protocol tcp): reach it through a --tcp-upstream port, not HTTP",
                        cluster.name
                    ),
                ));
            }
            if endpoint.client.mesh.is_some() && ctx.upgrade.is_some() {
                // hyper's HTTP/2 client cannot carry an HTTP/1.1 Upgrade; say
                // so instead of failing as an opaque upstream error.
                return Err(ProxyError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "an Upgrade ({}) to {} cannot cross the mTLS HTTP/2 tunnel yet",
                        http.headers()
                            .get(header::UPGRADE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?"),
                        endpoint.addr
                    ),
                ));
            }
            // Between sidecars (mTLS on), always HTTP/2 on the tunnel; an
            // HTTP/1 request says so, so the far side hands it to its app
            // as HTTP/1 again (as Linkerd's l5d-orig-proto does).
            if endpoint.client.mesh.is_some() && http.version() != Version::HTTP_2 {
                let original = if http.version() == Version::HTTP_10 {
                    HeaderValue::from_static("HTTP/1.0")
                } else {
                    HeaderValue::from_static("HTTP/1.1")
                };
                http.headers_mut().insert(ORIGINAL_PROTOCOL, original);
            }
            let h2 = endpoint.client.mesh.is_some()
                || match cluster.settings.protocol {
                    Protocol::Auto => http.version() == Version::HTTP_2,
                    Protocol::Http1 => false,
                    Protocol::Http2 => true,
                    // Refused above.
                    Protocol::Tcp => false,
                };
            prepare(&mut http, &endpoint, h2)?;
            let result = if let Some((_, mesh)) = &endpoint.client.mesh {
                mesh.request(http)
                    .await
                    .map(|r| r.map(ProxyBody::Http2))
                    .map_err(|e| classify(e, &endpoint))
            } else if h2 {
                endpoint
                    .client
                    .h2
                    .request(http)
                    .await
                    .map(|r| r.map(ProxyBody::Http2))
                    .map_err(|e| classify(e, &endpoint))
            } else {
                endpoint
                    .client
                    .h1
                    .send(http)
                    .await
                    .map(|r| r.map(ProxyBody::Http1))
                    .map_err(|e| classify_h1(e, &endpoint))
            };
            let mut resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            if resp.status().is_server_error() {
                endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(downstream) = ctx.upgrade.take()
            {
                match resp.body_mut() {
                    ProxyBody::Http1(body) => {
                        if let Some(upstream) = body.take_upgrade() {
                            tokio::spawn(bridge(downstream, upstream));
                        }
                    }
                    ProxyBody::Http2(_) => {
                        let upstream = hyper::upgrade::on(&mut resp);
                        tokio::spawn(bridge_h2(downstream, upstream));
                    }
                    ProxyBody::Full(_) => {}
                }
            }
            // `ctx` (with the in-flight guards) is dropped here: the request
            // counts as in flight until its response headers arrive.
            drop(ctx);
            Ok(resp)
        })
    }
}

/// Copies bytes both ways between an upgraded client and the upstream's
/// raw connection, starting with what the upstream sent after its 101.
async fn bridge(downstream: hyper::upgrade::OnUpgrade, upstream: Upgraded) {
    let down = match downstream.await {
        Ok(down) => down,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let Upgraded {
        io: mut up,
        buffered,
    } = upstream;
    if !buffered.is_empty()
        && let Err(e) = down.write_all(&buffered).await
    {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// The same over HTTP/2 (extended CONNECT), where hyper owns both sides.
async fn bridge_h2(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}
