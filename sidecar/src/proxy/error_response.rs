//! Turns every [`ProxyError`] from the layers below into a response with
//! `x-weft-error`: the one place where refusals become responses (proxy
//! failures, JWT denials, rate limits alike).
//!
//! To a gRPC call the sidecar's own refusals are gRPC answers, as Envoy's
//! local replies are: HTTP 200, trailers-only, `grpc-status` mapped from
//! the HTTP status (the mapping gRPC documents; a timeout is
//! DEADLINE_EXCEEDED), the reason in `grpc-message`, `x-weft-error` and
//! the other headers kept. A plain 503 would reach a gRPC client as a
//! protocol error (tonic says INTERNAL) instead of UNAVAILABLE, which is
//! what its retry and failover logic acts on. A peer sidecar's refusal
//! arrives already mapped (its own `error_response` saw the same gRPC
//! request), and the app's answers are its own: both pass unchanged.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{FutureExt, Map};
use http::{HeaderValue, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::body::{ProxyBody, ProxyBodyKind};
use crate::error::{ATTEMPTS_HEADER, ERROR_HEADER, ErrorKind, ErrorSource, OwnRefusal, ProxyError};
use crate::model::ProxyResponse;
use crate::table::request::ProxyRequest;

// Written here rather than in `crate::error`: the response needs the body
// type, and the error type stays at the bottom of the data plane.
impl ProxyError {
    /// The synthetic response: status, `x-weft-error`, a one-line text
    /// body, the error's own headers, and its kind as [`OwnRefusal`].
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut response = plain_refusal(self.kind.status(), self.kind.code(), &self.reason);
        if let Some(body) = &self.body {
            let (content_type, bytes) = body.as_ref();
            *response.body_mut() = ProxyBody::full(bytes.clone());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(attempts) = self.attempts {
            response
                .headers_mut()
                .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
        }
        if let Some(edit) = &self.header_edits {
            edit(response.headers_mut());
        }
        response.extensions_mut().insert(OwnRefusal(self.kind));
        response
    }
}

/// The shape of every response the sidecar makes itself: `status`,
/// `x-weft-error: code`, and `reason` as a one-line text body.
fn plain_refusal(status: StatusCode, code: &'static str, reason: &str) -> Response<ProxyBody> {
    let mut body = String::with_capacity(reason.len() + 1);
    // Keep the body on one line whatever the reason contains.
    body.extend(
        reason
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
    );
    body.push('\n');
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ErrorResponse<S> {
    inner: S,
}

type Respond = fn(Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, Infallible>;

fn respond(result: Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, Infallible> {
    Ok(result.unwrap_or_else(|e| {
        // Debug, not info: an unreachable upstream under load would flood
        // the log; the response header and body already tell the caller.
        match e.source_side() {
            ErrorSource::Upstream => tracing::debug!(error = %e, "upstream error"),
            _ => tracing::debug!(error = %e, "request failed"),
        }
        e.to_response()
    }))
}

impl<S, T> Service<ProxyRequest<T>> for ErrorResponse<S>
where
    S: Service<ProxyRequest<T>, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = Map<S::Future, Respond>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Inner layers are always ready (see crate::proxy).
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: ProxyRequest<T>) -> Self::Future {
        let respond = if is_grpc(&req.http) {
            respond_grpc as Respond
        } else {
            respond as Respond
        };
        self.inner.call(req).map(respond)
    }
}

fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn respond_grpc(result: Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, Infallible> {
    let Ok(response) = respond(result);
    Ok(as_grpc_reply(response))
}

/// gRPC status codes the sidecar answers with.
mod grpc_code {
    pub const UNKNOWN: u8 = 2;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// The gRPC status of a sidecar-made answer (gRPC's
/// doc/http-grpc-status-mapping.md, plus DEADLINE_EXCEEDED for a timeout).
fn grpc_status_of(kind: ErrorKind) -> u8 {
    use grpc_code::*;
    if kind == ErrorKind::Timeout {
        return DEADLINE_EXCEEDED;
    }
    match kind.status().as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// A refusal this sidecar made ([`OwnRefusal`]) as a trailers-only gRPC
/// answer; anything else (the app's answers, a peer sidecar's already
/// converted refusal) passes as it is.
fn as_grpc_reply(response: ProxyResponse) -> ProxyResponse {
    let Some(&OwnRefusal(kind)) = response.extensions().get::<OwnRefusal>() else {
        return response;
    };
    let code = grpc_status_of(kind);
    let (mut parts, body) = response.into_parts();
    let reason = match body.kind {
        ProxyBodyKind::Full(Some(text)) => text,
        _ => Bytes::new(),
    };
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(message) = HeaderValue::from_str(&grpc_message(reason.trim_ascii())) {
        parts.headers.insert("grpc-message", message);
    }
    http::Response::from_parts(parts, ProxyBody::empty())
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and
/// `%` itself (gRPC's PROTOCOL-HTTP2).
fn grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AuthnErrorKind;

    fn grpc_reply(e: ProxyError) -> ProxyResponse {
        as_grpc_reply(e.to_response())
    }

    #[test]
    fn a_refusal_to_a_grpc_call_is_a_trailers_only_grpc_answer() {
        let reply = grpc_reply(ProxyError::new(
            ErrorKind::CircuitOpen,
            "circuit open for users: 100% sure",
        ));
        assert_eq!(reply.status(), 200);
        let headers = reply.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(
            headers["grpc-message"],
            "circuit open for users: 100%25 sure"
        );
        assert_eq!(headers["x-weft-error"], "circuit-open");
        assert!(hyper::body::Body::is_end_stream(reply.body()));
    }

    #[test]
    fn statuses_map_as_grpc_documents_and_a_timeout_is_deadline_exceeded() {
        let status = |kind| grpc_reply(ProxyError::new(kind, "x")).headers()["grpc-status"].clone();
        assert_eq!(status(ErrorKind::Timeout), "4");
        assert_eq!(status(ErrorKind::Overflow), "14");
        assert_eq!(status(ErrorKind::RateLimited), "14");
        assert_eq!(status(ErrorKind::Denied), "7");
        assert_eq!(status(ErrorKind::NoRoute), "12");
        assert_eq!(status(ErrorKind::BadRequest), "13");
        assert_eq!(status(ErrorKind::Internal), "2");
        assert_eq!(status(ErrorKind::Jwt(AuthnErrorKind::Expired)), "16");
        assert_eq!(
            status(ErrorKind::Jwt(AuthnErrorKind::InsufficientRole)),
            "7"
        );
        assert_eq!(
            status(ErrorKind::Jwt(AuthnErrorKind::KeysUnavailable)),
            "14"
        );
        assert_eq!(
            status(ErrorKind::Jwt(AuthnErrorKind::PathNotNormalized)),
            "13"
        );
        let fail_closed = |status| ErrorKind::RateLimitUnavailable { status };
        assert_eq!(status(fail_closed(StatusCode::SERVICE_UNAVAILABLE)), "14");
        assert_eq!(status(fail_closed(StatusCode::TOO_MANY_REQUESTS)), "14");
    }

    #[test]
    fn a_peer_sidecars_refusal_is_not_this_sidecars_to_map() {
        // Its header says a sidecar refused, but not this one: the peer's
        // own `error_response` mapped it for a gRPC caller already.
        let mut peer = http::Response::new(ProxyBody::empty());
        *peer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        peer.headers_mut()
            .insert("x-weft-error", HeaderValue::from_static("connect-failed"));
        let passed = as_grpc_reply(peer);
        assert_eq!(passed.status(), 503);
        assert!(passed.headers().get("grpc-status").is_none());
    }

    #[test]
    fn the_apps_answers_pass_unchanged() {
        let mut app = http::Response::new(ProxyBody::full(Bytes::from_static(b"oops")));
        *app.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        let passed = as_grpc_reply(app);
        assert_eq!(passed.status(), 500);
        assert!(passed.headers().get("grpc-status").is_none());
    }
}
