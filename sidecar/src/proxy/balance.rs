//! Picks an endpoint of the request's cluster: weighted round robin or
//! weighted least-request (power of two choices), over HEALTHY/UNKNOWN
//! endpoints only, skipping the ones outlier ejection took out (when all
//! are out, it uses them all: Envoy's panic mode). Counts the
//! request against the endpoint until it ends, and (with outlier detection
//! on) tells the endpoint's ejection state how it ended (a gRPC answer
//! without `grpc-status` in its head: when its trailers arrive; the
//! in-flight count still ends with the head). A retry
//! (`retry.rs`) avoids the endpoints its request already tried while
//! another one serves.
//!
//! What makes an outlier, and whether the cluster's share allows one more
//! out, is `crate::ejection`'s; this layer holds the cluster and endpoint
//! that decision needs. It stays here rather than becoming an ejection
//! layer over a target trait: it is the pick itself (`Cluster::pick`
//! skips ejected endpoints), and it is told how a request ended through
//! the breaker's `Observer`, which a feature other than the breaker may
//! not import.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use rand::Rng;
use tower::{Layer, Service};

use tokio::time::Instant;

use crate::breaker::Outcome;
use crate::breaker::outcome::{Observed, Observer};
use crate::ejection::Verdict;
use crate::error::{ErrorKind, ProxyError};
use crate::model::ProxyResponse;
use crate::table::request::InFlightGuard;
use crate::table::request::{Concrete, ProxyRequest, ToEndpoint};
use crate::table::{Cluster, Endpoint};

#[derive(Clone, Copy, Debug, Default)]
pub struct BalanceLayer;

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Balance { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Balance<S> {
    inner: S,
}

/// The request's endpoint, told how it ended.
pub struct EndpointOutcome {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
}

impl Observer for EndpointOutcome {
    fn finished(self, outcome: Outcome) {
        observe(&self.cluster, &self.endpoint, outcome);
    }

    /// Timeouts and cancellations say nothing about the endpoint.
    fn abandoned(self) {}

    fn needs_trailers(&self) -> bool {
        self.cluster
            .settings
            .outlier
            .as_ref()
            .is_some_and(|s| !s.counts_unreachable_only())
    }
}

/// Counts an outcome of `endpoint`; ejects it when it became an outlier
/// and the cluster's ejection share allows.
pub fn observe(cluster: &Cluster, endpoint: &Endpoint, outcome: Outcome) {
    let Some(settings) = &cluster.settings.outlier else {
        return;
    };
    if outcome == Outcome::ConnectFailure {
        cluster.shared.unreachable_seen.note(Instant::now());
    }
    let Verdict::Eject(reason) = endpoint.stats.outlier.observe(settings, outcome) else {
        return;
    };
    let ejected_now = |now: Instant| {
        cluster
            .serving
            .iter()
            .filter(|e| e.stats.outlier.is_ejected(|| now))
            .count()
    };
    match endpoint.stats.outlier.eject(
        settings,
        &cluster.shared.ejection_lock,
        ejected_now,
        cluster.serving.len(),
        Instant::now(),
    ) {
        Ok(time) => tracing::info!(
            cluster = %cluster.name,
            endpoint = %endpoint.addr,
            reason,
            ejected_for = ?time,
            times = endpoint.stats.outlier.times_ejected(),
            "outlier endpoint ejected"
        ),
        Err(why) => tracing::info!(
            cluster = %cluster.name,
            endpoint = %endpoint.addr,
            reason,
            not_ejected = why,
            "outlier endpoint kept"
        ),
    }
}

/// A pick for a retry: weighted random over the serving endpoints the
/// request has not tried yet; when it has tried them all, an ordinary pick.
pub fn pick_avoiding<'a>(
    cluster: &'a Cluster,
    excluded: &[Arc<Endpoint>],
) -> Option<&'a Arc<Endpoint>> {
    if excluded.is_empty() {
        return cluster.pick();
    }
    let fresh = |e: &&Arc<Endpoint>| !excluded.iter().any(|x| x.addr == e.addr);
    let weight = |e: &Arc<Endpoint>| u64::from(e.weight.max(1));
    let total: u64 = cluster.serving.iter().filter(fresh).map(weight).sum();
    if total == 0 {
        return cluster.pick();
    }
    let mut draw = rand::rng().random_range(0..total);
    for endpoint in cluster.serving.iter().filter(fresh) {
        if draw < weight(endpoint) {
            return Some(endpoint);
        }
        draw -= weight(endpoint);
    }
    cluster.pick()
}

