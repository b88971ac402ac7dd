//! Encodes the request stats of every destination at scrape time: the
//! table the data path uses right now (one atomic load), plus the local
//! app's stats (inbound). Stats live as long as their cluster's shared
//! state, which table swaps carry over, so counters only reset when a
//! destination leaves the config.
//!
//! The collector does not know the table: whoever builds it hands it a
//! [`Source`] of snapshots (the table's is `table::metrics`), and the
//! counters of other features as [`Family`] hooks.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Unit;

use super::histogram::SizeSnapshot;
use super::requests::RequestStats;
use super::unrouted::UNROUTED;

/// Where the stats are kept, read at each scrape.
pub trait Source: Send + Sync {
    /// The state the data path uses right now, held for one scrape.
    fn snapshot(&self) -> Box<dyn Snapshot + '_>;
}

/// One scrape's view of the stats: every family a scrape encodes from
/// the routing state comes from the same snapshot.
pub trait Snapshot {
    /// Every destination's stats (sorted by name), then the local app's.
    fn rows(&self) -> Vec<Row<'_>>;

    /// The families of the destinations' own state (connections,
    /// thresholds, breakers, rate limits), encoded after the requests'.
    fn encode_destinations(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error>;
}

/// A feature's counters, encoded after the sidecar's own families.
pub type Family = fn(&mut DescriptorEncoder<'_>) -> Result<(), fmt::Error>;

#[derive(Clone)]
pub struct SidecarCollector {
    pub source: Arc<dyn Source>,
    /// The config stream's state; `None` in static mode.
    pub xds: Option<Arc<crate::xds_status::XdsState>>,
    /// Other features' counters (the access log's), in this order.
    pub features: Vec<Family>,
}

impl fmt::Debug for SidecarCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SidecarCollector").finish_non_exhaustive()
    }
}

impl SidecarCollector {
    /// `weft_request_duration_seconds`, with its exemplars (see
    /// [`super::exposition`]).
    pub fn encode_durations(&self, out: &mut String) -> Result<(), fmt::Error> {
        let snapshot = self.source.snapshot();
        let name = "weft_request_duration_seconds";
        super::exposition::histogram_header(
            out,
            name,
            "Time from the request to its response head, by direction and destination \
             service; exemplars carry the trace id of a sampled request in the bucket.",
            "seconds",
        )?;
        for (direction, destination, stats) in snapshot.rows() {
            let h = stats.duration.snapshot();
            if h.count == 0 {
                continue;
            }
            let labels = [("direction", direction), ("destination", destination)];
            let exemplars: Vec<_> = stats.duration.exemplars().collect();
            super::exposition::histogram(out, name, &labels, &h, &exemplars)?;
        }
        Ok(())
    }
}

impl Collector for SidecarCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.source.snapshot();
        let mut all = snapshot.rows();
        // Refused before a destination was known (outbound only).
        let unrouted: &RequestStats = &UNROUTED;
        all.push(("outbound", "", unrouted));

        encode_requests(&mut encoder, &all)?;
        encode_refusals(&mut encoder, &all)?;
        encode_routes(&mut encoder, &all)?;
        encode_sizes(&mut encoder, &all)?;
        snapshot.encode_destinations(&mut encoder)?;
        if let Some(xds) = &self.xds {
            super::config::encode(&mut encoder, xds)?;
        }
        super::encode_by_direction(
            &mut encoder,
            (
                "weft_tls_handshake_failures",
                "mTLS handshakes that failed, by direction and reason.",
            ),
            "reason",
            &crate::mtls::failures::REASONS,
            crate::mtls::failures::HANDSHAKE_FAILURES.counts(),
        )?;
        super::malformed::MALFORMED_REQUESTS.encode(&mut encoder)?;
        for family in &self.features {
            family(&mut encoder)?;
        }
        super::process::encode(&mut encoder)
    }
}

/// `(direction, destination, its stats)` of every cluster in one scrape.
pub type Row<'a> = (&'static str, &'a str, &'a RequestStats);

fn encode_requests(encoder: &mut DescriptorEncoder, all: &[Row<'_>]) -> Result<(), fmt::Error> {
    let mut requests = encoder.encode_descriptor(
        "weft_requests",
        "Requests answered, by direction, destination service, method and status class.",
        None,
        MetricType::Counter,
    )?;
    for (direction, destination, stats) in all {
        for (method, class, count) in stats.counts() {
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
    for (direction, destination, stats) in all {
        for (cause, count) in stats.refusals() {
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

fn encode_routes(encoder: &mut DescriptorEncoder, all: &[Row<'_>]) -> Result<(), fmt::Error> {
    let mut routes = encoder.encode_descriptor(
        "weft_route_requests",
        "Outbound requests answered, by destination service, route name (from the config; \
         \"\" for an unnamed route) and status class.",
        None,
        MetricType::Counter,
    )?;
    for (direction, destination, stats) in all {
        for (route, class, count) in stats.routes.counts() {
            let labels = [
                ("direction", *direction),
                ("destination", *destination),
                ("route", route),
                ("status_class", class),
            ];
            ConstCounter::new(count).encode(routes.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_sizes(encoder: &mut DescriptorEncoder, all: &[Row<'_>]) -> Result<(), fmt::Error> {
    type Read = fn(&RequestStats) -> SizeSnapshot;
    let families: [(&str, &str, Read); 2] = [
        (
            "weft_request_size",
            "Request body bytes received from the caller, by direction and destination service.",
            |s| s.request_size.snapshot(),
        ),
        (
            "weft_response_size",
            "Response body bytes sent to the caller, by direction and destination service.",
            |s| s.response_size.snapshot(),
        ),
    ];
    for (name, help, read) in families {
        let mut family =
            encoder.encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Histogram)?;
        for (direction, destination, stats) in all {
            let h = read(stats);
            if h.count == 0 {
                continue;
            }
            let labels = [("direction", *direction), ("destination", *destination)];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum_bytes, h.count, &h.buckets, None)?;
        }
    }
    Ok(())
}
