//! The cap on connections one sidecar opens to a cluster
//! (`circuit_breakers.max_connections`) and on the requests waiting for one
//! (`circuit_breakers.max_pending_requests`), as Envoy's circuit breakers
//! count them.
//!
//! Why in the connector and not a tower layer: only the pool knows whether
//! a request needs a new connection. A pooled HTTP/1.1 connection (or the
//! one multiplexed HTTP/2 connection of an endpoint) carries a request
//! without touching this; only dialing takes a [`ConnectionSlot`], which
//! the connection holds until it closes. Past the cap the request is
//! *pending*: it waits for a slot (a connection of the cluster closed) or,
//! for HTTP/1.1, for a connection of its own endpoint to come back to the
//! pool. While requests wait, an idle HTTP/1.1 connection of another
//! endpoint of the cluster is closed to make room, so a cap below the
//! number of endpoints cannot starve one of them. The wait is bounded by
//! the request's timeouts; past `max_pending_requests` waiters a request
//! fails fast with 503 `x-weft-overflow: pending`.
//!
//! One per cluster, in `ClusterShared`, so it survives table swaps; the
//! caps are set on each swap. The hot path never comes here for a pooled
//! connection, and a new connection costs one compare-and-swap.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// A pool whose idle connections the limit may close to make room.
pub trait IdleConnections: Send + Sync {
    /// Closes one idle connection, if the pool has one.
    fn close_one_idle(&self) -> bool;
}

pub struct ConnectionLimit {
    /// `usize::MAX`: no cap (connections are still counted).
    max_connections: AtomicUsize,
    /// `usize::MAX`: no cap beyond the cluster's `max_requests`.
    max_pending: AtomicUsize,
    open: AtomicUsize,
    pending: AtomicUsize,
    /// Signalled when a connection closes (or the caps change) while
    /// requests wait.
    freed: Notify,
    /// The cluster's HTTP/1.1 pools, registered when created. Only walked
    /// while a request waits (already the slow path).
    pools: Mutex<Vec<Weak<dyn IdleConnections>>>,
    /// Requests that had to wait for a connection.
    pub waited_total: AtomicU64,
    /// Requests refused because `max_pending_requests` were waiting.
    pub pending_overflows_total: AtomicU64,
    /// Idle connections closed to make room for a waiting request.
    pub idle_closed_total: AtomicU64,
    /// Slots taken: connections dialed.
    pub opened_total: AtomicU64,
    /// Dials that failed (refused, timed out, TLS handshake).
    pub connect_failures_total: AtomicU64,
}

impl Default for ConnectionLimit {
    fn default() -> Self {
        Self {
            max_connections: AtomicUsize::new(usize::MAX),
            max_pending: AtomicUsize::new(usize::MAX),
            open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            freed: Notify::new(),
            pools: Mutex::new(Vec::new()),
            waited_total: AtomicU64::new(0),
            pending_overflows_total: AtomicU64::new(0),
            idle_closed_total: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
            connect_failures_total: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("open", &self.open())
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

/// A request found `max_pending_requests` already waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingOverflow {
    pub max_connections: usize,
    pub max_pending: usize,
}

impl fmt::Display for PendingOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "all {} connections are busy and {} requests already wait for one",
            self.max_connections, self.max_pending
        )
    }
}

impl std::error::Error for PendingOverflow {}

/// One open connection's place under the cap; dropped with the connection.
pub struct ConnectionSlot(Arc<ConnectionLimit>);

impl fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionSlot")
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let limit = &self.0;
        limit.open.fetch_sub(1, Ordering::SeqCst);
        // SeqCst with the waiter's `pending` increment and re-check: if
        // this load sees no waiter, a later waiter sees the freed slot.
        if limit.pending.load(Ordering::SeqCst) > 0 {
            limit.freed.notify_one();
        }
    }
}