impl<S, R> Service<ProxyRequest<Concrete<R>>> for Balance<S>
where
    S: Service<ProxyRequest<ToEndpoint<R>>, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future =
        Either<Ready<Result<ProxyResponse, ProxyError>>, Observed<S::Future, EndpointOutcome>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest<Concrete<R>>) -> Self::Future {
        let cluster = &req.target.cluster;
        let picked = match &req.ctx.attempt {
            Some(attempt) => pick_avoiding(cluster, &attempt.excluded),
            None => cluster.pick(),
        };
        let Some(endpoint) = picked else {
            let total = cluster.endpoints.len();
            return Either::Left(ready(Err(ProxyError::new(
                ErrorKind::NoHealthyEndpoint,
                format!(
                    "cluster {} has no healthy endpoint ({total} known, none HEALTHY or UNKNOWN and not ejected)",
                    cluster.name
                ),
            ))));
        };
        let endpoint = endpoint.clone();
        let observed = cluster.settings.outlier.is_some().then(|| EndpointOutcome {
            cluster: cluster.clone(),
            endpoint: endpoint.clone(),
        });
        if let Some(attempt) = &req.ctx.attempt {
            // A try is balanced once; a second set could only repeat it.
            let _ = attempt.picked.set(endpoint.clone());
        }
        let guard = InFlightGuard::enter(&endpoint);
        let req = req.map(|concrete| ToEndpoint {
            concrete,
            endpoint,
            guard,
        });
        Either::Right(Observed::new(self.inner.call(req), observed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ejection::OutlierSettings;
    use crate::table::cluster::{Health, test_endpoint};
    use crate::table::{ClusterSettings, LbPolicy};
    use std::sync::atomic::Ordering;

    fn cluster(lb: LbPolicy) -> Cluster {
        let settings = ClusterSettings {
            lb,
            outlier: Some(OutlierSettings::default()),
            ..ClusterSettings::default()
        };
        let endpoints = (1..=3)
            .map(|p| test_endpoint(p, 1, Health::Healthy))
            .collect();
        Cluster::new("users".into(), settings, endpoints, Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_endpoint_ejected_the_balancer_uses_them_all() {
        let settings = ClusterSettings {
            outlier: Some(OutlierSettings::unreachable_default()),
            ..ClusterSettings::default()
        };
        let endpoints = (1..=2)
            .map(|p| test_endpoint(p, 1, Health::Healthy))
            .collect();
        let c = Cluster::new("users".into(), settings, endpoints, Arc::default());
        observe(&c, &c.endpoints[0], Outcome::ConnectFailure);
        for _ in 0..50 {
            assert!(Arc::ptr_eq(c.pick().unwrap(), &c.endpoints[1]));
        }
        observe(&c, &c.endpoints[1], Outcome::ConnectFailure);
        assert!(
            c.endpoints
                .iter()
                .all(|e| e.stats.outlier.is_ejected(Instant::now))
        );
        let picked: Vec<_> = (0..200).map(|_| c.pick().unwrap().addr.clone()).collect();
        for endpoint in &c.endpoints {
            assert!(picked.contains(&endpoint.addr), "panic mode uses them all");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_get_no_traffic_until_they_return() {
        for lb in [LbPolicy::RoundRobin, LbPolicy::LeastRequest] {
            let c = cluster(lb);
            let out = &c.endpoints[1];
            let five_503s = Outcome::Response {
                status: 503,
                grpc: None,
            };
            for _ in 0..5 {
                observe(&c, out, five_503s);
            }
            assert_eq!(out.stats.outlier.ejections_total.load(Ordering::Relaxed), 1);
            for _ in 0..100 {
                assert!(!Arc::ptr_eq(c.pick().unwrap(), out), "{lb:?}");
            }
            // A second failing endpoint is kept: 2 of 3 is over 50 %.
            for _ in 0..5 {
                observe(&c, &c.endpoints[0], five_503s);
            }
            assert_eq!(
                c.endpoints[0]
                    .stats
                    .outlier
                    .ejections_total
                    .load(Ordering::Relaxed),
                0
            );
            tokio::time::advance(OutlierSettings::default().base_ejection_time).await;
            assert!(
                (0..100).any(|_| Arc::ptr_eq(c.pick().unwrap(), out)),
                "{lb:?}"
            );
        }
    }
}
