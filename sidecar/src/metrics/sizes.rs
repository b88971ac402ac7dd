//! Where the body size meters (`crate::request_body::SizeMeter`, beside
//! each request and response body) record: the destination's histograms,
//! and with the access log on, the request's record too. The meter and the
//! side it counts are declared below the bodies; this module picks their
//! sink.

use std::sync::Arc;

use crate::access_log::Record;
use crate::request_body::BodySizeSink;
use crate::table::cluster::ClusterShared;

// The meter and the side, where the metrics layer names them.
pub use crate::request_body::{Side, SizeMeter};

/// Where a body's size goes: the destination's histogram, and with the
/// access log on, the request's record too (which holds the destination's
/// stats, so that one pointer does for both).
#[derive(Clone)]
pub enum Sink {
    Stats(Arc<ClusterShared>),
    Logged(Arc<Record>),
}

impl Sink {
    /// The destination's stats (`None`: a record of a request refused
    /// before it had one, which never gets a sink).
    pub fn stats(&self) -> Option<&Arc<ClusterShared>> {
        match self {
            Self::Stats(stats) => Some(stats),
            Self::Logged(record) => record.stats(),
        }
    }

    /// Records a body's whole size at once (a body known in full, or none).
    pub fn record(&self, side: Side, bytes: u64) {
        match self {
            Self::Stats(stats) => stats.record(side, bytes),
            Self::Logged(record) => record.record(side, bytes),
        }
    }
}

/// A meter holds the sink's own `Arc`, unsized in place: no allocation.
impl From<Sink> for Arc<dyn BodySizeSink> {
    fn from(sink: Sink) -> Self {
        match sink {
            Sink::Stats(stats) => stats,
            Sink::Logged(record) => record,
        }
    }
}
