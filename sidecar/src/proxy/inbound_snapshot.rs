//! Inbound: loads the routing table once per request, at the top of the
//! stack, and hands it down in the request's context. Every layer below
//! that judges the request (opaque TCP tunnels, JWT, intentions, rate
//! limits, the app's protocol) reads the service's [`InboundPolicy`] from
//! that one snapshot, so a policy swapped in meanwhile applies to the
//! next request whole, never in part. One atomic load and one reference
//! count per request; no lock.

use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower::{Layer, Service};

use crate::table::request::{ProxyRequest, RequestCtx};
use crate::table::{InboundPolicy, RoutingTable};

#[derive(Clone)]
pub struct InboundSnapshotLayer {
    table: Arc<ArcSwap<RoutingTable>>,
}

impl InboundSnapshotLayer {
    pub fn new(table: Arc<ArcSwap<RoutingTable>>) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for InboundSnapshotLayer {
    type Service = InboundSnapshot<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InboundSnapshot {
            table: self.table.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct InboundSnapshot<S> {
    table: Arc<ArcSwap<RoutingTable>>,
    inner: S,
}

impl<S: Service<ProxyRequest>> Service<ProxyRequest> for InboundSnapshot<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        req.ctx.table = Some(self.table.load_full());
        self.inner.call(req)
    }
}

/// The policy of a request without a snapshot (a layer tested alone):
/// none, as before the first policy arrives.
static NO_POLICY: LazyLock<InboundPolicy> = LazyLock::new(InboundPolicy::default);

impl RequestCtx {
    /// The inbound policy this request is judged by: its snapshot's.
    pub fn inbound_policy(&self) -> &InboundPolicy {
        match &self.table {
            Some(table) => &table.inbound,
            None => &NO_POLICY,
        }
    }
}
