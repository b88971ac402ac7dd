//! HTTP/1.1 Upgrade (WebSocket, or any other token) between sidecars, and
//! the bridge of every upgraded connection.
//!
//! Over a plaintext hop the request goes to the peer as HTTP/1.1 and its
//! `101` is bridged as it is. The mTLS hop speaks only HTTP/2, which has no
//! Upgrade, so the request crosses it as an RFC 8441 extended CONNECT on
//! the same multiplexed connection as every other request:
//!
//! ```text
//! caller sidecar (forward)                   callee sidecar
//! GET /ws HTTP/1.1, Upgrade: websocket
//!   ──► CONNECT :protocol websocket, :path /ws, the request's headers,
//!       x-weft-orig-method: GET, x-weft-orig-proto: HTTP/1.1
//!                                            UpgradeLayer: GET /ws HTTP/1.1, Upgrade: websocket
//!                                            ► jwt_authn ► authorize ► … ► forward ──► app
//! 101 + the app's headers ◄── 200 + the app's headers ◄──────────── 101 from the app
//! then each sidecar copies bytes between its two sides (tcp::copy)
//! ```
//!
//! The callee runs the rebuilt request through its whole inbound stack, so
//! JWT rules and L7 intentions judge the method, path and headers the
//! caller's app sent (never `CONNECT`), and a denial is the usual 401/403
//! that never reaches the app. Only a verified mesh peer may ask for it.
//!
//! An answer other than `101` reaches the client as it is: a 4xx/5xx is a
//! normal response on the CONNECT stream. A 2xx cannot be (on a CONNECT it
//! would open the tunnel), so the callee sends it as `502` with the app's
//! status in `x-weft-orig-status`, and the caller puts it back.

use std::task::{Context, Poll};

use futures_util::future::{Either, FutureExt, Map, Ready, ready};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tower::{Layer, Service};

use crate::error::{ErrorKind, ProxyError};
use crate::model::ProxyResponse;
use crate::table::request::BridgeSettings;
use crate::table::request::ProxyRequest;
use crate::tcp::copy::{self, End};
use crate::upstream::Upgraded;

/// The HTTP version the app's request had before the sidecar-to-sidecar
/// hop carried it as HTTP/2. Set by `forward` toward a Weft sidecar (ALPN
/// `weft-mesh/h2`); the receiving sidecar chooses its app's protocol from
/// its own configuration and removes it (see `inbound/static_target.rs`).
/// Kept because an extended CONNECT carrying an Upgrade is told apart by it
/// (here), and because sidecars older than that rule still read it. It is
/// declared here, with the other `x-weft-orig-*` headers of the hop, so
/// that `forward` depends on `upgrade` and not both ways.
pub const ORIGINAL_PROTOCOL: HeaderName = HeaderName::from_static("x-weft-orig-proto");

/// The method of the HTTP/1.1 Upgrade request an extended CONNECT carries
/// (usually `GET`). Set by the calling sidecar, read by the callee's.
pub const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-weft-orig-method");

/// The app's 2xx status on a carried Upgrade it declined (see the module
/// docs). Set by the callee's sidecar, read by the caller's.
pub const ORIGINAL_STATUS: HeaderName = HeaderName::from_static("x-weft-orig-status");

/// The status a declined upgrade's 2xx travels under between the sidecars.
const DECLINED_CARRIER: StatusCode = StatusCode::BAD_GATEWAY;

// ---- The calling sidecar ------------------------------------------------

