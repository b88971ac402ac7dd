//! Times as the whole milliseconds that the breaker's and ejection's
//! atomics store, shared plumbing so that neither feature imports the
//! other.

use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds since `epoch`, plus one: 0 means "never" in the atomics
/// that store these, and differences stay exact.
pub fn millis_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
