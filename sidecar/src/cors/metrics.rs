//! CORS's metrics hook: origins judged, valid or invalid, by direction
//! (like Envoy's `origin_valid` / `origin_invalid`). Process-wide counters,
//! since a policy comes and goes with config but the count of a
//! sidecar's refusals should not reset with it; encoded into `/metrics`
//! once any origin was judged.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// Origins judged on one side of the sidecar.
#[derive(Debug, Default)]
pub struct OriginCounts {
    pub valid: AtomicU64,
    pub invalid: AtomicU64,
}

impl OriginCounts {
    const fn new() -> Self {
        Self {
            valid: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
        }
    }

    pub(super) fn count(&self, allowed: bool) {
        let counter = if allowed { &self.valid } else { &self.invalid };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The app's calls out (route policies).
pub static OUTBOUND: OriginCounts = OriginCounts::new();
/// Calls to the app (the service's policy).
pub static INBOUND: OriginCounts = OriginCounts::new();

/// `weft_cors_origins_total{direction, origin="valid"|"invalid"}`.
pub fn encode(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let relaxed = Ordering::Relaxed;
    let rows = [("outbound", &OUTBOUND), ("inbound", &INBOUND)];
    let judged = rows
        .iter()
        .any(|(_, c)| c.valid.load(relaxed) + c.invalid.load(relaxed) > 0);
    if !judged {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "weft_cors_origins",
        "Requests with an Origin judged by a CORS policy: valid (allowed) or invalid \
         (a preflight refused, an answer without CORS headers).",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        for (verdict, count) in [("valid", &counts.valid), ("invalid", &counts.invalid)] {
            let labels = [("direction", direction), ("origin", verdict)];
            ConstCounter::new(count.load(relaxed)).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
