//! The retry layer, generic over the request it retries ([`RetryTarget`])
//! and the destination whose state and limits it obeys
//! ([`RetryDestination`]); see the module doc of `crate::retry`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::BodyExt as _;
use rand::Rng as _;
use tower::{Layer, Service};

use super::backoff;
use super::policy::RetryPolicy;
use super::state::RetryState;
use crate::body::{BufferedBody, PrefixedBody, RequestBody};
use crate::error::{ErrorKind, ProxyError};
use crate::model::{BoxFuture, Exchange, ProxyResponse};

/// How many tries a response took, on every response of a destination (or
/// route) with a retry policy.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static(crate::error::ATTEMPTS_HEADER);

/// What the retry layer reads of a request, and how it makes each try of
/// one. Implemented by the proxy's request (`crate::table::request`).
pub trait RetryTarget: Exchange + Sized {
    /// Where the request goes (a cluster): its retry state and limits.
    type Destination: RetryDestination;
    /// Where a try went (an endpoint), for the next tries to avoid.
    type Endpoint: Clone + Send + Sync + 'static;

    /// The request's destination.
    fn destination(&self) -> &Arc<Self::Destination>;
    /// The route's retry policy, which overrides the destination's.
    fn route_retry_policy(&self) -> Option<&Arc<RetryPolicy>>;
    /// Whether the request is an HTTP/1.1 Upgrade: its connection is
    /// taken over by its first answer, so it is never sent twice.
    fn is_upgrade(&self) -> bool;
    /// One try of this request: a copy of its head with `body`, and what
    /// the layers below need of its context, with `attempt` for `balance`
    /// to fill in; the per-try parts (endpoint, guards) start empty.
    fn next_try(&self, body: BufferedBody, attempt: Arc<Attempt<Self::Endpoint>>) -> Self;
}

/// What the retry layer reads of a request's destination, and the slots
/// it takes there.
pub trait RetryDestination: Send + Sync + 'static {
    /// One retry in flight under `circuit_breakers.max_retries`; dropping
    /// it frees its slot.
    type RetrySlot: Send + 'static;
    /// Says on an answer that it was not retried because `max_retries`
    /// retries were already in flight (value `retries`).
    const OVERFLOW_HEADER: HeaderName;

    /// The destination's name, for logs and errors.
    fn name(&self) -> &str;
    /// The destination's own retry policy.
    fn retry_policy(&self) -> Option<&Arc<RetryPolicy>>;
    /// The budget and counters, shared by the destination's requests.
    fn retry_state(&self) -> &RetryState;
    /// A slot for one more retry, or `None` (counted as an overflow) when
    /// `max_retries` retries are in flight.
    fn retry_slot(&self) -> Option<Self::RetrySlot>;
    /// Whether the destination ejects unreachable endpoints.
    fn ejects_unreachable(&self) -> bool;
    /// Whether an endpoint of the destination answered unreachable within
    /// `window`.
    fn unreachable_seen_within(&self, window: Duration) -> bool;
    /// How many endpoints serve now.
    fn serving_endpoints(&self) -> usize;
}

/// One try, as `balance` sees it: the endpoints earlier tries went to (to
/// avoid, where another serves) and a slot for the endpoint it picks. Made
/// by `retry` for each try of a request with a retry policy.
#[derive(Debug)]
pub struct Attempt<E> {
    pub excluded: Vec<E>,
    /// Set once, by `balance` (a `OnceLock`: cheaper than a swappable
    /// slot for a value written once and read once).
    pub picked: OnceLock<E>,
}