/// Turns an HTTP/1.1 Upgrade request into the extended CONNECT that carries
/// it over the mTLS HTTP/2 connection, in place. Returns the `Upgrade`
/// value, which the `101` for the client names again.
///
/// A request with a body cannot be carried: on a CONNECT stream every byte
/// after the head belongs to the tunnel.
pub fn to_extended_connect<B: hyper::body::Body>(
    req: &mut Request<B>,
) -> Result<HeaderValue, ProxyError> {
    if !req.body().is_end_stream() {
        return Err(ProxyError::new(
            ErrorKind::Unsupported,
            "an Upgrade request with a body cannot cross the mTLS HTTP/2 tunnel \
             (the body would have to be sent before the switch)",
        ));
    }
    let headers = req.headers_mut();
    let upgrade = headers
        .remove(header::UPGRADE)
        .ok_or_else(|| ProxyError::new(ErrorKind::Internal, "an upgrade without Upgrade"))?;
    let protocol = upgrade.to_str().map_err(|_| {
        ProxyError::new(
            ErrorKind::BadRequest,
            "the Upgrade header is not visible ASCII",
        )
    })?;
    // HTTP/2 forbids connection-specific headers; `Upgrade` travels as
    // `:protocol`.
    headers.remove(header::CONNECTION);
    headers.remove(header::CONTENT_LENGTH);
    let method = HeaderValue::from_str(req.method().as_str())
        .map_err(|_| ProxyError::new(ErrorKind::BadRequest, "the method is not a token"))?;
    req.headers_mut().insert(ORIGINAL_METHOD, method);
    req.extensions_mut().insert(Protocol::from(protocol));
    *req.method_mut() = Method::CONNECT;
    Ok(upgrade)
}

/// Puts the callee's answer to an extended CONNECT back the way the
/// client expects it: `200` (tunnel open) becomes `101` naming `upgrade`,
/// with the app's own headers (e.g. `Sec-WebSocket-Accept`); a declined
/// upgrade's 2xx gets its status back. Everything else is left alone.
pub fn restore_response<B>(resp: &mut Response<B>, upgrade: HeaderValue) {
    if resp.status() == StatusCode::OK {
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return;
    }
    if let Some(original) = resp.headers_mut().remove(ORIGINAL_STATUS)
        && resp.status() == DECLINED_CARRIER
        && let Some(status) = std::str::from_utf8(original.as_bytes())
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(|s| s.is_success())
    {
        *resp.status_mut() = status;
    }
}

// ---- The callee sidecar ------------------------------------------------------

/// The inbound layer (right below the opaque TCP tunnels, above
/// everything that looks at a request): an extended CONNECT from a peer
/// sidecar becomes the HTTP/1.1 Upgrade request it carries, and the
/// answer goes back in the shape the CONNECT needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpgradeLayer;

impl<S> Layer<S> for UpgradeLayer {
    type Service = CarriedUpgrade<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CarriedUpgrade { inner }
    }
}

#[derive(Clone, Debug)]
pub struct CarriedUpgrade<S> {
    inner: S,
}

type OnResponse = fn(Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, ProxyError>;

impl<S, T> Service<ProxyRequest<T>> for CarriedUpgrade<S>
where
    S: Service<ProxyRequest<T>, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<
        S::Future,
        Either<Map<S::Future, OnResponse>, Ready<Result<ProxyResponse, ProxyError>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest<T>) -> Self::Future {
        if req.http.method() != Method::CONNECT {
            return Either::Left(self.inner.call(req));
        }
        let from_peer = req.ctx.peer_identity.is_some();
        match from_extended_connect(&mut req.http, from_peer) {
            Ok(()) => Either::Right(Either::Left(
                self.inner.call(req).map(to_connect_answer as OnResponse),
            )),
            Err(e) => Either::Right(Either::Right(ready(Err(e)))),
        }
    }
}

/// Rebuilds the HTTP/1.1 Upgrade request that an extended CONNECT from a
/// peer sidecar carries (`from_peer`: the caller's identity was verified).
/// Only called for CONNECT; a plain one is an opaque TCP tunnel, taken by
/// the layer above.
fn from_extended_connect<B>(http: &mut Request<B>, from_peer: bool) -> Result<(), ProxyError> {
    let Some(protocol) = http.extensions_mut().remove::<Protocol>() else {
        return Err(ProxyError::new(
            ErrorKind::Internal,
            "a plain CONNECT reached the upgrade layer",
        ));
    };
    // The conversion headers are believed only from a verified peer: from
    // anyone else an extended CONNECT is a client's own WebSocket over
    // HTTP/2, which the app (HTTP/1.1 behind its sidecar) cannot take.
    if !from_peer || !http.headers().contains_key(ORIGINAL_PROTOCOL) {
        return Err(ProxyError::new(
            ErrorKind::Unsupported,
            format!(
                "an extended CONNECT (:protocol {}) is taken only from a mesh peer carrying an \
                 HTTP/1.1 Upgrade; send the Upgrade as HTTP/1.1",
                protocol.as_str()
            ),
        ));
    }
    let headers = http.headers_mut();
    let method = match headers.remove(ORIGINAL_METHOD) {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.as_bytes())
            .ok()
            .filter(|m| m != Method::CONNECT)
            .ok_or_else(|| {
                ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("{ORIGINAL_METHOD} {m:?} is not a method an Upgrade can use"),
                )
            })?,
    };
    let upgrade = HeaderValue::from_str(protocol.as_str()).map_err(|_| {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!(":protocol {:?} is not a header value", protocol.as_str()),
        )
    })?;
    headers.remove(ORIGINAL_PROTOCOL);
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    *http.method_mut() = method;
    *http.version_mut() = Version::HTTP_11;
    Ok(())
}

