//! The data path's error type.
//!
//! Like pingora's, a [`ProxyError`] says what went wrong ([`ErrorKind`]),
//! where it came from ([`ErrorSource`]) and whether the request may be sent
//! again ([`Retry`]); the retry layer reads those fields, never strings.
//! Every refusal of the sidecar (a proxy failure, a JWT denial, a rate
//! limit) is a [`ProxyError`], and becomes an HTTP response in exactly one
//! place, the `error_response` layer, through [`ProxyError::to_response`]
//! (defined there, with the response body type: this module is at the
//! bottom of the data plane and imports nothing of the sidecar's, so that
//! every feature can name its errors without importing the body or the
//! features the body wraps).
//! That response carries its kind as a typed [`OwnRefusal`] extension, and
//! the layers that observe a refusal (metrics, traces, the access log, the
//! gRPC mapping) read the kind, never the `x-weft-error` string; only a
//! refusal made by another sidecar, across the network, is known by its
//! header alone ([`peer_refusal_code`]).

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

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
    /// A CORS preflight from an origin the policy does not allow, answered
    /// at the proxy without any CORS header (`crate::cors`). 403.
    CorsOriginRefused,
    /// The request broke its validation policy (`crate::validation`): 400
    /// with every failing field, 413 for a body over the bound, 415 for a
    /// body that is not JSON's media type; a problem document either way.
    ValidationFailed { status: StatusCode },
    /// A rate limit refused the request (with Retry-After and the
    /// RateLimit fields, made by `crate::ratelimit::headers`). 429.
    RateLimited,
    /// A global rate limit could not be checked (Redis did not answer in
    /// time) and fails closed: the status its config names (503 or 429),
    /// with Retry-After.
    RateLimitUnavailable { status: StatusCode },
    /// The JWT policy refused the request's credentials (401, 403; 503
    /// when the keys cannot be had, 400 for a path it cannot judge), with
    /// a `WWW-Authenticate` challenge made by `crate::authn::error`.
    Jwt(AuthnErrorKind),
    /// The route chose a destination this sidecar does not hold yet, and
    /// its Cluster and endpoints did not arrive from the discovery agent
    /// within the on-demand timeout (`--discovery-timeout`). 503.
    DiscoveryTimeout,
    /// A bug or an unexpected state in the sidecar. 500.
    Internal,
}

/// What was wrong with a request's credentials, as a caller can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthnErrorKind {
    /// No token where the policy looks for one. 401.
    Missing,
    /// Not three base64url segments of JSON, or a header without `alg`. 401.
    Malformed,
    /// `alg` is `none`, unknown, or not in the provider's list. 401.
    AlgorithmNotAllowed,
    /// No key in the provider's set matches the token's `kid` and `alg`. 401.
    UnknownKid,
    /// The signature does not verify with the key. 401.
    BadSignature,
    /// `exp` is past (beyond the leeway). 401.
    Expired,
    /// `nbf` is ahead (beyond the leeway). 401.
    NotYetValid,
    /// `iss` is missing or names no configured provider. 401.
    WrongIssuer,
    /// `aud` is missing or names none of the provider's audiences. 401.
    WrongAudience,
    /// A required claim (or `exp`) is missing or has another value. 401.
    ClaimMismatch,
    /// The token is valid but lacks a role the path requires. 403.
    InsufficientRole,
    /// The provider's keys could never be fetched, so no token can be
    /// checked. 503: the caller may retry later.
    KeysUnavailable,
    /// The path has dot segments, `//` or encoded dots or backslashes, so
    /// which rule applies would depend on how the app normalises it. 400.
    PathNotNormalized,
}

