//! The agent's single place of truth about the mesh: backends write into it,
//! the snapshot builder is woken by every change.
//!
//! This is the agent's control path (a handful of writes per Consul change),
//! never a sidecar's request path, so a plain mutex is the simple, right tool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

use crate::model::{Endpoint, Intention, MeshState, RawDocument, TrustRoots};

pub struct MeshStore {
    state: Mutex<MeshState>,
    /// Bumped on every change that alters `state`; the builder watches it.
    generation: watch::Sender<u64>,
    /// True once the backend has loaded the catalog, every service's
    /// endpoints and the documents at least once (`/readyz`).
    synced: watch::Sender<bool>,
    /// When the oldest change not yet taken by a snapshot build reached the
    /// store: the start of the push latency (`/metrics`). A Consul watch
    /// writes here within microseconds of its blocking query returning.
    unbuilt_change: Mutex<Option<Instant>>,
}

impl Default for MeshStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshStore {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(MeshState::default()),
            generation: watch::channel(0).0,
            synced: watch::channel(false).0,
            unbuilt_change: Mutex::new(None),
        }
    }

    /// A copy of the current state.
    pub fn state(&self) -> MeshState {
        self.lock().clone()
    }

    /// When the oldest change since the last call reached the store (None:
    /// no change since). The snapshot builder takes it before each build.
    pub fn take_change_time(&self) -> Option<Instant> {
        self.unbuilt_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Wakes on every change; the value is a change counter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Wakes when the first full sync is done.
    pub fn subscribe_synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub fn mark_synced(&self) {
        self.synced
            .send_if_modified(|synced| !std::mem::replace(synced, true));
    }

    /// The catalog's service list: adds new services (with no endpoints yet)
    /// and forgets services that are gone.
    pub fn set_service_names(&self, names: &BTreeSet<String>) {
        self.update(|state| {
            let before = state.services.len();
            state.services.retain(|name, _| names.contains(name));
            let mut changed = state.services.len() != before;
            for name in names {
                if !state.services.contains_key(name) {
                    state.services.insert(name.clone(), Vec::new());
                    changed = true;
                }
            }
            changed
        });
    }

    /// All endpoints of one service (sorted, so that order never counts as a change).
    pub fn set_endpoints(&self, service: &str, mut endpoints: Vec<Endpoint>) {
        endpoints.sort();
        self.update(|state| match state.services.get_mut(service) {
            Some(current) if *current == endpoints => false,
            Some(current) => {
                *current = endpoints;
                true
            }
            // Endpoints of a service the catalog no longer lists arrive late: drop them.
            None => false,
        });
    }

    /// Replaces every service at once (the file backend's static endpoints).
    pub fn set_all_services(&self, services: BTreeMap<String, Vec<Endpoint>>) {
        let services = services
            .into_iter()
            .map(|(name, mut endpoints)| {
                endpoints.sort();
                (name, endpoints)
            })
            .collect();
        self.update(|state| {
            if state.services == services {
                return false;
            }
            state.services = services;
            true
        });
    }

    /// Replaces the whole document set (a KV prefix or a directory is always read whole).
    pub fn set_documents(&self, documents: BTreeMap<String, RawDocument>) {
        self.update(|state| {
            if state.documents == documents {
                return false;
            }
            state.documents = documents;
            true
        });
    }

    /// Replaces every intention at once (Consul lists them whole).
    pub fn set_intentions(&self, mut intentions: Vec<Intention>) {
        intentions.sort();
        self.update(|state| {
            if state.intentions == intentions {
                return false;
            }
            state.intentions = intentions;
            true
        });
    }

    /// Replaces every service's declared upstreams at once (read from the
    /// Connect sidecar registrations, whole, like the catalog).
    pub fn set_upstreams(&self, upstreams: BTreeMap<String, BTreeSet<String>>) {
        self.update(|state| {
            if state.upstreams == upstreams {
                return false;
            }
            state.upstreams = upstreams;
            true
        });
    }

    /// Replaces the trust bundle (the CA loaded new roots).
    pub fn set_trust_roots(&self, roots: TrustRoots) {
        self.update(|state| {
            if state.trust_roots.as_ref() == Some(&roots) {
                return false;
            }
            state.trust_roots = Some(roots);
            true
        });
    }

    fn update(&self, change: impl FnOnce(&mut MeshState) -> bool) {
        let changed = change(&mut self.lock());
        if changed {
            self.unbuilt_change
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert_with(Instant::now);
            self.generation.send_modify(|generation| *generation += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeshState> {
        // A panic while holding the lock leaves consistent data (every update
        // is a whole assignment), so a poisoned lock is safe to reuse.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IntentionAction;

    fn intention(id: &str, source: &str) -> Intention {
        Intention {
            id: id.into(),
            source: source.into(),
            destination: "db".into(),
            action: IntentionAction::Deny,
        }
    }

    #[test]
    fn intentions_are_a_change_only_when_their_set_changes() {
        let store = MeshStore::new();
        let changes = store.subscribe();
        store.set_intentions(vec![intention("2", "web"), intention("1", "api")]);
        assert_eq!(*changes.borrow(), 1);
        assert_eq!(store.state().intentions[0].id, "1", "kept sorted");

        // The same set in another order (Consul's list order) is no change.
        store.set_intentions(vec![intention("1", "api"), intention("2", "web")]);
        assert_eq!(*changes.borrow(), 1);

        store.set_intentions(Vec::new());
        assert_eq!(*changes.borrow(), 2);
        assert!(store.state().intentions.is_empty());
    }
}
