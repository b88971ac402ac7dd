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
//! ways (`upgrade.rs`). To a peer sidecar over mTLS the Upgrade travels as
//! an extended CONNECT on the HTTP/2 connection (`upgrade.rs` says how).

use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, StatusCode, Version, header};
use tower::Service;

use super::{BoxFuture, Direction, ProxyRequest, upgrade};
use crate::body::{ProxyBody, ProxyBodyKind, RequestBody};
use crate::breaker::thresholds::Overflow;
use crate::error::{ErrorKind, ProxyError, UNREACHED_HEADER};
use crate::table::{Endpoint, cluster::Protocol};

/// See [`UNREACHED_HEADER`].
const UNREACHED: http::HeaderName = http::HeaderName::from_static(UNREACHED_HEADER);
use crate::upstream::connection_limit::PendingOverflow;
use crate::upstream::{ConnectError, H1Error};

/// The HTTP version the app's request had before the sidecar-to-sidecar
/// hop carried it as HTTP/2. Set by the calling sidecar, honoured and
/// removed by the receiving one (only from a verified mesh peer).
pub const ORIGINAL_PROTOCOL: http::HeaderName = http::HeaderName::from_static("x-weft-orig-proto");

#[derive(Clone, Copy, Debug, Default)]
pub struct Forward;

fn prepare(
    req: &mut http::Request<RequestBody>,
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
    let connect_error =
        std::error::Error::source(&e).and_then(|s| s.downcast_ref::<ConnectError>());
    if let Some(overflow) = connect_error.and_then(|c| c.overflow) {
        return pending_overflow(overflow, endpoint);
    }
    let is_connect = e.is_connect() || connect_error.is_some();
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

/// Not the endpoint's doing: the cluster's connections are all busy and
/// `max_pending_requests` requests already wait.
fn pending_overflow(overflow: PendingOverflow, endpoint: &Endpoint) -> ProxyError {
    Overflow::Pending.error_because(format!(
        "no connection to {} opened: {overflow} (circuit_breakers.max_connections, max_pending_requests)",
        endpoint.addr
    ))
}

fn classify_h1(e: H1Error, endpoint: &Endpoint) -> ProxyError {
    if let H1Error::Pending(ConnectError {
        overflow: Some(overflow),
        ..
    }) = &e
    {
        return pending_overflow(*overflow, endpoint);
    }
    let (kind, reason) = match &e {
        H1Error::Connect(_) | H1Error::Pending(_) => (
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
            if let Some(record) = &ctx.access_log {
                record.endpoint.store(Some(endpoint.clone()));
            }
            if cluster.settings.protocol == Protocol::Tcp {
                return Err(ProxyError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} is an opaque TCP service (protocol tcp): reach it through a --tcp-upstream port, not HTTP",
                        cluster.name
                    ),
                ));
            }
            // HTTP/2 has no Upgrade: to a peer sidecar over mTLS it becomes
            // an extended CONNECT, and its answer a 101 again below.
            let carried_upgrade = if endpoint.client.mesh.is_some() && ctx.upgrade.is_some() {
                Some(upgrade::to_extended_connect(&mut http)?)
            } else {
                None
            };
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
                    .map(|r| r.map(ProxyBody::from))
                    .map_err(|e| classify(e, &endpoint))
            } else if h2 {
                endpoint
                    .client
                    .h2
                    .request(http)
                    .await
                    .map(|r| r.map(ProxyBody::from))
                    .map_err(|e| classify(e, &endpoint))
            } else {
                endpoint
                    .client
                    .h1
                    .send(http)
                    .await
                    .map(|r| r.map(ProxyBody::from))
                    .map_err(|e| classify_h1(e, &endpoint))
            };
            let mut resp = match result {
                Ok(resp) => resp,
                Err(e)
                    if ctx.direction == Direction::Inbound
                        && e.kind == ErrorKind::ConnectFailed =>
                {
                    endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(app) = &cluster.shared.app_health {
                        app.connect_failed(&e);
                    }
                    return Err(e.with_header(UNREACHED, HeaderValue::from_static("app")));
                }
                Err(e) => {
                    endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            if let Some(app) = &cluster.shared.app_health {
                app.answered();
            }
            if let Some(token) = carried_upgrade {
                upgrade::restore_response(&mut resp, token);
            }
            if resp.status().is_server_error() {
                endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
                if ctx.direction == Direction::Inbound {
                    // Only this sidecar may say its app was not reached.
                    resp.headers_mut().remove(UNREACHED);
                }
            }
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(downstream) = ctx.upgrade.take()
            {
                let settings = ctx.bridge.take().unwrap_or_default();
                match &mut resp.body_mut().kind {
                    ProxyBodyKind::Http1(body) => {
                        if let Some(upstream) = body.take_upgrade() {
                            tokio::spawn(upgrade::bridge_to_h1(downstream, upstream, settings));
                        }
                    }
                    // The tunnel of an extended CONNECT.
                    ProxyBodyKind::Http2(_) => {
                        let upstream = hyper::upgrade::on(&mut resp);
                        tokio::spawn(upgrade::bridge_streams(downstream, upstream, settings));
                    }
                    ProxyBodyKind::Full(_) | ProxyBodyKind::Grpc(_) => {}
                }
            }
            // `ctx` (with the in-flight guards) is dropped here: the request
            // counts as in flight until its response headers arrive.
            drop(ctx);
            Ok(resp)
        })
    }
}
