//! Opaque TCP: services that speak bytes, not HTTP (a database, a cache),
//! marked `protocol: tcp` in their destination document.
//!
//! ```text
//! caller app ──► --tcp-upstream port ──► outbound.rs: pick an endpoint of the cluster
//!     meshed endpoint: HTTP/2 CONNECT stream on the mTLS connection to its sidecar
//!     plain endpoint:  direct TCP connection
//! peer sidecar inbound ──► inbound.rs: verified caller? L4 intention? ──► app's TCP port
//! ```
//!
//! * `outbound` — one listener per `--tcp-upstream`, and the tunnel's
//!   client side.
//! * `inbound` — the tower layer that answers CONNECT on the inbound
//!   listener: refuse (403 and the reason) or connect the app and bridge.
//! * `copy` — the bidirectional copy both sides share: bounded buffers,
//!   half-close, idle timeout.
//!
//! Counters ([`TcpStats`]) are served at the admin endpoint `/tcp`.

pub mod copy;
pub mod inbound;
pub mod outbound;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde_json::{Value, json};

/// The counters of one tcp-upstream (outbound) or one calling service
/// (inbound).
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections bridged (the tunnel or direct connection opened).
    pub opened: AtomicU64,
    /// Connections bridged now.
    pub active: AtomicU64,
    /// Refused by the destination's policy (an intention, or the default).
    pub denied: AtomicU64,
    /// Could not be opened for any other reason (no endpoint, connect
    /// failed, the peer refused the tunnel).
    pub failed: AtomicU64,
    /// Bytes from the side that opened the connection.
    pub bytes_sent: AtomicU64,
    /// Bytes back to it.
    pub bytes_received: AtomicU64,
}

impl Counters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an opened connection; it is active until the guard drops.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        Self::count(&self.opened);
        Self::count(&self.active);
        ActiveGuard(self.clone())
    }

    pub fn record(&self, bridged: &copy::Bridged) {
        self.bytes_sent.fetch_add(bridged.a_to_b, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bridged.b_to_a, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "opened_total": get(&self.opened),
            "active": get(&self.active),
            "denied_total": get(&self.denied),
            "failed_total": get(&self.failed),
            "bytes_sent_total": get(&self.bytes_sent),
            "bytes_received_total": get(&self.bytes_received),
        })
    }
}

/// An open connection; dropping it ends it in the `active` gauge.
pub struct ActiveGuard(Arc<Counters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every TCP counter of the sidecar.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// One per `--tcp-upstream`, fixed at start.
    pub upstreams: Vec<(TcpUpstream, Arc<Counters>)>,
    /// Per calling service (its verified identity), added as callers
    /// appear; read lock-free, written once per new caller.
    callers: ArcSwap<BTreeMap<Arc<str>, Arc<Counters>>>,
}

/// A local port for one opaque TCP destination (`--tcp-upstream
/// <service>=<listen address>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpUpstream {
    pub service: String,
    pub listen: SocketAddr,
}

impl TcpStats {
    pub fn new(upstreams: &[TcpUpstream]) -> Self {
        Self {
            upstreams: upstreams
                .iter()
                .map(|u| (u.clone(), Arc::default()))
                .collect(),
            callers: ArcSwap::default(),
        }
    }

    /// The inbound counters of `caller`, created on its first connection.
    pub fn caller(&self, caller: &str) -> Arc<Counters> {
        if let Some(c) = self.callers.load().get(caller) {
            return c.clone();
        }
        let mut created = None;
        self.callers.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            let entry = map.entry(Arc::from(caller)).or_default().clone();
            created = Some(entry);
            map
        });
        created.unwrap_or_default()
    }

    /// What `/tcp` shows.
    pub fn json(&self) -> Value {
        json!({
            "outbound": self.upstreams.iter().map(|(u, c)| {
                let mut v = c.json();
                v["service"] = json!(u.service);
                v["listen"] = json!(u.listen.to_string());
                v
            }).collect::<Vec<_>>(),
            "inbound": self.callers.load().iter()
                .map(|(caller, c)| (caller.to_string(), c.json()))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}
