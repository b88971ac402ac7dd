//! The `metrics` tower layer: the one place a request's start and answer
//! are observed. It counts each request and its time to the response head,
//! by method and status class (and route, outbound), in the stats of its
//! destination (outbound: the cluster `split` chose; inbound: the local
//! app), with the request's trace id as the latency bucket's exemplar; it
//! puts size meters on both bodies; and, when the access log is on, it
//! starts the request's [`Record`]. An error answer counts with the status
//! it becomes, and refusals also by cause: this sidecar's by their kind
//! (denied, jwt-expired, rate-limited, circuit-open, ...), and, outbound, a
//! peer sidecar's by the `x-weft-error` of its answer;
//! a request abandoned before its answer (the caller went away) is not
//! counted. Requests refused before a destination is known are counted by
//! [`super::unrouted`].
//!
//! The layer is generic over the request: it reads what it needs through
//! [`MetricsTarget`] (implemented by the table's request,
//! `table/request/metrics.rs`), which also makes the request's
//! [`MetricsSink`], so that choosing the destination's stats and starting
//! the access-log record happen where the destination is known.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use hyper::body::Body as _;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::requests::{CAUSES, cause_index, cause_of, method_index};
use super::sink::MetricsSink;
use crate::body::{ProxyBodyKind, RequestBody};
use crate::error::{ATTEMPTS_HEADER, ProxyError, peer_refusal_code};
use crate::model::{Answer, Exchange, ProxyResponse};
use crate::request_body::Side;
use crate::traceparent::TraceContext;

/// What the metrics layer needs of a request.
pub trait MetricsTarget: Exchange {
    type Sink: MetricsSink;

    /// Where the request counts: `fixed` (inbound: the local app's stats),
    /// else the stats of the destination `split` chose; with the access
    /// log on, through the request's new record, which the request keeps
    /// for the layers below. `None`: no destination, nothing to count in.
    fn metrics_sink(&mut self, fixed: Option<&Self::Sink>) -> Option<Self::Sink>;

    /// The name of the request's route, once routed.
    fn route_name(&self) -> Option<&str>;
}

/// Whose stats a request counts in.
#[derive(Clone)]
enum StatsOf<K> {
    /// The cluster in the request's context (outbound, after `split`).
    Destination,
    /// Always these (inbound: the local app's).
    Fixed(K),
}

/// Counts requests into sinks of type `K` (the request's
/// [`MetricsTarget::Sink`]).
#[derive(Clone)]
pub struct RequestMetricsLayer<K> {
    of: StatsOf<K>,
}

impl<K> RequestMetricsLayer<K> {
    /// Outbound: counts in the destination cluster's stats.
    pub fn outbound() -> Self {
        Self {
            of: StatsOf::Destination,
        }
    }

    /// Inbound: counts in `app`'s stats, whatever the request becomes
    /// (denials included).
    pub fn inbound(app: K) -> Self {
        Self {
            of: StatsOf::Fixed(app),
        }
    }
}

impl<K> StatsOf<K> {
    /// Whether the answers from below come from across the network (a
    /// peer sidecar, or a plain endpoint), rather than from the local app.
    fn answers_from_peers(&self) -> bool {
        matches!(self, Self::Destination)
    }
}

impl<S, K: Clone> Layer<S> for RequestMetricsLayer<K> {
    type Service = RequestMetrics<S, K>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            of: self.of.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S, K> {
    of: StatsOf<K>,
    inner: S,
}

/// What the answer is counted against: the destination's stats (through
/// the access-log record when there is one) and, for a routed request,
/// its route's slot there. Small: every request's future holds one.
struct Observed<K> {
    sink: K,
    /// The trace id of a sampled request (0: none), as two words: an
    /// exemplar should lead to a recorded trace.
    trace: [u64; 2],
    route_slot: u8,
    method: u8,
    /// Outbound: an answer may be a peer sidecar's refusal.
    from_peers: bool,
}

/// `route_slot` of a request counted by no route.
const NO_ROUTE_SLOT: u8 = u8::MAX;

impl<S, R, K> Service<R> for RequestMetrics<S, K>
where
    R: MetricsTarget<Sink = K>,
    K: MetricsSink,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Counted<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let fixed = match &self.of {
            StatsOf::Destination => None,
            StatsOf::Fixed(app) => Some(app),
        };
        let observed = req.metrics_sink(fixed).map(|sink| {
            let route_slot = sink
                .requests()
                .zip(req.route_name())
                .and_then(|(requests, name)| requests.routes.slot(name))
                .and_then(|slot| u8::try_from(slot).ok())
                .unwrap_or(NO_ROUTE_SLOT);
            let trace = TraceContext::of(req.http().headers())
                .filter(|t| t.sampled)
                .map_or(0, |t| t.trace_id);
            meter_request(&mut req, &sink);
            Observed {
                sink,
                trace: [(trace >> 64) as u64, trace as u64],
                route_slot,
                // METHODS has 10 entries.
                method: method_index(req.http().method()) as u8,
                from_peers: self.of.answers_from_peers(),
            }
        });
        Counted {
            inner: self.inner.call(req),
            observed,
            start: Instant::now(),
        }
    }
}

/// A body still to come gets a meter; an empty one counts at once.
fn meter_request(req: &mut impl Exchange, sink: &impl MetricsSink) {
    match req.http_mut().body_mut() {
        RequestBody::Streaming(body) if !body.is_end_stream() => {
            body.set_meter(sink.meter(Side::Request));
        }
        _ => sink.record(Side::Request, 0),
    }
}

