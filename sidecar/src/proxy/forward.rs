//! Sends the request to the chosen endpoint over its pooled client and
//! returns the response headers; the body streams through untouched.
//!
//! HTTP version: to a mesh peer over mTLS, by what the peer selected by
//! ALPN (the caller offers `weft-mesh/h2`, `h2`, `http/1.1`): a Weft
//! sidecar selects `weft-mesh/h2`, so one multiplexed HTTP/2 connection
//! per endpoint carries every request; `http/1.1` means HTTP/1.1. A peer
//! that selects plain `h2` (Consul's built-in proxy does, then relays the
//! bytes to an app of any protocol) or nothing (an L4 proxy) gets the
//! destination's `protocol`, as does a plain endpoint: `http1`, `http2`
//! (prior knowledge), or (AUTO) the one the caller used, so gRPC arriving
//! as HTTP/2 leaves as HTTP/2 and HTTP/1.1 stays HTTP/1.1. What a peer
//! selected is learnt once per endpoint (one handshake before its first
//! request, whose connection that request uses) and remembered
//! (`mtls::PeerProtocol`). HTTP/1.1 goes out in origin form with the
//! Host header as sent (or rewritten) over the endpoint's keep-alive pool;
//! HTTP/2 carries the logical authority as `:authority`.
//!
//! A `101 Switching Protocols` answer to an Upgrade request is bridged: both
//! sides are taken over with `hyper::upgrade::on` and bytes are copied both
//! ways (`upgrade.rs`). To a Weft sidecar the Upgrade travels as
//! an extended CONNECT on the HTTP/2 connection (`upgrade.rs` says how);
//! over an HTTP/1.1 hop it is a plain HTTP/1.1 Upgrade.
//!
//! A hop to a mesh peer that is refused, reset or answered with garbage
//! logs a warning naming the peer (address, SPIFFE ID) and the protocol
//! tried, at most one line per second per cause.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, StatusCode, Version, header};
use tower::Service;

use super::upgrade::{self, ORIGINAL_PROTOCOL};
use crate::body::{ProxyBody, ProxyBodyKind, RequestBody};
use crate::breaker::thresholds::Overflow;
use crate::error::{ErrorKind, ProxyError, UNREACHED_HEADER};
use crate::model::{BoxFuture, Direction};
use crate::table::request::{ProxyRequest, ToEndpoint};
use crate::table::{Endpoint, cluster::Protocol};

/// See [`UNREACHED_HEADER`].
const UNREACHED: http::HeaderName = http::HeaderName::from_static(UNREACHED_HEADER);
use crate::mtls::Negotiated;
use crate::upstream::connection_limit::PendingOverflow;
use crate::upstream::{ConnectError, H1Error, MeshClients};

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

/// An origin-form HTTP/1.1 request (after [`prepare`]) in absolute form
/// again, its Host as the authority.
fn absolute_form(
    req: &mut http::Request<RequestBody>,
    endpoint: &Endpoint,
) -> Result<(), ProxyError> {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| endpoint.authority.clone());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = req.uri().path_and_query().cloned();
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| {
        ProxyError::new(ErrorKind::BadRequest, "cannot build the upstream URI").with_cause(e)
    })?;
    Ok(())
}

fn classify(e: hyper_util::client::legacy::Error, endpoint: &Endpoint) -> ProxyError {
    let connect_error =
        std::error::Error::source(&e).and_then(|s| s.downcast_ref::<ConnectError>());
    if let Some(overflow) = connect_error.and_then(|c| c.overflow) {
        return pending_overflow(overflow, endpoint);
    }
    let is_connect = e.is_connect() || connect_error.is_some();
    if request_body_failed(&e) {
        ProxyError::new(
            ErrorKind::BadRequest,
            "the request body ended with an error",
        )
        .with_cause(e)
    } else if is_connect {
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

/// Whether the HTTP/2 client reset the stream itself because the request
/// body failed (the caller sent an invalid chunk, say, after the head had
/// gone on): hyper resets its own stream with INTERNAL_ERROR then, and
/// only then (a dropped response is CANCEL). The caller's fault, answered
/// 400 as on the HTTP/1 path, not the peer's `upstream-reset`.
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_reset()
                && !h2.is_remote()
                && h2.reason() == Some(h2::Reason::INTERNAL_ERROR);
        }
        source = error.source();
    }
    false
}

