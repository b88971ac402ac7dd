//! The data path's error type.
//!
//! Like pingora's, a [`ProxyError`] says what went wrong ([`ErrorKind`]),
//! where it came from ([`ErrorSource`]) and whether the request may be sent
//! again ([`Retry`]); a retry layer (later issue) reads those fields, never
//! strings. Errors become HTTP responses in exactly one place, the
//! `error_response` layer, through [`ProxyError::to_response`].

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// The response header that names the cause of a proxy-generated error.
pub const ERROR_HEADER: &str = "x-weft-error";
/// On a callee sidecar's own 503 when it could not connect to its app: no
/// app saw the request, so the caller may eject that endpoint at once and
/// send the request to another one, whatever its method. The sidecar
/// removes it from its app's answers, so an app (or a deeper hop's answer
/// an app passes on) cannot pose as unreached.
pub const UNREACHED_HEADER: &str = "x-weft-unreached";
/// How many tries a request took, on the responses of destinations (or
/// routes) with a retry policy.
pub const ATTEMPTS_HEADER: &str = "x-weft-attempts";

/// What went wrong, as a user can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No virtual host for the authority, or no route in it matched. 404.
    NoRoute,
    /// The cluster has no HEALTHY/UNKNOWN endpoint (or is unknown). 503.
    NoHealthyEndpoint,
    /// TCP connect to the chosen endpoint failed or timed out. 503.
    ConnectFailed,
    /// The upstream closed or reset the connection before a response. 502.
    UpstreamReset,
    /// The upstream's response is not valid HTTP (bad head, framing or
    /// size). 502; like Envoy's `UPE`.
    UpstreamProtocol,
    /// No response headers within the route/cluster timeout. 504.
    Timeout,
    /// A concurrency threshold of the cluster is reached (which one:
    /// `x-weft-overflow`). 503.
    Overflow,
    /// The cluster's circuit breaker is open (or half-open with its probes
    /// taken). 503.
    CircuitOpen,
    /// The downstream request cannot be proxied (no authority, bad URI...). 400.
    BadRequest,
    /// The request breaks a rule of HTTP/1.1 or HTTP/2 that a server must
    /// refuse (two Host lines, Host against the target's authority...;
    /// `proxy::conformance`). 400, and an HTTP/1 connection is closed.
    MalformedRequest,
    /// The service's policy does not let this caller make this request
    /// (an intention, or the default deny). 403.
    Denied,
    /// The request needs something this sidecar does not do on that path
    /// (HTTP to an opaque TCP service, an Upgrade request with a body over
    /// the mTLS HTTP/2 tunnel, a client's own extended CONNECT). 501.
    Unsupported,
    /// A rate limit refused the request (with Retry-After and the
    /// RateLimit fields, made by `crate::ratelimit::headers`). 429.
    RateLimited,
    /// The route chose a destination this sidecar does not hold yet, and
    /// its Cluster and endpoints did not arrive from the discovery agent
    /// within the on-demand timeout (`--discovery-timeout`). 503.
    DiscoveryTimeout,
    /// A bug or an unexpected state in the sidecar. 500.
    Internal,
}

/// Which side of the proxy the error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client that sent the request.
    Downstream,
    /// The endpoint (or the path to it).
    Upstream,
    /// The sidecar's own config or limits.
    Internal,
}