/// One waiting request, counted in `pending` until dropped (also when the
/// wait is cancelled by a timeout or the caller going away).
struct Waiting<'a>(&'a ConnectionLimit);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnectionLimit {
    /// Sets the caps (`None`: none). Waiters re-check at once, so a raised
    /// cap lets them through without waiting for a connection to close.
    pub fn set_caps(&self, max_connections: Option<usize>, max_pending: Option<usize>) {
        self.max_connections
            .store(max_connections.unwrap_or(usize::MAX), Ordering::SeqCst);
        self.max_pending
            .store(max_pending.unwrap_or(usize::MAX), Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether requests are waiting for a connection: a pool then closes
    /// a returned connection nobody of its own waits for, instead of
    /// keeping it idle.
    pub fn has_waiters(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    pub fn register(&self, pool: Weak<dyn IdleConnections>) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// A slot if fewer than `max_connections` are open.
    pub fn try_open(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.max_connections.load(Ordering::SeqCst);
        let mut open = self.open.load(Ordering::SeqCst);
        loop {
            if open >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.opened_total.fetch_add(1, Ordering::Relaxed);
                    return Some(ConnectionSlot(self.clone()));
                }
                Err(now) => open = now,
            }
        }
    }

    /// A slot, waiting for one if the cap is reached; or the overflow if
    /// `max_pending_requests` requests already wait. Cancel-safe.
    pub async fn acquire(self: &Arc<Self>) -> Result<ConnectionSlot, PendingOverflow> {
        if let Some(slot) = self.try_open() {
            return Ok(slot);
        }
        let max_pending = self.max_pending.load(Ordering::SeqCst);
        let ahead = self.pending.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        if ahead >= max_pending {
            self.pending_overflows_total.fetch_add(1, Ordering::Relaxed);
            return Err(PendingOverflow {
                max_connections: self.max_connections.load(Ordering::Relaxed),
                max_pending,
            });
        }
        self.waited_total.fetch_add(1, Ordering::Relaxed);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the re-check, so a slot freed in between
            // still wakes this waiter.
            freed.as_mut().enable();
            if let Some(slot) = self.try_open() {
                return Ok(slot);
            }
            self.close_an_idle_connection();
            freed.await;
        }
    }

    fn close_an_idle_connection(&self) {
        let pools: Vec<Arc<dyn IdleConnections>> = {
            let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        if pools.iter().any(|pool| pool.close_one_idle()) {
            self.idle_closed_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(max_connections: usize, max_pending: Option<usize>) -> Arc<ConnectionLimit> {
        let limit = Arc::new(ConnectionLimit::default());
        limit.set_caps(Some(max_connections), max_pending);
        limit
    }

    #[tokio::test]
    async fn slots_are_given_up_to_the_cap_and_a_waiter_gets_the_first_freed() {
        let limit = limit(2, None);
        let first = limit.acquire().await.unwrap();
        let _second = limit.acquire().await.unwrap();
        assert!(limit.try_open().is_none());
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.map(|_| ()) }
        });
        while limit.pending() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(limit.waited_total.load(Ordering::Relaxed), 1);
        assert_eq!(limit.pending(), 0);
    }

    #[tokio::test]
    async fn past_max_pending_a_request_fails_fast_and_zero_means_none_may_wait() {
        let limit = limit(1, Some(0));
        let _only = limit.acquire().await.unwrap();
        assert_eq!(
            limit.acquire().await.unwrap_err(),
            PendingOverflow {
                max_connections: 1,
                max_pending: 0
            }
        );
        assert_eq!(limit.pending(), 0, "a refused request leaves no waiter");
        assert_eq!(limit.pending_overflows_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_cancelled_wait_frees_its_pending_place_and_raising_the_cap_wakes_waiters() {
        let limit = limit(1, Some(1));
        let _only = limit.acquire().await.unwrap();
        let timed_out = tokio::time::timeout(Duration::from_millis(10), limit.acquire()).await;
        assert!(timed_out.is_err());
        assert_eq!(limit.pending(), 0);
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.map(|_| ()) }
        });
        while limit.pending() == 0 {
            tokio::task::yield_now().await;
        }
        limit.set_caps(Some(2), Some(1));
        waiter.await.unwrap().unwrap();
    }

    struct OneIdle(std::sync::atomic::AtomicBool, Mutex<Option<ConnectionSlot>>);

    impl IdleConnections for OneIdle {
        fn close_one_idle(&self) -> bool {
            self.0.store(true, Ordering::SeqCst);
            self.1.lock().unwrap().take().is_some()
        }
    }

    #[tokio::test]
    async fn a_waiter_closes_an_idle_connection_of_another_pool_to_make_room() {
        let limit = limit(1, None);
        let pool = Arc::new(OneIdle(
            Default::default(),
            Mutex::new(Some(limit.acquire().await.unwrap())),
        ));
        let weak: Weak<dyn IdleConnections> = Arc::downgrade(&pool) as _;
        limit.register(weak);
        tokio::time::timeout(Duration::from_secs(5), limit.acquire())
            .await
            .expect("the idle connection was closed for the waiter")
            .unwrap();
        assert!(pool.0.load(Ordering::SeqCst));
        assert_eq!(limit.idle_closed_total.load(Ordering::Relaxed), 1);
    }
}
