//! Where a request counts, as the metrics layer sees it: the request
//! stats of its destination, the size meters of its bodies
//! (`crate::request_body::SizeMeter`, recorded once when a body is
//! dropped), and, with the access log on, the request's line.
//!
//! The layer names only this trait. What implements it (the table's
//! destinations and the access log's record,
//! `table/request/metrics.rs`) sits above: metrics imports neither.

use crate::model::Answer;
use crate::request_body::{Side, SizeMeter};

use super::requests::RequestStats;

/// What a request's counts go into. Cloned once per body that streams
/// (each meter holds its own), so a cheap clone: a few `Arc`s.
pub trait MetricsSink: Clone + Send + Sync + 'static {
    /// The destination's request stats (`None`: none to count in).
    fn requests(&self) -> Option<&RequestStats>;
    /// A meter for a body still to come, counting into this sink.
    fn meter(&self, side: Side) -> SizeMeter;
    /// A body known in full (or none) counts at once.
    fn record(&self, side: Side, bytes: u64);
    /// The answer's head, for the access log's line; nothing (not even
    /// the `Answer`) when the log is off.
    fn answered(&self, answer: impl FnOnce() -> Answer);
}
