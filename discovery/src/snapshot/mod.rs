//! Snapshots: the complete set of resources the agent serves, rebuilt from the
//! [`MeshStore`](crate::store::MeshStore) after every (debounced) change.
//!
//! A snapshot is immutable and shared (`Arc`) by every sidecar stream; each
//! stream picks the subset its sidecar subscribed to ([`Snapshot::select`]).

mod builder;
mod debounce;
pub mod policy;

pub use builder::{RejectedDocument, SnapshotBuilder};
pub use debounce::{DebounceConfig, run_builder, run_builder_with};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use weft_proto::Any;
use weft_proto::config::v1::{ClusterLoadAssignment, InboundPolicy};
use weft_proto::type_url;

/// One encoded resource and the hash of its encoding.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub any: Any,
    pub hash: [u8; 32],
}

impl Resource {
    pub fn new<M: prost::Name>(name: String, message: &M) -> Self {
        let value = message.encode_to_vec();
        let hash = Sha256::digest(&value).into();
        let any = Any {
            type_url: M::type_url(),
            value: value.into(),
        };
        Self { name, any, hash }
    }
}

/// Which resources of one type a sidecar wants: all of them, or these names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscription {
    /// xDS rule: an empty name list subscribes to everything of the type.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() || names.iter().any(|name| name == "*") {
            Self::Wildcard
        } else {
            Self::Names(names.iter().cloned().collect())
        }
    }
}

/// Every resource the agent serves, by type URL then name.
#[derive(Debug, Default)]
pub struct Snapshot {
    resources: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
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

impl Snapshot {
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        self.resources.get(type_url)
    }

    fn insert(&mut self, type_url: &'static str, resource: Resource) {
        self.resources
            .entry(type_url)
            .or_default()
            .insert(resource.name.clone(), Arc::new(resource));
    }

    /// The resources of `type_url` named by `subscription`. A named Cluster or
    /// ClusterLoadAssignment the agent does not know is still answered (a
    /// default cluster with no endpoints), so a sidecar can always complete its
    /// config; requests to such a destination fail with 503, not the whole
    /// config. So is a named InboundPolicy: an unknown service gets the
    /// policy every service without a document gets (the mesh-wide default
    /// and the intentions for destination `*`).
    pub fn select(&self, type_url: &str, subscription: &Subscription) -> Selection {
        let empty = BTreeMap::new();
        let known = self.resources.get(type_url).unwrap_or(&empty);
        let mut chosen: Vec<Arc<Resource>> = match subscription {
            Subscription::Wildcard => known.values().cloned().collect(),
            Subscription::Names(names) => names
                .iter()
                .filter_map(|name| {
                    known
                        .get(name)
                        .cloned()
                        .or_else(|| self.placeholder(type_url, name).map(Arc::new))
                })
                .collect(),
        };
        chosen.sort_by(|a, b| a.name.cmp(&b.name));
        let mut hasher = Sha256::new();
        for resource in &chosen {
            hasher.update(resource.name.as_bytes());
            hasher.update([0]);
            hasher.update(resource.hash);
        }
        let version = hex::encode(&hasher.finalize()[..8]);
        Selection {
            version,
            resources: chosen.iter().map(|resource| resource.any.clone()).collect(),
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
