//! The xDS client: one ADS stream to the agent, ACK/NACK per
//! `proto/README.md`, and the routing table it compiles.
//!
//! [`Core`] is the protocol state machine (no I/O, unit-tested): it takes a
//! `DiscoveryResponse`, validates and accepts or rejects it, and returns the
//! requests to send back. `client.rs` runs it over a tonic stream with
//! reconnects. [`XdsState`] is what the admin endpoints read.

pub mod backoff;
pub mod client;
pub mod compile;
pub mod dump;
mod inbound;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prost::Message;
use weft_proto::config::v1 as pb;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use weft_proto::type_url;

use crate::authn::AuthnPolicy;
use crate::authz::SharedAuthz;
use crate::mtls_mode::SharedMtlsMode;
use crate::ratelimit::{RateLimiter, SharedRateLimits};
use crate::table::{ClusterSettings, RoutingTable};
use crate::upstream::Dns;
use compile::{CompiledRoutes, EndpointSpec};

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
    pub accepted: Accepted,
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

/// The protocol state machine of one sidecar; survives reconnects.
pub struct Core {
    node: Node,
    types: BTreeMap<&'static str, TypeState>,
    /// Clusters (and assignments) the accepted routes name, plus `required`.
    clusters_wanted: BTreeSet<String>,
    /// Clusters wanted whatever the routes say (`--tcp-upstream`
    /// destinations: no route names them, there is no Host header).
    required: BTreeSet<String>,
    /// The route tables in the routing table now.
    routes: BTreeMap<String, CompiledRoutes>,
    /// Accepted route tables that name a cluster whose Cluster or assignment
    /// has not arrived yet: they go live when it has (make before break), so
    /// a new destination never answers 503 during the round trip.
    pending_routes: Option<BTreeMap<String, CompiledRoutes>>,
    clusters: BTreeMap<String, ClusterSettings>,
    assignments: BTreeMap<String, Vec<EndpointSpec>>,
    accepted: Accepted,
    ready: bool,
    table: Arc<ArcSwap<RoutingTable>>,
    dns: Dns,
    /// This sidecar's mesh identity, when mTLS is on.
    identity: Option<Arc<weft_certs::IdentityStore>>,
    /// The trust domain whose `TrustBundle` this sidecar subscribes to:
    /// set when its leaf comes from the agent, so root rotations arrive
    /// at once instead of with the next leaf.
    bundle_trust_domain: Option<String>,
    /// Where the accepted inbound policy goes: intentions (read by the
    /// authorize layer), JWT (the authn layer), mTLS mode (the listener).
    authz: SharedAuthz,
    authn: AuthnPolicy,
    mtls: SharedMtlsMode,
    /// The service's inbound rate limits (read by the ratelimit layer).
    rate_limits: SharedRateLimits,
    /// The resources last accepted, by type and name, as received: the set
    /// an incremental response is merged into (proto/README.md,
    /// "Incremental responses").
    held: BTreeMap<&'static str, BTreeMap<String, weft_proto::Any>>,
    /// The agent of the current stream sends incremental responses (its
    /// `weft-agent-features` header says so); otherwise each response is
    /// the whole set (state of the world).
    incremental: bool,
}

fn canonical(t: &str) -> Option<&'static str> {
    type_url::ALL.into_iter().find(|u| *u == t)
}

impl Core {
    pub fn new(node: Node, table: Arc<ArcSwap<RoutingTable>>, dns: Dns) -> Self {
        Self {
            node,
            types: type_url::ALL
                .into_iter()
                .map(|t| (t, TypeState::default()))
                .collect(),
            clusters_wanted: BTreeSet::new(),
            required: BTreeSet::new(),
            routes: BTreeMap::new(),
            pending_routes: None,
            clusters: BTreeMap::new(),
            assignments: BTreeMap::new(),
            accepted: Accepted::default(),
            ready: false,
            table,
            dns,
            identity: None,
            bundle_trust_domain: None,
            authz: SharedAuthz::default(),
            authn: AuthnPolicy::default(),
            mtls: SharedMtlsMode::default(),
            rate_limits: SharedRateLimits::default(),
            held: BTreeMap::new(),
            incremental: false,
        }
    }

