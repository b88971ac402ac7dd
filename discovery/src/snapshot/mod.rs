//! Snapshots: the complete set of resources the agent serves, rebuilt from the
//! [`MeshStore`](crate::store::MeshStore) after every (debounced) change.
//!
//! A snapshot is immutable and shared (`Arc`) by every sidecar stream; each
//! stream picks the subset its sidecar subscribed to ([`Snapshot::select`]),
//! or, for a sidecar that takes incremental responses, what changed in that
//! subset since the snapshot it holds ([`Snapshot::diff`]).
//!
//! Consecutive snapshots share every resource that did not change (the same
//! `Arc<Resource>`, encoded and hashed once), each snapshot numbers itself
//! (`generation`) and keeps the names each of the last [`HISTORY`] builds
//! touched, so a stream's work per change follows the change, not the mesh.

mod builder;
mod debounce;
pub mod policy;

pub use builder::{RejectedDocument, SnapshotBuilder};
pub use debounce::{DebounceConfig, run_builder, run_builder_with};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use weft_proto::Any;
use weft_proto::config::v1::{ClusterLoadAssignment, InboundPolicy};
use weft_proto::type_url;

/// How many builds' change lists a snapshot keeps. A stream that fell
/// further behind (a sidecar that does not ACK for that many builds)
/// compares the two snapshots whole instead: correct, just O(mesh).
pub const HISTORY: usize = 64;

/// One encoded resource and the hash of its encoding.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub any: Any,
    pub hash: [u8; 32],
}

impl Resource {
    pub fn new<M: prost::Name>(name: String, message: &M) -> Self {
        Self::from_encoded(name, M::type_url(), message.encode_to_vec())
    }

    fn from_encoded(name: String, type_url: String, value: Vec<u8>) -> Self {
        let hash = Sha256::digest(&value).into();
        let any = Any {
            type_url,
            value: value.into(),
        };
        Self { name, any, hash }
    }
}

/// Which resources of one type a sidecar wants: all of them, or these names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    Wildcard,
    /// Shared: a stream's status entry and its incremental base hold the
    /// same set, not copies (a sidecar may name a thousand clusters).
    Names(Arc<BTreeSet<String>>),
}

impl Subscription {
    /// xDS rule: an empty name list subscribes to everything of the type.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() || names.iter().any(|name| name == "*") {
            Self::Wildcard
        } else {
            Self::Names(Arc::new(names.iter().cloned().collect()))
        }
    }

    /// Whether a request's `names` are this subscription, checked without
    /// building a set: a sidecar repeats its (sorted) names in every ACK,
    /// and a thousand of them arrive with every push. Names in another
    /// order count as different (the caller then builds the set).
    pub fn is(&self, names: &[String]) -> bool {
        match self {
            Self::Wildcard => names.is_empty() || names.iter().any(|name| name == "*"),
            Self::Names(held) => {
                held.len() == names.len() && held.iter().zip(names).all(|(a, b)| a == b)
            }
        }
    }

    /// These names (a convenience for tests and callers holding a set).
    pub fn names(names: impl IntoIterator<Item = String>) -> Self {
        Self::Names(Arc::new(names.into_iter().collect()))
    }
}

/// The resources of one type, and the version of all of them.
#[derive(Debug, Default)]
struct TypeSet {
    by_name: BTreeMap<String, Arc<Resource>>,
    /// Content hash of the whole set: a wildcard subscription's version,
    /// computed once per build instead of once per stream.
    version: String,
}

/// The names one build added, changed or removed, per type.
#[derive(Debug, Default)]
pub struct Changes {
    generation: u64,
    touched: BTreeMap<&'static str, BTreeSet<String>>,
}

/// Every resource the agent serves, by type URL then name.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Numbers builds: one more than the previous snapshot's.
    generation: u64,
    types: BTreeMap<&'static str, TypeSet>,
    /// What the last builds touched (oldest first), this one's last.
    history: VecDeque<Arc<Changes>>,
    /// The inbound policy of a service the agent knows nothing about (its
    /// `service` left empty): the mesh-wide default and the intentions
    /// whose destination is `*`, which apply to every service. None: a
    /// mesh without policies (allow, no intentions).
    unknown_service_policy: Option<InboundPolicy>,
    /// Documents whose latest version was rejected.
    pub rejected: Vec<RejectedDocument>,
    /// When the change this snapshot was built for reached the agent (the
    /// oldest since the previous build); None for a build with no change
    /// behind it. Pushes of it are timed from here to the sidecar's ACK.
    pub changed_at: Option<std::time::Instant>,
}

/// The subset of a snapshot one sidecar gets for one type.
pub struct Selection {
    /// Content hash of the selected resources (see proto/README.md).
    pub version: String,
    pub resources: Vec<Any>,
}

