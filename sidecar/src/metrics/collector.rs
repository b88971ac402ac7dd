//! Encodes the request stats of every destination at scrape time: the
//! table the data path uses right now (one atomic load), plus the local
//! app's stats (inbound). Stats live as long as their cluster's shared
//! state, which table swaps carry over, so counters only reset when a
//! destination leaves the config.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Unit;

use crate::table::cluster::ClusterShared;
use crate::table::{Cluster, RoutingTable};

pub struct SidecarCollector {
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The local app's cluster (inbound requests).
    pub inbound: Arc<Cluster>,
    /// This sidecar's service: the `destination` of inbound requests.
    pub service: Arc<str>,
    /// The config stream's state; `None` in static mode.
    pub xds: Option<Arc<crate::xds::XdsState>>,
    /// The service's own (inbound) rate limits.
    pub inbound_limits: crate::ratelimit::SharedRateLimits,
}

impl fmt::Debug for SidecarCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SidecarCollector")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Collector for SidecarCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let table = self.table.load();
        let mut outbound: Vec<(&str, &ClusterShared)> = table
            .clusters
            .iter()
            .map(|(name, c)| (&**name, &*c.shared))
            .collect();
        outbound.sort_by_key(|(name, _)| *name);
        let all = outbound
            .into_iter()
            .map(|(name, shared)| ("outbound", name, shared))
            .chain([("inbound", &*self.service, &*self.inbound.shared)]);
        let all: Vec<Row<'_>> = all.collect();

        encode_requests(&mut encoder, &all)?;
        encode_refusals(&mut encoder, &all)?;
        encode_durations(&mut encoder, &all)?;
        let mut destinations: Vec<super::clusters::Destination<'_>> = table
            .clusters
            .iter()
            .map(|(name, c)| (&**name, &**c))
            .collect();
        destinations.sort_by_key(|(name, _)| *name);
        super::clusters::encode(&mut encoder, &destinations)?;
        let inbound_limits = self.inbound_limits.load_full();
        let limiters: Vec<super::ratelimits::Limiters<'_>> = destinations
            .iter()
            .filter_map(|(name, c)| Some(("outbound", *name, &**c.settings.rate_limits.as_ref()?)))
            .chain(
                inbound_limits
                    .as_deref()
                    .map(|limiter| ("inbound", &*self.service, limiter)),
            )
            .collect();
        super::ratelimits::encode(&mut encoder, &limiters)?;
        if let Some(xds) = &self.xds {
            super::config::encode(&mut encoder, xds)?;
        }
        super::tls::HANDSHAKE_FAILURES.encode(&mut encoder)?;
        super::process::encode(&mut encoder)
    }
}

/// `(direction, destination, its stats)` of every cluster in one scrape.
type Row<'a> = (&'static str, &'a str, &'a ClusterShared);

fn encode_requests(encoder: &mut DescriptorEncoder, all: &[Row<'_>]) -> Result<(), fmt::Error> {
    let mut requests = encoder.encode_descriptor(
        "weft_requests",
        "Requests answered, by direction, destination service, method and status class.",
        None,
        MetricType::Counter,
    )?;
    for (direction, destination, shared) in all {
        for (method, class, count) in shared.requests.counts() {
            let labels = [
                ("direction", *direction),
                ("destination", *destination),
                ("method", method),
                ("status_class", class),
            ];
            ConstCounter::new(count).encode(requests.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_refusals(encoder: &mut DescriptorEncoder, all: &[Row<'_>]) -> Result<(), fmt::Error> {
    let mut refusals = encoder.encode_descriptor(
        "weft_refusals",
        "Answers the sidecar made itself instead of the app's, by cause (x-weft-error): \
         authentication failures (jwt-*), authorization denials (denied), rate limits, \
         overflows, open breakers, timeouts, unreachable endpoints.",
        None,
        MetricType::Counter,
    )?;
    for (direction, destination, shared) in all {
        for (cause, count) in shared.requests.refusals() {
            let labels = [
                ("direction", *direction),
                ("destination", *destination),
                ("cause", cause),
            ];
            ConstCounter::new(count).encode(refusals.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_durations(encoder: &mut DescriptorEncoder, all: &[Row<'_>]) -> Result<(), fmt::Error> {
    let mut durations = encoder.encode_descriptor(
        "weft_request_duration",
        "Time from the request to its response head, by direction and destination service.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (direction, destination, shared) in all {
        let h = shared.requests.duration.snapshot();
        if h.count == 0 {
            continue;
        }
        let labels = [("direction", *direction), ("destination", *destination)];
        durations
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
    }
    Ok(())
}
