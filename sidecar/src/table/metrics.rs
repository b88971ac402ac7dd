//! The resilience state of each destination at scrape time, read from the
//! counters its layers already keep in the cluster's shared state (the same
//! numbers `/clusters` shows): connections, overflows by threshold,
//! retries, the breaker and outlier ejection.

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::breaker::circuit::State;
use crate::table::Cluster;

/// One outbound destination at one scrape.
pub type Destination<'a> = (&'a str, &'a Cluster);

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

pub fn encode(encoder: &mut DescriptorEncoder, all: &[Destination<'_>]) -> Result<(), fmt::Error> {
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