impl<E> Default for Attempt<E> {
    fn default() -> Self {
        Self {
            excluded: Vec::new(),
            picked: OnceLock::new(),
        }
    }
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

/// The policy in force for a request: its route's, else its destination's.
#[inline]
fn policy_of<R: RetryTarget>(req: &R) -> Option<(Arc<RetryPolicy>, Arc<R::Destination>)> {
    let cluster = req.destination();
    let policy = req.route_retry_policy().or(cluster.retry_policy())?;
    Some((policy.clone(), cluster.clone()))
}

impl<S, R> Service<R> for Retry<S>
where
    R: RetryTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, Retrying<S, R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let Some((policy, cluster)) = policy_of(&req) else {
            return match unreached_once(&mut req) {
                Some((policy, cluster, body)) => self.send_first_try(req, body, policy, cluster),
                None => Either::Left(self.inner.call(req)),
            };
        };
        cluster.retry_state().budget.deposit();
        let replayable_now = if policy.may_retry(req.http().method()) && !req.is_upgrade() {
            take_whole_body(req.http_mut())
        } else {
            None
        };
        let Some(body) = replayable_now else {
            // A body to read first, or a request sent once: the general
            // (boxed) path.
            let inner = self.inner.clone();
            return Either::Right(Retrying::Rest {
                future: Box::pin(run(inner, req, policy, cluster)),
            });
        };
        self.send_first_try(req, body, policy, cluster)
    }
}

impl<S> Retry<S> {
    /// Sends the first try of a request whose whole body is at hand.
    #[inline(always)]
    fn send_first_try<R>(
        &mut self,
        req: R,
        body: BufferedBody,
        policy: Arc<RetryPolicy>,
        cluster: Arc<R::Destination>,
    ) -> Either<S::Future, Retrying<S, R>>
    where
        R: RetryTarget,
        S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        // The common case (no body, or one already in memory): the first
        // try is polled right here, with no boxed future around it; what a
        // retry needs is kept aside.
        let per_try = policy
            .per_try_timeout
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        // The instance polled ready sends the first try (tower's rule) and
        // any retries (the layers below are always ready).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (first, mut replay) = first_try(inner, req, body, (policy, cluster));
        Either::Right(Retrying::FirstTry {
            try_: replay.inner.call(first),
            per_try,
            replay: Some(Box::new(replay)),
        })
    }
}

/// How long after an unreachable answer the built-in retry stays armed:
/// twice the longest default ejection (30 s), so that every probe of an
/// endpoint that stays dead is covered (each failed probe re-arms it).
pub const UNREACHED_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// The built-in retry of a request no app saw, when it applies (see the
/// module doc): its policy, destination and whole body. A request to a
/// healthy destination without a policy pays a few loads.
fn unreached_once<R: RetryTarget>(
    req: &mut R,
) -> Option<(Arc<RetryPolicy>, Arc<R::Destination>, BufferedBody)> {
    let cluster = req.destination();
    if !cluster.ejects_unreachable()
        || !cluster.unreachable_seen_within(UNREACHED_RETRY_WINDOW)
        || cluster.serving_endpoints() < 2
        || req.is_upgrade()
    {
        return None;
    }
    let cluster = cluster.clone();
    let body = take_whole_body(req.http_mut())?;
    Some((RetryPolicy::unreached_once(), cluster, body))
}

/// The body of a request that can be sent again as it is, taken out of it:
/// an empty body or one already in memory. `None` (body left in place) for
/// a body still to be read.
fn take_whole_body(http: &mut Request<RequestBody>) -> Option<BufferedBody> {
    let whole = match http.body() {
        RequestBody::Buffered(_) => true,
        RequestBody::Streaming(body) => hyper::body::Body::is_end_stream(body),
        RequestBody::Prefixed(_) | RequestBody::Transformed(_) => false,
    };
    if !whole {
        return None;
    }
    match std::mem::replace(
        http.body_mut(),
        RequestBody::Buffered(BufferedBody::default()),
    ) {
        RequestBody::Buffered(body) => Some(body),
        _ => Some(BufferedBody::default()),
    }
}

/// The first try of a request, and what retrying it needs: the request
/// itself (its body taken out) is kept as the model of every try. Inlined:
/// the request and the replay are returned by value, and a call would copy
/// both once more on every request.
#[inline(always)]
fn first_try<S, R: RetryTarget>(
    inner: S,
    original: R,
    body: BufferedBody,
    (policy, cluster): (Arc<RetryPolicy>, Arc<R::Destination>),
) -> (R, Replay<S, R>) {
    let (request, first) = attempt_of(&original, &body, Vec::new());
    let replay = Replay {
        inner,
        original,
        body,
        policy,
        cluster,
        first,
    };
    (request, replay)
}

