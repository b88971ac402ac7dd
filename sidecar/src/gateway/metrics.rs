//! The gateway's own series: TLS handshakes with outside clients and
//! certificate reloads. Process-wide counters, encoded into `/metrics`
//! beside the request metrics every listener's stack records.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::server::EDGE_HANDSHAKES;

/// Certificates read again after their files or KV document changed.
pub struct Reloads {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
}

pub static CERTIFICATE_RELOADS: Reloads = Reloads {
    applied: AtomicU64::new(0),
    refused: AtomicU64::new(0),
};

/// `weft_gateway_tls_handshakes_total{result}` and
/// `weft_gateway_certificate_reloads_total{result}`.
pub fn encode(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let relaxed = Ordering::Relaxed;
    let mut metric = encoder.encode_descriptor(
        "weft_gateway_tls_handshakes",
        "TLS handshakes with outside clients: completed, failed (no shared \
         version or cipher, a client that does not trust the certificate...), \
         closed by the client before the end, or timed out.",
        None,
        MetricType::Counter,
    )?;
    for (result, count) in [
        ("completed", &EDGE_HANDSHAKES.completed),
        ("failed", &EDGE_HANDSHAKES.failed),
        ("closed", &EDGE_HANDSHAKES.closed),
        ("timed_out", &EDGE_HANDSHAKES.timed_out),
    ] {
        ConstCounter::new(count.load(relaxed))
            .encode(metric.encode_family(&[("result", result)])?)?;
    }
    let mut metric = encoder.encode_descriptor(
        "weft_gateway_certificate_reloads",
        "Certificate files read again after they changed: applied, or refused \
         (the certificate being served stays).",
        None,
        MetricType::Counter,
    )?;
    for (result, count) in [
        ("applied", &CERTIFICATE_RELOADS.applied),
        ("refused", &CERTIFICATE_RELOADS.refused),
    ] {
        ConstCounter::new(count.load(relaxed))
            .encode(metric.encode_family(&[("result", result)])?)?;
    }
    Ok(())
}