/// What changed in one sidecar's subset between two snapshots.
#[derive(Debug, Default)]
pub struct Delta {
    /// Resources whose content changed or that are newly selected, by name.
    pub changed: Vec<Arc<Resource>>,
    /// Names selected before and not any more.
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The content hash of resources given in name order (see proto/README.md).
fn version_of<'a>(resources: impl Iterator<Item = &'a Resource>) -> String {
    let mut hasher = Sha256::new();
    for resource in resources {
        hasher.update(resource.name.as_bytes());
        hasher.update([0]);
        hasher.update(resource.hash);
    }
    hex::encode(&hasher.finalize()[..8])
}

impl Snapshot {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        self.types.get(type_url).map(|set| &set.by_name)
    }

    /// The resource served under `name`: the known one, else the
    /// placeholder an unknown name gets (see [`Snapshot::select`]).
    pub fn resolve(&self, type_url: &str, name: &str) -> Option<Arc<Resource>> {
        self.resources(type_url)
            .and_then(|known| known.get(name).cloned())
            .or_else(|| self.placeholder(type_url, name).map(Arc::new))
    }

    /// The version of what `subscription` selects: for a wildcard the one
    /// computed at build time, for names O(names).
    pub fn version(&self, type_url: &str, subscription: &Subscription) -> String {
        match subscription {
            Subscription::Wildcard => match self.types.get(type_url) {
                Some(set) => set.version.clone(),
                None => version_of(std::iter::empty()),
            },
            Subscription::Names(names) => {
                let chosen: Vec<Arc<Resource>> = names
                    .iter()
                    .filter_map(|name| self.resolve(type_url, name))
                    .collect();
                version_of(chosen.iter().map(|resource| &**resource))
            }
        }
    }

    /// The resources of `type_url` named by `subscription`. A named Cluster or
    /// ClusterLoadAssignment the agent does not know is still answered (a
    /// default cluster with no endpoints), so a sidecar can always complete its
    /// config; requests to such a destination fail with 503, not the whole
    /// config. So is a named InboundPolicy: an unknown service gets the
    /// policy every service without a document gets (the mesh-wide default
    /// and the intentions for destination `*`).
    pub fn select(&self, type_url: &str, subscription: &Subscription) -> Selection {
        match subscription {
            Subscription::Wildcard => Selection {
                version: self.version(type_url, subscription),
                resources: self
                    .resources(type_url)
                    .into_iter()
                    .flat_map(|known| known.values())
                    .map(|resource| resource.any.clone())
                    .collect(),
            },
            Subscription::Names(names) => {
                let chosen: Vec<Arc<Resource>> = names
                    .iter()
                    .filter_map(|name| self.resolve(type_url, name))
                    .collect();
                Selection {
                    version: version_of(chosen.iter().map(|resource| &**resource)),
                    resources: chosen.iter().map(|resource| resource.any.clone()).collect(),
                }
            }
        }
    }

    /// The names of `type_url` that builds after `generation` (up to this
    /// snapshot) touched; None when this snapshot's history does not reach
    /// back that far.
    pub fn touched_since(&self, type_url: &str, generation: u64) -> Option<BTreeSet<&str>> {
        if generation >= self.generation {
            return Some(BTreeSet::new());
        }
        let oldest = self.history.front()?.generation;
        if oldest > generation + 1 {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|changes| changes.generation > generation)
                .filter_map(|changes| changes.touched.get(type_url))
                .flatten()
                .map(String::as_str)
                .collect(),
        )
    }

    /// What a sidecar holding `base`'s selection for `base_subscription`
    /// must receive to hold this snapshot's selection for `subscription`:
    /// the resources whose hash differs or that are newly selected, and
    /// the names no longer selected. Work: O(names touched since `base`)
    /// under an unchanged subscription; O(both subsets) otherwise, or when
    /// `base` is older than this snapshot's history.
    pub fn diff(
        &self,
        type_url: &str,
        base: &Snapshot,
        base_subscription: &Subscription,
        subscription: &Subscription,
    ) -> Delta {
        let mut delta = Delta::default();
        let same_subscription = base_subscription == subscription;
        let touched = if same_subscription {
            self.touched_since(type_url, base.generation)
        } else {
            None
        };
        let compare = |name: &str, delta: &mut Delta| {
            let old = base.resolve_selected(type_url, base_subscription, name);
            let new = self.resolve_selected(type_url, subscription, name);
            match (old, new) {
                (Some(old), Some(new)) if old.hash == new.hash => {}
                (_, Some(new)) => delta.changed.push(new),
                (Some(_), None) => delta.removed.push(name.to_string()),
                (None, None) => {}
            }
        };
        match touched {
            Some(touched) => {
                for name in touched {
                    compare(name, &mut delta);
                }
            }
            None => {
                let mut names: BTreeSet<&str> = BTreeSet::new();
                for (snapshot, subscription) in [(base, base_subscription), (self, subscription)] {
                    match subscription {
                        Subscription::Wildcard => names.extend(
                            snapshot
                                .resources(type_url)
                                .into_iter()
                                .flat_map(|known| known.keys().map(String::as_str)),
                        ),
                        Subscription::Names(wanted) => {
                            names.extend(wanted.iter().map(String::as_str))
                        }
                    }
                }
                for name in names {
                    compare(name, &mut delta);
                }
            }
        }
        delta
    }

    /// `name` as `subscription` selects it here: None if not selected.
    fn resolve_selected(
        &self,
        type_url: &str,
        subscription: &Subscription,
        name: &str,
    ) -> Option<Arc<Resource>> {
        match subscription {
            Subscription::Wildcard => self
                .resources(type_url)
                .and_then(|known| known.get(name).cloned()),
            Subscription::Names(names) if names.contains(name) => self.resolve(type_url, name),
            Subscription::Names(_) => None,
        }
    }

    fn placeholder(&self, type_url: &str, name: &str) -> Option<Resource> {
        match type_url {
            type_url::INBOUND_POLICY => {
                let policy = match &self.unknown_service_policy {
                    Some(template) => InboundPolicy {
                        service: name.to_string(),
                        ..template.clone()
                    },
                    None => policy::inbound_policy(name, None, None, &[]),
                };
                Some(Resource::new(name.to_string(), &policy))
            }
            _ => placeholder(type_url, name),
        }
    }
}