/// What retrying a request needs besides its first try.
pub struct Replay<S, R: RetryTarget> {
    inner: S,
    /// The request as it came, without its body: each try copies it.
    original: R,
    body: BufferedBody,
    policy: Arc<RetryPolicy>,
    cluster: Arc<R::Destination>,
    /// Where the first try went.
    first: Arc<Attempt<R::Endpoint>>,
}

pin_project_lite::pin_project! {
    /// A request with a retry policy: its first try, polled in place; after
    /// a try the policy retries, the rest (backoff, more tries) as a boxed
    /// future (the rare path).
    #[project = RetryingProj]
    pub enum Retrying<S: Service<R>, R: RetryTarget> {
        FirstTry {
            #[pin]
            try_: S::Future,
            per_try: Option<Pin<Box<tokio::time::Sleep>>>,
            replay: Option<Box<Replay<S, R>>>,
        },
        Rest { future: BoxFuture },
    }
}

impl<S, R> Future for Retrying<S, R>
where
    R: RetryTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Output = Result<ProxyResponse, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (outcome, replay) = match self.as_mut().project() {
            RetryingProj::Rest { future } => return future.as_mut().poll(cx),
            RetryingProj::FirstTry {
                try_,
                per_try,
                replay,
            } => {
                let outcome = match try_.poll(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        let timed_out = per_try
                            .as_mut()
                            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                        if !timed_out {
                            return Poll::Pending;
                        }
                        let replay = replay.as_ref().expect("polled after completion");
                        Err(per_try_timed_out(&replay.policy, &*replay.cluster, 1))
                    }
                };
                (outcome, replay.take().expect("polled after completion"))
            }
        };
        match decide(&replay.policy, &*replay.cluster, 1, outcome) {
            Decision::Done(result) => Poll::Ready(result),
            Decision::Retry(slot) => {
                self.set(Retrying::Rest {
                    future: Box::pin(retry_after(*replay, slot)),
                });
                self.poll(cx)
            }
        }
    }
}

/// After try `attempt` ended in `outcome`: done (with its answer), or a
/// retry with its slot under `max_retries` taken and counted.
// Returned and matched at once, never stored: boxing the answer would cost
// an allocation on every request for nothing.
#[allow(clippy::large_enum_variant)]
enum Decision<Slot> {
    Done(Result<ProxyResponse, ProxyError>),
    Retry(Slot),
}

fn decide<D: RetryDestination>(
    policy: &RetryPolicy,
    cluster: &D,
    attempt: u32,
    outcome: Result<ProxyResponse, ProxyError>,
) -> Decision<D::RetrySlot> {
    let state = cluster.retry_state();
    if attempt >= policy.max_attempts || !policy.retries(&outcome) {
        return Decision::Done(answered(policy, outcome, attempt));
    }
    if !state.budget.try_withdraw(policy.budget) {
        state.budget_exhausted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(cluster = %cluster.name(), attempt, "retry budget exhausted; not retrying");
        return Decision::Done(answered(policy, outcome, attempt));
    }
    match cluster.retry_slot() {
        Some(slot) => {
            state.retries.fetch_add(1, Ordering::Relaxed);
            // The failed try's response (and its connection) go now, not
            // after the backoff.
            drop(outcome);
            Decision::Retry(slot)
        }
        None => {
            // As Envoy does: the try's own answer, not retried, and says
            // why (counted in `/clusters` `retry_overflows_total`).
            tracing::debug!(cluster = %cluster.name(), attempt, "max_retries reached; not retrying");
            Decision::Done(
                answered(policy, outcome, attempt)
                    .map(overflowed::<D>)
                    .map_err(|error| {
                        error.with_header(D::OVERFLOW_HEADER, HeaderValue::from_static("retries"))
                    }),
            )
        }
    }
}

