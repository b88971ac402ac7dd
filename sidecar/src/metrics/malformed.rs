//! Requests the conformance layer refused, by listener and rule
//! (`proxy::conformance`): process-wide atomics, as the refusal happens
//! above the metrics layers; encoded at scrape time. What hyper and h2
//! refuse themselves never reaches a service and is not counted here.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;

use crate::model::Direction;

/// The `rule` label, one per `proxy::conformance::Violation`.
pub const RULES: [&str; 9] = [
    "two-hosts",
    "no-host",
    "invalid-host",
    "authority-not-host",
    "chunked-twice",
    "transfer-encoding-with-content-length",
    "unknown-transfer-coding",
    "host-not-authority",
    "field-value-whitespace",
];

pub struct MalformedRequests {
    counts: [[AtomicU64; RULES.len()]; 2],
}

/// Every refusal of the conformance layer in this process.
pub static MALFORMED_REQUESTS: MalformedRequests = MalformedRequests {
    counts: [const { [const { AtomicU64::new(0) }; RULES.len()] }; 2],
};

impl MalformedRequests {
    pub fn refused(&self, direction: Direction, rule: usize) {
        let d = match direction {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        };
        self.counts[d][rule.min(RULES.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        super::encode_by_direction(
            encoder,
            (
                "weft_malformed_requests",
                "Requests refused as malformed (RFC 9112/9113), by listener and rule.",
            ),
            "rule",
            &RULES,
            &self.counts,
        )
    }
}
