//! The agent's Prometheus metrics (served on the admin port at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::identity::RefusalReason;

/// The labels of `certificates_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateRefusalLabels {
    pub reason: RefusalReason,
}

pub struct Metrics {
    pub registry: Registry,
    /// Document versions rejected by validation (each version counted once).
    pub documents_rejected: Counter,
    pub snapshot_builds: Counter,
    /// How long building one snapshot took (seconds).
    pub snapshot_build_seconds: Histogram,
    pub responses_sent: Counter,
    pub nacks_received: Counter,
    pub connected_sidecars: Gauge,
    /// Leaf certificates signed for sidecars.
    pub certificates_issued: Counter,
    /// Certificate requests refused, by reason (`denied`, `invalid_csr`...).
    pub certificates_refused: Family<CertificateRefusalLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_discovery");
        let documents_rejected = Counter::default();
        let snapshot_builds = Counter::default();
        // 100 µs to about 10 s: a few services build in under a
        // millisecond, thousands of documents in seconds.
        let snapshot_build_seconds = Histogram::new(exponential_buckets(0.0001, 2.5, 13));
        let responses_sent = Counter::default();
        let nacks_received = Counter::default();
        let connected_sidecars = Gauge::default();
        let certificates_issued = Counter::default();
        let certificates_refused = Family::<CertificateRefusalLabels, Counter>::default();
        registry.register(
            "documents_rejected",
            "Configuration document versions rejected by validation",
            documents_rejected.clone(),
        );
        registry.register(
            "snapshot_builds",
            "Snapshots built after a change in Consul or the config directory",
            snapshot_builds.clone(),
        );
        registry.register_with_unit(
            "snapshot_build",
            "Time to build one snapshot from the mesh state",
            prometheus_client::registry::Unit::Seconds,
            snapshot_build_seconds.clone(),
        );
        registry.register(
            "responses_sent",
            "Discovery responses pushed to sidecars",
            responses_sent.clone(),
        );
        registry.register(
            "nacks_received",
            "Discovery responses rejected by a sidecar",
            nacks_received.clone(),
        );
        registry.register(
            "connected_sidecars",
            "Sidecars with an open discovery stream",
            connected_sidecars.clone(),
        );
        registry.register(
            "certificates_issued",
            "Leaf certificates signed for sidecars",
            certificates_issued.clone(),
        );
        registry.register(
            "certificates_refused",
            "Certificate requests refused, by reason",
            certificates_refused.clone(),
        );
        Self {
            registry,
            documents_rejected,
            snapshot_builds,
            snapshot_build_seconds,
            responses_sent,
            nacks_received,
            connected_sidecars,
            certificates_issued,
            certificates_refused,
        }
    }

    /// Counts one refused certificate request.
    pub fn certificate_refused(&self, reason: RefusalReason) {
        self.certificates_refused
            .get_or_create(&CertificateRefusalLabels { reason })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
