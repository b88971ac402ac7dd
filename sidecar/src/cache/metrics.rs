//! The cache's metrics hook: lookups by result and direction, and what
//! every live store holds. Process-wide counters, like compression's: a
//! policy comes and goes with config, a sidecar's totals should not reset
//! with it. Encoded into `/metrics` once any lookup was made.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// How a request under a policy was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// From the store (a 304 included).
    Hit,
    /// From upstream, as the key was not stored (or stale).
    Miss,
    /// From upstream, as the request asked (`no-cache`, `max-age=0`,
    /// `no-store`).
    Bypass,
}

impl Lookup {
    pub const ALL: [Lookup; 3] = [Self::Hit, Self::Miss, Self::Bypass];

    /// The `result` label, and the `X-Cache` header's value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// One side's counters.
#[derive(Debug)]
pub struct Counts {
    lookups: [AtomicU64; 3],
}

impl Counts {
    const fn new() -> Self {
        Self {
            lookups: [const { AtomicU64::new(0) }; 3],
        }
    }

    pub(super) fn count(&self, lookup: Lookup) {
        self.lookups[lookup as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups with `result` so far.
    pub fn total(&self, lookup: Lookup) -> u64 {
        self.lookups[lookup as usize].load(Ordering::Relaxed)
    }

    fn any(&self) -> bool {
        self.lookups.iter().any(|c| c.load(Ordering::Relaxed) > 0)
    }
}

/// The app's calls out (route policies).
pub static OUTBOUND: Counts = Counts::new();
/// Calls to the app (the service's policy).
pub static INBOUND: Counts = Counts::new();

/// `weft_cache_lookups_total{direction, result="hit"|"miss"|"bypass"}`,
/// `weft_cache_entries` and `weft_cache_bytes` (every store together).
pub fn encode(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let rows = [("outbound", &OUTBOUND), ("inbound", &INBOUND)];
    if !rows.iter().any(|(_, counts)| counts.any()) {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "weft_cache_lookups",
        "Requests under a cache policy, by how they were answered.",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        for lookup in Lookup::ALL {
            let result = lookup.label().to_ascii_lowercase();
            let labels = [("direction", direction), ("result", result.as_str())];
            ConstCounter::new(counts.total(lookup)).encode(metric.encode_family(&labels)?)?;
        }
    }
    let (entries, bytes) = super::store::totals();
    let metric = encoder.encode_descriptor(
        "weft_cache_entries",
        "Answers held by the response caches.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(entries as i64).encode(metric)?;
    let metric = encoder.encode_descriptor(
        "weft_cache_bytes",
        "Bytes held by the response caches (each entry weighed at least max_bytes / \
         max_entries of its policy).",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(bytes as i64).encode(metric)?;
    Ok(())
}
