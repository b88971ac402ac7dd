//! Retries: sends a request again when a try fails in a way the policy
//! names (a 5xx or gateway error, a connect failure, a reset, a listed
//! status or gRPC status, a per-try timeout), to another endpoint when the
//! destination has one, after a jittered exponential backoff, while the
//! destination's retry budget allows. The response says how many tries it
//! took in `x-weft-attempts`.
//!
//! Placement: below the overall `timeout` (which bounds every try and
//! backoff together) and above `balance` (so each try picks an endpoint,
//! skipping the ones already tried), `concurrency` and `forward`. The
//! per-try timeout is applied here, around each try.
//!
//! The policy is the route's (`RouteAction.retry_policy`) if it has one,
//! else the cluster's. A request of a destination without one passes
//! straight through: no buffering, no allocation, one branch. With a
//! policy, an idempotent request (or any, with `retry_non_idempotent`)
//! has its body read into memory before the first try, up to
//! `max_body_bytes`; a larger body streams through once, never retried.

mod backoff;
pub mod budget;
pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::BodyExt as _;
use rand::Rng as _;
use tower::{Layer, Service};

use super::{BoxFuture, ProxyRequest, ProxyResponse, RequestCtx};
use crate::body::{BufferedBody, RequestBody};
use crate::error::{ErrorKind, ProxyError};
use crate::table::{Cluster, Endpoint};

pub use budget::RetryBudget;
pub use policy::RetryPolicy;

/// How many tries a response took, on every response of a destination (or
/// route) with a retry policy.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static(crate::error::ATTEMPTS_HEADER);

/// Retry state of one cluster: the budget and the counters `/clusters`
/// shows. Lives in the cluster's shared state, so it survives config
/// updates (a policy change keeps the window's history).
#[derive(Debug, Default)]
pub struct RetryState {
    pub budget: RetryBudget,
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries the policy wanted but the budget refused.
    pub budget_exhausted: AtomicU64,
    /// Tries cut short by the per-try timeout.
    pub per_try_timeouts: AtomicU64,
}

/// One try, as `balance` sees it: the endpoints earlier tries went to (to
/// avoid, where another serves) and a slot for the endpoint it picks.
#[derive(Debug, Default)]
pub struct Attempt {
    pub excluded: Vec<Arc<Endpoint>>,
    pub picked: ArcSwapOption<Endpoint>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer;

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
}

/// The policy in force for a request: its route's, else its cluster's.
fn policy_of(ctx: &RequestCtx) -> Option<(Arc<RetryPolicy>, Arc<Cluster>)> {
    let cluster = ctx.cluster.as_ref()?;
    let policy = ctx
        .route
        .as_ref()
        .and_then(|r| r.route().action.retry.as_ref())
        .or(cluster.settings.retry.as_ref())?;
    Some((policy.clone(), cluster.clone()))
}

impl<S> Service<ProxyRequest> for Retry<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        match policy_of(&req.ctx) {
            None => Either::Left(self.inner.call(req)),
            Some((policy, cluster)) => {
                Either::Right(Box::pin(run(self.inner.clone(), req, policy, cluster)))
            }
        }
    }
}