fn classify_connect(e: ConnectError, endpoint: &Endpoint) -> ProxyError {
    if let Some(overflow) = e.overflow {
        return pending_overflow(overflow, endpoint);
    }
    ProxyError::new(
        ErrorKind::ConnectFailed,
        format!("cannot connect to {}", endpoint.addr),
    )
    .with_cause(e)
}

/// Whether the hop speaks HTTP/2: to a Weft sidecar always, to a peer
/// that selected `http/1.1` never; plain `h2` from a peer that is not Weft
/// decides nothing (Consul's built-in proxy selects it and relays bytes to
/// an app of any protocol), so it, no selection and a plain endpoint get
/// the destination's protocol (`configured_h2`), except an Upgrade: it
/// exists in HTTP/1.1 only, and only a Weft sidecar takes it over HTTP/2
/// (as an extended CONNECT).
fn speaks_h2(negotiated: Option<Negotiated>, configured_h2: bool, upgrade: bool) -> bool {
    match negotiated {
        Some(Negotiated::WeftH2) => true,
        Some(Negotiated::Http1) => false,
        Some(Negotiated::H2 | Negotiated::Nothing) | None => configured_h2 && !upgrade,
    }
}

/// The protocol a hop to a mesh peer tried, as its warning names it.
fn hop_protocol(negotiated: Option<Negotiated>, h2: bool) -> &'static str {
    match (negotiated, h2) {
        (None, _) => "mTLS handshake offering ALPN weft-mesh/h2, h2, http/1.1",
        (Some(Negotiated::WeftH2), _) => "HTTP/2 (ALPN weft-mesh/h2)",
        (Some(Negotiated::H2), true) => "HTTP/2 (ALPN h2, not a Weft sidecar)",
        (Some(Negotiated::H2), false) => "HTTP/1.1 (ALPN h2, not a Weft sidecar)",
        (Some(Negotiated::Http1), _) => "HTTP/1.1 (ALPN http/1.1)",
        (Some(Negotiated::Nothing), true) => "HTTP/2 with prior knowledge (no ALPN selected)",
        (Some(Negotiated::Nothing), false) => "HTTP/1.1 (no ALPN selected)",
    }
}

