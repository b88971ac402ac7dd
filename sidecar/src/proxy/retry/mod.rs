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
use crate::body::{BufferedBody, PrefixedBody, RequestBody};
use crate::breaker::thresholds::OVERFLOW_HEADER;
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
    // The slot of the retry in flight under `circuit_breakers.max_retries`,
    // held until the next try ends.
    let mut _retry_slot = None;
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
        // This request's previous retry is over: its slot is free first.
        _retry_slot = None;
        match cluster.try_retry() {
            Ok(slot) => _retry_slot = Some(slot),
            Err(_) => {
                // As Envoy does: the try's own answer, not retried, and
                // says why (counted in `/clusters` `retry_overflows_total`).
                tracing::debug!(cluster = %cluster.name, attempt, "max_retries reached; not retrying");
                return with_attempts(outcome, attempt)
                    .map(overflowed)
                    .map_err(|error| {
                        error.with_header(OVERFLOW_HEADER, HeaderValue::from_static("retries"))
                    });
            }
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

/// Marks an answer that was not retried because `max_retries` retries
/// were already in flight.
fn overflowed(mut response: ProxyResponse) -> ProxyResponse {
    response
        .headers_mut()
        .insert(OVERFLOW_HEADER, HeaderValue::from_static("retries"));
    response
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
    let mut body = match body {
        RequestBody::Streaming(body) => body,
        // Already in memory: as replayable as it gets.
        RequestBody::Buffered(body) => return Ok(Buffered::Whole(body)),
        prefixed @ RequestBody::Prefixed(_) => return Ok(Buffered::TooLarge(prefixed)),
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
                trailers = frame.into_trailers().ok().map(Box::new);
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
            let rest = PrefixedBody { head, rest: body };
            return Ok(Buffered::TooLarge(RequestBody::Prefixed(Box::new(rest))));
        }
    }
    let data = joined.map(BytesMut::freeze).or(first);
    Ok(Buffered::Whole(BufferedBody { data, trailers }))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    use http::StatusCode;
    use tower::ServiceExt as _;

    use super::*;
    use crate::body::ProxyBody;
    use crate::proxy::Direction;
    use crate::proxy::balance::BalanceLayer;
    use crate::table::cluster::tests::endpoint;
    use crate::table::cluster::{ClusterSettings, EndpointAddr, Health};
    use weft_proto::config::v1 as pb;

    fn cluster(ports: &[u16], policy: pb::RetryPolicy) -> Arc<Cluster> {
        let settings = ClusterSettings {
            retry: Some(Arc::new(policy::compile(&policy, "retry_policy").unwrap())),
            ..ClusterSettings::default()
        };
        let endpoints = ports
            .iter()
            .map(|p| endpoint(*p, 1, Health::Healthy))
            .collect();
        Arc::new(Cluster::new(
            "users".into(),
            settings,
            endpoints,
            Arc::default(),
        ))
    }

    fn gateway_errors(max_attempts: u32) -> pb::RetryPolicy {
        pb::RetryPolicy {
            max_attempts,
            on_gateway_error: true,
            budget_ratio: 0.2,
            budget_min_retries_per_second: 10,
            backoff_base: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000_000,
            }),
            ..Default::default()
        }
    }

    fn request(cluster: &Arc<Cluster>, method: http::Method) -> ProxyRequest {
        let mut ctx = RequestCtx::new(
            Direction::Outbound,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            HeaderValue::from_static("127.0.0.1"),
        );
        ctx.cluster = Some(cluster.clone());
        let mut http = Request::new(RequestBody::Buffered(BufferedBody::default()));
        *http.method_mut() = method;
        ProxyRequest { http, ctx }
    }

    /// An upstream where the endpoints on `failing` ports answer 503 (after
    /// `delay`), the others 200; it records the port of every try.
    fn upstream(
        failing: &'static [u16],
        delay: Duration,
        tries: Arc<Mutex<Vec<u16>>>,
    ) -> impl Service<
        ProxyRequest,
        Response = ProxyResponse,
        Error = ProxyError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        let upstream = tower::service_fn(move |req: ProxyRequest| {
            let tries = tries.clone();
            async move {
                let port = match req.ctx.endpoint.as_ref().map(|e| &e.addr) {
                    Some(EndpointAddr::Ip(addr)) => addr.port(),
                    _ => 0,
                };
                tries.lock().unwrap().push(port);
                tokio::time::sleep(delay).await;
                let mut response = http::Response::new(ProxyBody::empty());
                if failing.contains(&port) {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, ProxyError>(response)
            }
        });
        BalanceLayer.layer(upstream)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_try_is_retried_on_another_endpoint_and_counted() {
        let cluster = cluster(&[1, 2], gateway_errors(2));
        let tries = Arc::new(Mutex::new(Vec::new()));
        let service = RetryLayer.layer(upstream(&[1], Duration::ZERO, tries.clone()));
        for _ in 0..20 {
            tries.lock().unwrap().clear();
            let response = service
                .clone()
                .oneshot(request(&cluster, http::Method::GET))
                .await
                .unwrap();
            let seen = tries.lock().unwrap().clone();
            assert_eq!(response.status(), StatusCode::OK, "tries {seen:?}");
            assert_eq!(response.headers()[ATTEMPTS_HEADER], seen.len().to_string());
            assert_eq!(seen.last(), Some(&2), "{seen:?}");
        }
        assert!(cluster.shared.retry.retries.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_is_tried_once_unless_the_policy_allows_more() {
        let cluster = cluster(&[1], gateway_errors(3));
        let tries = Arc::new(Mutex::new(Vec::new()));
        let service = RetryLayer.layer(upstream(&[1], Duration::ZERO, tries.clone()));
        let response = service
            .clone()
            .oneshot(request(&cluster, http::Method::POST))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[ATTEMPTS_HEADER], "1");
        assert_eq!(tries.lock().unwrap().len(), 1);

        let response = service
            .oneshot(request(&cluster, http::Method::GET))
            .await
            .unwrap();
        assert_eq!(
            response.headers()[ATTEMPTS_HEADER],
            "3",
            "the only endpoint is tried again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_max_retries_in_flight_the_failure_is_answered_and_says_why() {
        let mut settings = cluster(&[1], gateway_errors(3)).settings.clone();
        settings.thresholds.max_retries = Some(1);
        let cluster = Arc::new(Cluster::new(
            "users".into(),
            settings,
            vec![endpoint(1, 1, Health::Healthy)],
            Arc::default(),
        ));
        // Another request's retry holds the only slot.
        let held = cluster.try_retry().unwrap();
        let tries = Arc::new(Mutex::new(Vec::new()));
        let service = RetryLayer.layer(upstream(&[1], Duration::ZERO, tries.clone()));
        let response = service
            .clone()
            .oneshot(request(&cluster, http::Method::GET))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[ATTEMPTS_HEADER], "1");
        assert_eq!(response.headers()["x-weft-overflow"], "retries");
        assert_eq!(cluster.shared.retries.overflows.load(Ordering::Relaxed), 1);

        // The slot freed, retries resume.
        drop(held);
        let response = service
            .oneshot(request(&cluster, http::Method::GET))
            .await
            .unwrap();
        assert_eq!(response.headers()[ATTEMPTS_HEADER], "3");
        assert!(response.headers().get("x-weft-overflow").is_none());
        assert_eq!(cluster.shared.retries.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_answers_the_failure_at_once() {
        let cluster = cluster(
            &[1],
            pb::RetryPolicy {
                budget_ratio: 0.0,
                budget_min_retries_per_second: 0,
                ..gateway_errors(3)
            },
        );
        let tries = Arc::new(Mutex::new(Vec::new()));
        let service = RetryLayer.layer(upstream(&[1], Duration::ZERO, tries.clone()));
        let response = service
            .oneshot(request(&cluster, http::Method::GET))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[ATTEMPTS_HEADER], "1");
        let state = &cluster.shared.retry;
        assert_eq!(state.budget_exhausted.load(Ordering::Relaxed), 1);
        assert_eq!(state.retries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn each_try_gets_the_per_try_timeout_and_the_last_miss_is_a_504() {
        let cluster = cluster(
            &[1, 2],
            pb::RetryPolicy {
                per_try_timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
                backoff_max: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                ..gateway_errors(2)
            },
        );
        let tries = Arc::new(Mutex::new(Vec::new()));
        let service = RetryLayer.layer(upstream(&[], Duration::from_secs(5), tries.clone()));
        let start = tokio::time::Instant::now();
        let Err(error) = service.oneshot(request(&cluster, http::Method::GET)).await else {
            panic!("a try that never answers must fail");
        };
        let took = start.elapsed();
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert_eq!(error.attempts, Some(2));
        assert!(
            took >= Duration::from_millis(200) && took <= Duration::from_millis(202),
            "{took:?}"
        );
        let response = error.to_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[ATTEMPTS_HEADER], "2");
        assert_eq!(
            cluster
                .shared
                .retry
                .per_try_timeouts
                .load(Ordering::Relaxed),
            2
        );
        let mut seen = tries.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2], "the retry went to the other endpoint");
    }
}
