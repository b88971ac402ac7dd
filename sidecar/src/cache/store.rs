//! One policy's store: answers by key in a bounded moka map (bytes and
//! entries, least recently used out first), and the fetches in flight, so
//! concurrent misses for one key wait for the first instead of each going
//! upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use moka::policy::EvictionPolicy;
use tokio::sync::watch;

/// A stored answer and what decides whether it may be served.
#[derive(Debug)]
pub(super) struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    /// The answer's `Age` when it arrived (an upstream cache's holding).
    pub initial_age: Duration,
    pub lifetime: Duration,
    /// The request headers the answer's `Vary` names, as the request that
    /// fetched it had them (`None`: absent).
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// `public`, `s-maxage` or `must-revalidate`: may be served to a
    /// request with `Authorization` (RFC 9111 §3.5).
    pub shareable_with_authorization: bool,
}

impl Entry {
    pub(super) fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub(super) fn fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }

    /// Whether `request` selects this answer (RFC 9111 §4.1): each header
    /// its `Vary` names has the same value (absent in both counts as the
    /// same); values are compared as sent, a strict but safe reading.
    pub(super) fn selected_by(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, value)| {
            let mut sent = request.get_all(name).iter();
            match value {
                None => sent.next().is_none(),
                Some(value) => sent.next() == Some(value) && sent.next().is_none(),
            }
        })
    }

    fn bytes(&self, key: &str) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        (key.len() + headers + self.body.len()) as u64
    }
}

/// The request headers a response's `Vary` names, with the request's
/// values; `Vary: *` is refused before this (never stored).
pub(super) fn vary_of(
    response: &HeaderMap,
    request: &HeaderMap,
) -> Vec<(HeaderName, Option<HeaderValue>)> {
    let mut vary = Vec::new();
    for line in response.get_all(http::header::VARY) {
        let Ok(line) = line.to_str() else { continue };
        for name in line.split(',') {
            let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
                continue;
            };
            if vary.iter().any(|(seen, _)| *seen == name) {
                continue;
            }
            let value = request.get(&name).cloned();
            vary.push((name, value));
        }
    }
    vary
}

pub(super) struct Store {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    in_flight: Mutex<HashMap<String, watch::Receiver<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

/// Every live store, for the gauges (`metrics`); a store replaced by a new
/// policy drops out when its last request ends.
static STORES: Mutex<Vec<Weak<Store>>> = Mutex::new(Vec::new());

/// Who fetches a key that is not stored.
pub(super) enum Fetch {
    /// This request: other misses for the key wait until the guard drops
    /// (its answer stored, or found not storable, or abandoned).
    Leader(Guard),
    /// Another request already is: wait for it, then look again.
    Follower(watch::Receiver<()>),
}

/// Held by the request fetching a key; dropping it wakes the followers.
pub(super) struct Guard {
    store: Arc<Store>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut in_flight = self
            .store
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        in_flight.remove(&self.key);
    }
}

impl Store {
    /// Bounded by both `max_entries` and `max_bytes` through one weigher:
    /// each entry weighs at least `max_bytes / max_entries`, so the byte
    /// bound also caps the count.
    pub(super) fn new(max_entries: u64, max_bytes: u64) -> Arc<Self> {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(move |key: &String, entry: &Arc<Entry>| {
                u32::try_from(entry.bytes(key).max(floor)).unwrap_or(u32::MAX)
            })
            .build();
        let store = Arc::new(Self {
            entries,
            in_flight: Mutex::new(HashMap::new()),
        });
        let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|store| store.strong_count() > 0);
        stores.push(Arc::downgrade(&store));
        store
    }

    pub(super) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    pub(super) fn insert(&self, key: String, entry: Entry) {
        self.entries.insert(key, Arc::new(entry));
    }

    pub(super) fn begin(self: &Arc<Self>, key: &str) -> Fetch {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = in_flight.get(key) {
            return Fetch::Follower(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        in_flight.insert(key.to_owned(), waiting);
        Fetch::Leader(Guard {
            store: self.clone(),
            key: key.to_owned(),
            _done: done,
        })
    }

    /// Entries and their weighed bytes (each at least the weigher's floor).
    fn sizes(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

/// Entries and bytes held by every live store.
pub(super) fn totals() -> (u64, u64) {
    let stores: Vec<Arc<Store>> = STORES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    stores.iter().fold((0, 0), |(entries, bytes), store| {
        let (e, b) = store.sizes();
        (entries + e, bytes + b)
    })
}

/// Waits until the fetch `waiting` follows ends, at most `bound`.
pub(super) async fn wait(mut waiting: watch::Receiver<()>, bound: Duration) {
    // `changed` fails once the leader's guard (the sender) is dropped.
    let _ = tokio::time::timeout(bound, async { while waiting.changed().await.is_ok() {} }).await;
}