/// One warning per second per cause (the error kind and the protocol
/// tried), however many requests fail that way.
static PEER_FAILURES: LazyLock<weft_runtime::LogLimiter<(ErrorKind, &'static str)>> =
    LazyLock::new(weft_runtime::LogLimiter::per_second);

/// Warns that a hop to a mesh peer failed, naming the peer and the
/// protocol tried: a refused or reset hop is what a protocol mismatch
/// with a non-Weft proxy looks like, and the 502 alone does not say so.
fn warn_peer_failure(
    error: &ProxyError,
    endpoint: &Endpoint,
    mesh: &MeshClients,
    protocol: &'static str,
) {
    if !matches!(
        error.kind,
        ErrorKind::ConnectFailed | ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol
    ) {
        return;
    }
    if let Some(suppressed) = PEER_FAILURES.admit((error.kind, protocol)) {
        tracing::warn!(
            peer = %endpoint.addr,
            identity = %mesh.tls.identity,
            protocol,
            suppressed,
            error = %error,
            "a hop to a mesh peer failed"
        );
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

impl<R: Send + 'static> Service<ProxyRequest<ToEndpoint<R>>> for Forward {
    type Response = crate::model::ProxyResponse;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ProxyRequest<ToEndpoint<R>>) -> Self::Future {
        Box::pin(async move {
            // `target` holds the endpoint's in-flight guard, and `ctx` the
            // cluster's: both live until the response head is back.
            let ProxyRequest {
                mut http,
                mut ctx,
                target,
            } = req;
            let endpoint = target.endpoint.clone();
            let cluster = &target.concrete.cluster;
            if let Some(record) = &ctx.access_log {
                record.sent_to(&endpoint.authority);
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
            let mesh = endpoint.client.mesh.as_ref();
            // What the peer selects by ALPN (remembered per endpoint).
            let negotiated = match mesh {
                Some(mesh) => match mesh.connector.learn().await {
                    Ok(negotiated) => Some(negotiated),
                    Err(e) => {
                        endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
                        let error = classify_connect(e, &endpoint);
                        warn_peer_failure(&error, &endpoint, mesh, hop_protocol(None, true));
                        return Err(error);
                    }
                },
                None => None,
            };
            let configured_h2 = match cluster.settings.protocol {
                Protocol::Auto => http.version() == Version::HTTP_2,
                Protocol::Http1 => false,
                Protocol::Http2 => true,
                // Refused above.
                Protocol::Tcp => false,
            };
            let h2 = speaks_h2(negotiated, configured_h2, ctx.upgrade.is_some());
            // HTTP/2 has no Upgrade: to a Weft sidecar it becomes an
            // extended CONNECT, and its answer a 101 again below.
            let weft_peer = negotiated == Some(Negotiated::WeftH2);
            let carried_upgrade = if weft_peer && ctx.upgrade.is_some() {
                Some(upgrade::to_extended_connect(&mut http)?)
            } else {
                None
            };
            // An HTTP/1 request on the HTTP/2 tunnel says so: sidecars
            // older than the app-protocol rule hand it to their app as
            // HTTP/1 again by it (as Linkerd's l5d-orig-proto does).
            if weft_peer && http.version() != Version::HTTP_2 {
                let original = if http.version() == Version::HTTP_10 {
                    HeaderValue::from_static("HTTP/1.0")
                } else {
                    HeaderValue::from_static("HTTP/1.1")
                };
                http.headers_mut().insert(ORIGINAL_PROTOCOL, original);
            }
            prepare(&mut http, &endpoint, h2)?;
            let result = match (mesh, h2) {
                (Some(mesh), true) => mesh
                    .h2
                    .request(http)
                    .await
                    .map(|r| r.map(ProxyBody::from))
                    .map_err(|e| classify(e, &endpoint)),
                (Some(mesh), false) => {
                    // hyper's pooled client takes absolute form and sends
                    // origin form on HTTP/1.1.
                    absolute_form(&mut http, &endpoint)?;
                    mesh.by_alpn
                        .request(http)
                        .await
                        .map(|r| r.map(ProxyBody::from))
                        .map_err(|e| classify(e, &endpoint))
                }
                (None, true) => endpoint
                    .client
                    .h2
                    .request(http)
                    .await
                    .map(|r| r.map(ProxyBody::from))
                    .map_err(|e| classify(e, &endpoint)),
                (None, false) => endpoint
                    .client
                    .h1
                    .send(http)
                    .await
                    .map(|r| r.map(ProxyBody::from))
                    .map_err(|e| classify_h1(e, &endpoint)),
            };
            if let (Err(error), Some(mesh)) = (&result, mesh) {
                warn_peer_failure(error, &endpoint, mesh, hop_protocol(negotiated, h2));
            }
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
                    ProxyBodyKind::Full(_)
                    | ProxyBodyKind::Grpc(_)
                    | ProxyBodyKind::Transformed(_) => {}
                }
            }
            // `ctx` and `target` (with the in-flight guards) are dropped
            // here: the request counts as in flight until its response
            // headers arrive.
            drop(ctx);
            drop(target);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_weft_peer_or_http1_overrides_the_destinations_protocol() {
        for configured_h2 in [false, true] {
            assert!(speaks_h2(Some(Negotiated::WeftH2), configured_h2, false));
            assert!(!speaks_h2(Some(Negotiated::Http1), configured_h2, false));
            // Consul's built-in proxy: `h2` selected, bytes relayed.
            for relayed in [Some(Negotiated::H2), Some(Negotiated::Nothing), None] {
                assert_eq!(speaks_h2(relayed, configured_h2, false), configured_h2);
            }
        }
    }

    #[test]
    fn an_upgrade_goes_over_http2_to_a_weft_peer_only() {
        assert!(speaks_h2(Some(Negotiated::WeftH2), false, true));
        for other in [Some(Negotiated::H2), Some(Negotiated::Nothing), None] {
            assert!(!speaks_h2(other, true, true));
        }
    }
}