/// The general path: reads the body into memory first when it has to (or
/// sends a request that may not be retried once), then tries as the
/// policy says.
async fn run<S, R>(
    mut inner: S,
    mut req: R,
    policy: Arc<RetryPolicy>,
    cluster: Arc<R::Destination>,
) -> Result<ProxyResponse, ProxyError>
where
    R: RetryTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    // An Upgrade's connection is taken over by its first answer: never twice.
    if !policy.may_retry(req.http().method()) || req.is_upgrade() {
        let outcome = try_once(&mut inner, req, &policy, &*cluster, 1).await;
        return with_attempts(outcome, 1);
    }
    let body = std::mem::replace(
        req.http_mut().body_mut(),
        RequestBody::Buffered(BufferedBody::default()),
    );
    let body = match buffer(body, policy.max_body_bytes).await? {
        Buffered::Whole(body) => body,
        Buffered::TooLarge(body) => {
            *req.http_mut().body_mut() = body;
            let outcome = try_once(&mut inner, req, &policy, &*cluster, 1).await;
            return with_attempts(outcome, 1);
        }
    };
    let (request, mut replay) = first_try(inner, req, body, (policy, cluster));
    let outcome = try_once(
        &mut replay.inner,
        request,
        &replay.policy,
        &*replay.cluster,
        1,
    )
    .await;
    match decide(&replay.policy, &*replay.cluster, 1, outcome) {
        Decision::Done(result) => result,
        Decision::Retry(slot) => retry_after(replay, slot).await,
    }
}

/// Retries after the first try failed and a retry slot was taken: backoff,
/// the next try (avoiding the endpoints tried before), and so on while the
/// policy, the budget and `max_retries` allow.
async fn retry_after<S, R>(
    mut replay: Replay<S, R>,
    slot: <R::Destination as RetryDestination>::RetrySlot,
) -> Result<ProxyResponse, ProxyError>
where
    R: RetryTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    let mut tried: Vec<_> = replay.first.picked.get().cloned().into_iter().collect();
    let (policy, cluster) = (replay.policy.clone(), replay.cluster.clone());
    let mut attempt = 1;
    // The slot of the retry in flight under `circuit_breakers.max_retries`,
    // held until the next try ends.
    let mut _retry_slot = slot;
    loop {
        let wait = backoff::delay(policy.backoff_base, policy.backoff_max, attempt, |n| {
            rand::rng().random_range(0..=n)
        });
        tokio::time::sleep(wait).await;
        attempt += 1;
        let (request, log) = attempt_of(&replay.original, &replay.body, tried.clone());
        let outcome = try_once(&mut replay.inner, request, &policy, &*cluster, attempt).await;
        if let Some(endpoint) = log.picked.get() {
            tried.push(endpoint.clone());
        }
        // This request's previous retry is over: its slot is free first.
        drop(_retry_slot);
        match decide(&policy, &*cluster, attempt, outcome) {
            Decision::Done(result) => return result,
            Decision::Retry(slot) => _retry_slot = slot,
        }
    }
}

/// One try under the per-try timeout, if the policy has one.
async fn try_once<S, R>(
    inner: &mut S,
    req: R,
    policy: &RetryPolicy,
    cluster: &impl RetryDestination,
    attempt: u32,
) -> Result<ProxyResponse, ProxyError>
where
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    let Some(limit) = policy.per_try_timeout else {
        return inner.call(req).await;
    };
    match tokio::time::timeout(limit, inner.call(req)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(per_try_timed_out(policy, cluster, attempt)),
    }
}

/// The error of try `attempt` cut short by the per-try timeout (counted).
fn per_try_timed_out(
    policy: &RetryPolicy,
    cluster: &impl RetryDestination,
    attempt: u32,
) -> ProxyError {
    cluster
        .retry_state()
        .per_try_timeouts
        .fetch_add(1, Ordering::Relaxed);
    let limit = policy.per_try_timeout.unwrap_or_default();
    ProxyError::new(
        ErrorKind::Timeout,
        format!(
            "no response from {} within the per-try timeout {limit:?} (try {attempt} of {})",
            cluster.name(),
            policy.max_attempts
        ),
    )
}

/// Marks an answer that was not retried because `max_retries` retries
/// were already in flight.
fn overflowed<D: RetryDestination>(mut response: ProxyResponse) -> ProxyResponse {
    response
        .headers_mut()
        .insert(D::OVERFLOW_HEADER, HeaderValue::from_static("retries"));
    response
}

