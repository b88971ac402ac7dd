//! Validation's metrics hook: requests judged under a validation policy,
//! valid or not, by direction. Process-wide counters, like compression's:
//! a policy comes and goes with config, a sidecar's totals should not
//! reset with it. Encoded into `/metrics` once any request was judged.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// One side's counters.
#[derive(Debug)]
pub struct Counts {
    valid: AtomicU64,
    invalid: AtomicU64,
}

impl Counts {
    const fn new() -> Self {
        Self {
            valid: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
        }
    }

    pub(super) fn judged(&self, valid: bool) {
        let counter = if valid { &self.valid } else { &self.invalid };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests judged valid, and invalid, so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.valid.load(Ordering::Relaxed),
            self.invalid.load(Ordering::Relaxed),
        )
    }
}

/// The app's calls out (route policies).
pub static OUTBOUND: Counts = Counts::new();
/// Calls to the app (the service's policy).
pub static INBOUND: Counts = Counts::new();

/// `weft_validation_requests_total{direction, result="valid"|"invalid"}`.
pub fn encode(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let rows = [("outbound", &OUTBOUND), ("inbound", &INBOUND)];
    if rows.iter().all(|(_, counts)| counts.totals() == (0, 0)) {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "weft_validation_requests",
        "Requests judged under a validation policy, by result.",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        let (valid, invalid) = counts.totals();
        for (result, count) in [("valid", valid), ("invalid", invalid)] {
            let labels = [("direction", direction), ("result", result)];
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
