//! Request conformance: the RFC 9112 / RFC 9113 "MUST reject" rules that
//! hyper, httparse and h2 let through, checked on both listeners before
//! any other layer (trace, tunnel, upgrade, route...) reads the request.
//!
//! What the parsers already refuse is not checked again (see
//! `docs/CONFORMANCE.md` for the full list and the test of each rule):
//! httparse answers 400 to obs-fold, whitespace before the colon, bad
//! field-name characters, control characters in values and a bad request
//! line; hyper to an invalid or disagreeing repeated Content-Length and to
//! a Transfer-Encoding whose final coding is not `chunked`; h2 resets a
//! stream (PROTOCOL_ERROR) with connection-specific fields, a `te` other
//! than `trailers`, misplaced, unknown or missing pseudo-headers, or a
//! `content-length` the DATA frames disagree with.
//!
//! Left here, because the parsers accept them:
//! - HTTP/1: more than one `Host` line, no `Host` in HTTP/1.1, a `Host`
//!   that is not `uri-host[:port]`, an absolute-form (or CONNECT) target
//!   whose authority differs from `Host`, a transfer coding other than one
//!   final `chunked` (501 when unknown, as RFC 9112 §6.1 says);
//! - HTTP/2: more than one `host`, a `host` that disagrees with
//!   `:authority`, a field value with leading or trailing whitespace
//!   (RFC 9113 §8.2.1).
//!
//! An HTTP/1 refusal closes the connection (`Connection: close`): after a
//! request the sidecar judged malformed it cannot trust where the next one
//! starts (request smuggling). A fine request costs a few header lookups
//! (HTTP/2: one pass over the field values, two bytes each) and allocates
//! nothing.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Uri, Version};
use tower::{Layer, Service};

use crate::error::{ErrorKind, ProxyError};
use crate::metrics::malformed::MALFORMED_REQUESTS;
use crate::model::ProxyResponse;
use crate::table::request::ProxyRequest;

#[derive(Clone, Copy, Debug, Default)]
pub struct ConformanceLayer;

impl<S> Layer<S> for ConformanceLayer {
    type Service = Conformance<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Conformance { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Conformance<S> {
    inner: S,
}

impl<S, T> Service<ProxyRequest<T>> for Conformance<S>
where
    S: Service<ProxyRequest<T>, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest<T>) -> Self::Future {
        match check(&req.http) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(violation) => {
                MALFORMED_REQUESTS.refused(req.ctx.direction, violation.metric);
                Either::Left(ready(Err(violation.into_error(req.http.version()))))
            }
        }
    }
}

/// A broken rule: which kind of refusal, the reason naming the rule, and
/// its `rule` label in `weft_malformed_requests_total` (an index into
/// [`crate::metrics::malformed::RULES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ErrorKind,
    pub rule: &'static str,
    pub metric: usize,
}

impl Violation {
    const fn malformed(metric: usize, rule: &'static str) -> Self {
        Self {
            kind: ErrorKind::MalformedRequest,
            rule,
            metric,
        }
    }

    fn into_error(self, version: Version) -> ProxyError {
        let error = ProxyError::new(self.kind, self.rule);
        if version == Version::HTTP_2 {
            error
        } else {
            // hyper closes the connection after a response that says so.
            error.with_header(header::CONNECTION, HeaderValue::from_static("close"))
        }
    }
}

// The first argument of each indexes `RULES`, in its order.
pub const TWO_HOSTS: Violation =
    Violation::malformed(0, "more than one Host field line (RFC 9112 §3.2)");
pub const NO_HOST: Violation =
    Violation::malformed(1, "an HTTP/1.1 request without Host (RFC 9112 §3.2)");
pub const BAD_HOST: Violation = Violation::malformed(
    2,
    "Host is not uri-host[:port] (RFC 9112 §3.2, RFC 3986 §3.2.2)",
);
pub const AUTHORITY_NOT_HOST: Violation = Violation::malformed(
    3,
    "the request target's authority differs from Host (RFC 9112 §3.2.2; Weft refuses rather than replaces)",
);
pub const CHUNKED_TWICE: Violation =
    Violation::malformed(4, "chunked applied more than once (RFC 9112 §6.1)");
pub const TE_WITH_CONTENT_LENGTH: Violation =
    Violation::malformed(5, "Transfer-Encoding with Content-Length (RFC 9112 §6.3)");
pub const UNKNOWN_CODING: Violation = Violation {
    kind: ErrorKind::Unsupported,
    rule: "a transfer coding other than chunked (RFC 9112 §6.1)",
    metric: 6,
};
pub const H2_HOST_NOT_AUTHORITY: Violation =
    Violation::malformed(7, "host differs from :authority (RFC 9113 §8.3.1)");
pub const H2_VALUE_WHITESPACE: Violation = Violation::malformed(
    8,
    "a field value starts or ends with whitespace (RFC 9113 §8.2.1)",
);

/// The rules the parsers leave to the proxy; `Ok` for a conforming request.
pub fn check<B>(req: &Request<B>) -> Result<(), Violation> {
    match req.version() {
        Version::HTTP_10 | Version::HTTP_11 => check_http1(req),
        Version::HTTP_2 => check_http2(req),
        _ => Ok(()),
    }
}