    /// Where accepted inbound rate limits are published for the data path.
    pub fn with_rate_limits(mut self, rate_limits: SharedRateLimits) -> Self {
        self.rate_limits = rate_limits;
        self
    }

    /// Where accepted inbound policies are published for the data path.
    pub fn with_authz(mut self, authz: SharedAuthz) -> Self {
        self.authz = authz;
        self
    }

    /// Where accepted JWT policies are published for the data path.
    pub fn with_authn(mut self, authn: AuthnPolicy) -> Self {
        self.authn = authn;
        self
    }

    /// Where the accepted inbound mTLS mode is published for the listener.
    pub fn with_mtls_mode(mut self, mtls: SharedMtlsMode) -> Self {
        self.mtls = mtls;
        self
    }

    /// Clusters to hold whatever the routes name (the sidecar is ready only
    /// once they have arrived).
    pub fn with_required_clusters(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.required = names.into_iter().collect();
        self.clusters_wanted = self.required.clone();
        self
    }

    /// Turns mesh mTLS on: meshed endpoints of clusters with an identity
    /// are reached over mTLS with this sidecar's leaf.
    pub fn with_identity(mut self, identity: Arc<weft_certs::IdentityStore>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Subscribes to the agent's `TrustBundle` for `trust_domain`; each
    /// valid push replaces the bundle in the identity store (set with
    /// [`Core::with_identity`]).
    pub fn with_trust_bundle_updates(mut self, trust_domain: String) -> Self {
        self.bundle_trust_domain = Some(trust_domain);
        self
    }

    /// Whether the agent of the stream just opened sends incremental
    /// responses (set before its first response is handled).
    pub fn set_incremental(&mut self, incremental: bool) {
        self.incremental = incremental;
    }

    fn names(&self, t: &str) -> Vec<String> {
        match t {
            type_url::TRUST_BUNDLE => self.bundle_trust_domain.iter().cloned().collect(),
            type_url::ROUTE_CONFIGURATION => Vec::new(), // wildcard: every route table
            type_url::INBOUND_POLICY => vec![self.node.service.clone()], // our own
            _ => self.clusters_wanted.iter().cloned().collect(),
        }
    }

    fn request(&self, t: &'static str, nonce: String, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.types[t].version.clone(),
            node: None,
            resource_names: self.names(t),
            type_url: t.to_owned(),
            response_nonce: nonce,
            error_detail: error.map(|message| ErrorDetail { code: 3, message }),
        }
    }

    /// The requests that open a stream: one per type, routes first; the
    /// first carries the node; versions are those held (empty on first start).
    /// Clusters and assignments are asked for by name, so before the first
    /// routes name any there is nothing to ask (an empty list would mean "all").
    pub fn initial_requests(&self) -> Vec<DiscoveryRequest> {
        let know_clusters = self.types[type_url::ROUTE_CONFIGURATION].accepted;
        type_url::ALL
            .into_iter()
            .filter(|t| match *t {
                type_url::ROUTE_CONFIGURATION | type_url::INBOUND_POLICY => true,
                type_url::TRUST_BUNDLE => self.bundle_trust_domain.is_some(),
                _ => know_clusters,
            })
            .enumerate()
            .map(|(i, t)| {
                let mut r = self.request(t, String::new(), None);
                if i == 0 {
                    r.node = Some(self.node.clone());
                }
                r
            })
            .collect()
    }

