//! Chooses the route's cluster (a weighted draw for a split) and the
//! request's deadline (the route's timeout, else the cluster's).

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use rand::Rng;
use tower::{Layer, Service};

use super::{ProxyRequest, ProxyResponse};
use crate::error::{ErrorKind, ProxyError};
use crate::table::Destination;

#[derive(Clone, Copy, Debug, Default)]
pub struct SplitLayer;

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Split { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Split<S> {
    inner: S,
}

fn choose(req: &mut ProxyRequest) -> Result<(), ProxyError> {
    let (Some(table), Some(route)) = (&req.ctx.table, &req.ctx.route) else {
        return Err(ProxyError::new(
            ErrorKind::Internal,
            "split without a route",
        ));
    };
    let action = &route.route().action;
    let name = match &action.destination {
        Destination::Cluster(name) => name,
        Destination::Weighted(w) => w.pick(rand::rng().random_range(0..w.total)),
    };
    let Some(cluster) = table.cluster(name) else {
        return Err(ProxyError::new(
            ErrorKind::NoHealthyEndpoint,
            format!("cluster {name} has no endpoints yet (no assignment received)"),
        ));
    };
    req.ctx.timeout = match action.timeout {
        Some(d) if d == Duration::ZERO => None,
        Some(d) => Some(d),
        None => cluster.settings.request_timeout,
    };
    req.ctx.cluster = Some(cluster.clone());
    Ok(())
}

impl<S> Service<ProxyRequest> for Split<S>
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
        match choose(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => {
                crate::metrics::unrouted::refused(&req, &e);
                Either::Left(ready(Err(e)))
            }
        }
    }
}
