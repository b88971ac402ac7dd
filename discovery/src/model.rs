//! What the agent knows about the mesh, independent of where it came from
//! (Consul or a config directory). Backends write it into the [`MeshStore`],
//! the snapshot builder reads it.
//!
//! [`MeshStore`]: crate::store::MeshStore

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// The health of one service instance, as the backend reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Every check passing (Consul), or a static endpoint.
    Healthy,
    /// A check is critical (or warning): no traffic.
    Unhealthy,
}

/// One address that serves a service: the instance itself, or its sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Endpoint {
    /// IP address or DNS name.
    pub address: String,
    pub port: u16,
    pub health: Health,
    /// Relative load-balancing weight, at least 1.
    pub weight: u32,
    /// True when `address:port` is the instance's sidecar (a Consul Connect
    /// proxy) rather than the app itself.
    pub meshed: bool,
    /// Catalog instance id (Consul service ID), for status pages and logs.
    pub instance_id: String,
    pub region: String,
    pub zone: String,
}

impl Endpoint {
    /// A healthy, unmeshed endpoint of weight 1 with no locality, named
    /// `instance_id`.
    pub fn healthy(address: &str, port: u16, instance_id: &str) -> Self {
        Self {
            address: address.into(),
            port,
            health: Health::Healthy,
            weight: 1,
            meshed: false,
            instance_id: instance_id.into(),
            region: String::new(),
            zone: String::new(),
        }
    }
}

/// A configuration document as the backend found it, before validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDocument {
    /// Key relative to the config root: `routes/<host>`, `destinations/<svc>`,
    /// `policies/<svc>`.
    pub key: String,
    pub value: Bytes,
    /// Where it came from, for error messages: `consul kv weft/routes/users`
    /// or a file path.
    pub origin: String,
    /// Whether `value` is YAML (file backend) rather than JSON.
    pub yaml: bool,
}

/// What an intention decides for its source's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentionAction {
    Allow,
    Deny,
}

/// An intention kept outside Weft's documents (Consul's, today): whether
/// calls from `source` to `destination` are allowed. Either name may be
/// `*`, for every service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Intention {
    /// The backend's id for it (Consul's intention ID), for logs and the
    /// origin a sidecar reports when it denies a request.
    pub id: String,
    pub source: String,
    pub destination: String,
    pub action: IntentionAction,
}

/// Everything the backends know, as one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshState {
    /// Service name -> all its known endpoints (healthy or not). A service
    /// present with no endpoints is known but has no instances.
    pub services: BTreeMap<String, Vec<Endpoint>>,
    /// Document key -> document.
    pub documents: BTreeMap<String, RawDocument>,
    /// Consul's intentions, sorted (so that their order is never a change).
    /// Always empty with the file backend.
    pub intentions: Vec<Intention>,
    /// The roots sidecars must trust, when the agent issues certificates
    /// (served as the `TrustBundle` resource, pushed on a CA rotation).
    pub trust_roots: Option<TrustRoots>,
    /// Service name -> the destinations its sidecars declare they call
    /// (Consul's `upstreams` of its Connect sidecar registrations), served
    /// in its `InboundPolicy` so its sidecars discover them at start.
    pub upstreams: BTreeMap<String, BTreeSet<String>>,
}

/// The mesh CA's trust bundle as the agent publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustRoots {
    /// The trust domain: also the resource's name.
    pub trust_domain: String,
    /// Every root currently trusted, PEM (both during a rotation).
    pub roots_pem: String,
}
