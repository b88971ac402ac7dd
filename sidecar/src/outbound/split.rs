//! Chooses the route's cluster (a weighted draw for a split) and the
//! request's deadline (the route's timeout, else the cluster's).
//!
//! A cluster the table does not hold yet is discovered on demand
//! (`outbound::on_demand`): the request waits, bounded, until the xDS
//! client has it, then goes on. A held cluster costs one map lookup and
//! [`OnDemand::touch`] (no lock, no allocation).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use rand::Rng;
use tower::{Layer, Service};

use super::on_demand::OnDemand;
use crate::error::{ErrorKind, ProxyError};
use crate::model::{BoxFuture, ProxyResponse};
use crate::table::request::{Concrete, ProxyRequest, RouteRef, Routed};
use crate::table::{Cluster, Destination, RoutingTable};

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

/// The cluster the route sends this request to, if the table holds it;
/// else the name of the one it lacks (yet).
fn choose(routed: &Routed, on_demand: Option<&OnDemand>) -> Result<Arc<Cluster>, Arc<str>> {
    let name = match &routed.route.route().action.destination {
        Destination::Cluster(name) => name,
        Destination::Weighted(w) => w.pick(rand::rng().random_range(0..w.total)),
    };
    let Some(cluster) = routed.table.cluster(name) else {
        return Err(name.clone());
    };
    if let Some(on_demand) = on_demand {
        on_demand.touch(&cluster.shared);
    }
    Ok(cluster.clone())
}

/// The request sent to `cluster`, out of `table`, with its deadline: the
/// route's (zero: none), else the cluster's.
fn concrete(
    route: RouteRef,
    table: Arc<RoutingTable>,
    cluster: Arc<Cluster>,
) -> Concrete<RouteRef> {
    let timeout = match route.route().action.timeout {
        Some(d) if d == Duration::ZERO => None,
        Some(d) => Some(d),
        None => cluster.settings.request_timeout,
    };
    Concrete {
        table,
        route,
        cluster,
        timeout,
    }
}

