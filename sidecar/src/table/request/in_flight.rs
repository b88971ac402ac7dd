//! The guards a request holds while it is in flight: dropping one (when
//! the request ends, with its context) gives back what it counted. They
//! are taken by `proxy::balance` and `breaker::concurrency` (and by opaque
//! TCP connections too), and live here because the context holds them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::table::cluster::ClusterShared;
use crate::table::{Endpoint, EndpointStats};

/// One request in flight on an endpoint; dropping it ends the request.
pub struct InFlightGuard(Arc<EndpointStats>);

impl InFlightGuard {
    /// Counts one more request (or TCP connection) on `endpoint`.
    pub fn enter(endpoint: &Endpoint) -> Self {
        endpoint.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.stats.requests.fetch_add(1, Ordering::Relaxed);
        Self(endpoint.stats.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted request; dropping it frees its slot.
pub struct ClusterGuard(Arc<ClusterShared>);

impl ClusterGuard {
    /// Takes a slot if fewer than `max` are taken (counting an overflow
    /// otherwise). Used by `breaker::concurrency` and by opaque TCP.
    pub fn admit(shared: &Arc<ClusterShared>, max: usize) -> Option<Self> {
        let prev = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        if prev >= max {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            shared.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(shared.clone()))
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn admits_up_to_max_and_frees_on_drop() {
        let shared = Arc::new(ClusterShared::default());
        let a = ClusterGuard::admit(&shared, 2).unwrap();
        let _b = ClusterGuard::admit(&shared, 2).unwrap();
        assert!(ClusterGuard::admit(&shared, 2).is_none());
        assert_eq!(shared.overflows.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(ClusterGuard::admit(&shared, 2).is_some());
    }
}
