//! Concurrency thresholds and the `x-weft-overflow` header that says which
//! one a refused request hit. `requests` is enforced by
//! `proxy::concurrency`; `retries` by the retry layer, through
//! [`ClusterShared::try_retry`]; `pending` (and the connection cap it
//! guards) by the connection pools, through
//! `upstream::connection_limit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::HeaderValue;

use crate::error::{ErrorKind, ProxyError};
use crate::table::Cluster;
use crate::table::cluster::ClusterShared;

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

/// Retries in flight, per cluster (lives in `ClusterShared`).
#[derive(Debug, Default)]
pub struct RetryCounter {
    pub in_flight: AtomicUsize,
    pub overflows: AtomicU64,
}

/// One retry in flight; dropping it frees its slot.
#[derive(Debug)]
pub struct RetryGuard(Arc<ClusterShared>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.retries.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClusterShared {
    /// Takes a retry slot if fewer than `max` retries are in flight
    /// (`None`: no limit, the slot is only counted).
    pub fn try_retry(self: &Arc<Self>, max: Option<usize>) -> Option<RetryGuard> {
        let prev = self.retries.in_flight.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| prev >= max) {
            self.retries.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.retries.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryGuard(self.clone()))
    }
}

impl Cluster {
    /// For the retry layer: a slot for one more retry under the cluster's
    /// `circuit_breakers.max_retries`, or the 503 `overflow` (`retries`)
    /// to answer with (or to give up retrying on).
    pub fn try_retry(&self) -> Result<RetryGuard, ProxyError> {
        let max = self.settings.thresholds.max_retries;
        self.shared.try_retry(max).ok_or_else(|| {
            Overflow::Retries.error(
                &self.name,
                max.unwrap_or_default(),
                "circuit_breakers.max_retries",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Thresholds;
    use crate::table::ClusterSettings;

    #[test]
    fn retries_are_admitted_up_to_max_and_freed_on_drop() {
        let settings = ClusterSettings {
            thresholds: Thresholds {
                max_retries: Some(2),
                ..Thresholds::default()
            },
            ..ClusterSettings::default()
        };
        let cluster = Cluster::new("users".into(), settings, Vec::new(), Arc::default());
        let first = cluster.try_retry().unwrap();
        let _second = cluster.try_retry().unwrap();
        let refused = cluster.try_retry().unwrap_err();
        let response = refused.to_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["x-weft-error"], "overflow");
        assert_eq!(response.headers()["x-weft-overflow"], "retries");
        assert_eq!(cluster.shared.retries.overflows.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(cluster.try_retry().is_ok());
    }

    #[test]
    fn without_a_limit_retries_are_only_counted() {
        let shared = Arc::new(ClusterShared::default());
        let guards: Vec<_> = (0..100).filter_map(|_| shared.try_retry(None)).collect();
        assert_eq!(shared.retries.in_flight.load(Ordering::Relaxed), 100);
        drop(guards);
        assert_eq!(shared.retries.in_flight.load(Ordering::Relaxed), 0);
    }
}
