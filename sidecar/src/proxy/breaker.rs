//! The cluster's circuit breaker on the request path: while it is open (or
//! half-open with every probe taken) a request fails fast with 503
//! `circuit-open` and never reaches the balancer; otherwise it goes on and
//! its outcome is recorded when it ends. A request dropped from above
//! before it ends counts as a timeout when its deadline had passed (the
//! `timeout` layer drops it) and as nothing otherwise (the caller left).
//! A cluster without a breaker costs one branch.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{ProxyRequest, ProxyResponse};
use crate::breaker::Outcome;
use crate::breaker::circuit::{Admitted, State};
use crate::breaker::outcome::{Observed, Observer};
use crate::error::{ErrorKind, ProxyError};
use crate::table::Cluster;

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
pub struct Watch {
    cluster: Arc<Cluster>,
    admitted: Admitted,
    deadline: Option<Instant>,
}

impl Watch {
    fn record(self, outcome: Option<Outcome>, now: Instant) {
        if let Some(settings) = &self.cluster.settings.breaker {
            self.cluster.shared.breaker.record(
                settings,
                &self.cluster.name,
                self.admitted,
                outcome,
                now,
            );
        }
    }
}

impl Observer for Watch {
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

impl<S> Service<ProxyRequest> for Breaker<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Ready<Result<ProxyResponse, ProxyError>>, Observed<S::Future, Watch>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let Some((cluster, settings)) = req
            .ctx
            .cluster
            .as_ref()
            .and_then(|c| Some((c, c.settings.breaker.as_ref()?)))
        else {
            return Either::Right(Observed::new(self.inner.call(req), None));
        };
        let now = Instant::now();
        match cluster.shared.breaker.admit(settings, &cluster.name, now) {
            Ok(admitted) => {
                let watch = Watch {
                    cluster: cluster.clone(),
                    admitted,
                    deadline: req.ctx.timeout.map(|t| now + t),
                };
                Either::Right(Observed::new(self.inner.call(req), Some(watch)))
            }
            Err(rejected) => {
                let reason = match rejected.state {
                    State::HalfOpen => format!(
                        "the circuit breaker of {} is half-open and its {} probe(s) are in flight",
                        cluster.name,
                        settings.half_open_probes.max(1)
                    ),
                    _ => format!(
                        "the circuit breaker of {} is open; next probe in {:?}",
                        cluster.name, rejected.retry_in
                    ),
                };
                Either::Left(ready(Err(ProxyError::new(ErrorKind::CircuitOpen, reason))))
            }
        }
    }
}
