//! Picks an endpoint of the request's cluster: weighted round robin or
//! weighted least-request (power of two choices), over HEALTHY/UNKNOWN
//! endpoints only. Counts the request against the endpoint until it ends.

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
        let Some(endpoint) = pick(cluster) else {
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
        req.ctx.endpoint_guard = Some(InFlightGuard::enter(&endpoint));
        req.ctx.endpoint = Some(endpoint);
        Either::Right(self.inner.call(req))
    }
}
