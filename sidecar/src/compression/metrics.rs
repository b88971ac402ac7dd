//! Compression's metrics hook: responses compressed by encoding, the bytes
//! into and out of the encoders, and responses sent as they were by
//! reason, by direction (Envoy's compressor stats, as counters).
//! Process-wide counters, like CORS's: a policy comes and goes with
//! config, a sidecar's totals should not reset with it. Encoded into
//! `/metrics` once any response was judged.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use weft_rules::compression::Encoding;

/// Why a response under a policy was sent as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// HEAD, 1xx, 204, 206 or 304: no body to compress, or a byte range.
    Status,
    /// The upstream already encoded it.
    Encoded,
    /// `Cache-Control: no-transform`.
    NoTransform,
    /// A content type the policy does not list (or none).
    ContentType,
    /// A `Content-Length` below the policy's minimum.
    TooSmall,
    /// The client accepts none of the policy's encodings.
    NotAccepted,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Self::Status,
        Self::Encoded,
        Self::NoTransform,
        Self::ContentType,
        Self::TooSmall,
        Self::NotAccepted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Encoded => "already-encoded",
            Self::NoTransform => "no-transform",
            Self::ContentType => "content-type",
            Self::TooSmall => "too-small",
            Self::NotAccepted => "not-accepted",
        }
    }
}

const ENCODINGS: [Encoding; 3] = [Encoding::Gzip, Encoding::Br, Encoding::Zstd];

fn slot(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gzip => 0,
        Encoding::Br => 1,
        Encoding::Zstd => 2,
    }
}

/// One side's counters.
#[derive(Debug)]
pub struct Counts {
    compressed: [AtomicU64; 3],
    decoded: [AtomicU64; 3],
    skipped: [AtomicU64; 6],
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
}

impl Counts {
    const fn new() -> Self {
        Self {
            compressed: [const { AtomicU64::new(0) }; 3],
            decoded: [const { AtomicU64::new(0) }; 3],
            skipped: [const { AtomicU64::new(0) }; 6],
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    pub(super) fn compressed(&self, encoding: Encoding) {
        self.compressed[slot(encoding)].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn decoded(&self, encoding: Encoding) {
        self.decoded[slot(encoding)].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn skipped(&self, reason: Skip) {
        let index = Skip::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.skipped[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses compressed with `encoding` so far.
    pub fn compressed_total(&self, encoding: Encoding) -> u64 {
        self.compressed[slot(encoding)].load(Ordering::Relaxed)
    }

    /// Responses sent as they were for `reason` so far.
    pub fn skipped_total(&self, reason: Skip) -> u64 {
        let index = Skip::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.skipped[index].load(Ordering::Relaxed)
    }

    fn judged(&self) -> bool {
        let sum = |counters: &[AtomicU64]| {
            counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        sum(&self.compressed) + sum(&self.skipped) + sum(&self.decoded) > 0
    }
}

/// The app's calls out (route policies).
pub static OUTBOUND: Counts = Counts::new();
/// Calls to the app (the service's policy).
pub static INBOUND: Counts = Counts::new();

/// `weft_compression_responses_total{direction, encoding}`,
/// `weft_compression_skipped_total{direction, reason}`,
/// `weft_compression_bytes_total{direction, stage="in"|"out"}` and
/// `weft_compression_requests_decoded_total{direction, encoding}`.
pub fn encode(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let relaxed = Ordering::Relaxed;
    let rows = [("outbound", &OUTBOUND), ("inbound", &INBOUND)];
    if !rows.iter().any(|(_, counts)| counts.judged()) {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "weft_compression_responses",
        "Responses compressed under a compression policy, by encoding.",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        for encoding in ENCODINGS {
            let labels = [("direction", direction), ("encoding", encoding.as_str())];
            let count = counts.compressed[slot(encoding)].load(relaxed);
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
    }
    let mut metric = encoder.encode_descriptor(
        "weft_compression_skipped",
        "Responses under a compression policy sent as they were, by reason.",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        for (reason, count) in Skip::ALL.iter().zip(&counts.skipped) {
            let labels = [("direction", direction), ("reason", reason.label())];
            ConstCounter::new(count.load(relaxed)).encode(metric.encode_family(&labels)?)?;
        }
    }
    let mut metric = encoder.encode_descriptor(
        "weft_compression_bytes",
        "Bytes through the response encoders: `in` as the upstream sent them, `out` as \
         the client received them.",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        for (stage, count) in [("in", &counts.bytes_in), ("out", &counts.bytes_out)] {
            let labels = [("direction", direction), ("stage", stage)];
            ConstCounter::new(count.load(relaxed)).encode(metric.encode_family(&labels)?)?;
        }
    }
    let mut metric = encoder.encode_descriptor(
        "weft_compression_requests_decoded",
        "Compressed request bodies decoded before they went upstream, by encoding.",
        None,
        MetricType::Counter,
    )?;
    for (direction, counts) in rows {
        for encoding in ENCODINGS {
            let labels = [("direction", direction), ("encoding", encoding.as_str())];
            let count = counts.decoded[slot(encoding)].load(relaxed);
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
