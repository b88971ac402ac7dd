//! mTLS handshakes that failed, by direction and reason: the callers this
//! sidecar refused (inbound) and the peers it could not reach (outbound).
//! Process-wide atomics, as handshakes happen outside any request's
//! context; encoded at scrape time.
//!
//! Here, not in `metrics`: both sides of the handshake ([`super::server`],
//! [`super::client`]) count into it, and metrics only encodes it, so the
//! handshake code does not import a feature.

use std::sync::atomic::{AtomicU64, Ordering};

/// The `reason` label: `weft_certs::PeerRejection::reason`, then the
/// failures that are not about certificates.
pub const REASONS: [&str; 10] = [
    "unknown-issuer",
    "expired",
    "not-yet-valid",
    "wrong-identity",
    "no-spiffe-id",
    "no-client-certificate",
    "rejected-by-peer",
    "bad-certificate",
    // Not TLS at all (plaintext to a STRICT listener), or broken off.
    "protocol-error",
    "timeout",
];

#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Inbound,
    Outbound,
}

pub struct HandshakeFailures {
    counts: [[AtomicU64; 10]; 2],
}

/// Every failed mTLS handshake of this process.
pub static HANDSHAKE_FAILURES: HandshakeFailures = HandshakeFailures {
    counts: [const { [const { AtomicU64::new(0) }; 10] }; 2],
};

impl HandshakeFailures {
    /// Counts a failure: a certificate rejection by its reason, anything
    /// else as `protocol-error`.
    pub fn failed(&self, direction: Direction, rejection: Option<&weft_certs::PeerRejection>) {
        let reason = rejection.map_or("protocol-error", |r| r.reason());
        self.count(direction, reason);
    }

    pub fn timed_out(&self, direction: Direction) {
        self.count(direction, "timeout");
    }

    fn count(&self, direction: Direction, reason: &str) {
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(8);
        self.counts[direction as usize][i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by direction and reason ([`REASONS`]), which metrics
    /// encodes at scrape time.
    pub(crate) fn counts(&self) -> &[[AtomicU64; 10]; 2] {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_certs::PeerRejection;

    #[test]
    fn failures_count_by_reason_and_non_certificate_ones_as_protocol_errors() {
        let failures = HandshakeFailures {
            counts: [const { [const { AtomicU64::new(0) }; 10] }; 2],
        };
        failures.failed(Direction::Inbound, Some(&PeerRejection::UnknownIssuer));
        failures.failed(
            Direction::Inbound,
            Some(&PeerRejection::NoClientCertificate),
        );
        failures.failed(Direction::Inbound, None);
        failures.timed_out(Direction::Outbound);
        let count = |d: Direction, reason: &str| {
            let i = REASONS.iter().position(|r| *r == reason).unwrap();
            failures.counts[d as usize][i].load(Ordering::Relaxed)
        };
        assert_eq!(count(Direction::Inbound, "unknown-issuer"), 1);
        assert_eq!(count(Direction::Inbound, "no-client-certificate"), 1);
        assert_eq!(count(Direction::Inbound, "protocol-error"), 1);
        assert_eq!(count(Direction::Outbound, "timeout"), 1);
        assert_eq!(count(Direction::Outbound, "unknown-issuer"), 0);
    }
}
