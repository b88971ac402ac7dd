//! The sidecar's Prometheus metrics, served as OpenMetrics text at
//! `/metrics` on the admin port (prometheus-client).
//!
//! The request path never takes a lock or looks up a label set: each
//! destination's counters are atomics in its cluster's shared state
//! ([`requests::RequestStats`], kept across table swaps like the breaker),
//! indexed by method and status class, and a [`collector`] walks the
//! current table at scrape time to encode them with their labels. Label
//! values come from the config (destinations) or fixed lists (methods,
//! status classes), never from raw paths or user input, so the number of
//! series stays bounded.

pub mod clusters;
pub mod collector;
pub mod config;
pub mod histogram;
pub mod layer;
pub mod process;
pub mod ratelimits;
pub mod requests;
pub mod tls;

use prometheus_client::registry::Registry;

pub use layer::RequestMetricsLayer;

/// Everything `/metrics` encodes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    pub fn new(requests: collector::SidecarCollector) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(requests));
        Self { registry }
    }

    /// Adds another component's metrics (e.g. span export counters).
    pub fn register(&mut self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(collector);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would mean a
        // bug in a collector, and a partial page is still worth serving.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "encoding /metrics failed part-way");
        }
        out
    }
}
