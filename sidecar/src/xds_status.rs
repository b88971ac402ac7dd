//! The config stream's status: what the xDS client has accepted, rejected
//! and is waiting for. The client (`xds`) writes it; /ready, /config_dump
//! and /metrics read it. It sits at the bottom of the sidecar, depending on
//! nothing in it, so that those readers (metrics is part of the request
//! path) do not import the xDS client; `xds` re-exports it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use weft_proto::config::v1 as pb;
use weft_proto::discovery::v1::Node;

/// Per resource type: what the sidecar holds and what it last said.
#[derive(Clone, Debug, Default)]
pub struct TypeState {
    /// Version of the last accepted response ("" before the first).
    pub version: String,
    /// Nonce of the last response received of this type.
    pub nonce: String,
    /// Whether a response of this type was ever accepted.
    pub accepted: bool,
    /// The last NACK's error detail, until a later response is accepted.
    pub last_nack: Option<String>,
    /// Responses accepted and rejected (NACKed) since start (`/metrics`).
    pub accepted_total: u64,
    pub rejected_total: u64,
}

/// The accepted resources, as received (for /config_dump).
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    pub routes: BTreeMap<String, pb::RouteConfiguration>,
    pub clusters: BTreeMap<String, pb::Cluster>,
    pub assignments: BTreeMap<String, pb::ClusterLoadAssignment>,
    /// This service's inbound policy.
    pub policy: Option<pb::InboundPolicy>,
    /// The trust bundle last accepted over ADS.
    pub trust_bundle: Option<pb::TrustBundle>,
    /// A gateway's listeners.
    pub gateway: Option<pb::Gateway>,
}

/// What /ready, /config_dump read. Updated by the client on every change;
/// never touched by the data path.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: bool,
    pub ready: bool,
    /// Why not ready yet ("RouteConfiguration", "Cluster users, orders").
    pub waiting_for: String,
    pub node: Option<Node>,
    /// Keyed by type URL.
    pub types: BTreeMap<&'static str, TypeState>,
    pub subscribed_clusters: Vec<String>,
    /// Why each subscribed cluster is held (`preload`, `tcp-upstream`,
    /// `policy-upstream`, `on-demand`) and, for an on-demand one, the
    /// coarse second it was first asked for.
    pub held: Vec<HeldCluster>,
    pub accepted: Accepted,
}

/// One subscribed cluster as /config_dump shows it.
#[derive(Clone, Debug)]
pub struct HeldCluster {
    pub name: String,
    pub reason: &'static str,
    /// Coarse clock second it was first asked for (on demand only).
    pub asked_at: Option<u32>,
}

#[derive(Debug, Default)]
pub struct XdsState {
    pub status: Mutex<Status>,
}

impl XdsState {
    /// A poisoned lock only means a panic elsewhere; the data is still the
    /// last consistent snapshot we wrote, so keep serving it.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}