/// The response body's meter; a body known in full counts at once.
fn meter_response(response: &mut ProxyResponse, sink: &impl MetricsSink) {
    let body = response.body_mut();
    let whole = match &body.kind {
        _ if body.is_end_stream() => Some(0),
        ProxyBodyKind::Full(Some(bytes)) => Some(bytes.len() as u64),
        _ => None,
    };
    match whole {
        Some(bytes) => sink.record(Side::Response, bytes),
        None => body.set_meter(sink.meter(Side::Response)),
    }
}

/// Seconds on a monotonic clock: exemplars are kept once per second.
fn second(now: Instant) -> u64 {
    static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    now.into_std().saturating_duration_since(*EPOCH).as_secs()
}

pin_project_lite::pin_project! {
    pub struct Counted<F, K> {
        #[pin]
        inner: F,
        observed: Option<Observed<K>>,
        start: Instant,
    }
}

impl<F, K> Future for Counted<F, K>
where
    F: Future<Output = Result<ProxyResponse, ProxyError>>,
    K: MetricsSink,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let Some(observed) = this.observed.take() {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(*this.start);
            let (status, cause) = match &mut result {
                // An answer from below: the app's, or an upstream's, which
                // may be a peer sidecar's refusal (outbound only).
                Ok(response) => {
                    meter_response(response, &observed.sink);
                    let cause = if observed.from_peers {
                        peer_refusal_code(response).map(|code| cause_index(code.as_bytes()))
                    } else {
                        None
                    };
                    (response.status(), cause)
                }
                // This sidecar's own refusal, by its kind.
                Err(error) => {
                    // The one-line body `error_response` makes of it.
                    let bytes = error.reason.len() as u64 + 1;
                    observed.sink.record(Side::Response, bytes);
                    (error.kind.status(), Some(cause_of(error.kind)))
                }
            };
            let Some(requests) = observed.sink.requests() else {
                return Poll::Ready(result);
            };
            let [hi, lo] = observed.trace;
            let trace = (u128::from(hi) << 64 | u128::from(lo), hi | lo != 0);
            let (trace, second) = match trace {
                (id, true) => (Some(id), second(now)),
                _ => (None, 0),
            };
            requests.record_traced(usize::from(observed.method), status, elapsed, trace, second);
            if observed.route_slot != NO_ROUTE_SLOT {
                requests
                    .routes
                    .record_slot(usize::from(observed.route_slot), status);
            }
            if let Some(cause) = cause {
                requests.record_refusal(cause, status);
            }
            observed.sink.answered(|| Answer {
                status: status.as_u16(),
                cause: cause.map(|c| CAUSES[c]),
                attempts: attempts(&result),
                response_head: elapsed,
            });
        }
        Poll::Ready(result)
    }
}

/// Tries made, for a request with a retry policy.
fn attempts(result: &Result<ProxyResponse, ProxyError>) -> Option<u32> {
    match result {
        Ok(response) => response
            .headers()
            .get(ATTEMPTS_HEADER)?
            .to_str()
            .ok()?
            .parse()
            .ok(),
        Err(error) => error.attempts,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{HeaderValue, Response, StatusCode};
    use tower::{Layer as _, Service as _};

    use super::*;
    use crate::body::ProxyBody;
    use crate::error::{AuthnErrorKind, ERROR_HEADER, ErrorKind};

    use crate::table::Cluster;
    use crate::table::request::metrics::ClusterSink as Sink;
    use crate::table::request::{ProxyRequest, Snapshot, for_tests};

    /// A response from below (the app's, or an upstream's) saying
    /// `x-weft-error: denied`.
    fn says_denied() -> ProxyResponse {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::FORBIDDEN;
        response
            .headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static("denied"));
        response
    }

    fn inbound_request() -> ProxyRequest<Snapshot> {
        for_tests::snapshot(Arc::default(), for_tests::empty_http())
    }

    fn refusals(cluster: &Cluster) -> Vec<(&'static str, u64)> {
        cluster.shared.requests.refusals().collect()
    }

    #[tokio::test]
    async fn own_refusals_count_by_kind_and_only_a_peers_header_counts_besides() {
        let cluster = Arc::new(Cluster::new(
            "users".into(),
            Default::default(),
            vec![],
            Arc::default(),
        ));
        fn answers<T>(
            answer: fn() -> Result<ProxyResponse, ProxyError>,
        ) -> impl Service<ProxyRequest<T>, Response = ProxyResponse, Error = ProxyError> {
            tower::service_fn(move |_req: ProxyRequest<T>| async move { answer() })
        }

        // Inbound, the app's answer is its own, whatever its headers say.
        let mut inbound = RequestMetricsLayer::inbound(Sink::Stats(cluster.shared.clone()))
            .layer(answers(|| Ok(says_denied())));
        inbound.call(inbound_request()).await.unwrap();
        assert_eq!(refusals(&cluster), vec![]);

        // This sidecar's own refusal counts by its kind and status.
        let mut refusing = RequestMetricsLayer::inbound(Sink::Stats(cluster.shared.clone())).layer(
            answers(|| {
                Err(ProxyError::new(
                    ErrorKind::Jwt(AuthnErrorKind::Expired),
                    "expired",
                ))
            }),
        );
        let _ = refusing.call(inbound_request()).await;
        assert_eq!(refusals(&cluster), vec![("jwt-expired", 1)]);
        assert_eq!(cluster.shared.requests.refusals_below_500(), 1);

        // Outbound, an upstream's answer may be a peer sidecar's refusal.
        let mut outbound = RequestMetricsLayer::outbound().layer(answers(|| Ok(says_denied())));
        outbound
            .call(for_tests::concrete(&cluster, for_tests::empty_http()))
            .await
            .unwrap();
        assert_eq!(refusals(&cluster), vec![("denied", 1), ("jwt-expired", 1)]);
    }
}
