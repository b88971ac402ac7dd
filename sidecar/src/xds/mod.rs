//! The xDS client: one ADS stream to the agent, ACK/NACK per
//! `proto/README.md`, and the routing table it compiles.
//!
//! [`Core`] is the protocol state machine (no I/O, unit-tested): it takes a
//! `DiscoveryResponse`, validates and accepts or rejects it, and returns the
//! requests to send back. `client.rs` runs it over a tonic stream with
//! reconnects. [`XdsState`] is what the admin endpoints read.

pub mod client;
pub mod compile;
pub mod dump;
mod inbound;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prost::Message;
use weft_proto::config::v1 as pb;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use weft_proto::type_url;

use crate::ratelimit::RateLimiter;
use crate::table::{ClusterSettings, InboundPolicy, RoutingTable};
use crate::upstream::Dns;
use compile::{CompiledRoutes, EndpointSpec};
// On-demand discovery lives with the request path that waits on it
// (`outbound::on_demand`), so the stacks do not import the xDS client; the
// client drives it from here.
pub use crate::outbound::on_demand::{self, OnDemand};
// The stream's status is a bottom module: admin and metrics read it without
// importing the client.
pub use crate::xds_status::{Accepted, HeldCluster, Status, TypeState, XdsState};

/// The protocol state machine of one sidecar; survives reconnects.
pub struct Core {
    node: Node,
    types: BTreeMap<&'static str, TypeState>,
    /// The Cluster and ClusterLoadAssignment subscription: the preloads
    /// (`required`, the policy's `upstreams`) and the on-demand names.
    clusters_wanted: BTreeSet<String>,
    /// Clusters held from the start and never dropped: `--tcp-upstream`
    /// destinations (no route names them, there is no Host header) and
    /// `--upstreams`. The sidecar is ready only once they have arrived.
    required: BTreeSet<String>,
    /// Which of `required` are `--tcp-upstream` destinations (/config_dump).
    tcp_upstreams: BTreeSet<String>,
    /// Clusters subscribed because a request chose them, with the coarse
    /// second they were asked for; dropped after `idle_timeout` without a
    /// request, or when no route names them any more.
    on_demand: BTreeMap<String, u32>,
    /// Where requests wait for on-demand clusters; `None` in unit tests
    /// that do not need it.
    demand: Option<Arc<OnDemand>>,
    /// Drop an on-demand cluster after this many seconds without a
    /// request; 0 = never.
    idle_secs: u32,
    /// Whether this stream has sent a Cluster request: before one, an empty
    /// name list would mean every cluster of the mesh, so none is sent;
    /// after one, an empty list means none (proto/README.md).
    clusters_requested: bool,
    /// The route tables in the routing table now. Routes go live as soon as
    /// they are accepted: a destination they name that is not held yet is
    /// fetched by its first request, which waits for it (make before
    /// break: no 503 for a new destination during the round trip).
    routes: BTreeMap<String, CompiledRoutes>,
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
    /// The resources last accepted, by type and name, as received: the set
    /// an incremental response is merged into (proto/README.md,
    /// "Incremental responses").
    held: BTreeMap<&'static str, BTreeMap<String, weft_proto::Any>>,
    /// The agent of the current stream sends incremental responses (its
    /// `weft-agent-features` header says so); otherwise each response is
    /// the whole set (state of the world).
    incremental: bool,
    /// A gateway's use of its `Gateway` resource (`None` for a sidecar,
    /// which never subscribes to one).
    gateway: Option<GatewaySink>,
}

