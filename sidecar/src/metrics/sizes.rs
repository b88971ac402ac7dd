//! Body sizes as they stream: a [`SizeMeter`] rides beside a request or
//! response body (see `crate::body`), adds each data frame's length to a
//! plain local count, and records the total once, when the body is dropped
//! (ended, or abandoned part-way): one histogram update per body, no
//! buffering, no atomic per frame.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Frame;

use crate::access_log::Record;
use crate::table::cluster::ClusterShared;

/// Which body a meter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Received from the caller.
    Request,
    /// Sent back to the caller.
    Response,
}

pub struct SizeMeter {
    bytes: u64,
    side: Side,
    stats: Arc<ClusterShared>,
    /// The request's access-log record, when access logging is on.
    log: Option<Arc<Record>>,
}

impl SizeMeter {
    pub fn new(side: Side, stats: Arc<ClusterShared>, log: Option<Arc<Record>>) -> Self {
        Self {
            bytes: 0,
            side,
            stats,
            log,
        }
    }

    #[inline]
    pub fn count(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
        }
    }
}

/// Records a body's whole size at once (a body known in full, or none).
pub fn record(side: Side, stats: &ClusterShared, log: Option<&Record>, bytes: u64) {
    let histogram = match side {
        Side::Request => &stats.requests.request_size,
        Side::Response => &stats.requests.response_size,
    };
    histogram.observe(bytes);
    if let Some(log) = log {
        log.add_bytes(side, bytes);
    }
}

impl Drop for SizeMeter {
    fn drop(&mut self) {
        record(self.side, &self.stats, self.log.as_deref(), self.bytes);
    }
}
