//! The access log's metrics hook: lines written and dropped, encoded into
//! `/metrics` (after the sidecar's own families) only while the log is on.

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// `weft_access_log_lines` and `weft_access_log_dropped`.
pub fn encode(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    if super::installed().is_none() {
        return Ok(());
    }
    for (name, help, count) in [
        (
            "weft_access_log_lines",
            "Access log lines handed to the writer.",
            &super::QUEUED,
        ),
        (
            "weft_access_log_dropped",
            "Access log lines dropped because the writer's queue was full.",
            &super::DROPPED,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(count.load(Ordering::Relaxed)).encode(metric)?;
    }
    Ok(())
}
