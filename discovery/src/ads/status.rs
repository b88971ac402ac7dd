//! What the agent knows about each connected sidecar, for `/status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SidecarStatus {
    pub node_id: String,
    pub service: String,
    pub instance: String,
    pub build_version: String,
    pub peer: String,
    pub connected_at_unix: u64,
    /// Keyed by the short type name ("Cluster").
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TypeStatus {
    /// Serialized as the names, `["*"]` for a wildcard subscription.
    pub subscribed: Subscribed,
    pub sent_version: String,
    pub acked_version: String,
    pub last_nack: Option<NackStatus>,
}

/// A stream's subscription as `/status` shows it: the stream's own set of
/// names (shared, not copied: a sidecar may name a thousand clusters), or
/// None for a wildcard.
#[derive(Clone, Debug, Default)]
pub struct Subscribed(pub Option<Arc<BTreeSet<String>>>);

impl serde::Serialize for Subscribed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(names) => serializer.collect_seq(names.iter()),
            None => serializer.collect_seq(["*"]),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NackStatus {
    pub version: String,
    pub message: String,
    pub at_unix: u64,
}

/// Connected sidecars by stream id. Written a few times per config push, read
/// by `/status`: a mutex is the simple tool here (never on a request path).
#[derive(Default)]
pub struct SidecarRegistry {
    streams: Mutex<BTreeMap<u64, SidecarStatus>>,
}

impl SidecarRegistry {
    pub fn update(&self, stream_id: u64, change: impl FnOnce(&mut SidecarStatus)) {
        let mut streams = self.lock();
        change(streams.entry(stream_id).or_default());
    }

    pub fn remove(&self, stream_id: u64) {
        self.lock().remove(&stream_id);
    }

    pub fn list(&self) -> Vec<SidecarStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, SidecarStatus>> {
        // Each update is a whole field assignment: poisoned data is still consistent.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}
