//! The tower layer: answers a request from its policy's store when a fresh
//! answer is held, else fetches it (one fetch per key at a time) and
//! stores what RFC 9111 allows as it streams back.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::header::{AGE, AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use tower::{Layer, Service};

use super::body::teed;
use super::conditional::not_modified;
use super::freshness::{Ask, ask};
use super::metrics::{Counts, INBOUND, Lookup, OUTBOUND};
use super::policy::CachePolicy;
use super::store::{Entry, Fetch, wait};
use crate::body::{ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::model::{BoxFuture, Exchange, ProxyResponse};

/// The header that says how the cache answered: HIT, MISS or BYPASS.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How long a miss waits for another request's fetch of the same key
/// before it goes upstream itself: the default request timeout, the
/// longest a fetch's head is waited for unless a route says otherwise.
const COALESCE_WAIT: Duration = Duration::from_secs(15);

/// What the cache reads of a request beyond [`Exchange`]: the policy that
/// applies to it (its route's, or its service's), if any.
pub trait CacheTarget: Exchange {
    fn cache_policy(&self) -> Option<&Arc<CachePolicy>>;
}

#[derive(Clone, Copy)]
pub struct CacheLayer {
    counts: &'static Counts,
}

impl CacheLayer {
    /// Route policies, on the app's calls out.
    pub fn outbound() -> Self {
        Self { counts: &OUTBOUND }
    }

    /// The service's policy, on calls to the app.
    pub fn inbound() -> Self {
        Self { counts: &INBOUND }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            counts: self.counts,
        }
    }
}

#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    counts: &'static Counts,
}

impl<S, R> Service<R> for CacheService<S>
where
    R: CacheTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    /// A request no policy covers (or of a method the policy does not
    /// cache) goes on in the inner future itself: one `None` check.
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let Some(policy) = req.cache_policy() else {
            return Either::Left(self.inner.call(req));
        };
        if !policy.methods.contains(req.http().method()) {
            return Either::Left(self.inner.call(req));
        }
        let policy = policy.clone();
        let counts = self.counts;
        let key = key(req.http());
        let headers = req.http().headers().clone();
        let head = req.http().method() == Method::HEAD;
        match ask(&headers) {
            Ask::Pass => {
                counts.count(Lookup::Bypass);
                let answer = self.inner.call(req);
                Either::Right(Box::pin(async move {
                    Ok(marked(answer.await?, Lookup::Bypass))
                }))
            }
            Ask::Refresh => {
                counts.count(Lookup::Bypass);
                let answer = self.inner.call(req);
                Either::Right(Box::pin(async move {
                    let response = answer.await?;
                    Ok(marked(
                        store(&policy, key, &headers, response, None),
                        Lookup::Bypass,
                    ))
                }))
            }
            Ask::Lookup => {
                if let Some(hit) = lookup(&policy, &key, &headers, head) {
                    counts.count(Lookup::Hit);
                    return Either::Right(Box::pin(std::future::ready(Ok(hit))));
                }
                match policy.store.begin(&key) {
                    Fetch::Leader(guard) => {
                        counts.count(Lookup::Miss);
                        let answer = self.inner.call(req);
                        Either::Right(Box::pin(async move {
                            let response = answer.await?;
                            Ok(marked(
                                store(&policy, key, &headers, response, Some(guard)),
                                Lookup::Miss,
                            ))
                        }))
                    }
                    Fetch::Follower(waiting) => {
                        // Take the ready service for this request (tower's
                        // clone-and-swap), leaving a fresh clone behind.
                        let clone = self.inner.clone();
                        let mut inner = std::mem::replace(&mut self.inner, clone);
                        Either::Right(Box::pin(async move {
                            wait(waiting, COALESCE_WAIT).await;
                            if let Some(hit) = lookup(&policy, &key, &headers, head) {
                                counts.count(Lookup::Hit);
                                return Ok(hit);
                            }
                            counts.count(Lookup::Miss);
                            let response = inner.call(req).await?;
                            Ok(marked(
                                store(&policy, key, &headers, response, None),
                                Lookup::Miss,
                            ))
                        }))
                    }
                }
            }
        }
    }
}

/// The primary key (RFC 9111 §4): method, authority and target. The
/// `Vary` headers are checked against the entry.
pub(super) fn key(http: &Request<RequestBody>) -> String {
    let authority = http
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| http.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let target = http.uri().path_and_query().map_or("/", |p| p.as_str());
    format!(
        "{} {} {}",
        http.method(),
        authority.to_ascii_lowercase(),
        target
    )
}

/// A fresh stored answer `headers` selects and may be given, as a 200 (or
/// whatever was stored) or a 304 when its conditionals say the client has
/// it.
pub(super) fn lookup(
    policy: &CachePolicy,
    key: &str,
    headers: &HeaderMap,
    head: bool,
) -> Option<ProxyResponse> {
    let entry = policy.store.get(key)?;
    let now = Instant::now();
    if !entry.fresh(now)
        || !entry.selected_by(headers)
        || (headers.contains_key(AUTHORIZATION) && !entry.shareable_with_authorization)
    {
        return None;
    }
    let age = HeaderValue::from(entry.age(now).as_secs());
    let mut response = match not_modified(&entry, headers) {
        Some(response) => response,
        None => {
            let body = if head {
                ProxyBody::empty()
            } else {
                ProxyBody::full(entry.body.clone())
            };
            let mut response = Response::new(body);
            *response.status_mut() = entry.status;
            *response.headers_mut() = entry.headers.clone();
            response
        }
    };
    response.headers_mut().insert(AGE, age);
    Some(marked(response, Lookup::Hit))
}

fn marked(mut response: ProxyResponse, lookup: Lookup) -> ProxyResponse {
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(lookup.label()));
    response
}

/// The answer, its body teed into the store as it streams when RFC 9111
/// and the policy allow; `guard` (a leader's) is held until then.
fn store(
    policy: &Arc<CachePolicy>,
    key: String,
    request: &HeaderMap,
    response: ProxyResponse,
    guard: Option<super::store::Guard>,
) -> ProxyResponse {
    let Some(lifetime) = super::freshness::storable(
        response.status(),
        request,
        response.headers(),
        policy.default_ttl,
    ) else {
        return response;
    };
    let too_long = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|length| length > policy.max_body_bytes);
    if too_long {
        return response;
    }
    let initial_age = response
        .headers()
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let directives = super::freshness::Directives::of(response.headers());
    let mut headers = response.headers().clone();
    for hop in HOP_BY_HOP {
        headers.remove(hop);
    }
    let entry = Entry {
        status: response.status(),
        vary: super::store::vary_of(&headers, request),
        headers,
        body: bytes::Bytes::new(),
        stored_at: Instant::now(),
        initial_age,
        lifetime,
        shareable_with_authorization: super::freshness::shareable_with_authorization(&directives),
    };
    let (parts, body) = response.into_parts();
    let body = teed(body, policy.clone(), key, entry, guard);
    Response::from_parts(parts, body)
}

/// Headers that describe one connection, not the answer (RFC 9110 §7.6.1),
/// and the cache's own.
const HOP_BY_HOP: [HeaderName; 6] = [
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    X_CACHE,
];