async fn run<S>(
    mut inner: S,
    req: ProxyRequest,
    policy: Arc<RetryPolicy>,
    cluster: Arc<Cluster>,
) -> Result<ProxyResponse, ProxyError>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    let state = &cluster.shared.retry;
    state.budget.deposit();
    let ProxyRequest { http, ctx } = req;
    // An Upgrade's connection is taken over by its first answer: never twice.
    if !policy.may_retry(http.method()) || ctx.upgrade.is_some() {
        let outcome = try_once(&mut inner, ProxyRequest { http, ctx }, &policy, &cluster, 1).await;
        return with_attempts(outcome, 1);
    }
    let (parts, body) = http.into_parts();
    let body = match buffer(body, policy.max_body_bytes).await? {
        Buffered::Whole(body) => body,
        Buffered::TooLarge(body) => {
            let http = Request::from_parts(parts, body);
            let outcome =
                try_once(&mut inner, ProxyRequest { http, ctx }, &policy, &cluster, 1).await;
            return with_attempts(outcome, 1);
        }
    };
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut attempt = 1;
    loop {
        let log = Arc::new(Attempt {
            excluded: tried.clone(),
            picked: ArcSwapOption::empty(),
        });
        let mut attempt_ctx = ctx_for_attempt(&ctx);
        attempt_ctx.attempt = Some(log.clone());
        let http = request_for_attempt(&parts, body.clone());
        let outcome = try_once(
            &mut inner,
            ProxyRequest {
                http,
                ctx: attempt_ctx,
            },
            &policy,
            &cluster,
            attempt,
        )
        .await;
        if let Some(endpoint) = log.picked.load_full() {
            tried.push(endpoint);
        }
        if attempt >= policy.max_attempts || !policy.retries(&outcome) {
            return with_attempts(outcome, attempt);
        }
        if !state.budget.try_withdraw(policy.budget) {
            state.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %cluster.name, attempt, "retry budget exhausted; not retrying");
            return with_attempts(outcome, attempt);
        }
        state.retries.fetch_add(1, Ordering::Relaxed);
        // The failed try's response (and its connection) go now, not after
        // the backoff.
        drop(outcome);
        let wait = backoff::delay(policy.backoff_base, policy.backoff_max, attempt, |n| {
            rand::rng().random_range(0..=n)
        });
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// One try under the per-try timeout, if the policy has one.
async fn try_once<S>(
    inner: &mut S,
    req: ProxyRequest,
    policy: &RetryPolicy,
    cluster: &Cluster,
    attempt: u32,
) -> Result<ProxyResponse, ProxyError>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    let Some(limit) = policy.per_try_timeout else {
        return inner.call(req).await;
    };
    match tokio::time::timeout(limit, inner.call(req)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            cluster
                .shared
                .retry
                .per_try_timeouts
                .fetch_add(1, Ordering::Relaxed);
            Err(ProxyError::new(
                ErrorKind::Timeout,
                format!(
                    "no response from {} within the per-try timeout {limit:?} (try {attempt} of {})",
                    cluster.name, policy.max_attempts
                ),
            ))
        }
    }
}

fn with_attempts(
    outcome: Result<ProxyResponse, ProxyError>,
    attempts: u32,
) -> Result<ProxyResponse, ProxyError> {
    match outcome {
        Ok(mut response) => {
            response
                .headers_mut()
                .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
            Ok(response)
        }
        Err(error) => Err(error.with_attempts(attempts)),
    }
}

/// What a try needs of the request's context; the per-try parts (endpoint,
/// guards) start empty.
fn ctx_for_attempt(ctx: &RequestCtx) -> RequestCtx {
    let mut attempt = RequestCtx::new(ctx.direction, ctx.client_addr, ctx.client_ip.clone());
    attempt.table = ctx.table.clone();
    attempt.route = ctx.route.clone();
    attempt.cluster = ctx.cluster.clone();
    attempt.timeout = ctx.timeout;
    attempt.peer_identity = ctx.peer_identity.clone();
    attempt
}

fn request_for_attempt(parts: &http::request::Parts, body: BufferedBody) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::Buffered(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

enum Buffered {
    /// The whole body, to send with every try.
    Whole(BufferedBody),
    /// Over the limit: what was read, then the rest, for one try.
    TooLarge(RequestBody),
}

/// Reads the request body into memory, up to `limit` bytes.
async fn buffer(body: RequestBody, limit: usize) -> Result<Buffered, ProxyError> {
    let RequestBody::Streaming(mut body) = body else {
        return Ok(Buffered::TooLarge(body));
    };
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(Buffered::Whole(BufferedBody::default()));
    }
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Ok(Buffered::TooLarge(RequestBody::Streaming(body)));
    }
    // One data frame (the common case) is kept as it is, not copied.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::new(
                ErrorKind::BadRequest,
                "the request body ended with an error",
            )
            .with_cause(e)
        })?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        len += data.len();
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut buf = BytesMut::with_capacity(len.min(limit + 1));
                buf.extend_from_slice(&earlier);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
        if len > limit {
            let head = joined.map(BytesMut::freeze).or(first);
            return Ok(Buffered::TooLarge(RequestBody::Prefixed {
                head,
                rest: body,
            }));
        }
    }
    let data = joined.map(BytesMut::freeze).or(first);
    Ok(Buffered::Whole(BufferedBody { data, trailers }))
}
