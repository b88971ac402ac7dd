//! The tower layer: reads the encoding a request accepts against the
//! policy the request hands over ([`CompressionTarget`]), and compresses
//! the answer when it qualifies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use tower::{Layer, Service};
use weft_rules::compression::{Encoding, check_encoding};

use super::body::{compressed, decoded};
use super::metrics::{Counts, INBOUND, OUTBOUND, Skip};
use super::negotiate::choose;
use super::policy::CompressionPolicy;
use crate::body::{BufferedBody, RequestBody};
use crate::error::{ErrorKind, ProxyError};
use crate::model::{BoxFuture, Exchange, ProxyResponse};

/// What compression reads of a request beyond [`Exchange`]: the policy
/// that applies to it (its route's, or its service's), if any.
pub trait CompressionTarget: Exchange {
    fn compression_policy(&self) -> Option<&Arc<CompressionPolicy>>;
}

#[derive(Clone, Copy)]
pub struct CompressionLayer {
    counts: &'static Counts,
}

impl CompressionLayer {
    /// Route policies, on the app's calls out.
    pub fn outbound() -> Self {
        Self { counts: &OUTBOUND }
    }

    /// The service's policy, on calls to the app.
    pub fn inbound() -> Self {
        Self { counts: &INBOUND }
    }
}

impl<S> Layer<S> for CompressionLayer {
    type Service = CompressionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CompressionService {
            inner,
            counts: self.counts,
        }
    }
}

#[derive(Clone)]
pub struct CompressionService<S> {
    inner: S,
    counts: &'static Counts,
}

impl<S, R> Service<R> for CompressionService<S>
where
    R: CompressionTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    /// A request no policy covers goes on in the inner future itself, so
    /// an unconfigured route pays one `None` check and no larger future;
    /// a covered one is boxed with what it accepts.
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let Some(policy) = req.compression_policy() else {
            return Either::Left(self.inner.call(req));
        };
        let policy = policy.clone();
        let decoding = policy
            .decompress_requests
            .then(|| decode_request(req.http_mut(), self.counts))
            .flatten();
        let head = req.http().method() == Method::HEAD;
        let accepted = choose(req.http().headers(), &policy.encodings);
        let counts = self.counts;
        let answer = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                // However the upstream's client reported it (an HTTP/2
                // stream reset, a failed write), a body the decoder refused
                // is the caller's mistake: 400.
                Err(error) => match decoding {
                    Some((encoding, malformed)) if malformed.load(Ordering::Relaxed) => {
                        return Err(ProxyError::new(
                            ErrorKind::BadRequest,
                            format!("the request body is not valid {}", encoding.as_str()),
                        )
                        .with_cause(error));
                    }
                    _ => return Err(error),
                },
            };
            Ok(respond(&policy, head, accepted, response, counts))
        }))
    }
}

/// A request body sent with one coding the proxy speaks, decoded as it
/// streams: the app sees it plain, without the headers that described the
/// encoded bytes. Any other coding (or a chain of them) goes on as sent.
/// The coding, and the flag the decoder sets if it refuses the body.
fn decode_request(
    http: &mut Request<RequestBody>,
    counts: &'static Counts,
) -> Option<(Encoding, Arc<AtomicBool>)> {
    let encoding = http
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|coding| coding.to_str().ok())
        .and_then(|coding| {
            let coding = coding.trim().to_ascii_lowercase();
            let coding = if coding == "x-gzip" { "gzip" } else { &coding };
            check_encoding(coding).ok()
        })?;
    counts.decoded(encoding);
    let headers = http.headers_mut();
    headers.remove(CONTENT_ENCODING);
    headers.remove(CONTENT_LENGTH);
    let body = std::mem::replace(
        http.body_mut(),
        RequestBody::Buffered(BufferedBody::default()),
    );
    let malformed = Arc::new(AtomicBool::new(false));
    *http.body_mut() = decoded(body, encoding, malformed.clone());
    Some((encoding, malformed))
}

/// The answer, compressed with `accepted` when it qualifies; counted
/// either way.
pub(super) fn respond(
    policy: &CompressionPolicy,
    head: bool,
    accepted: Option<Encoding>,
    mut response: ProxyResponse,
    counts: &'static Counts,
) -> ProxyResponse {
    if let Some(reason) = ineligible(policy, head, &response) {
        counts.skipped(reason);
        return response;
    }
    // The representation now depends on Accept-Encoding, compressed or
    // not: a cache must key on it.
    vary_on_accept_encoding(response.headers_mut());
    let Some(encoding) = accepted else {
        counts.skipped(Skip::NotAccepted);
        return response;
    };
    counts.compressed(encoding);
    let headers = response.headers_mut();
    headers.remove(CONTENT_LENGTH);
    headers.insert(
        CONTENT_ENCODING,
        HeaderValue::from_static(encoding.as_str()),
    );
    weaken_etag(headers);
    response.map(|body| compressed(body, encoding, policy.level(encoding), counts))
}

/// Why the response is sent as it is, whatever the client accepts.
fn ineligible(policy: &CompressionPolicy, head: bool, response: &ProxyResponse) -> Option<Skip> {
    let status = response.status();
    if head
        || status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return Some(Skip::Status);
    }
    let headers = response.headers();
    if headers
        .get(CONTENT_ENCODING)
        .is_some_and(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Some(Skip::Encoded);
    }
    if has_directive(headers, CACHE_CONTROL, "no-transform") {
        return Some(Skip::NoTransform);
    }
    if !headers
        .get(CONTENT_TYPE)
        .is_some_and(|content_type| policy.compresses(content_type))
    {
        return Some(Skip::ContentType);
    }
    // Without a length (a stream) the body is compressed: it is likely
    // long, and the RFC's chunked framing costs nothing more.
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.trim().parse::<u64>().ok());
    if length.is_some_and(|length| length < policy.min_length) {
        return Some(Skip::TooSmall);
    }
    None
}

/// Whether a comma-separated header lists `token` (case-insensitive; a
/// directive's `=value` ignored).
fn has_directive(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',').any(|member| {
                let directive = member.split('=').next().unwrap_or("").trim();
                directive.eq_ignore_ascii_case(token)
            })
        })
    })
}

/// `Vary: Accept-Encoding`, merged into the answer's own `Vary` (one
/// field) unless it already varies on it, or on everything.
fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    if has_directive(headers, VARY, "accept-encoding") || has_directive(headers, VARY, "*") {
        return;
    }
    let existing: Vec<&str> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    let merged = if existing.is_empty() {
        HeaderValue::from_static("Accept-Encoding")
    } else {
        let joined = format!("{}, Accept-Encoding", existing.join(", "));
        HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static("Accept-Encoding"))
    };
    headers.insert(VARY, merged);
}

/// A strong `ETag` (`"x"`) becomes weak (`W/"x"`): the compressed bytes
/// differ from the ones it named, but they mean the same (RFC 9110 §8.8.1).
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(ETAG) else {
        return;
    };
    if !etag.as_bytes().starts_with(b"\"") {
        return;
    }
    let mut weak = Vec::with_capacity(etag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(weak) = HeaderValue::from_bytes(&weak) {
        headers.insert(ETAG, weak);
    }
}
