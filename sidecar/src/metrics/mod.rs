//! The sidecar's Prometheus metrics, served as OpenMetrics text at
//! `/metrics` on the admin port (prometheus-client).
//!
//! The request path never takes a lock or looks up a label set: each
//! destination's counters are atomics in its cluster's shared state
//! ([`requests::RequestStats`], kept across table swaps like the breaker),
//! indexed by method and status class, and a [`collector`] walks the
//! current table at scrape time (through the `Source` the table provides)
//! to encode them with their labels. Label
//! values come from the config (destinations) or fixed lists (methods,
//! status classes), never from raw paths or user input, so the number of
//! series stays bounded.

pub mod collector;
pub mod config;
pub mod exposition;
pub mod histogram;
pub mod layer;
pub mod malformed;
pub mod process;
pub mod requests;
pub mod sink;
pub mod unrouted;

use prometheus_client::registry::Registry;

pub use layer::RequestMetricsLayer;

/// Everything `/metrics` encodes.
pub struct Metrics {
    registry: Registry,
    /// Also registered; kept to write the latency histograms, which carry
    /// exemplars the registry's encoder cannot (see [`exposition`]).
    sidecar: collector::SidecarCollector,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    pub fn new(requests: collector::SidecarCollector) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(requests.clone()));
        Self {
            registry,
            sidecar: requests,
        }
    }

    /// Adds another component's metrics (e.g. span export counters).
    pub fn register(&mut self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(collector);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would mean a
        // bug in a collector, and a partial page is still worth serving.
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| self.sidecar.encode_durations(&mut out));
        if let Err(error) = encoded {
            tracing::warn!(%error, "encoding /metrics failed part-way");
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// Encodes a process-wide counter kept per listener direction (inbound,
/// outbound) and per value of one more label, skipping zeros:
/// `name{direction, <label>=values[i]}` from `counts[direction][i]`.
pub(crate) fn encode_by_direction<const N: usize>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    (name, help): (&str, &str),
    label: &str,
    values: &[&str; N],
    counts: &[[std::sync::atomic::AtomicU64; N]; 2],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric as _;
    let mut metric = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (direction, counts) in ["inbound", "outbound"].into_iter().zip(counts) {
        for (value, count) in values.iter().zip(counts) {
            let n = count.load(std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                let labels = [("direction", direction), (label, *value)];
                prometheus_client::metrics::counter::ConstCounter::new(n)
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}
