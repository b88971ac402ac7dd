//! The rate limiter's metrics hook: decisions by limit at scrape time, for
//! the destinations' limits (outbound, enforced on this sidecar's calls)
//! and the service's own (inbound, enforced on calls to it). The table,
//! which holds the limiters, hands them in (`table::metrics`).

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::RateLimiter;

/// `(direction, destination, its limiter)`.
pub type Limiters<'a> = (&'static str, &'a str, &'a RateLimiter);

pub fn encode(encoder: &mut DescriptorEncoder, all: &[Limiters<'_>]) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        "weft_rate_limit_decisions",
        "Rate-limit decisions by limit: allowed, limited (429 or the fail-closed status), \
         undecided (Redis did not answer in time; on_unavailable applied).",
        None,
        MetricType::Counter,
    )?;
    for (direction, destination, limiter) in all {
        for (limit, decisions) in limiter.decisions() {
            for (decision, count) in [
                ("allowed", &decisions.allowed),
                ("limited", &decisions.limited),
                ("undecided", &decisions.undecided),
            ] {
                let labels = [
                    ("direction", *direction),
                    ("destination", *destination),
                    ("limit", limit),
                    ("decision", decision),
                ];
                ConstCounter::new(count.load(Ordering::Relaxed))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}
