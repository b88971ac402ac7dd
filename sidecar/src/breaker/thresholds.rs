//! Concurrency thresholds and the `x-weft-overflow` header that says which
//! one a refused request hit. `requests` is enforced by
//! `breaker::concurrency`; `retries` by the retry layer, through
//! [`RetryCounter::try_retry`] (a cluster's, which the table holds);
//! `pending` (and the connection cap it guards) by the connection pools,
//! through `upstream::connection_limit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::HeaderValue;

use crate::error::{ErrorKind, ProxyError};

/// The response header naming the threshold a 503 `overflow` hit.
pub const OVERFLOW_HEADER: http::HeaderName = http::HeaderName::from_static("x-weft-overflow");

/// Which concurrency threshold was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Retries,
    /// `max_connections` open and `max_pending_requests` waiting.
    Pending,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Retries => "retries",
            Self::Pending => "pending",
        }
    }

    /// The fail-fast error for `cluster`, with `x-weft-overflow`.
    pub fn error(self, cluster: &str, max: usize, field: &str) -> ProxyError {
        self.error_because(format!(
            "cluster {cluster} already has {max} {} in flight ({field})",
            self.as_str()
        ))
    }

    /// The fail-fast error with `x-weft-overflow`, for `reason`.
    pub fn error_because(self, reason: String) -> ProxyError {
        ProxyError::new(ErrorKind::Overflow, reason)
            .with_header(OVERFLOW_HEADER, HeaderValue::from_static(self.as_str()))
    }
}

/// Retries in flight, per cluster (lives in `ClusterShared`, behind its
/// own `Arc` so that a retry's guard holds the counter alone).
#[derive(Debug, Default)]
pub struct RetryCounter {
    pub in_flight: AtomicUsize,
    pub overflows: AtomicU64,
}

/// One retry in flight; dropping it frees its slot.
#[derive(Debug)]
pub struct RetryGuard(Arc<RetryCounter>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RetryCounter {
    /// Takes a retry slot if fewer than `max` retries are in flight
    /// (`None`: no limit, the slot is only counted).
    pub fn try_retry(self: &Arc<Self>, max: Option<usize>) -> Option<RetryGuard> {
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| prev >= max) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryGuard(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_limit_retries_are_only_counted() {
        let retries = Arc::new(RetryCounter::default());
        let guards: Vec<_> = (0..100).filter_map(|_| retries.try_retry(None)).collect();
        assert_eq!(retries.in_flight.load(Ordering::Relaxed), 100);
        drop(guards);
        assert_eq!(retries.in_flight.load(Ordering::Relaxed), 0);
    }
}