impl<S> Service<ProxyRequest<Routed>> for Split<S>
where
    S: Service<ProxyRequest<Concrete<RouteRef>>, Response = ProxyResponse, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest<Routed>) -> Self::Future {
        let name = match choose(&req.target, self.on_demand.as_deref()) {
            Ok(cluster) => {
                let req = req.map(|r| concrete(r.route, r.table, cluster));
                return Either::Left(Either::Right(self.inner.call(req)));
            }
            Err(name) => name,
        };
        let Some(on_demand) = self.on_demand.clone() else {
            let e = ProxyError::new(
                ErrorKind::NoHealthyEndpoint,
                format!("cluster {name} has no endpoints yet (no assignment received)"),
            );
            super::route::refused(&req, Some(&req.target.route), &e);
            return Either::Left(Either::Left(ready(Err(e))));
        };
        // The slow path, once per destination (and per idle timeout): wait
        // for the cluster, then go on with it, from the table that has it.
        let mut inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            match on_demand.fetch(&name).await {
                Ok(table) => {
                    let Some(cluster) = table.cluster(&name).cloned() else {
                        let e = ProxyError::new(
                            ErrorKind::Internal,
                            format!("cluster {name} arrived and is gone"),
                        );
                        super::route::refused(&req, Some(&req.target.route), &e);
                        return Err(e);
                    };
                    on_demand.touch(&cluster.shared);
                    inner
                        .call(req.map(|r| concrete(r.route, table, cluster)))
                        .await
                }
                Err(e) => {
                    super::route::refused(&req, Some(&req.target.route), &e);
                    Err(e)
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use arc_swap::ArcSwap;
    use futures_util::future::ready;
    use http::{HeaderValue, Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::body::{BufferedBody, ProxyBody, RequestBody};
    use crate::model::Direction;
    use crate::table::request::RequestCtx;
    use crate::table::{
        HeaderMutation, Route, RouteAction, RouteMatch, RoutingTable, VirtualHost, WeightedClusters,
    };

    /// A table whose one route splits 50/50 between `a` and `b`, holding
    /// the clusters in `held`.
    fn table(held: &[&str]) -> RoutingTable {
        let vhost = Arc::new(VirtualHost {
            name: "svc/svc".into(),
            routes: vec![Route {
                name: "".into(),
                matcher: RouteMatch::any(),
                action: RouteAction {
                    destination: Destination::Weighted(
                        WeightedClusters::new([(Arc::from("a"), 1), (Arc::from("b"), 1)])
                            .expect("weights"),
                    ),
                    prefix_rewrite: None,
                    host_rewrite: None,
                    timeout: None,
                    retry: None,
                },
                request_headers: HeaderMutation::default(),
                response_headers: HeaderMutation::default(),
                cors: None,
                compression: None,
                cache: None,
                validation: None,
            }],
        });
        let mut t = RoutingTable::default();
        t.domains.insert("svc".into(), vhost);
        for name in held {
            let name: Arc<str> = (*name).into();
            t.clusters.insert(
                name.clone(),
                Arc::new(Cluster::new(
                    name,
                    Default::default(),
                    Vec::new(),
                    Arc::default(),
                )),
            );
        }
        t
    }

    /// A request as `route` leaves it: the table and its one route.
    fn request(table: &Arc<RoutingTable>) -> ProxyRequest<Routed> {
        let ctx = RequestCtx::new(
            Direction::Outbound,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            HeaderValue::from_static("127.0.0.1"),
        );
        let route = RouteRef {
            vhost: table.domains["svc"].clone(),
            index: 0,
        };
        ProxyRequest {
            http: Request::new(RequestBody::Buffered(BufferedBody::default())),
            ctx,
            target: Routed {
                table: table.clone(),
                route,
            },
        }
    }

    /// Answers with the chosen cluster's name in `x-cluster`.
    fn upstream() -> impl Service<
        ProxyRequest<Concrete<RouteRef>>,
        Response = ProxyResponse,
        Error = ProxyError,
        Future = Ready<Result<ProxyResponse, ProxyError>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|req: ProxyRequest<Concrete<RouteRef>>| {
            let name = req.target.cluster.name.to_string();
            let mut response = http::Response::new(ProxyBody::empty());
            response
                .headers_mut()
                .insert("x-cluster", HeaderValue::from_str(&name).expect("a name"));
            ready(Ok(response))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_to_clusters_not_held_waits_for_them_then_goes_on() {
        let shared = Arc::new(ArcSwap::from_pointee(table(&[])));
        let demand = Arc::new(OnDemand::new(shared.clone(), Duration::from_secs(1)));
        let service = SplitLayer::on_demand(demand.clone()).layer(upstream());
        let first = tokio::spawn(service.clone().oneshot(request(&shared.load_full())));
        tokio::task::yield_now().await;
        let asked = demand.take_new();
        assert_eq!(asked.len(), 1, "one of the split's clusters: {asked:?}");
        // The xDS client brings both in (one round trip later).
        tokio::time::advance(Duration::from_millis(30)).await;
        let arrived = Arc::new(table(&["a", "b"]));
        shared.store(arrived.clone());
        demand.resolve(&arrived);
        let answer = first.await.unwrap().expect("answered once it arrived");
        assert_eq!(answer.headers()["x-cluster"], asked[0].as_str());

        // Held now: straight through, with its last use stamped.
        demand.set_now(7);
        let mut chosen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let answer = service
                .clone()
                .oneshot(request(&arrived))
                .await
                .expect("held clusters answer at once");
            let name = answer.headers()["x-cluster"].to_str().unwrap().to_owned();
            let used = arrived.clusters[name.as_str()]
                .shared
                .last_used
                .load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(used, 7, "{name}'s last use");
            chosen.insert(name);
        }
        assert_eq!(chosen.len(), 2, "the split goes on over both");
        assert!(
            demand.take_new().is_empty(),
            "no subscription for held ones"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cluster_that_never_arrives_fails_after_the_timeout_with_discovery_timeout() {
        let shared = Arc::new(ArcSwap::from_pointee(table(&[])));
        let demand = Arc::new(OnDemand::new(shared.clone(), Duration::from_secs(1)));
        let service = SplitLayer::on_demand(demand).layer(upstream());
        let started = tokio::time::Instant::now();
        let Err(err) = service.oneshot(request(&shared.load_full())).await else {
            panic!("answered although nothing arrived");
        };
        assert_eq!(err.kind, ErrorKind::DiscoveryTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