/// The placeholder of an unknown name for the types that need no state.
fn placeholder(type_url: &str, name: &str) -> Option<Resource> {
    match type_url {
        type_url::CLUSTER => Some(Resource::new(
            name.to_string(),
            &crate::documents::default_cluster(name),
        )),
        type_url::CLUSTER_LOAD_ASSIGNMENT => Some(Resource::new(
            name.to_string(),
            &ClusterLoadAssignment {
                cluster_name: name.to_string(),
                endpoints: Vec::new(),
            },
        )),
        _ => None,
    }
}

/// Puts a build's resources together, reusing the previous build's
/// `Arc<Resource>` for every message that encodes to the same bytes (no
/// hash, no new allocation kept), and noting the names that changed.
pub(crate) struct Assembly<'a> {
    previous: &'a BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    types: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    touched: BTreeMap<&'static str, BTreeSet<String>>,
}

impl<'a> Assembly<'a> {
    pub(crate) fn new(
        previous: &'a BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    ) -> Self {
        Self {
            previous,
            types: BTreeMap::new(),
            touched: BTreeMap::new(),
        }
    }

    pub(crate) fn insert<M: prost::Name>(
        &mut self,
        type_url: &'static str,
        name: String,
        message: &M,
    ) {
        let value = message.encode_to_vec();
        let previous = self
            .previous
            .get(type_url)
            .and_then(|known| known.get(&name))
            .filter(|previous| previous.any.value.as_ref() == value.as_slice());
        let resource = match previous {
            Some(previous) => previous.clone(),
            None => {
                self.touched
                    .entry(type_url)
                    .or_default()
                    .insert(name.clone());
                Arc::new(Resource::from_encoded(name.clone(), M::type_url(), value))
            }
        };
        self.types
            .entry(type_url)
            .or_default()
            .insert(name, resource);
    }

    /// Whether this build has a resource `name` of `type_url`.
    pub(crate) fn has(&self, type_url: &str, name: &str) -> bool {
        self.types
            .get(type_url)
            .is_some_and(|known| known.contains_key(name))
    }

    /// Keeps the previous build's resource under `name` without building
    /// its message (the caller knows its input did not change). False if
    /// the previous build had none.
    pub(crate) fn keep(&mut self, type_url: &'static str, name: &str) -> bool {
        let Some(previous) = self
            .previous
            .get(type_url)
            .and_then(|known| known.get(name))
        else {
            return false;
        };
        self.types
            .entry(type_url)
            .or_default()
            .insert(name.to_string(), previous.clone());
        true
    }