/// Whether sending the request again (to another endpoint) is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The request never reached an upstream: always safe.
    Safe,
    /// It may have been processed: safe only for idempotent requests.
    IfIdempotent,
    /// Retrying cannot help (bad request, no route, limits).
    Never,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyEndpoint
            | Self::ConnectFailed
            | Self::Overflow
            | Self::CircuitOpen
            | Self::DiscoveryTimeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamReset | Self::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest | Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::NOT_IMPLEMENTED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `x-weft-error` value.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::NoHealthyEndpoint => "no-healthy-endpoint",
            Self::ConnectFailed => "connect-failed",
            Self::UpstreamReset => "upstream-reset",
            Self::UpstreamProtocol => "upstream-protocol-error",
            Self::Timeout => "timeout",
            Self::Overflow => "overflow",
            Self::CircuitOpen => "circuit-open",
            Self::DiscoveryTimeout => "discovery-timeout",
            Self::BadRequest => "bad-request",
            Self::MalformedRequest => "malformed-request",
            Self::Denied => "denied",
            Self::Unsupported => "unsupported",
            Self::RateLimited => "rate-limited",
            Self::Internal => "internal",
        }
    }

    pub fn source(self) -> ErrorSource {
        match self {
            Self::BadRequest | Self::MalformedRequest | Self::Denied | Self::RateLimited => {
                ErrorSource::Downstream
            }
            Self::ConnectFailed | Self::UpstreamReset | Self::UpstreamProtocol | Self::Timeout => {
                ErrorSource::Upstream
            }
            Self::NoRoute
            | Self::NoHealthyEndpoint
            | Self::Overflow
            | Self::CircuitOpen
            | Self::DiscoveryTimeout
            | Self::Internal
            | Self::Unsupported => ErrorSource::Internal,
        }
    }

    pub fn retry(self) -> Retry {
        match self {
            Self::ConnectFailed => Retry::Safe,
            Self::UpstreamReset => Retry::IfIdempotent,
            _ => Retry::Never,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed proxied request.
pub struct ProxyError {
    pub kind: ErrorKind,
    /// A short human reason, sent as the response body (one line).
    pub reason: Box<str>,
    pub cause: Option<BoxError>,
    /// Headers the response carries besides `x-weft-error` (e.g.
    /// `x-weft-overflow`).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Tries made, for a request with a retry policy (`x-weft-attempts`).
    pub attempts: Option<u32>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, reason: impl Into<Box<str>>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            cause: None,
            headers: Vec::new(),
            attempts: None,
        }
    }

    pub fn with_header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts);
        self
    }

    pub fn with_cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn source_side(&self) -> ErrorSource {
        self.kind.source()
    }

    pub fn retry(&self) -> Retry {
        self.kind.retry()
    }

    /// The synthetic response: status, `x-weft-error`, a one-line text body.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut response = error_response(self.kind.status(), self.kind.code(), &self.reason);
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(attempts) = self.attempts {
            response
                .headers_mut()
                .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
        }
        response
    }
}

/// A response the sidecar makes itself: `status`, `x-weft-error: code`, and
/// `reason` as a one-line text body. Every such response (proxy errors,
/// JWT denials) has this shape.
pub fn error_response(status: StatusCode, code: &'static str, reason: &str) -> Response<ProxyBody> {
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

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.reason)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
            let mut source = cause.source();
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_ref()
            .map(|c| c.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn each_kind_maps_to_its_status_and_header() {
        let cases = [
            (ErrorKind::NoRoute, 404, "no-route"),
            (ErrorKind::NoHealthyEndpoint, 503, "no-healthy-endpoint"),
            (ErrorKind::ConnectFailed, 503, "connect-failed"),
            (ErrorKind::UpstreamReset, 502, "upstream-reset"),
            (ErrorKind::UpstreamProtocol, 502, "upstream-protocol-error"),
            (ErrorKind::Timeout, 504, "timeout"),
            (ErrorKind::Overflow, 503, "overflow"),
            (ErrorKind::CircuitOpen, 503, "circuit-open"),
            (ErrorKind::DiscoveryTimeout, 503, "discovery-timeout"),
            (ErrorKind::BadRequest, 400, "bad-request"),
            (ErrorKind::MalformedRequest, 400, "malformed-request"),
            (ErrorKind::Denied, 403, "denied"),
            (ErrorKind::Unsupported, 501, "unsupported"),
            (ErrorKind::RateLimited, 429, "rate-limited"),
        ];
        for (kind, status, code) in cases {
            let resp = ProxyError::new(kind, "line one\nline two").to_response();
            assert_eq!(resp.status().as_u16(), status, "{kind:?}");
            assert_eq!(resp.headers()[ERROR_HEADER], code);
            // `/metrics` counts the sidecar's refusals by this code.
            let cause = crate::metrics::requests::cause_index(code.as_bytes());
            assert_eq!(crate::metrics::requests::CAUSES[cause], code);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"line one line two\n");
        }
    }

    #[test]
    fn only_unsent_requests_are_always_retryable() {
        assert_eq!(ErrorKind::ConnectFailed.retry(), Retry::Safe);
        assert_eq!(ErrorKind::UpstreamReset.retry(), Retry::IfIdempotent);
        assert_eq!(ErrorKind::Timeout.retry(), Retry::Never);
        assert_eq!(ErrorKind::Timeout.source(), ErrorSource::Upstream);
        assert_eq!(ErrorKind::BadRequest.source(), ErrorSource::Downstream);
    }
}
