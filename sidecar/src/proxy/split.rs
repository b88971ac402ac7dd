//! Chooses the route's cluster (a weighted draw for a split) and the
//! request's deadline (the route's timeout, else the cluster's).
//!
//! A cluster the table does not hold yet is discovered on demand
//! (`crate::xds::on_demand`): the request waits, bounded, until the xDS
//! client has it, then goes on. A held cluster costs one map lookup and
//! [`OnDemand::touch`] (no lock, no allocation).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use rand::Rng;
use tower::{Layer, Service};

use super::{BoxFuture, ProxyRequest, ProxyResponse};
use crate::error::{ErrorKind, ProxyError};
use crate::table::{Cluster, Destination};
use crate::xds::OnDemand;

#[derive(Clone, Debug, Default)]
pub struct SplitLayer {
    /// `None`: no on-demand discovery (a miss fails at once).
    on_demand: Option<Arc<OnDemand>>,
}

impl SplitLayer {
    /// Clusters the table lacks are fetched through `on_demand`.
    pub fn on_demand(on_demand: Arc<OnDemand>) -> Self {
        Self {
            on_demand: Some(on_demand),
        }
    }
}

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Split {
            inner,
            on_demand: self.on_demand.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Split<S> {
    inner: S,
    on_demand: Option<Arc<OnDemand>>,
}

/// What `choose` found.
enum Chosen {
    /// The cluster is in the request's table.
    Held,
    /// The table does not hold this cluster (yet).
    Missing(Arc<str>),
}

fn choose(req: &mut ProxyRequest, on_demand: Option<&OnDemand>) -> Result<Chosen, ProxyError> {
    let (Some(table), Some(route)) = (&req.ctx.table, &req.ctx.route) else {
        return Err(ProxyError::new(
            ErrorKind::Internal,
            "split without a route",
        ));
    };
    let name = match &route.route().action.destination {
        Destination::Cluster(name) => name,
        Destination::Weighted(w) => w.pick(rand::rng().random_range(0..w.total)),
    };
    let Some(cluster) = table.cluster(name) else {
        return Ok(Chosen::Missing(name.clone()));
    };
    if let Some(on_demand) = on_demand {
        on_demand.touch(&cluster.shared);
    }
    let cluster = cluster.clone();
    set_cluster(req, cluster);
    Ok(Chosen::Held)
}

fn set_cluster(req: &mut ProxyRequest, cluster: Arc<Cluster>) {
    let route_timeout = req
        .ctx
        .route
        .as_ref()
        .and_then(|r| r.route().action.timeout);
    req.ctx.timeout = match route_timeout {
        Some(d) if d == Duration::ZERO => None,
        Some(d) => Some(d),
        None => cluster.settings.request_timeout,
    };
    req.ctx.cluster = Some(cluster);
}

impl<S> Service<ProxyRequest> for Split<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        let refuse = |req: &ProxyRequest, e: ProxyError| {
            crate::metrics::unrouted::refused(req, &e);
            Either::Left(Either::Left(ready(Err(e))))
        };
        match choose(&mut req, self.on_demand.as_deref()) {
            Ok(Chosen::Held) => Either::Left(Either::Right(self.inner.call(req))),
            Ok(Chosen::Missing(name)) => {
                let Some(on_demand) = self.on_demand.clone() else {
                    let e = ProxyError::new(
                        ErrorKind::NoHealthyEndpoint,
                        format!("cluster {name} has no endpoints yet (no assignment received)"),
                    );
                    return refuse(&req, e);
                };
                // The slow path, once per destination (and per idle
                // timeout): wait for the cluster, then go on with it.
                let mut inner = self.inner.clone();
                Either::Right(Box::pin(async move {
                    match on_demand.fetch(&name).await {
                        Ok(table) => {
                            let Some(cluster) = table.cluster(&name).cloned() else {
                                let e = ProxyError::new(
                                    ErrorKind::Internal,
                                    format!("cluster {name} arrived and is gone"),
                                );
                                crate::metrics::unrouted::refused(&req, &e);
                                return Err(e);
                            };
                            on_demand.touch(&cluster.shared);
                            set_cluster(&mut req, cluster);
                            req.ctx.table = Some(table);
                            inner.call(req).await
                        }
                        Err(e) => {
                            crate::metrics::unrouted::refused(&req, &e);
                            Err(e)
                        }
                    }
                }))
            }
            Err(e) => refuse(&req, e),
        }
    }
}