    /// The snapshot of these resources, numbered `generation`, with
    /// `history` (the previous builds' changes) extended by this one's.
    /// Returns the resources by type too, for the next build to reuse.
    #[allow(clippy::type_complexity)]
    pub(crate) fn finish(
        mut self,
        generation: u64,
        history: &mut VecDeque<Arc<Changes>>,
    ) -> (
        Snapshot,
        BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    ) {
        for (type_url, known) in self.previous {
            let now = self.types.get(type_url);
            for name in known.keys() {
                if now.is_none_or(|now| !now.contains_key(name)) {
                    self.touched
                        .entry(type_url)
                        .or_default()
                        .insert(name.clone());
                }
            }
        }
        history.push_back(Arc::new(Changes {
            generation,
            touched: self.touched,
        }));
        while history.len() > HISTORY {
            history.pop_front();
        }
        let types = self
            .types
            .iter()
            .map(|(type_url, by_name)| {
                let version = version_of(by_name.values().map(|resource| &**resource));
                (
                    *type_url,
                    TypeSet {
                        by_name: by_name.clone(),
                        version,
                    },
                )
            })
            .collect();
        let snapshot = Snapshot {
            generation,
            types,
            history: history.clone(),
            ..Snapshot::default()
        };
        (snapshot, self.types)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Health, MeshState};

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".into(),
            port,
            health: Health::Healthy,
            weight: 1,
            meshed: true,
            instance_id: format!("i-{port}"),
            region: String::new(),
            zone: String::new(),
        }
    }

    fn mesh(services: &[(&str, u16)]) -> MeshState {
        let mut state = MeshState::default();
        for (name, port) in services {
            state
                .services
                .insert(name.to_string(), vec![endpoint(*port)]);
        }
        state
    }

    /// The names of the resources a delta sends.
    fn changed(delta: &Delta) -> Vec<&str> {
        delta.changed.iter().map(|r| r.name.as_str()).collect()
    }

    fn touched(snapshot: &Snapshot, type_url: &str, since: u64) -> Option<Vec<String>> {
        snapshot
            .touched_since(type_url, since)
            .map(|names| names.into_iter().map(str::to_string).collect())
    }

    #[test]
    fn a_rebuild_shares_unchanged_resources_and_lists_only_what_changed() {
        let mut builder = SnapshotBuilder::new();
        let (first, _) = builder.build(&mesh(&[("a", 1), ("b", 2), ("c", 3)]));
        let (second, _) = builder.build(&mesh(&[("a", 1), ("b", 20), ("c", 3)]));
        assert_eq!(second.generation(), first.generation() + 1);
        let cla = |snapshot: &Snapshot, name: &str| {
            snapshot
                .resources(type_url::CLUSTER_LOAD_ASSIGNMENT)
                .unwrap()[name]
                .clone()
        };
        assert!(
            Arc::ptr_eq(&cla(&first, "a"), &cla(&second, "a")),
            "not re-encoded"
        );
        assert!(!Arc::ptr_eq(&cla(&first, "b"), &cla(&second, "b")));
        let since_first = first.generation();
        assert_eq!(
            touched(&second, type_url::CLUSTER_LOAD_ASSIGNMENT, since_first),
            Some(vec!["b".to_string()])
        );
        assert_eq!(
            touched(&second, type_url::ROUTE_CONFIGURATION, since_first),
            Some(vec![])
        );
        assert_eq!(
            second.version(type_url::ROUTE_CONFIGURATION, &Subscription::Wildcard),
            first.version(type_url::ROUTE_CONFIGURATION, &Subscription::Wildcard),
        );

        // A service leaving touches its name in every type it had.
        let (third, _) = builder.build(&mesh(&[("a", 1), ("b", 20)]));
        for type_url in [
            type_url::ROUTE_CONFIGURATION,
            type_url::CLUSTER,
            type_url::CLUSTER_LOAD_ASSIGNMENT,
        ] {
            assert_eq!(
                touched(&third, type_url, second.generation()),
                Some(vec!["c".to_string()]),
                "{type_url}"
            );
        }
        let delta = third.diff(
            type_url::ROUTE_CONFIGURATION,
            &second,
            &Subscription::Wildcard,
            &Subscription::Wildcard,
        );
        assert!(delta.changed.is_empty());
        assert_eq!(delta.removed, ["c"]);
        // Named: a name that left gets its placeholder, not a removal.
        let named = Subscription::names(["b".to_string(), "c".to_string()]);
        let delta = third.diff(type_url::CLUSTER_LOAD_ASSIGNMENT, &second, &named, &named);
        assert_eq!(changed(&delta), ["c"]);
        assert!(delta.removed.is_empty());
    }

    #[test]
    fn a_base_older_than_the_history_is_compared_whole_with_the_same_result() {
        let mut builder = SnapshotBuilder::new();
        let (base, _) = builder.build(&mesh(&[("a", 1), ("b", 2), ("c", 3)]));
        let mut latest = base;
        for port in 0..HISTORY as u16 + 2 {
            latest = builder.build(&mesh(&[("a", 100 + port), ("b", 2)])).0;
        }
        let (base, _) = SnapshotBuilder::new().build(&mesh(&[("a", 1), ("b", 2), ("c", 3)]));
        assert_eq!(touched(&latest, type_url::CLUSTER_LOAD_ASSIGNMENT, 1), None);
        let delta = latest.diff(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &base,
            &Subscription::Wildcard,
            &Subscription::Wildcard,
        );
        assert_eq!(changed(&delta), ["a"]);
        assert_eq!(delta.removed, ["c"]);
    }
}