/// A try's outcome as the request's answer, saying how many tries it took
/// (the built-in retry says so only when it retried).
fn answered(
    policy: &RetryPolicy,
    outcome: Result<ProxyResponse, ProxyError>,
    attempts: u32,
) -> Result<ProxyResponse, ProxyError> {
    if policy.builtin && attempts == 1 {
        return outcome;
    }
    with_attempts(outcome, attempts)
}

fn with_attempts(
    outcome: Result<ProxyResponse, ProxyError>,
    attempts: u32,
) -> Result<ProxyResponse, ProxyError> {
    match outcome {
        Ok(mut response) => {
            response
                .headers_mut()
                .insert(ATTEMPTS_HEADER, attempts_value(attempts));
            Ok(response)
        }
        Err(error) => Err(error.with_attempts(attempts)),
    }
}

/// `x-weft-attempts` values, made once: formatting a number on every
/// response costs more than the rest of the header's work.
fn attempts_value(attempts: u32) -> HeaderValue {
    const VALUES: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    match VALUES.get(attempts as usize) {
        Some(value) => HeaderValue::from_static(value),
        None => HeaderValue::from(attempts),
    }
}

/// Try number N of a request: made from the original with a copy of its
/// body, carrying the log `balance` fills in (avoiding `excluded`).
#[inline(always)]
fn attempt_of<R: RetryTarget>(
    original: &R,
    body: &BufferedBody,
    excluded: Vec<R::Endpoint>,
) -> (R, Arc<Attempt<R::Endpoint>>) {
    let log = Arc::new(Attempt {
        excluded,
        picked: OnceLock::new(),
    });
    let request = original.next_try(body.clone(), log.clone());
    (request, log)
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
        // Streams that cannot be read again: one try.
        prefixed @ (RequestBody::Prefixed(_) | RequestBody::Transformed(_)) => {
            return Ok(Buffered::TooLarge(prefixed));
        }
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

    use std::sync::Mutex;
    use std::time::Duration;

    use http::StatusCode;
    use tower::ServiceExt as _;

    use super::*;
    use crate::body::ProxyBody;

    use crate::proxy::balance::BalanceLayer;
    use crate::retry::policy;
    use crate::table::Cluster;
    use crate::table::cluster::tests::endpoint;
    use crate::table::cluster::{ClusterSettings, Health};
    use crate::table::request::{Concrete, ProxyRequest, RouteRef, ToEndpoint, for_tests};
    use crate::upstream::EndpointAddr;
    use weft_proto::config::v1 as pb;

    fn cluster(ports: &[u16], policy: pb::RetryPolicy) -> Arc<Cluster> {
        cluster_with(
            ports,
            ClusterSettings {
                retry: Some(Arc::new(policy::compile(&policy, "retry_policy").unwrap())),
                ..ClusterSettings::default()
            },
        )
    }

    /// `users` with healthy endpoints on these ports.
    fn cluster_with(ports: &[u16], settings: ClusterSettings) -> Arc<Cluster> {
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

    type Tried = ProxyRequest<Concrete<RouteRef>>;

    fn request(cluster: &Arc<Cluster>, method: http::Method) -> Tried {
        let mut http = for_tests::empty_http();
        *http.method_mut() = method;
        for_tests::concrete(cluster, http)
    }

    /// What the test upstreams below are, behind `balance`.
    trait Upstream:
        Service<Tried, Response = ProxyResponse, Error = ProxyError, Future: Send + 'static>
        + Clone
        + Send
        + 'static
    {
    }

    impl<S> Upstream for S where
        S: Service<Tried, Response = ProxyResponse, Error = ProxyError, Future: Send + 'static>
            + Clone
            + Send
            + 'static
    {
    }

    /// An upstream where the endpoints on `failing` ports answer 503 (after
    /// `delay`), the others 200; it records the port of every try.
    fn upstream(
        failing: &'static [u16],
        delay: Duration,
        tries: Arc<Mutex<Vec<u16>>>,
    ) -> impl Upstream {
        answering(delay, tries, move |port, response| {
            if failing.contains(&port) {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
        })
    }

    /// An upstream behind `balance` that records the port of every try and
    /// answers 200 after `delay`, as `answer` changes it for that port.
    fn answering(
        delay: Duration,
        tries: Arc<Mutex<Vec<u16>>>,
        answer: impl Fn(u16, &mut ProxyResponse) + Clone + Send + Sync + 'static,
    ) -> impl Upstream {
        let upstream = tower::service_fn(move |req: ProxyRequest<ToEndpoint<RouteRef>>| {
            let (tries, answer) = (tries.clone(), answer.clone());
            async move {
                let port = match &req.target.endpoint.addr {
                    EndpointAddr::Ip(addr) => addr.port(),
                    _ => 0,
                };
                tries.lock().unwrap().push(port);
                tokio::time::sleep(delay).await;
                let mut response = http::Response::new(ProxyBody::empty());
                answer(port, &mut response);
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

    /// A destination without a retry policy, with the default ejection.
    fn cluster_without_policy(ports: &[u16]) -> Arc<Cluster> {
        cluster_with(
            ports,
            ClusterSettings {
                outlier: Some(crate::ejection::OutlierSettings::unreachable_default()),
                ..ClusterSettings::default()
            },
        )
    }

    /// An upstream where port 1 is an instance whose app is dead (its
    /// sidecar answers 503 `x-weft-unreached`), port 2 one whose app
    /// answers 503 itself, the others 200; it records every try's port.
    fn dead_and_failing(tries: Arc<Mutex<Vec<u16>>>) -> impl Upstream {
        answering(Duration::ZERO, tries, |port, response| {
            if port == 1 || port == 2 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            if port == 1 {
                response.headers_mut().insert(
                    crate::error::UNREACHED_HEADER,
                    HeaderValue::from_static("app"),
                );
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_policy_a_request_no_app_saw_is_sent_once_more_whatever_its_method() {
        let tries = Arc::new(Mutex::new(Vec::new()));
        let service = RetryLayer.layer(dead_and_failing(tries.clone()));
        let cluster = cluster_without_policy(&[1, 3]);
        let post = || async {
            tries.lock().unwrap().clear();
            let response = service
                .clone()
                .oneshot(request(&cluster, http::Method::POST))
                .await
                .unwrap();
            (response, tries.lock().unwrap().clone())
        };
        // A destination that had no unreachable endpoint kept no copy: the
        // first unreached answer reaches its caller, and ejects.
        let mut first_failure = None;
        for _ in 0..50 {
            let (response, seen) = post().await;
            if seen[0] == 1 {
                first_failure = Some((response.status(), seen));
                break;
            }
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers().get(ATTEMPTS_HEADER), None);
        }
        assert_eq!(
            first_failure,
            Some((StatusCode::SERVICE_UNAVAILABLE, vec![1])),
            "the dead endpoint is tried once, its answer not retried"
        );
        // Armed now: when the ejection is over, the probe of the dead
        // endpoint is sent to the other one, and the caller never knows.
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut probes = 0;
        for _ in 0..20 {
            let (response, seen) = post().await;
            assert_eq!(response.status(), StatusCode::OK, "tries {seen:?}");
            // Said only when the built-in retry saved the request.
            let said = response.headers().get(ATTEMPTS_HEADER);
            if seen == [1, 3] {
                probes += 1;
                assert_eq!(said.unwrap(), "2");
            } else {
                assert_eq!((said, seen), (None, vec![3]));
            }
        }
        assert_eq!(probes, 1, "one probe, then ejected again");

        // An app's own 503 is its answer: not retried without a policy,
        // armed or not.
        let cluster = cluster_without_policy(&[2, 3]);
        let now = tokio::time::Instant::now();
        cluster.shared.unreachable_seen.note(now);
        let answers: Vec<_> = futures_util::future::join_all((0..20).map(|_| {
            service
                .clone()
                .oneshot(request(&cluster, http::Method::GET))
        }))
        .await;
        assert!(
            answers
                .iter()
                .any(|a| a.as_ref().unwrap().status() == StatusCode::SERVICE_UNAVAILABLE)
        );

        // With one endpoint there is nowhere else to go: sent once.
        tries.lock().unwrap().clear();
        let cluster = cluster_without_policy(&[1]);
        cluster.shared.unreachable_seen.note(now);
        let response = service
            .oneshot(request(&cluster, http::Method::GET))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(*tries.lock().unwrap(), [1]);
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
