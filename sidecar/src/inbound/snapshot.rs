//! Inbound: loads the routing table once per request, at the top of the
//! stack, and hands it down in the request's context. Every layer below
//! that judges the request (opaque TCP tunnels, JWT, intentions, rate
//! limits, the app's protocol) reads the service's
//! [`InboundPolicy`](crate::table::InboundPolicy) from that one snapshot
//! (`Snapshot::inbound_policy`), so a policy swapped in meanwhile applies
//! to the next request whole, never in part. One atomic load and one
//! reference count per request; no lock.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower::{Layer, Service};

use crate::table::RoutingTable;
use crate::table::request::{ProxyRequest, Snapshot};

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

impl<S: Service<ProxyRequest<Snapshot>>> Service<ProxyRequest> for InboundSnapshot<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let table = self.table.load_full();
        self.inner.call(req.to(Snapshot { table }))
    }
}
