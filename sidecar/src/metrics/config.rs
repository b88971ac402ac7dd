//! The sidecar's view of its config stream at scrape time: connected and
//! ready, and per resource type the version in force and how many
//! responses were accepted and rejected (NACKed). Read under the xDS
//! status lock, which only the admin side and the stream take.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use weft_proto::type_url;

use crate::xds_status::XdsState;

pub fn encode(encoder: &mut DescriptorEncoder, xds: &XdsState) -> Result<(), fmt::Error> {
    let status = xds.lock();
    for (name, help, value) in [
        (
            "weft_config_connected",
            "1 while the config stream to the discovery agent is up.",
            status.connected,
        ),
        (
            "weft_config_ready",
            "1 once every subscribed resource type has arrived.",
            status.ready,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(i64::from(value)).encode(metric)?;
    }
    let types: Vec<_> = status
        .types
        .iter()
        .map(|(url, state)| (type_url::short(url), state))
        .collect();
    let mut accepted = encoder.encode_descriptor(
        "weft_config_accepted",
        "Config responses accepted, by resource type.",
        None,
        MetricType::Counter,
    )?;
    for (kind, state) in &types {
        ConstCounter::new(state.accepted_total)
            .encode(accepted.encode_family(&[("type", *kind)])?)?;
    }
    let mut rejected = encoder.encode_descriptor(
        "weft_config_rejected",
        "Config responses rejected (NACKed, the last good config kept), by resource type.",
        None,
        MetricType::Counter,
    )?;
    for (kind, state) in &types {
        ConstCounter::new(state.rejected_total)
            .encode(rejected.encode_family(&[("type", *kind)])?)?;
    }
    let mut version = encoder.encode_descriptor(
        "weft_config_version",
        "1 for the config version in force, by resource type (one series per type).",
        None,
        MetricType::Gauge,
    )?;
    for (kind, state) in types.iter().filter(|(_, s)| s.accepted) {
        let labels = [("type", *kind), ("version", state.version.as_str())];
        ConstGauge::new(1i64).encode(version.encode_family(&labels)?)?;
    }
    Ok(())
}
