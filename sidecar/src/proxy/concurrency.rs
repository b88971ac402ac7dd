//! Per-cluster limit on requests in flight (`max_requests`): past it the
//! request fails fast with 503 `overflow` instead of queueing, so a slow
//! upstream cannot pile up unbounded work in the sidecar.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::breaker::thresholds::Overflow;
use crate::error::{ErrorKind, ProxyError};
use crate::model::ProxyResponse;
use crate::table::request::{ClusterGuard, ProxyRequest};

#[derive(Clone, Copy, Debug, Default)]
pub struct ConcurrencyLimitLayer;

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
}

impl<S> Service<ProxyRequest> for ConcurrencyLimit<S>
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
                "concurrency limit without a cluster",
            ))));
        };
        let max = cluster.settings.max_requests;
        match ClusterGuard::admit(&cluster.shared, max) {
            Some(guard) => {
                req.ctx.cluster_guard = Some(guard);
                Either::Right(self.inner.call(req))
            }
            None => Either::Left(ready(Err(Overflow::Requests.error(
                &cluster.name,
                max,
                "connection_pool.max_requests",
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::cluster::ClusterShared;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn admits_up_to_max_and_frees_on_drop() {
        let shared = Arc::new(ClusterShared::default());
        let a = ClusterGuard::admit(&shared, 2).unwrap();
        let _b = ClusterGuard::admit(&shared, 2).unwrap();
        assert!(ClusterGuard::admit(&shared, 2).is_none());
        assert_eq!(shared.overflows.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(ClusterGuard::admit(&shared, 2).is_some());
    }
}
