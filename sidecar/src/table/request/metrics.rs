//! What the metrics layer reads of a [`ProxyRequest`]: the stats it counts
//! in (the local app's, or its destination's), and its route's name. With
//! the access log on, the request's record starts here, where the
//! destination is known, and stays in the context for the layers below.

use std::sync::Arc;

use super::{Concrete, ProxyRequest, RouteRef, Snapshot};
use crate::access_log::{self, Record};
use crate::metrics::layer::MetricsTarget;
use crate::metrics::requests::RequestStats;
use crate::metrics::sink::MetricsSink;
use crate::model::Answer;
use crate::request_body::{BodySizeSink, Side, SizeMeter};
use crate::table::cluster::ClusterShared;

/// Where a request counts: its destination's stats, and with the access
/// log on, its record too (which adds the bytes to the line and passes
/// them on to the same stats).
#[derive(Clone)]
pub enum ClusterSink {
    Stats(Arc<ClusterShared>),
    Logged(Arc<Record>, Arc<ClusterShared>),
}

impl ClusterSink {
    fn shared(&self) -> &Arc<ClusterShared> {
        match self {
            Self::Stats(stats) | Self::Logged(_, stats) => stats,
        }
    }
}

impl MetricsSink for ClusterSink {
    #[inline]
    fn requests(&self) -> Option<&RequestStats> {
        Some(&self.shared().requests)
    }

    #[inline]
    fn meter(&self, side: Side) -> SizeMeter {
        // The meter holds the sink's own `Arc`, unsized in place: no
        // allocation.
        match self {
            Self::Stats(stats) => SizeMeter::new(side, stats.clone() as Arc<dyn BodySizeSink>),
            Self::Logged(record, _) => {
                SizeMeter::new(side, record.clone() as Arc<dyn BodySizeSink>)
            }
        }
    }

    #[inline]
    fn record(&self, side: Side, bytes: u64) {
        match self {
            Self::Stats(stats) => stats.record(side, bytes),
            Self::Logged(record, _) => record.record(side, bytes),
        }
    }

    #[inline]
    fn answered(&self, answer: impl FnOnce() -> Answer) {
        if let Self::Logged(record, _) = self {
            record.answered(answer());
        }
    }
}

/// The request's sink: `stats`, and with the access log on, the
/// request's new record, which stays in its context for the layers below.
fn sink_of<T: Send + 'static>(
    req: &mut ProxyRequest<T>,
    stats: Arc<ClusterShared>,
    route: Option<Arc<str>>,
    destination: Option<Arc<str>>,
) -> ClusterSink {
    let Some(log) = access_log::installed() else {
        return ClusterSink::Stats(stats);
    };
    let sizes: Arc<dyn BodySizeSink> = stats.clone();
    let record = Arc::new(Record::new(log, req, route, destination, Some(sizes)));
    req.ctx.access_log = Some(record.clone());
    ClusterSink::Logged(record, stats)
}

/// Outbound: counted in the destination's stats, by route.
impl MetricsTarget for ProxyRequest<Concrete<RouteRef>> {
    type Sink = ClusterSink;

    #[inline]
    fn metrics_sink(&mut self, _: Option<&ClusterSink>) -> Option<ClusterSink> {
        let stats = self.target.cluster.shared.clone();
        let route = Some(self.target.route.route().name.clone());
        let destination = Some(self.target.cluster.name.clone());
        Some(sink_of(self, stats, route, destination))
    }

    #[inline]
    fn route_name(&self) -> Option<&str> {
        Some(&self.target.route.route().name)
    }
}

/// Inbound: counted in the local app's stats (`fixed`), whatever the
/// request becomes.
impl MetricsTarget for ProxyRequest<Snapshot> {
    type Sink = ClusterSink;

    #[inline]
    fn metrics_sink(&mut self, fixed: Option<&ClusterSink>) -> Option<ClusterSink> {
        let stats = fixed?.shared().clone();
        Some(sink_of(self, stats, None, None))
    }

    #[inline]
    fn route_name(&self) -> Option<&str> {
        None
    }
}