/// The app's answer in the shape an extended CONNECT needs: `101` opens the
/// tunnel (`200`, the app's headers kept); another 2xx travels as the
/// carrier status; the rest as it is. An app's own `x-weft-orig-status`
/// never crosses.
fn to_connect_answer(
    result: Result<ProxyResponse, ProxyError>,
) -> Result<ProxyResponse, ProxyError> {
    result.map(|mut resp| {
        let status = resp.status();
        let headers = resp.headers_mut();
        headers.remove(ORIGINAL_STATUS);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            headers.remove(header::UPGRADE);
            headers.remove(header::CONNECTION);
            *resp.status_mut() = StatusCode::OK;
        } else if status.is_success() {
            headers.insert(ORIGINAL_STATUS, HeaderValue::from(status.as_u16()));
            *resp.status_mut() = DECLINED_CARRIER;
        }
        resp
    })
}

// ---- The bridges ---------------------------------------------------------------

/// Copies bytes both ways between an upgraded client and the app's raw
/// HTTP/1.1 connection, starting with what the app sent after its `101`.
pub async fn bridge_to_h1(downstream: OnUpgrade, upstream: Upgraded, settings: BridgeSettings) {
    let _drain = settings.drain;
    let down = match downstream.await {
        Ok(down) => down,
        Err(e) => {
            tracing::debug!(error = %e, "the client's side of an upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let Upgraded {
        io: mut up,
        buffered,
    } = upstream;
    if !buffered.is_empty() {
        let early = tokio::time::timeout(settings.idle_timeout, down.write_all(&buffered)).await;
        if !matches!(early, Ok(Ok(()))) {
            tracing::debug!("upgraded connection ended before the app's first bytes were sent");
            return;
        }
    }
    let bridged = copy::bridge(&mut down, &mut up, settings.idle_timeout).await;
    log_end(&bridged);
}

/// The same when hyper owns both sides: an upgraded client and an HTTP/2
/// stream (an extended CONNECT either way).
pub async fn bridge_streams(downstream: OnUpgrade, upstream: OnUpgrade, settings: BridgeSettings) {
    let _drain = settings.drain;
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let bridged = copy::bridge(&mut down, &mut up, settings.idle_timeout).await;
    log_end(&bridged);
}

fn log_end(bridged: &copy::Bridged) {
    match &bridged.end {
        End::Failed(e) => tracing::debug!(
            error = %e,
            sent = bridged.a_to_b,
            received = bridged.b_to_a,
            "upgraded connection ended with an error"
        ),
        end => tracing::debug!(
            ?end,
            sent = bridged.a_to_b,
            received = bridged.b_to_a,
            "upgraded connection closed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::ProxyBody;
    use bytes::Bytes;
    use http_body_util::Empty;

    fn upgrade_request() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/ws?room=1")
            .header("host", "users")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Empty::new())
            .unwrap()
    }

    #[test]
    fn the_caller_sends_the_upgrade_as_an_extended_connect_with_the_original_method() {
        let mut req = upgrade_request();
        let upgrade = to_extended_connect(&mut req).unwrap();
        assert_eq!(upgrade, "websocket");
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(
            req.extensions().get::<Protocol>().map(Protocol::as_str),
            Some("websocket")
        );
        assert_eq!(req.headers()[ORIGINAL_METHOD], "GET");
        assert!(!req.headers().contains_key(header::UPGRADE));
        assert!(!req.headers().contains_key(header::CONNECTION));
        // The app's own headers travel on.
        assert_eq!(
            req.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(req.uri(), "/ws?room=1");
    }

    #[test]
    fn an_upgrade_with_a_body_is_refused_before_anything_is_sent() {
        let mut req = upgrade_request().map(|_| http_body_util::Full::new(Bytes::from("x")));
        let err = to_extended_connect(&mut req).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert_eq!(req.method(), Method::GET, "the request was left alone");
    }

    #[test]
    fn the_callers_client_gets_101_for_an_open_tunnel_and_the_apps_status_otherwise() {
        let mut open = Response::new(());
        open.headers_mut().insert(
            "sec-websocket-accept",
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        restore_response(&mut open, HeaderValue::from_static("websocket"));
        assert_eq!(open.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(open.headers()[header::UPGRADE], "websocket");
        assert_eq!(open.headers()[header::CONNECTION], "upgrade");
        assert!(open.headers().contains_key("sec-websocket-accept"));

        let mut declined = Response::new(());
        *declined.status_mut() = DECLINED_CARRIER;
        declined
            .headers_mut()
            .insert(ORIGINAL_STATUS, HeaderValue::from_static("204"));
        restore_response(&mut declined, HeaderValue::from_static("websocket"));
        assert_eq!(declined.status(), StatusCode::NO_CONTENT);
        assert!(!declined.headers().contains_key(ORIGINAL_STATUS));

        let mut refused = Response::new(());
        *refused.status_mut() = StatusCode::FORBIDDEN;
        restore_response(&mut refused, HeaderValue::from_static("websocket"));
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }

    /// The callee's view of what `to_extended_connect` sent.
    fn carried(headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("http://users/ws?room=1")
            .extension(Protocol::from_static("websocket"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn the_callee_rebuilds_the_http1_upgrade_the_caller_sent() {
        let mut req = carried(&[
            ("x-weft-orig-proto", "HTTP/1.1"),
            ("x-weft-orig-method", "GET"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        from_extended_connect(&mut req, true).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().path_and_query().unwrap(), "/ws?room=1");
        assert_eq!(req.headers()[header::UPGRADE], "websocket");
        assert_eq!(req.headers()[header::CONNECTION], "upgrade");
        assert!(!req.headers().contains_key(ORIGINAL_METHOD));
        assert!(!req.headers().contains_key(ORIGINAL_PROTOCOL));
        assert!(req.extensions().get::<Protocol>().is_none());
        assert!(
            super::super::headers::is_upgrade_request(req.version(), req.headers()),
            "the headers layer below must see an Upgrade"
        );
    }

    #[test]
    fn the_callee_takes_an_extended_connect_only_from_a_peer_sidecar() {
        // No verified identity (plaintext in PERMISSIVE mode).
        let mut req = carried(&[("x-weft-orig-proto", "HTTP/1.1")]);
        let err = from_extended_connect(&mut req, false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        // A client's own WebSocket over HTTP/2, not a carried Upgrade.
        let mut req = carried(&[]);
        let err = from_extended_connect(&mut req, true).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        // CONNECT is no method to upgrade with.
        let mut req = carried(&[
            ("x-weft-orig-proto", "HTTP/1.1"),
            ("x-weft-orig-method", "CONNECT"),
        ]);
        let err = from_extended_connect(&mut req, true).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> ProxyResponse {
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            resp.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        resp
    }

    #[test]
    fn the_callee_answers_the_connect_in_the_shape_it_needs() {
        let switched = to_connect_answer(Ok(answer(
            101,
            &[
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
        )))
        .unwrap();
        assert_eq!(switched.status(), StatusCode::OK);
        assert!(!switched.headers().contains_key(header::UPGRADE));
        assert!(!switched.headers().contains_key(header::CONNECTION));
        assert!(switched.headers().contains_key("sec-websocket-accept"));

        // The app ignored the Upgrade and answered 200: not a tunnel.
        let declined = to_connect_answer(Ok(answer(200, &[]))).unwrap();
        assert_eq!(declined.status(), DECLINED_CARRIER);
        assert_eq!(declined.headers()[ORIGINAL_STATUS], "200");

        // A refusal as it is; an app's own x-weft-orig-status never crosses.
        let refused = to_connect_answer(Ok(answer(403, &[("x-weft-orig-status", "200")]))).unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(!refused.headers().contains_key(ORIGINAL_STATUS));
    }
}
