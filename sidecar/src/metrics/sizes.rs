//! Body sizes as they stream: a [`SizeMeter`] rides beside a request or
//! response body (see `crate::body`), adds each data frame's length to a
//! plain local count, and records the total once, when the body is dropped
//! (ended, or abandoned part-way): one histogram update per body, no
//! buffering, no atomic per frame. The meter is three words: every request
//! and response carries one through the whole stack.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Frame;

use crate::access_log::Record;
use crate::table::cluster::ClusterShared;

// `Side` is declared by the access log, whose record counts bytes per side;
// the meters here (above it) name it too, so neither imports the other both
// ways.
pub use crate::access_log::Side;

/// Where a body's size goes: the destination's histogram, and with the
/// access log on, the request's record too (which holds the destination's
/// stats, so that one pointer does for both).
#[derive(Clone)]
pub enum Sink {
    Stats(Arc<ClusterShared>),
    Logged(Arc<Record>),
}

pub struct SizeMeter {
    bytes: u64,
    /// The side and the sink in one flat enum: three words in all (a
    /// nested enum would take a fourth).
    sink: SideSink,
}

enum SideSink {
    RequestStats(Arc<ClusterShared>),
    RequestLogged(Arc<Record>),
    ResponseStats(Arc<ClusterShared>),
    ResponseLogged(Arc<Record>),
}

impl SizeMeter {
    pub fn new(side: Side, sink: Sink) -> Self {
        let sink = match (side, sink) {
            (Side::Request, Sink::Stats(s)) => SideSink::RequestStats(s),
            (Side::Request, Sink::Logged(r)) => SideSink::RequestLogged(r),
            (Side::Response, Sink::Stats(s)) => SideSink::ResponseStats(s),
            (Side::Response, Sink::Logged(r)) => SideSink::ResponseLogged(r),
        };
        Self { bytes: 0, sink }
    }

    #[inline]
    pub fn count(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
        }
    }
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
            Self::Stats(stats) => observe(stats, side, bytes),
            Self::Logged(record) => logged(record, side, bytes),
        }
    }
}

impl Drop for SizeMeter {
    fn drop(&mut self) {
        let bytes = self.bytes;
        match &self.sink {
            SideSink::RequestStats(stats) => observe(stats, Side::Request, bytes),
            SideSink::ResponseStats(stats) => observe(stats, Side::Response, bytes),
            SideSink::RequestLogged(record) => logged(record, Side::Request, bytes),
            SideSink::ResponseLogged(record) => logged(record, Side::Response, bytes),
        }
    }
}

fn observe(stats: &ClusterShared, side: Side, bytes: u64) {
    let histogram = match side {
        Side::Request => &stats.requests.request_size,
        Side::Response => &stats.requests.response_size,
    };
    histogram.observe(bytes);
}

fn logged(record: &Record, side: Side, bytes: u64) {
    record.add_bytes(side, bytes);
    if let Some(stats) = record.stats() {
        observe(stats, side, bytes);
    }
}
