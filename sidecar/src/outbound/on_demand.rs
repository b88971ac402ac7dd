//! On-demand discovery: the meeting point of the request path and the xDS
//! client for clusters the sidecar does not hold yet. It lives with the
//! request path (beside `split`, its one caller there) and depends only on
//! the table: the xDS client, above, drives it, so the stacks do not import
//! the client.
//!
//! A sidecar holds the Cluster and ClusterLoadAssignment of its preloaded
//! destinations (`--tcp-upstream`, `--upstreams`, its policy's `upstreams`)
//! and of the ones its app has called recently, not of every destination
//! its route tables name (in a mesh of 1,000 services that would be 1,000
//! clusters in every sidecar, each endpoint change pushed to all of them).
//! As Linkerd resolves a destination on its first call and Envoy has
//! on-demand CDS:
//!
//! * `split` looks the chosen cluster up in the table. A hit costs what it
//!   always did plus [`OnDemand::touch`]: two relaxed atomic loads and, at
//!   most once a second per cluster, a relaxed store (the last use, read by
//!   the idle sweep). No lock, no channel, no allocation.
//! * A miss calls [`OnDemand::fetch`]: under a mutex (the miss path only)
//!   it registers the name, or joins the requests already waiting for it,
//!   and wakes the xDS client, which adds the name to its Cluster and
//!   ClusterLoadAssignment subscriptions. Every waiter of a name shares one
//!   subscription and one signal; each waits at most `timeout`, then fails
//!   with 503 `discovery-timeout`.
//! * After every table swap the xDS client calls [`OnDemand::resolve`],
//!   which ends the wait of the names the new table holds.
//! * The xDS client drops a cluster nobody called for the idle timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::error::{ErrorKind, ProxyError};
use crate::table::RoutingTable;
use crate::table::cluster::ClusterShared;

/// Default wait for a destination's first discovery: the default connect
/// timeout of a cluster (`PoolSettings::default`, 1 s). A first call should
/// not wait longer for its destination's address than it would for the
/// connection to it; the agent answers a subscription change at once (no
/// debounce), so on a healthy mesh the wait is one round trip.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// Default idle time after which an on-demand cluster is dropped (see
/// `Settings::discovery_idle_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// A name requests wait for.
struct Waiting {
    /// Turns `true` when the table holds the cluster; dropped (waiters see
    /// an error) when the xDS client gives the name up.
    arrived: watch::Sender<bool>,
    /// Whether the xDS client has taken the name into its subscription.
    taken: bool,
}

/// Shared by the outbound `split` layer and the xDS client.
pub struct OnDemand {
    table: Arc<ArcSwap<RoutingTable>>,
    /// Names requests wait for; touched on a table miss only.
    waiting: Mutex<HashMap<Arc<str>, Waiting>>,
    /// Wakes the xDS client when a name is added (a stored permit: a wake
    /// while it is busy or reconnecting is not lost).
    wake: Notify,
    /// Seconds since start plus one (0 = never used), ticked by
    /// [`OnDemand::run_clock`]: the coarse time `touch` writes.
    clock: AtomicU32,
    /// How long a request waits for a destination's first discovery.
    timeout: Duration,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand")
            .field("timeout", &self.timeout)
            .field("clock", &self.now())
            .finish_non_exhaustive()
    }
}

impl OnDemand {
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, timeout: Duration) -> Self {
        Self {
            table,
            waiting: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            clock: AtomicU32::new(1),
            timeout,
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Waiting>> {
        // A panic while holding it leaves a consistent map (each operation
        // is one insert or remove); keep using it.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The coarse clock, in seconds (1 at start).
    pub fn now(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Sets the coarse clock (unit tests).
    #[cfg(test)]
    pub(crate) fn set_now(&self, secs: u32) {
        self.clock.store(secs, Ordering::Relaxed);
    }

    /// Ticks the coarse clock once a second until shutdown. A task of its
    /// own, not the xDS client's, so it keeps time while the agent is away.
    pub async fn run_clock(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let secs = u32::try_from(start.elapsed().as_secs()).unwrap_or(u32::MAX - 1);
                    self.clock.store(secs + 1, Ordering::Relaxed);
                }
                _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
            }
        }
    }

    /// Notes a request to a held cluster: its last use, for the idle sweep.
    /// A store only when the second changed, so a busy cluster's cache line
    /// is written once a second, not per request.
    #[inline]
    pub fn touch(&self, shared: &ClusterShared) {
        let now = self.now();
        if shared.last_used.load(Ordering::Relaxed) != now {
            shared.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// Waits until the table holds `name` (asking the xDS client to
    /// subscribe to it), at most the fetch timeout; returns that table.
    pub async fn fetch(&self, name: &Arc<str>) -> Result<Arc<RoutingTable>, ProxyError> {
        let mut arrived = {
            let mut waiting = self.waiting();
            match waiting.get(name) {
                // Another request asked already: share its subscription.
                Some(w) => w.arrived.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(false);
                    waiting.insert(
                        name.clone(),
                        Waiting {
                            arrived: tx,
                            taken: false,
                        },
                    );
                    self.wake.notify_one();
                    rx
                }
            }
        };
        // Checked after registering: a table swapped in between the miss
        // and the registration (whose `resolve` ran before the name was
        // there) is seen here.
        let wait = async {
            loop {
                let table = self.table.load_full();
                if table.cluster(name).is_some() {
                    return Some(table);
                }
                if arrived.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(Some(table)) => Ok(table),
            Ok(None) => Err(ProxyError::new(
                ErrorKind::DiscoveryTimeout,
                format!("destination {name}: discovery was given up before it arrived"),
            )),
            Err(_) => Err(ProxyError::new(
                ErrorKind::DiscoveryTimeout,
                format!(
                    "destination {name}: its cluster did not arrive from the discovery agent within {:?} (is weft-discovery reachable? see /config_dump)",
                    self.timeout
                ),
            )),
        }
    }

    /// Waits until a request asked for a name the xDS client has not taken.
    pub async fn wanted(&self) {
        self.wake.notified().await
    }

    /// The names asked for since the last call (the xDS client subscribes
    /// to them).
    pub fn take_new(&self) -> Vec<String> {
        let mut waiting = self.waiting();
        waiting
            .iter_mut()
            .filter(|(_, w)| !w.taken)
            .map(|(name, w)| {
                w.taken = true;
                name.to_string()
            })
            .collect()
    }

    /// Ends the wait of every name `table` holds (the table is in place).
    pub fn resolve(&self, table: &RoutingTable) {
        let mut waiting = self.waiting();
        if waiting.is_empty() {
            return;
        }
        waiting.retain(|name, w| {
            let held = table.cluster(name).is_some();
            if held {
                w.arrived.send_replace(true);
            }
            !held
        });
    }

    /// Gives names up (the xDS client dropped them before they arrived):
    /// their waiters fail now, and a later request asks again.
    pub fn forget<'a>(&self, names: impl IntoIterator<Item = &'a String>) {
        let mut waiting = self.waiting();
        for name in names {
            waiting.remove(name.as_str());
        }
    }

    /// How many names requests are waiting for (for /config_dump).
    pub fn pending(&self) -> Vec<String> {
        let mut names: Vec<String> = self.waiting().keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }
}
