//! Inbound: every request goes to the local app, a fixed one-endpoint
//! cluster built from `--app` (no routing table involved).

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::ProxyRequest;
use crate::table::Cluster;

#[derive(Clone)]
pub struct StaticTargetLayer {
    cluster: Arc<Cluster>,
}

impl StaticTargetLayer {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

impl<S> Layer<S> for StaticTargetLayer {
    type Service = StaticTarget<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StaticTarget {
            cluster: self.cluster.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct StaticTarget<S> {
    cluster: Arc<Cluster>,
    inner: S,
}

impl<S: Service<ProxyRequest>> Service<ProxyRequest> for StaticTarget<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        req.ctx.timeout = self.cluster.settings.request_timeout;
        req.ctx.cluster = Some(self.cluster.clone());
        self.inner.call(req)
    }
}