fn check_http1<B>(req: &Request<B>) -> Result<(), Violation> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(TWO_HOSTS);
    }
    match host {
        None if req.version() == Version::HTTP_11 => return Err(NO_HOST),
        None => {}
        Some(host) => check_host_matches(host, req.uri())?,
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        check_transfer_coding(headers)?;
    }
    Ok(())
}

fn check_http2<B>(req: &Request<B>) -> Result<(), Violation> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err(TWO_HOSTS);
        }
        match req.uri().authority() {
            Some(authority) if !same_authority(authority.as_str(), host.as_bytes(), req.uri()) => {
                return Err(H2_HOST_NOT_AUTHORITY);
            }
            Some(_) => {}
            None if !valid_host(host.as_bytes(), false) => return Err(BAD_HOST),
            None => {}
        }
    }
    // HPACK carries a value's bytes as they are; HTTP/1's parser trims
    // them, h2's does not.
    let padded = headers.values().any(|value| {
        let bytes = value.as_bytes();
        matches!(bytes.first(), Some(b' ' | b'\t')) || matches!(bytes.last(), Some(b' ' | b'\t'))
    });
    if padded {
        return Err(H2_VALUE_WHITESPACE);
    }
    Ok(())
}

/// An HTTP/1 `Host`: a valid `uri-host[:port]`, empty only when the target
/// has no authority, and the same as the target's authority when it has one.
fn check_host_matches(host: &HeaderValue, uri: &Uri) -> Result<(), Violation> {
    let authority = uri.authority();
    if !valid_host(host.as_bytes(), authority.is_none()) {
        return Err(BAD_HOST);
    }
    match authority {
        Some(a) if !same_authority(a.as_str(), host.as_bytes(), uri) => Err(AUTHORITY_NOT_HOST),
        _ => Ok(()),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): an IP-literal in brackets, or
/// reg-name / IPv4 characters; the port digits only, at most 65535.
pub fn valid_host(host: &[u8], empty_allowed: bool) -> bool {
    if host.is_empty() {
        return empty_allowed;
    }
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|&b| b == b':' || is_unreserved(b) || is_sub_delim(b))
                {
                    return false;
                }
                match &host[end + 1..] {
                    [] => (&host[..0], None),
                    [b':', port @ ..] => (&host[..0], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match host.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        },
    };
    valid_reg_name(name) && port.is_none_or(valid_port) && (host[0] == b'[' || !name.is_empty())
}

/// `reg-name = *( unreserved / sub-delims )`, which covers IPv4 addresses
/// too. RFC 3986 also allows pct-encoded octets; Weft refuses them, as
/// hyper's URI parser does (`http::uri::Authority`): a host that one hop
/// decodes and another does not names two origins (the property tests
/// hold this rule to hyper's parser).
fn valid_reg_name(name: &[u8]) -> bool {
    name.iter().all(|&b| is_unreserved(b) || is_sub_delim(b))
}

fn valid_port(port: &[u8]) -> bool {
    // RFC 3986's `port = *DIGIT` allows an empty port.
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Whether a target's authority and a Host name the same origin: the host
/// compared without case, a missing port read as the scheme's default
/// (`http://a/` with `Host: a:80` agree). Userinfo never matches.
fn same_authority(authority: &str, host: &[u8], uri: &Uri) -> bool {
    let default_port: &[u8] = if uri.scheme_str() == Some("https") {
        b"443"
    } else {
        b"80"
    };
    let (a_name, a_port) = split_port(authority.as_bytes());
    let (h_name, h_port) = split_port(host);
    a_name.eq_ignore_ascii_case(h_name)
        && a_port.unwrap_or(default_port) == h_port.unwrap_or(default_port)
}

fn split_port(authority: &[u8]) -> (&[u8], Option<&[u8]>) {
    // A bracketed IPv6 literal holds colons of its own.
    let after_literal = authority
        .iter()
        .rposition(|&b| b == b']')
        .map_or(0, |end| end + 1);
    match authority[after_literal..].iter().position(|&b| b == b':') {
        Some(colon) => {
            let colon = after_literal + colon;
            let port = &authority[colon + 1..];
            (&authority[..colon], (!port.is_empty()).then_some(port))
        }
        None => (authority, None),
    }
}

/// hyper has already refused a final coding other than `chunked` (400),
/// and dropped a Content-Length sent beside Transfer-Encoding while keeping
/// the connection to one request; what is left: `chunked` twice, and
/// codings the sidecar does not decode (a proxy that passed `gzip,
/// chunked` on as plain chunked would hand the app a body it cannot read).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), Violation> {
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(TE_WITH_CONTENT_LENGTH);
    }
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else {
                return Err(UNKNOWN_CODING);
            }
        }
    }
    if chunked > 1 {
        return Err(CHUNKED_TWICE);
    }
    Ok(())
}