impl AuthnErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InsufficientRole => StatusCode::FORBIDDEN,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PathNotNormalized => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `x-weft-error` value.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "jwt-missing",
            Self::Malformed => "jwt-malformed",
            Self::AlgorithmNotAllowed => "jwt-algorithm-not-allowed",
            Self::UnknownKid => "jwt-unknown-kid",
            Self::BadSignature => "jwt-bad-signature",
            Self::Expired => "jwt-expired",
            Self::NotYetValid => "jwt-not-yet-valid",
            Self::WrongIssuer => "jwt-wrong-issuer",
            Self::WrongAudience => "jwt-wrong-audience",
            Self::ClaimMismatch => "jwt-claim-mismatch",
            Self::InsufficientRole => "jwt-insufficient-role",
            Self::KeysUnavailable => "jwt-keys-unavailable",
            Self::PathNotNormalized => "path-not-normalized",
        }
    }

    /// The RFC 6750 `error_description`: fixed text, so no token content
    /// is ever echoed into a header.
    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "no token",
            Self::Malformed => "the token is malformed",
            Self::AlgorithmNotAllowed => "the token's algorithm is not allowed",
            Self::UnknownKid => "the token's signing key is unknown",
            Self::BadSignature => "the token's signature is invalid",
            Self::Expired => "the token expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::WrongIssuer => "the token's issuer is not accepted",
            Self::WrongAudience => "the token is not meant for this service",
            Self::ClaimMismatch => "a required claim is missing or has another value",
            Self::InsufficientRole => "the token lacks a role this path requires",
            Self::KeysUnavailable => "the signing keys are not available",
            Self::PathNotNormalized => "the path is not normalized",
        }
    }
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
            Self::Denied | Self::CorsOriginRefused => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::NOT_IMPLEMENTED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimitUnavailable { status } => status,
            Self::ValidationFailed { status } => status,
            Self::Jwt(kind) => kind.status(),
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
            Self::CorsOriginRefused => "cors-origin-refused",
            Self::ValidationFailed { .. } => "validation-failed",
            Self::Unsupported => "unsupported",
            Self::RateLimited => "rate-limited",
            Self::RateLimitUnavailable { .. } => "rate-limit-unavailable",
            Self::Jwt(kind) => kind.code(),
            Self::Internal => "internal",
        }
    }

    pub fn source(self) -> ErrorSource {
        match self {
            Self::BadRequest
            | Self::MalformedRequest
            | Self::Denied
            | Self::CorsOriginRefused
            | Self::ValidationFailed { .. }
            | Self::RateLimited => ErrorSource::Downstream,
            // The keys' provider, or Redis: the sidecar's own dependencies.
            Self::Jwt(AuthnErrorKind::KeysUnavailable) | Self::RateLimitUnavailable { .. } => {
                ErrorSource::Internal
            }
            Self::Jwt(_) => ErrorSource::Downstream,
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
    /// Edits of the response's headers made last, after every other
    /// header: a route's response header mutations on a refusal that
    /// answers for the route (`outbound::rewrite`, rate limits).
    pub header_edits: Option<HeaderEdits>,
    /// A body sent instead of the one-line reason, with its content type
    /// (validation's problem documents). Boxed: almost every refusal has
    /// none, and the error travels in every `Result` of the data plane.
    pub body: Option<Box<(HeaderValue, Bytes)>>,
}

/// Changes to the headers of a refusal's response (see
/// [`ProxyError::header_edits`]).
pub type HeaderEdits = Box<dyn Fn(&mut HeaderMap) + Send + Sync>;

/// The kind of a response this sidecar made itself, in its extensions:
/// set by [`ProxyError::to_response`] (the one place a refusal becomes a
/// response) for whatever reads the answer above `error_response`, so that
/// nothing has to parse `x-weft-error` back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnRefusal(pub ErrorKind);

/// The `x-weft-error` code of an answer that came from across the network:
/// a peer sidecar's refusal (its inbound said `denied`, `jwt-expired`,
/// `rate-limited`...). That sidecar's kind reaches this one only as the
/// header, so this is the one place the string is read back, and only
/// for an upstream's answer; this sidecar's own refusals are known by
/// their [`ErrorKind`]. Error statuses only: a 2xx with the header (a
/// peer's refusal already turned into a gRPC answer) is not a refusal
/// here.
pub fn peer_refusal_code<B>(answer: &Response<B>) -> Option<&HeaderValue> {
    if answer.status().as_u16() < 400 {
        return None;
    }
    answer.headers().get(ERROR_HEADER)
}

impl ProxyError {
    pub fn new(kind: ErrorKind, reason: impl Into<Box<str>>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            cause: None,
            headers: Vec::new(),
            attempts: None,
            header_edits: None,
            body: None,
        }
    }

    /// Answers with `body` of `content_type` instead of the reason line.
    pub fn with_body(mut self, content_type: HeaderValue, body: Bytes) -> Self {
        self.body = Some(Box::new((content_type, body)));
        self
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
            (ErrorKind::CorsOriginRefused, 403, "cors-origin-refused"),
            (
                ErrorKind::ValidationFailed {
                    status: StatusCode::BAD_REQUEST,
                },
                400,
                "validation-failed",
            ),
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

    #[tokio::test]
    async fn jwt_and_fail_closed_refusals_are_kinds_with_their_status_and_code() {
        use AuthnErrorKind as J;
        let jwt = [
            (J::Missing, 401, "jwt-missing"),
            (J::Malformed, 401, "jwt-malformed"),
            (J::AlgorithmNotAllowed, 401, "jwt-algorithm-not-allowed"),
            (J::UnknownKid, 401, "jwt-unknown-kid"),
            (J::BadSignature, 401, "jwt-bad-signature"),
            (J::Expired, 401, "jwt-expired"),
            (J::NotYetValid, 401, "jwt-not-yet-valid"),
            (J::WrongIssuer, 401, "jwt-wrong-issuer"),
            (J::WrongAudience, 401, "jwt-wrong-audience"),
            (J::ClaimMismatch, 401, "jwt-claim-mismatch"),
            (J::InsufficientRole, 403, "jwt-insufficient-role"),
            (J::KeysUnavailable, 503, "jwt-keys-unavailable"),
            (J::PathNotNormalized, 400, "path-not-normalized"),
        ]
        .map(|(kind, status, code)| (ErrorKind::Jwt(kind), status, code));
        let fail_closed = [503, 429].map(|status| {
            let status = StatusCode::from_u16(status).unwrap();
            (
                ErrorKind::RateLimitUnavailable { status },
                status.as_u16(),
                "rate-limit-unavailable",
            )
        });
        for (kind, status, code) in jwt.into_iter().chain(fail_closed) {
            let resp = ProxyError::new(kind, "why").to_response();
            assert_eq!(resp.status().as_u16(), status, "{kind:?}");
            assert_eq!(resp.headers()[ERROR_HEADER], code);
            assert_eq!(resp.extensions().get(), Some(&OwnRefusal(kind)));
            let cause = crate::metrics::requests::cause_of(kind);
            assert_eq!(crate::metrics::requests::CAUSES[cause], code);
        }
    }

    #[test]
    fn only_a_peers_error_status_is_read_as_its_refusal() {
        let answer = |status: u16| {
            let mut resp = Response::new(());
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            resp.headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static("denied"));
            resp
        };
        assert_eq!(peer_refusal_code(&answer(403)).unwrap(), "denied");
        // A gRPC refusal already mapped by the peer is a 200.
        assert!(peer_refusal_code(&answer(200)).is_none());
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
