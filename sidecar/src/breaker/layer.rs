//! The cluster's circuit breaker on the request path: while it is open (or
//! half-open with every probe taken) a request fails fast with 503
//! `circuit-open` and never reaches the balancer; otherwise it goes on and
//! its outcome is recorded when it ends: when its response head arrives, or
//! for a gRPC answer without `grpc-status` in its head when its trailers do
//! (a half-open probe holds its slot until then). A request dropped from above
//! before it ends counts as a timeout when its deadline had passed (the
//! `timeout` layer drops it) and as nothing otherwise (the caller left).
//! A cluster without a breaker costs one branch.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::Outcome;
use super::circuit::{Admitted, BreakerState, State};
use super::outcome::{Observed, Observer};
use super::settings::BreakerSettings;
use crate::error::{ErrorKind, ProxyError};
use crate::model::{Exchange, ProxyResponse};

/// What the breaker's layer reads of a request. Implemented by the proxy's
/// request (`crate::table::request`).
pub trait BreakerTarget: Exchange {
    /// Where the request goes (a cluster), with its breaker.
    type Destination: BreakerDestination;

    /// The request's destination.
    fn breaker_destination(&self) -> &Arc<Self::Destination>;
    /// How long the request may wait for its response head: dropped at
    /// that deadline, it counts as a timeout.
    fn response_timeout(&self) -> Option<Duration>;
}

/// A destination with a circuit breaker.
pub trait BreakerDestination: Send + Sync + 'static {
    /// The destination's name, for logs and errors.
    fn name(&self) -> &str;
    /// Its breaker's settings; `None`: no breaker.
    fn breaker_settings(&self) -> Option<&BreakerSettings>;
    /// Its breaker's state, shared by its requests across config updates.
    fn breaker_state(&self) -> &BreakerState;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BreakerLayer;

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Breaker { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
}

/// What the breaker needs to record a request's outcome.
pub struct Watch<D> {
    cluster: Arc<D>,
    admitted: Admitted,
    deadline: Option<Instant>,
}

impl<D: BreakerDestination> Watch<D> {
    fn record(self, outcome: Option<Outcome>, now: Instant) {
        if let Some(settings) = self.cluster.breaker_settings() {
            self.cluster.breaker_state().record(
                settings,
                self.cluster.name(),
                self.admitted,
                outcome,
                now,
            );
        }
    }
}

impl<D: BreakerDestination> Observer for Watch<D> {
    fn finished(self, outcome: Outcome) {
        self.record(Some(outcome), Instant::now());
    }

    fn abandoned(self) {
        let now = Instant::now();
        // Dropped at its deadline: the `timeout` layer gave up on it.
        let timed_out = self
            .deadline
            .is_some_and(|d| now + Duration::from_millis(1) >= d);
        self.record(timed_out.then_some(Outcome::Timeout), now);
    }
}

impl<S, R> Service<R> for Breaker<S>
where
    R: BreakerTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<
        Ready<Result<ProxyResponse, ProxyError>>,
        Observed<S::Future, Watch<R::Destination>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let cluster = req.breaker_destination();
        let Some(settings) = cluster.breaker_settings() else {
            return Either::Right(Observed::new(self.inner.call(req), None));
        };
        let now = Instant::now();
        match cluster.breaker_state().admit(settings, cluster.name(), now) {
            Ok(admitted) => {
                let watch = Watch {
                    cluster: cluster.clone(),
                    admitted,
                    deadline: req.response_timeout().map(|t| now + t),
                };
                Either::Right(Observed::new(self.inner.call(req), Some(watch)))
            }
            Err(rejected) => {
                let reason = match rejected.state {
                    State::HalfOpen => format!(
                        "the circuit breaker of {} is half-open and its {} probe(s) are in flight",
                        cluster.name(),
                        settings.half_open_probes.max(1)
                    ),
                    _ => format!(
                        "the circuit breaker of {} is open; next probe in {:?}",
                        cluster.name(),
                        rejected.retry_in
                    ),
                };
                Either::Left(ready(Err(ProxyError::new(ErrorKind::CircuitOpen, reason))))
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;

    use bytes::Bytes;
    use http::{HeaderValue, StatusCode, header};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::body::ProxyBody;
    use crate::breaker::BreakerSettings;

    use crate::table::request::{Concrete, ProxyRequest, RouteRef, for_tests};
    use crate::table::{Cluster, ClusterSettings};

    fn cluster() -> Arc<Cluster> {
        let settings = ClusterSettings {
            breaker: Some(BreakerSettings {
                consecutive_failures: 1,
                open_interval: Duration::from_secs(1),
                half_open_probes: 1,
                ..BreakerSettings::default()
            }),
            ..ClusterSettings::default()
        };
        Arc::new(Cluster::new(
            "echo".into(),
            settings,
            Vec::new(),
            Arc::default(),
        ))
    }

    fn request(cluster: &Arc<Cluster>) -> Tried {
        for_tests::concrete(cluster, for_tests::empty_http())
    }

    type Tried = ProxyRequest<Concrete<RouteRef>>;

    /// An upstream that answers every call with a gRPC head (no
    /// `grpc-status`) and one message, then ends without trailers.
    fn grpc_upstream() -> impl Service<
        Tried,
        Response = ProxyResponse,
        Error = ProxyError,
        Future = Ready<Result<ProxyResponse, ProxyError>>,
    > + Clone {
        tower::service_fn(|_: Tried| {
            let mut response =
                http::Response::new(ProxyBody::full(Bytes::from_static(b"\0\0\0\0\0")));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            ready(Ok(response))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_probe_holds_its_slot_until_its_body_ends() {
        let cluster = cluster();
        let breaker = &cluster.shared.breaker;
        let service = BreakerLayer.layer(grpc_upstream());
        // A gRPC answer's head counts for nothing; its end without trailers
        // is a failure, and opens the breaker (1 failure).
        let answer = service.clone().oneshot(request(&cluster)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(breaker.state(), State::Closed, "nothing known at the head");
        answer.into_body().collect().await.unwrap();
        assert_eq!(breaker.state(), State::Open);

        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = service.clone().oneshot(request(&cluster)).await.unwrap();
        assert_eq!(breaker.state(), State::HalfOpen);
        let refused = service.clone().oneshot(request(&cluster)).await;
        assert!(
            matches!(&refused, Err(e) if e.kind == ErrorKind::CircuitOpen),
            "the probe's slot is taken while its outcome is unknown"
        );
        // The caller goes away: neutral, the slot is free again.
        drop(probe);
        assert_eq!(breaker.state(), State::HalfOpen);
        let probe = service.clone().oneshot(request(&cluster)).await.unwrap();
        probe.into_body().collect().await.unwrap();
        assert_eq!(breaker.state(), State::Open, "a failed probe reopens");
    }
}