/// Property tests: generated hosts, codings and header sets against the
/// RFC grammars and hyper's own URI parser.
#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::malformed::RULES;

    fn request(version: Version, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn h1(target: &str, headers: &[(&str, &str)]) -> Result<(), Violation> {
        check(&request(Version::HTTP_11, target, headers))
    }

    #[test]
    fn hosts_are_checked_as_rfc_9112_says() {
        assert_eq!(h1("/", &[("host", "users")]), Ok(()));
        assert_eq!(h1("/", &[("host", "users:8080")]), Ok(()));
        assert_eq!(h1("/", &[("host", "[::1]:80")]), Ok(()));
        assert_eq!(h1("/", &[("host", "10.0.0.1")]), Ok(()));
        assert_eq!(h1("/", &[]), Err(NO_HOST));
        assert_eq!(
            check(&request(Version::HTTP_10, "/", &[])),
            Ok(()),
            "HTTP/1.0 needs no Host"
        );
        assert_eq!(h1("/", &[("host", "a"), ("host", "a")]), Err(TWO_HOSTS));
        for bad in [
            "a b", "a@b", "a/b", "a:x", "a:99999", ":80", "[::1", "[]", "a]", "us%zzers", "a%41b",
        ] {
            assert_eq!(h1("/", &[("host", bad)]), Err(BAD_HOST), "{bad:?}");
        }
        assert_eq!(
            h1("/", &[("host", "")]),
            Ok(()),
            "empty without an authority"
        );
        assert_eq!(h1("http://a/", &[("host", "")]), Err(BAD_HOST));
    }

    #[test]
    fn an_absolute_target_must_name_the_host() {
        assert_eq!(h1("http://users/x", &[("host", "users")]), Ok(()));
        assert_eq!(h1("http://users/x", &[("host", "USERS:80")]), Ok(()));
        assert_eq!(h1("https://users/x", &[("host", "users:443")]), Ok(()));
        assert_eq!(
            h1("http://users/x", &[("host", "admin")]),
            Err(AUTHORITY_NOT_HOST)
        );
        assert_eq!(
            h1("http://users:81/x", &[("host", "users")]),
            Err(AUTHORITY_NOT_HOST)
        );
        assert_eq!(
            h1("http://u@users/x", &[("host", "users")]),
            Err(AUTHORITY_NOT_HOST)
        );
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_are_refused() {
        let te = |v: &'static str| h1("/", &[("host", "a"), ("transfer-encoding", v)]);
        assert_eq!(te("chunked"), Ok(()));
        assert_eq!(te("Chunked"), Ok(()));
        assert_eq!(te("gzip, chunked"), Err(UNKNOWN_CODING));
        assert_eq!(te("chunked, chunked"), Err(CHUNKED_TWICE));
        assert_eq!(
            h1(
                "/",
                &[
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "3")
                ]
            ),
            Err(TE_WITH_CONTENT_LENGTH)
        );
    }

    #[test]
    fn http2_host_must_agree_with_authority_and_values_are_unpadded() {
        let h2 =
            |headers: &[(&str, &str)]| check(&request(Version::HTTP_2, "http://users/x", headers));
        assert_eq!(h2(&[]), Ok(()));
        assert_eq!(h2(&[("host", "users")]), Ok(()));
        assert_eq!(h2(&[("host", "admin")]), Err(H2_HOST_NOT_AUTHORITY));
        assert_eq!(h2(&[("host", "users"), ("host", "users")]), Err(TWO_HOSTS));
        assert_eq!(h2(&[("x-a", " padded")]), Err(H2_VALUE_WHITESPACE));
        assert_eq!(h2(&[("x-a", "padded\t")]), Err(H2_VALUE_WHITESPACE));
        assert_eq!(h2(&[("x-a", "in side")]), Ok(()));
    }

    #[test]
    fn each_violation_counts_under_its_own_rule_label() {
        let labels = [
            (TWO_HOSTS, "two-hosts"),
            (NO_HOST, "no-host"),
            (BAD_HOST, "invalid-host"),
            (AUTHORITY_NOT_HOST, "authority-not-host"),
            (CHUNKED_TWICE, "chunked-twice"),
            (
                TE_WITH_CONTENT_LENGTH,
                "transfer-encoding-with-content-length",
            ),
            (UNKNOWN_CODING, "unknown-transfer-coding"),
            (H2_HOST_NOT_AUTHORITY, "host-not-authority"),
            (H2_VALUE_WHITESPACE, "field-value-whitespace"),
        ];
        assert_eq!(labels.len(), RULES.len());
        for (violation, label) in labels {
            assert_eq!(RULES[violation.metric], label, "{}", violation.rule);
        }
    }

    #[test]
    fn an_http1_refusal_closes_the_connection_and_an_http2_one_does_not() {
        let response = TWO_HOSTS.into_error(Version::HTTP_11).to_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(
            response.headers()[crate::error::ERROR_HEADER],
            "malformed-request"
        );
        let response = TWO_HOSTS.into_error(Version::HTTP_2).to_response();
        assert!(!response.headers().contains_key("connection"));
        assert_eq!(
            UNKNOWN_CODING
                .into_error(Version::HTTP_11)
                .to_response()
                .status(),
            501
        );
    }
}