/// What a gateway does with its `Gateway` resource (`None`: the agent has
/// no document for it): compile it whole and put it to use, or say why not
/// (a NACK; the listeners keep the last good one). The xDS client does not
/// know what a gateway compiles it into.
pub type GatewaySink = Box<dyn FnMut(Option<&pb::Gateway>) -> Result<(), Vec<String>> + Send>;

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
            tcp_upstreams: BTreeSet::new(),
            on_demand: BTreeMap::new(),
            demand: None,
            idle_secs: 0,
            clusters_requested: false,
            routes: BTreeMap::new(),
            clusters: BTreeMap::new(),
            assignments: BTreeMap::new(),
            accepted: Accepted::default(),
            ready: false,
            table,
            dns,
            identity: None,
            bundle_trust_domain: None,
            held: BTreeMap::new(),
            incremental: false,
            gateway: None,
        }
    }

    /// Makes this client a gateway's: it subscribes to the `Gateway`
    /// resource of its own name (the node's service) and hands each
    /// version to `sink`; it is ready only once one was accepted.
    pub fn with_gateway(mut self, sink: GatewaySink) -> Self {
        self.gateway = Some(sink);
        self
    }

    /// Clusters to hold from the start and never drop (`--upstreams`; the
    /// sidecar is ready only once they have arrived).
    pub fn with_required_clusters(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.required.extend(names);
        self.clusters_wanted = self.required.clone();
        self
    }

    /// `--tcp-upstream` destinations: required like
    /// [`Core::with_required_clusters`], shown as such in /config_dump.
    pub fn with_tcp_upstreams(mut self, names: impl IntoIterator<Item = String>) -> Self {
        let names: BTreeSet<String> = names.into_iter().collect();
        self.tcp_upstreams.extend(names.iter().cloned());
        self.with_required_clusters(names)
    }

    /// Turns on-demand discovery on: requests wait in `demand` for
    /// clusters not held yet, and an on-demand cluster without a request
    /// for `idle` is dropped (`Duration::ZERO`: never).
    pub fn with_on_demand(mut self, demand: Arc<OnDemand>, idle: std::time::Duration) -> Self {
        self.demand = Some(demand);
        self.idle_secs = match idle.as_secs() {
            0 if !idle.is_zero() => 1,
            secs => u32::try_from(secs).unwrap_or(u32::MAX),
        };
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
            type_url::GATEWAY => vec![self.node.service.clone()], // our own
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
    /// Clusters and assignments are asked for by name, so with no preload
    /// and nothing called yet there is nothing to ask (an empty list would
    /// mean "all" as a stream's first request).
    pub fn initial_requests(&mut self) -> Vec<DiscoveryRequest> {
        let know_clusters = !self.clusters_wanted.is_empty();
        self.clusters_requested = know_clusters;
        type_url::ALL
            .into_iter()
            .filter(|t| match *t {
                type_url::ROUTE_CONFIGURATION | type_url::INBOUND_POLICY => true,
                type_url::TRUST_BUNDLE => self.bundle_trust_domain.is_some(),
                type_url::GATEWAY => self.gateway.is_some(),
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
                type_url::GATEWAY => self.accept_gateway(&whole),
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
            Ok(_) => {
                if let Some(s) = self.types.get_mut(t) {
                    s.version = resp.version_info.clone();
                    s.accepted = true;
                    s.last_nack = None;
                    s.accepted_total += 1;
                }
                tracing::info!(r#type = type_url::short(t), version = %resp.version_info, resources = resp.resources.len(), "accepted config");
                // New routes may no longer name an on-demand cluster, a new
                // policy may preload others.
                let resubscribe = self.update_wanted();
                // The bundle lives in the identity store, read at handshake
                // time, and the gateway's listeners in their own state: the
                // routing table does not change.
                if t != type_url::TRUST_BUNDLE && t != type_url::GATEWAY {
                    self.rebuild();
                } else {
                    // Accepted just now: it may have been the last type missing.
                    self.check_ready();
                }
                let mut out = vec![self.request(t, nonce, None)];
                if resubscribe {
                    out.extend(self.cluster_requests());
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
        self.routes = compiled;
        self.accepted.routes = msgs.into_iter().map(|m| (m.name.clone(), m)).collect();
        Ok(false)
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

    /// This service's policy compiled whole (intentions, JWT, rate limits,
    /// mTLS mode, the app's protocol) and only then published, as one
    /// value in the routing table: one swap, so no request sees part of
    /// it. Policies for other names (there should be none) are ignored.
    fn accept_policy(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::InboundPolicy> = Self::decode(resp, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let ours = msgs.into_iter().find(|m| m.service == self.node.service);
        let current = self.table.load_full();
        let previous = &current.inbound;
        let compiled = match &ours {
            Some(m) => {
                inbound::compile(m, previous.authn.as_deref(), &self.dns).map_err(|errs| {
                    errs.into_iter()
                        .map(|e| format!("InboundPolicy {}: {e}", m.service))
                        .collect::<Vec<_>>()
                })?
            }
            // An empty answer is "no policy": as before any arrived.
            None => inbound::CompiledInbound::default(),
        };
        let policy = InboundPolicy {
            authz: compiled.authz,
            authn: compiled.authn.map(Arc::new),
            // Buckets of limits that did not change stay as they are.
            rate_limits: compiled
                .rate_limits
                .map(|new| RateLimiter::carry_over(Arc::new(new), previous.rate_limits.as_deref())),
            mtls: compiled.mtls,
            app_protocol: compiled.app_protocol,
            cors: compiled.cors.map(Arc::new),
            compression: compiled.compression.map(Arc::new),
            cache: compiled.cache.map(Arc::new),
            validation: compiled.validation.map(Arc::new),
        };
        // Only this task stores tables, so none can come in between the
        // load above and this store and be lost.
        self.table
            .store(Arc::new(current.with_inbound(Arc::new(policy))));
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

    /// Our gateway's listeners, handed whole to the gateway. Resources
    /// for other names (there should be none) are ignored.
    fn accept_gateway(&mut self, resp: &DiscoveryResponse) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let msgs: Vec<pb::Gateway> = Self::decode(resp, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let ours = msgs.into_iter().find(|m| m.name == self.node.service);
        let Some(sink) = self.gateway.as_mut() else {
            return Err(vec!["Gateway: this sidecar is no gateway".into()]);
        };
        sink(ours.as_ref()).map_err(|errs| {
            errs.into_iter()
                .map(|e| format!("Gateway {}: {e}", self.node.service))
                .collect::<Vec<_>>()
        })?;
        self.accepted.gateway = ours;
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

    /// The preloads: `--tcp-upstream`, `--upstreams` and the accepted
    /// policy's `upstreams`.
    fn preloads(&self) -> BTreeSet<String> {
        let from_policy = self.accepted.policy.iter().flat_map(|p| &p.upstreams);
        self.required.iter().chain(from_policy).cloned().collect()
    }

    /// Recomputes the subscription: preloads plus the on-demand names some
    /// route still names. Clusters no longer wanted leave the held
    /// resources at once (a response sent before the agent saw the change
    /// may still carry them). Returns whether the subscription changed.
    fn update_wanted(&mut self) -> bool {
        let routed: BTreeSet<&String> = self.routes.values().flat_map(|r| &r.clusters).collect();
        let mut unrouted = Vec::new();
        self.on_demand.retain(|name, _| {
            let keep = routed.contains(name);
            if !keep {
                unrouted.push(name.clone());
            }
            keep
        });
        // A name still awaited when the routes stopped naming it is given
        // up: its waiters fail now, and when a route names it again the
        // next request asks anew. Left waiting, it would stay "taken" with
        // no subscription behind it, and every later request would wait
        // out the timeout for a cluster nobody asks the agent for.
        if let (Some(demand), false) = (&self.demand, unrouted.is_empty()) {
            demand.forget(&unrouted);
        }
        let wanted: BTreeSet<String> = self
            .preloads()
            .into_iter()
            .chain(self.on_demand.keys().cloned())
            .collect();
        let changed = wanted != self.clusters_wanted;
        self.clusters_wanted = wanted;
        let wanted = &self.clusters_wanted;
        self.clusters.retain(|name, _| wanted.contains(name));
        self.assignments.retain(|name, _| wanted.contains(name));
        self.accepted
            .clusters
            .retain(|name, _| wanted.contains(name));
        self.accepted
            .assignments
            .retain(|name, _| wanted.contains(name));
        // ...and the set an incremental response is merged into: the agent
        // stops sending a name once it is unsubscribed, so a name left here
        // would come back with the next merge.
        for t in [type_url::CLUSTER, type_url::CLUSTER_LOAD_ASSIGNMENT] {
            if let Some(held) = self.held.get_mut(t) {
                held.retain(|name, _| wanted.contains(name));
            }
        }
        changed
    }

    /// The Cluster and ClusterLoadAssignment requests carrying the current
    /// subscription, with each type's latest nonce (the agent ignores a
    /// request with an older one and reads the names from the next ACK).
    /// None while nothing is wanted and nothing was asked on this stream.
    fn cluster_requests(&mut self) -> Vec<DiscoveryRequest> {
        if self.clusters_wanted.is_empty() && !self.clusters_requested {
            return Vec::new();
        }
        self.clusters_requested = true;
        [type_url::CLUSTER, type_url::CLUSTER_LOAD_ASSIGNMENT]
            .into_iter()
            .map(|t| self.request(t, self.types[t].nonce.clone(), None))
            .collect()
    }

    /// Subscribes to clusters requests asked for (`OnDemand::take_new`);
    /// returns the requests to send. A name no route names is ignored.
    pub fn demand(&mut self, names: Vec<String>) -> Vec<DiscoveryRequest> {
        let now = self.demand.as_ref().map_or(0, |d| d.now());
        let mut added = Vec::new();
        let mut unrouted = Vec::new();
        for name in names {
            let routed = self.routes.values().any(|r| r.clusters.contains(&name));
            if !routed {
                // Routes changed since the request chose it: fail its
                // waiters now rather than at the timeout.
                unrouted.push(name);
                continue;
            }
            if !self.on_demand.contains_key(&name) {
                added.push(name.clone());
            }
            self.on_demand.entry(name).or_insert(now);
        }
        if let Some(demand) = &self.demand {
            demand.forget(&unrouted);
        }
        if !self.update_wanted() {
            return Vec::new();
        }
        tracing::info!(clusters = ?added, "subscribing to destinations on their first call");
        self.cluster_requests()
    }

    /// Drops the on-demand clusters without a request for the idle
    /// timeout (their last use is in the table, or they never arrived and
    /// were asked for that long ago); returns the requests to send.
    pub fn sweep(&mut self) -> Vec<DiscoveryRequest> {
        let (Some(demand), idle) = (self.demand.clone(), self.idle_secs) else {
            return Vec::new();
        };
        if idle == 0 || self.on_demand.is_empty() {
            return Vec::new();
        }
        let now = demand.now();
        let table = self.table.load();
        let preloads = self.preloads();
        let idle_names: Vec<String> = self
            .on_demand
            .iter()
            .filter(|(name, _)| !preloads.contains(*name))
            .filter(|(name, asked_at)| {
                let used = table.cluster(name).map_or(0, |c| {
                    c.shared
                        .last_used
                        .load(std::sync::atomic::Ordering::Relaxed)
                });
                // Strictly more: the stamp is a whole second that may have
                // begun up to a second before the request, so a cluster is
                // never dropped before the idle timeout has really passed
                // (at most about two seconds after it).
                now.saturating_sub(used.max(**asked_at)) > idle
            })
            .map(|(name, _)| name.clone())
            .collect();
        if idle_names.is_empty() {
            return Vec::new();
        }
        for name in &idle_names {
            self.on_demand.remove(name);
        }
        demand.forget(&idle_names);
        tracing::info!(clusters = ?idle_names, idle_secs = idle, "dropping destinations not called for the idle timeout");
        self.update_wanted();
        self.rebuild();
        self.cluster_requests()
    }

    fn rebuild(&mut self) {
        let prev = self.table.load();
        let table = compile::build_table(
            &prev,
            &self.routes,
            &self.clusters,
            &self.assignments,
            self.identity.as_ref(),
            &self.dns,
        );
        let table = Arc::new(table);
        self.table.store(table.clone());
        if let Some(demand) = &self.demand {
            demand.resolve(&table);
        }
        self.check_ready();
    }

    /// Ready from the first time nothing is missing.
    fn check_ready(&mut self) {
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
        // Ready with the preloads: on-demand clusters arrive with the
        // first request that needs them, readiness does not wait for them.
        let preloads = self.preloads();
        let missing = |held: &dyn Fn(&String) -> bool| {
            preloads
                .iter()
                .filter(|n| !held(n))
                .cloned()
                .collect::<Vec<_>>()
        };
        let no_cluster = missing(&|n| self.clusters.contains_key(n));
        let no_cla = missing(&|n| self.assignments.contains_key(n));
        let mut parts = Vec::new();
        // A gateway without its document has no listener: nothing to be
        // ready for.
        if self.gateway.is_some() && self.accepted.gateway.is_none() {
            parts.push("Gateway".to_owned());
        }
        if !self.types[type_url::INBOUND_POLICY].accepted {
            parts.push("InboundPolicy".to_owned());
        }
        if (!self.types[type_url::CLUSTER].accepted && !preloads.is_empty())
            || !no_cluster.is_empty()
        {
            parts.push(
                format!("Cluster {}", no_cluster.join(", "))
                    .trim_end()
                    .to_owned(),
            );
        }
        if (!self.types[type_url::CLUSTER_LOAD_ASSIGNMENT].accepted && !preloads.is_empty())
            || !no_cla.is_empty()
        {
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

    /// Where requests wait for on-demand clusters, if on.
    pub fn on_demand(&self) -> Option<&Arc<OnDemand>> {
        self.demand.as_ref()
    }

    /// Copies the state the admin endpoints show.
    pub fn publish(&self, status: &mut Status) {
        status.ready = self.ready;
        status.waiting_for = self.waiting_for();
        status.node = Some(self.node.clone());
        status.types = self.types.clone();
        status.subscribed_clusters = self.clusters_wanted.iter().cloned().collect();
        let from_policy: BTreeSet<&String> = self
            .accepted
            .policy
            .iter()
            .flat_map(|p| &p.upstreams)
            .collect();
        status.held = self
            .clusters_wanted
            .iter()
            .map(|name| {
                let reason = if self.tcp_upstreams.contains(name) {
                    "tcp-upstream"
                } else if self.required.contains(name) {
                    "preload"
                } else if from_policy.contains(name) {
                    "policy-upstream"
                } else {
                    "on-demand"
                };
                HeldCluster {
                    name: name.clone(),
                    reason,
                    asked_at: self
                        .on_demand
                        .get(name)
                        .copied()
                        .filter(|_| reason == "on-demand"),
                }
            })
            .collect();
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
        type_url::GATEWAY => decoded::<pb::Gateway>(any)?.name,
        type_url::CLUSTER_LOAD_ASSIGNMENT => {
            decoded::<pb::ClusterLoadAssignment>(any)?.cluster_name
        }
        other => return Err(format!("no name is known for type {other}")),
    })
}

/// Compiles `policy` as a sidecar does before it swaps a policy in, and
/// drops the result: `Err` holds the reasons of the NACK it would send. For
/// tests that hold the agent's document checks against the sidecar's
/// (`tests/tests/config_agreement.rs`). A JWT policy whose keys come from a
/// URL starts a fetch, so call it inside a tokio runtime.
pub fn check_inbound_policy(policy: &pb::InboundPolicy) -> Result<(), Vec<String>> {
    inbound::compile(policy, None, &Dns::default()).map(drop)
}

#[cfg(test)]
mod tests;
