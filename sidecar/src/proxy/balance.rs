//! Picks an endpoint of the request's cluster: weighted round robin or
//! weighted least-request (power of two choices), over HEALTHY/UNKNOWN
//! endpoints only. Counts the request against the endpoint until it ends.
//! A retry (`retry.rs`) avoids the endpoints its request already tried
//! while another one serves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use rand::Rng;
use tower::{Layer, Service};

use super::{ProxyRequest, ProxyResponse};
use crate::error::{ErrorKind, ProxyError};
use crate::table::{Cluster, Endpoint, EndpointStats, LbPolicy};

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

/// One request in flight on an endpoint; dropping it ends the request.
pub struct InFlightGuard(Arc<EndpointStats>);

impl InFlightGuard {
    /// Counts one more request (or TCP connection) on `endpoint`.
    pub fn enter(endpoint: &Endpoint) -> Self {
        endpoint.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.stats.requests.fetch_add(1, Ordering::Relaxed);
        Self(endpoint.stats.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn pick(cluster: &Cluster) -> Option<&Arc<Endpoint>> {
    match cluster.settings.lb {
        LbPolicy::RoundRobin => cluster.pick_round_robin(),
        LbPolicy::LeastRequest => {
            let mut rng = rand::rng();
            cluster.pick_least_request(|n| rng.random_range(0..n))
        }
    }
}

/// A pick for a retry: weighted random over the serving endpoints the
/// request has not tried yet; when it has tried them all, an ordinary pick.
pub fn pick_avoiding<'a>(
    cluster: &'a Cluster,
    excluded: &[Arc<Endpoint>],
) -> Option<&'a Arc<Endpoint>> {
    if excluded.is_empty() {
        return pick(cluster);
    }
    let fresh = |e: &&Arc<Endpoint>| !excluded.iter().any(|x| x.addr == e.addr);
    let weight = |e: &Arc<Endpoint>| u64::from(e.weight.max(1));
    let total: u64 = cluster.serving.iter().filter(fresh).map(weight).sum();
    if total == 0 {
        return pick(cluster);
    }
    let mut draw = rand::rng().random_range(0..total);
    for endpoint in cluster.serving.iter().filter(fresh) {
        if draw < weight(endpoint) {
            return Some(endpoint);
        }
        draw -= weight(endpoint);
    }
    pick(cluster)
}

impl<S> Service<ProxyRequest> for Balance<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        let Some(cluster) = &req.ctx.cluster else {
            return Either::Left(ready(Err(ProxyError::new(
                ErrorKind::Internal,
                "balance without a cluster",
            ))));
        };
        let picked = match &req.ctx.attempt {
            Some(attempt) => pick_avoiding(cluster, &attempt.excluded),
            None => pick(cluster),
        };
        let Some(endpoint) = picked else {
            let total = cluster.endpoints.len();
            return Either::Left(ready(Err(ProxyError::new(
                ErrorKind::NoHealthyEndpoint,
                format!(
                    "cluster {} has no healthy endpoint ({total} known, none HEALTHY or UNKNOWN)",
                    cluster.name
                ),
            ))));
        };
        let endpoint = endpoint.clone();
        if let Some(attempt) = &req.ctx.attempt {
            attempt.picked.store(Some(endpoint.clone()));
        }
        req.ctx.endpoint_guard = Some(InFlightGuard::enter(&endpoint));
        req.ctx.endpoint = Some(endpoint);
        Either::Right(self.inner.call(req))
    }
}