    /// Handles one response; returns the requests to send (ACK or NACK,
    /// plus subscription updates when the routes name other clusters).
    pub fn handle(&mut self, resp: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let Some(t) = canonical(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unknown type");
            return Vec::new();
        };
        let nonce = resp.nonce.clone();
        if let Some(state) = self.types.get_mut(t) {
            state.nonce = nonce.clone();
        }
        if self.types[t].accepted && self.types[t].version == resp.version_info {
            // Same content as held (e.g. after a reconnect): ACK, no rebuild.
            return vec![self.request(t, nonce, None)];
        }
        // The agent sends what changed: the whole set is what we hold with
        // it merged in, validated and compiled whole as before.
        let merged = self.merge(t, &resp);
        let result = merged.and_then(|(held, whole)| {
            let result = match t {
                type_url::ROUTE_CONFIGURATION => self.accept_routes(&whole),
                type_url::CLUSTER => self.accept_clusters(&whole),
                type_url::INBOUND_POLICY => self.accept_policy(&whole),
                type_url::TRUST_BUNDLE => self.accept_trust_bundle(&whole),
                _ => self.accept_assignments(&whole),
            };
            if result.is_ok() {
                self.held.insert(t, held);
            }
            result
        });
        match result {
            Err(errors) => {
                let detail = errors.join("\n");
                tracing::warn!(
                    r#type = type_url::short(t),
                    version = %resp.version_info,
                    errors = %detail,
                    "rejected config (NACK); keeping the last good one"
                );
                if let Some(s) = self.types.get_mut(t) {
                    s.last_nack = Some(detail.clone());
                    s.rejected_total += 1;
                }
                vec![self.request(t, nonce, Some(detail))]
            }
            Ok(resubscribe) => {
                if let Some(s) = self.types.get_mut(t) {
                    s.version = resp.version_info.clone();
                    s.accepted = true;
                    s.last_nack = None;
                    s.accepted_total += 1;
                }
                tracing::info!(r#type = type_url::short(t), version = %resp.version_info, resources = resp.resources.len(), "accepted config");
                // The bundle lives in the identity store, read at handshake
                // time: the routing table does not change.
                if t != type_url::TRUST_BUNDLE {
                    self.rebuild();
                }
                let mut out = vec![self.request(t, nonce, None)];
                // The first routes also open the cluster subscriptions
                // (initial_requests holds them back until names are known).
                let never_asked = self.types[type_url::CLUSTER].nonce.is_empty()
                    && !self.types[type_url::CLUSTER].accepted;
                if resubscribe || (t == type_url::ROUTE_CONFIGURATION && never_asked) {
                    for t in [type_url::CLUSTER, type_url::CLUSTER_LOAD_ASSIGNMENT] {
                        out.push(self.request(t, self.types[t].nonce.clone(), None));
                    }
                }
                out
            }
        }
    }

    /// The held resources of `t` with `resp` applied: for an incremental
    /// response its `removed_resources` dropped (`*`: everything held) and
    /// its resources put in by name; a state-of-the-world one replaces them. Returns the new held set and the
    /// response as a whole set; nothing changes until it is accepted.
    #[allow(clippy::type_complexity)]
    fn merge(
        &self,
        t: &'static str,
        resp: &DiscoveryResponse,
    ) -> Result<(BTreeMap<String, weft_proto::Any>, DiscoveryResponse), Vec<String>> {
        let replace = !self.incremental || resp.removed_resources.iter().any(|name| name == "*");
        let mut held = if replace {
            BTreeMap::new()
        } else {
            self.held.get(t).cloned().unwrap_or_default()
        };
        for name in &resp.removed_resources {
            held.remove(name);
        }
        let mut errors = Vec::new();
        for (i, any) in resp.resources.iter().enumerate() {
            match resource_name(t, any) {
                Ok(name) => {
                    held.insert(name, any.clone());
                }
                Err(e) => errors.push(format!("resources[{i}]: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let whole = DiscoveryResponse {
            resources: held.values().cloned().collect(),
            removed_resources: Vec::new(),
            ..resp.clone()
        };
        Ok((held, whole))
    }

    fn decode<M: Message + Default>(resp: &DiscoveryResponse, errors: &mut Vec<String>) -> Vec<M> {
        let mut out = Vec::new();
        for (i, any) in resp.resources.iter().enumerate() {
            if any.type_url != resp.type_url {
                errors.push(format!(
                    "resources[{i}]: type {} in a {} response",
                    any.type_url, resp.type_url
                ));
                continue;
            }
            match M::decode(any.value.as_ref()) {
                Ok(m) => out.push(m),
                Err(e) => errors.push(format!("resources[{i}]: cannot decode: {e}")),
            }
        }
        out
    }

    /// Returns whether the cluster subscription changed.
    fn accept_routes(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::RouteConfiguration> = Self::decode(resp, &mut errors);
        let mut compiled = BTreeMap::new();
        for m in &msgs {
            match compile::compile_routes(m) {
                Ok(c) => {
                    compiled.insert(m.name.clone(), c);
                }
                Err(errs) => errors.extend(
                    errs.into_iter()
                        .map(|e| format!("RouteConfiguration {}: {e}", m.name)),
                ),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let wanted: BTreeSet<String> = compiled
            .values()
            .flat_map(|c| c.clusters.iter().cloned())
            .chain(self.required.iter().cloned())
            .collect();
        let changed = wanted != self.clusters_wanted;
        self.clusters_wanted = wanted;
        self.pending_routes = Some(compiled);
        self.accepted.routes = msgs.into_iter().map(|m| (m.name.clone(), m)).collect();
        Ok(changed)
    }

    fn accept_clusters(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::Cluster> = Self::decode(resp, &mut errors);
        let mut compiled = BTreeMap::new();
        for m in &msgs {
            match compile::compile_cluster(m) {
                Ok(mut c) => {
                    // Buckets of limits that did not change stay as they are.
                    let previous = self
                        .clusters
                        .get(&m.name)
                        .and_then(|p| p.rate_limits.as_ref());
                    c.rate_limits = c
                        .rate_limits
                        .take()
                        .map(|new| RateLimiter::carry_over(new, previous.map(|p| &**p)));
                    compiled.insert(m.name.clone(), c);
                }
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| format!("Cluster {}: {e}", m.name)))
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.clusters = compiled;
        self.accepted.clusters = msgs.into_iter().map(|m| (m.name.clone(), m)).collect();
        Ok(false)
    }

    /// This service's policy compiled whole (intentions, JWT, mTLS mode)
    /// and only then swapped in, all parts together; policies for other
    /// names (there should be none) are ignored.
    fn accept_policy(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::InboundPolicy> = Self::decode(resp, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let ours = msgs.into_iter().find(|m| m.service == self.node.service);
        let compiled = match &ours {
            Some(m) => {
                inbound::compile(m, self.authn.get().as_deref(), &self.dns).map_err(|errs| {
                    errs.into_iter()
                        .map(|e| format!("InboundPolicy {}: {e}", m.service))
                        .collect::<Vec<_>>()
                })?
            }
            // An empty answer is "no policy": as before any arrived.
            None => inbound::CompiledInbound::default(),
        };
        self.authz.store(Arc::new(compiled.authz));
        let previous_limits = self.rate_limits.load_full();
        self.rate_limits.store(
            compiled
                .rate_limits
                .map(|new| RateLimiter::carry_over(Arc::new(new), previous_limits.as_deref())),
        );
        self.authn.set(compiled.authn);
        self.mtls.set(compiled.mtls);
        self.accepted.policy = ours;
        Ok(false)
    }

    /// The bundle of our trust domain, swapped into the identity store for
    /// new handshakes (open connections keep theirs). Garbage, a bundle
    /// with no root, or no bundle at all is refused: the store keeps the
    /// roots it has, which still verify every peer they did.
    fn accept_trust_bundle(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::TrustBundle> = Self::decode(resp, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let (Some(store), Some(trust_domain)) = (&self.identity, &self.bundle_trust_domain) else {
            return Err(vec![
                "TrustBundle: this sidecar has no mesh identity to apply it to".into(),
            ]);
        };
        let Some(ours) = msgs.into_iter().find(|m| m.trust_domain == *trust_domain) else {
            return Err(vec![format!(
                "TrustBundle {trust_domain}: missing from the response; an empty bundle would refuse every peer, keeping the current roots"
            )]);
        };
        let bundle = weft_certs::TrustBundle::from_pem(&ours.roots_pem)
            .map_err(|e| vec![format!("TrustBundle {trust_domain}: {e}")])?;
        let roots = bundle.len();
        store
            .set_bundle(bundle)
            .map_err(|e| vec![format!("TrustBundle {trust_domain}: {e}")])?;
        tracing::info!(%trust_domain, roots, "trust bundle updated; new handshakes verify peers against it");
        self.accepted.trust_bundle = Some(ours);
        Ok(false)
    }

    fn accept_assignments(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::ClusterLoadAssignment> = Self::decode(resp, &mut errors);
        let mut compiled = BTreeMap::new();
        for m in &msgs {
            match compile::compile_assignment(m) {
                Ok(c) => {
                    compiled.insert(m.cluster_name.clone(), c);
                }
                Err(errs) => errors.extend(
                    errs.into_iter()
                        .map(|e| format!("ClusterLoadAssignment {}: {e}", m.cluster_name)),
                ),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.assignments = compiled;
        self.accepted.assignments = msgs
            .into_iter()
            .map(|m| (m.cluster_name.clone(), m))
            .collect();
        Ok(false)
    }

    fn rebuild(&mut self) {
        if let Some(pending) = &self.pending_routes {
            let held = pending
                .values()
                .flat_map(|routes| routes.clusters.iter())
                .all(|name| {
                    self.clusters.contains_key(name) && self.assignments.contains_key(name)
                });
            if held {
                self.routes = self.pending_routes.take().unwrap_or_default();
            }
        }
        let prev = self.table.load();
        let table = compile::build_table(
            &prev,
            &self.routes,
            &self.clusters,
            &self.assignments,
            self.identity.as_ref(),
            &self.dns,
        );
        self.table.store(Arc::new(table));
        if !self.ready && self.waiting_for().is_empty() {
            self.ready = true;
            tracing::info!("first complete config received; ready");
        }
    }

    /// What is missing for a complete config; empty when complete.
    pub fn waiting_for(&self) -> String {
        if !self.types[type_url::ROUTE_CONFIGURATION].accepted {
            return "RouteConfiguration".into();
        }
        let missing = |held: &dyn Fn(&String) -> bool| {
            self.clusters_wanted
                .iter()
                .filter(|n| !held(n))
                .cloned()
                .collect::<Vec<_>>()
        };
        let no_cluster = missing(&|n| self.clusters.contains_key(n));
        let no_cla = missing(&|n| self.assignments.contains_key(n));
        let mut parts = Vec::new();
        if !self.types[type_url::INBOUND_POLICY].accepted {
            parts.push("InboundPolicy".to_owned());
        }
        if !self.types[type_url::CLUSTER].accepted || !no_cluster.is_empty() {
            parts.push(
                format!("Cluster {}", no_cluster.join(", "))
                    .trim_end()
                    .to_owned(),
            );
        }
        if !self.types[type_url::CLUSTER_LOAD_ASSIGNMENT].accepted || !no_cla.is_empty() {
            parts.push(
                format!("ClusterLoadAssignment {}", no_cla.join(", "))
                    .trim_end()
                    .to_owned(),
            );
        }
        parts.join("; ")
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Copies the state the admin endpoints show.
    pub fn publish(&self, status: &mut Status) {
        status.ready = self.ready;
        status.waiting_for = self.waiting_for();
        status.node = Some(self.node.clone());
        status.types = self.types.clone();
        status.subscribed_clusters = self.clusters_wanted.iter().cloned().collect();
        status.accepted = self.accepted.clone();
    }
}

/// The name a resource is known by (what `removed_resources` and a later
/// response's resource of the same name refer to).
fn resource_name(t: &str, any: &weft_proto::Any) -> Result<String, String> {
    if any.type_url != t {
        return Err(format!("type {} in a {t} response", any.type_url));
    }
    fn decoded<M: Message + Default>(any: &weft_proto::Any) -> Result<M, String> {
        M::decode(any.value.as_ref()).map_err(|e| format!("cannot decode: {e}"))
    }
    Ok(match t {
        type_url::ROUTE_CONFIGURATION => decoded::<pb::RouteConfiguration>(any)?.name,
        type_url::CLUSTER => decoded::<pb::Cluster>(any)?.name,
        type_url::INBOUND_POLICY => decoded::<pb::InboundPolicy>(any)?.service,
        type_url::TRUST_BUNDLE => decoded::<pb::TrustBundle>(any)?.trust_domain,
        _ => decoded::<pb::ClusterLoadAssignment>(any)?.cluster_name,
    })
}

#[cfg(test)]
mod tests;
