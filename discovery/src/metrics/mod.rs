//! The agent's Prometheus metrics (served on the admin port at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::identity::RefusalReason;

mod convergence;
pub use convergence::{Convergence, Quantiles};

/// The labels of `push_latency_seconds`: the resource type's short name
/// (`Cluster`, `RouteConfiguration`...), five values at most.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub r#type: &'static str,
}

/// The labels of `consul_watch_errors`: which kind of watch (never the
/// service name: one per catalog name would grow without bound) and what
/// went wrong.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchErrorLabels {
    pub watch: &'static str,
    pub kind: &'static str,
}

/// The labels of `consul_watch_retries`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: &'static str,
}

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
    /// From a change reaching the agent (a Consul blocking query returning
    /// a new index, a file written) to a sidecar's ACK of the push built
    /// from it, by resource type (seconds).
    pub push_latency_seconds: Family<PushLabels, Histogram>,
    /// Per change (snapshot): from the change reaching the agent to the
    /// last ACK of a push made for it, across every stream
    /// (`convergence_seconds`, with the bookkeeping in [`Convergence`]).
    pub convergence: Convergence,
    /// Failed Consul reads, by watch and error kind.
    pub consul_watch_errors: Family<WatchErrorLabels, Counter>,
    /// Backoff waits before a Consul watch reads again (after an error,
    /// or an answer that came back at once with nothing new).
    pub consul_watch_retries: Family<WatchLabels, Counter>,
    /// TCP connections open to Consul (in use or idle in the pool), as of
    /// the Consul source's last event; never above `--consul-max-connections`.
    pub consul_connections: Gauge,
    /// Call reports received from sidecars (the service map).
    pub call_reports: Counter,
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
        let consul_connections = Gauge::default();
        // 1 ms to about 30 s: a push on loopback is acknowledged within a
        // few ms after the 20 ms debounce; seconds mean a slow sidecar.
        let push_latency_seconds = Family::<PushLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let convergence = Convergence::new();
        let consul_watch_errors = Family::<WatchErrorLabels, Counter>::default();
        let consul_watch_retries = Family::<WatchLabels, Counter>::default();
        let call_reports = Counter::default();
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
        registry.register_with_unit(
            "push_latency",
            "From a change reaching the agent (Consul's blocking query returning a new index) \
             to the sidecar's ACK of the push built from it, by resource type",
            prometheus_client::registry::Unit::Seconds,
            push_latency_seconds.clone(),
        );
        registry.register_with_unit(
            "convergence",
            "Per change: from the change reaching the agent to the last sidecar's ACK of a push \
             made for it (streams with nothing to receive do not count; one that closes, NACKs \
             or gets a newer push first stops counting)",
            prometheus_client::registry::Unit::Seconds,
            convergence.histogram(),
        );
        registry.register(
            "consul_watch_errors",
            "Failed Consul reads, by watch (catalog, checks, service, kv, intentions) and kind \
             (connect, closed, tls, timeout, status_4xx, status_5xx, decode, config)",
            consul_watch_errors.clone(),
        );
        registry.register(
            "consul_watch_retries",
            "Backoff waits before a Consul watch reads again, by watch",
            consul_watch_retries.clone(),
        );
        registry.register(
            "consul_connections",
            "TCP connections open to Consul (in use or idle), at most --consul-max-connections",
            consul_connections.clone(),
        );
        registry.register(
            "call_reports",
            "Call reports received from sidecars for the service map",
            call_reports.clone(),
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
            push_latency_seconds,
            convergence,
            consul_watch_errors,
            consul_watch_retries,
            consul_connections,
            call_reports,
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

    /// Records one acknowledged push of `r#type` whose change reached the
    /// agent `elapsed` ago.
    pub fn push_acknowledged(&self, r#type: &'static str, elapsed: std::time::Duration) {
        self.push_latency_seconds
            .get_or_create(&PushLabels { r#type })
            .observe(elapsed.as_secs_f64());
    }

    /// Shows every watch's error and retry series at 0 from the start, so
    /// that `rate()` sees the first error as an increase and a dashboard
    /// finds the series before anything failed.
    pub fn consul_watches_known(&self, watches: &[&'static str], kinds: &[&'static str]) {
        for &watch in watches {
            let _ = self
                .consul_watch_retries
                .get_or_create(&WatchLabels { watch });
            for &kind in kinds {
                let _ = self
                    .consul_watch_errors
                    .get_or_create(&WatchErrorLabels { watch, kind });
            }
        }
    }

    /// Counts one failed Consul read.
    pub fn consul_watch_failed(&self, watch: &'static str, kind: &'static str) {
        self.consul_watch_errors
            .get_or_create(&WatchErrorLabels { watch, kind })
            .inc();
    }

    /// Counts one backoff wait of a Consul watch.
    pub fn consul_watch_retried(&self, watch: &'static str) {
        self.consul_watch_retries
            .get_or_create(&WatchLabels { watch })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
