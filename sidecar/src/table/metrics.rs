//! The table's side of `/metrics`: it holds every destination's stats and
//! state, so it is the collector's [`Source`] ([`TableMetrics`]). Besides
//! the request stats the collector encodes, it encodes the resilience
//! state of each destination at scrape time, read from the counters its
//! layers already keep in the cluster's shared state (the same numbers
//! `/clusters` shows): connections, overflows by threshold, retries, the
//! breaker and outlier ejection; then the rate limiters' decisions
//! (`ratelimit::metrics`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::{ArcSwap, Guard};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Cluster, RoutingTable};
use crate::breaker::circuit::State;
use crate::metrics::collector::{Row, Snapshot, Source};
use crate::metrics::requests::RequestStats;

/// The stats `/metrics` reads: the table the data path uses, and the
/// local app's cluster.
pub struct TableMetrics {
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The local app's cluster (inbound requests).
    pub inbound: Arc<Cluster>,
    /// This sidecar's service: the `destination` of inbound requests.
    pub service: Arc<str>,
}

impl Source for TableMetrics {
    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        Box::new(TableSnapshot {
            table: self.table.load(),
            of: self,
        })
    }
}

/// One scrape's table (one atomic load).
struct TableSnapshot<'a> {
    table: Guard<Arc<RoutingTable>>,
    of: &'a TableMetrics,
}

impl TableSnapshot<'_> {
    /// Every outbound destination, sorted by name.
    fn destinations(&self) -> Vec<Destination<'_>> {
        let mut destinations: Vec<Destination<'_>> = self
            .table
            .clusters
            .iter()
            .map(|(name, c)| (&**name, &**c))
            .collect();
        destinations.sort_by_key(|(name, _)| *name);
        destinations
    }
}

impl Snapshot for TableSnapshot<'_> {
    fn rows(&self) -> Vec<Row<'_>> {
        let inbound: &RequestStats = &self.of.inbound.shared.requests;
        self.destinations()
            .into_iter()
            .map(|(name, c)| ("outbound", name, &c.shared.requests))
            .chain([("inbound", &*self.of.service, inbound)])
            .collect()
    }

    fn encode_destinations(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let destinations = self.destinations();
        encode(encoder, &destinations)?;
        // The inbound policy of the same table snapshot.
        let inbound_limits = self.table.inbound.rate_limits.as_ref();
        let limiters: Vec<crate::ratelimit::metrics::Limiters<'_>> = destinations
            .iter()
            .filter_map(|(name, c)| Some(("outbound", *name, &**c.settings.rate_limits.as_ref()?)))
            .chain(
                inbound_limits
                    .map(|limiter| &**limiter)
                    .map(|limiter| ("inbound", &*self.of.service, limiter)),
            )
            .collect();
        crate::ratelimit::metrics::encode(encoder, &limiters)
    }
}

/// One outbound destination at one scrape.
type Destination<'a> = (&'a str, &'a Cluster);

/// A family of one value per destination (and per extra label).
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (&'a str, Option<(&'static str, &'static str)>, u64)>,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (destination, extra, value) in rows {
        let mut labels = vec![("destination", destination)];
        if let Some(extra) = extra {
            labels.push(extra);
        }
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(encoder)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder)?,
        }
    }
    Ok(())
}

fn encode(encoder: &mut DescriptorEncoder, all: &[Destination<'_>]) -> Result<(), fmt::Error> {
    let relaxed = Ordering::Relaxed;
    family(
        encoder,
        "weft_upstream_connections_open",
        "Connections open to the destination's endpoints.",
        MetricType::Gauge,
        all.iter()
            .map(|(d, c)| (*d, None, c.shared.connections.open() as u64)),
    )?;
    family(
        encoder,
        "weft_upstream_connections_opened",
        "Connections opened to the destination's endpoints.",
        MetricType::Counter,
        all.iter()
            .map(|(d, c)| (*d, None, c.shared.connections.opened_total.load(relaxed))),
    )?;
    family(
        encoder,
        "weft_upstream_connect_failures",
        "Connections to the destination's endpoints that could not be made.",
        MetricType::Counter,
        all.iter().map(|(d, c)| {
            (
                *d,
                None,
                c.shared.connections.connect_failures_total.load(relaxed),
            )
        }),
    )?;
    family(
        encoder,
        "weft_requests_pending",
        "Requests waiting for a connection (circuit_breakers.max_connections reached).",
        MetricType::Gauge,
        all.iter()
            .map(|(d, c)| (*d, None, c.shared.connections.pending() as u64)),
    )?;
    family(
        encoder,
        "weft_overflows",
        "Requests refused at once over a concurrency threshold (x-weft-overflow).",
        MetricType::Counter,
        all.iter().flat_map(|(d, c)| {
            let s = &c.shared;
            [
                ("requests", s.overflows.load(relaxed)),
                ("retries", s.retries.overflows.load(relaxed)),
                (
                    "pending",
                    s.connections.pending_overflows_total.load(relaxed),
                ),
            ]
            .map(|(threshold, n)| (*d, Some(("threshold", threshold)), n))
        }),
    )?;
    family(
        encoder,
        "weft_retries",
        "Retries sent.",
        MetricType::Counter,
        all.iter()
            .map(|(d, c)| (*d, None, c.shared.retry.retries.load(relaxed))),
    )?;
    family(
        encoder,
        "weft_retry_budget_exhausted",
        "Retries the policy wanted but the retry budget refused.",
        MetricType::Counter,
        all.iter()
            .map(|(d, c)| (*d, None, c.shared.retry.budget_exhausted.load(relaxed))),
    )?;
    let with_breaker: Vec<_> = all
        .iter()
        .filter(|(_, c)| c.settings.breaker.is_some())
        .collect();
    family(
        encoder,
        "weft_breaker_state",
        "1 for the breaker's current state (closed, open, half-open), 0 for the others.",
        MetricType::Gauge,
        with_breaker.iter().flat_map(|(d, c)| {
            let now = c.shared.breaker.state();
            [State::Closed, State::Open, State::HalfOpen]
                .map(|s| (*d, Some(("state", s.as_str())), u64::from(s == now)))
        }),
    )?;
    family(
        encoder,
        "weft_breaker_opened",
        "Times the breaker opened (tripped or reopened after a failed probe).",
        MetricType::Counter,
        with_breaker
            .iter()
            .map(|(d, c)| (*d, None, c.shared.breaker.opened_total.load(relaxed))),
    )?;
    family(
        encoder,
        "weft_breaker_rejected",
        "Requests refused by an open breaker (circuit-open).",
        MetricType::Counter,
        with_breaker
            .iter()
            .map(|(d, c)| (*d, None, c.shared.breaker.rejected_total.load(relaxed))),
    )?;
    let now = tokio::time::Instant::now();
    family(
        encoder,
        "weft_outlier_ejections",
        "Endpoint ejections by outlier detection.",
        MetricType::Counter,
        all.iter().map(|(d, c)| {
            let total = c
                .endpoints
                .iter()
                .map(|e| e.stats.outlier.ejections_total.load(relaxed))
                .sum();
            (*d, None, total)
        }),
    )?;
    family(
        encoder,
        "weft_endpoints_ejected",
        "Endpoints ejected right now.",
        MetricType::Gauge,
        all.iter().map(|(d, c)| {
            let ejected = c
                .endpoints
                .iter()
                .filter(|e| e.stats.outlier.ejected_for(now).is_some())
                .count();
            (*d, None, ejected as u64)
        }),
    )
}
