//! Simulated sidecars: N ADS streams in one process (one tokio task and
//! one HTTP/2 connection each, as N real sidecars would have), speaking
//! weft.discovery.v1 exactly as `sidecar/src/xds/mod.rs` (`Core`) does:
//!
//! - open with RouteConfiguration (wildcard, carrying the node) and
//!   InboundPolicy (by its own service name);
//! - once the first route tables arrive, subscribe Cluster and
//!   ClusterLoadAssignment by name: every cluster the route tables name
//!   (`--subscribe all`), or K clusters of its own (`--subscribe K`, the
//!   on-demand shape);
//! - ACK every response with its nonce and version, carrying the current
//!   names; NACK (keeping the last version) one it cannot decode.
//!
//! With `--incremental` the node lists `weft.incremental` and responses are
//! merged by name (`removed_resources` drops names). A sampled stream
//! (`--verify-every`) also recomputes the version of what it holds and
//! counts the responses whose `version_info` disagrees.
//!
//! To fit 5,000 streams of a 1,000-service mesh in memory, a stream holds
//! the names it has per type as a bitset over the mesh's service names
//! (plus a set for names outside the mesh, such as `consul`), not the
//! resources. It decodes in full only what it must: route tables (for the
//! cluster names, cached by version across streams), and the one
//! ClusterLoadAssignment a pending change is about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_swap::ArcSwapOption;
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use weft_proto::config::v1::{ClusterLoadAssignment, RouteConfiguration, endpoint, route_action};
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use weft_proto::{client_features, type_url};

use crate::consul::Mesh;

/// The largest response a simulated sidecar takes. The real sidecar keeps
/// tonic's default (4 MiB); the benchmark takes more so that it can report
/// how large state-of-the-world responses get (`max_response_bytes`)
/// instead of failing.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Connecting (TCP and HTTP/2); the agent's listener accepts at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Opening the stream (the agent's response headers). The real sidecar
/// waits for them without a limit: an agent busy with thousands of first
/// syncs answers late, and a sidecar that gave up would only come back
/// for another full sync. Long, but still bounded.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

/// Which clusters each stream subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscribe {
    /// Every cluster the route tables name (today's sidecar).
    All,
    /// K clusters per stream, spread evenly over the services (on demand).
    Count(usize),
}

impl std::str::FromStr for Subscribe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            k => k
                .parse::<usize>()
                .ok()
                .filter(|k| *k > 0)
                .map(Self::Count)
                .ok_or_else(|| format!("--subscribe takes `all` or a count > 0, not {k:?}")),
        }
    }
}

impl std::fmt::Display for Subscribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Count(k) => write!(f, "{k}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routes {
    /// Every route table (today's sidecar).
    Wildcard,
    /// Only the route tables of the clusters it subscribes to
    /// (`--subscribe K` only; with `all` it is the same as wildcard).
    Subscribed,
}

pub struct SimConfig {
    /// `http://127.0.0.1:<port>` of the agent's ADS listener.
    pub agent: String,
    pub streams: usize,
    pub subscribe: Subscribe,
    pub routes: Routes,
    pub incremental: bool,
    /// Every how many streams one verifies versions (0: none).
    pub verify_every: usize,
    /// Streams connecting at once.
    pub connect_concurrency: usize,
    pub mesh: Mesh,
}

/// One endpoint change the driver makes and the streams look for.
pub struct Change {
    pub index: u64,
    pub cluster: String,
    pub instance_id: String,
    pub expect_healthy: bool,
    /// How many streams subscribe to `cluster`.
    pub expected: usize,
    /// When each stream that got it had ACKed it (ns since the epoch).
    received: Mutex<Vec<u64>>,
    /// Woken when the last expected stream has it.
    pub all_received: Notify,
}

impl Change {
    pub fn new(
        index: u64,
        cluster: String,
        instance_id: String,
        expect_healthy: bool,
        expected: usize,
    ) -> Self {
        Self {
            index,
            cluster,
            instance_id,
            expect_healthy,
            expected,
            received: Mutex::new(Vec::with_capacity(expected)),
            all_received: Notify::new(),
        }
    }

    fn record(&self, at_ns: u64) {
        let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        received.push(at_ns);
        if received.len() == self.expected {
            self.all_received.notify_waiters();
        }
    }

    pub fn received(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Default)]
pub struct Counters {
    /// Encoded size of every DiscoveryResponse received.
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    pub max_response_bytes: AtomicU64,
    pub nacks: AtomicU64,
    /// Responses whose version_info is not the hash of what the stream
    /// holds after applying them (sampled streams only).
    pub version_mismatches: AtomicU64,
    pub versions_checked: AtomicU64,
    /// Streams that broke and reconnected.
    pub stream_errors: AtomicU64,
}

/// What every stream shares: read-mostly, no lock on the response path
/// except a change's receipt list (once per stream per change).
pub struct Shared {
    epoch: Instant,
    pub config: SimConfig,
    services: Arc<[String]>,
    index: HashMap<String, u32>,
    /// Cluster names of the last route set decoded, by routes version: in
    /// state of the world every stream gets the same route tables, so one
    /// decode serves all of them.
    route_cache: ArcSwapOption<(String, Arc<[String]>)>,
    /// Per stream: when it first held a complete config (ns since the
    /// epoch, + 1; 0 = not yet).
    complete_at: Vec<AtomicU64>,
    pub complete: AtomicUsize,
    /// Woken when the last stream completes.
    pub all_complete: Notify,
    pub change: ArcSwapOption<Change>,
    pub counters: Counters,
    /// The first errors seen (at most 10), for the report.
    pub errors: Mutex<Vec<String>>,
    /// Stream 0 (with `--subscribe all`) decodes every assignment: the
    /// endpoints it holds and how many are healthy, so the report can say
    /// whether the agent served the whole catalog.
    pub stream0_endpoints: AtomicU64,
    pub stream0_healthy: AtomicU64,
}

impl Shared {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let services: Arc<[String]> = config.mesh.service_names().into();
        let index = services
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32))
            .collect();
        let streams = config.streams;
        Arc::new(Self {
            epoch: Instant::now(),
            config,
            services,
            index,
            route_cache: ArcSwapOption::empty(),
            complete_at: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            complete: AtomicUsize::new(0),
            all_complete: Notify::new(),
            change: ArcSwapOption::empty(),
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
            stream0_endpoints: AtomicU64::new(0),
            stream0_healthy: AtomicU64::new(0),
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn ns_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// When stream i completed (ns since the epoch), if it has.
    pub fn completed_at(&self) -> Vec<Option<u64>> {
        self.complete_at
            .iter()
            .map(|at| at.load(Ordering::Relaxed).checked_sub(1))
            .collect()
    }

    /// The clusters stream `i` subscribes to with `--subscribe K`: a run of
    /// K consecutive services starting at i·K, so each service has
    /// about N·K/S subscribers.
    pub fn own_clusters(&self, i: usize, k: usize) -> Arc<[String]> {
        let s = self.services.len();
        let names: BTreeSet<String> = (0..k.min(s))
            .map(|j| self.services[(i * k + j) % s].clone())
            .collect();
        names.into_iter().collect()
    }

    /// How many streams subscribe to `service`.
    pub fn subscribers(&self, service: &str) -> usize {
        match self.config.subscribe {
            Subscribe::All => self.config.streams,
            Subscribe::Count(k) => (0..self.config.streams)
                .filter(|i| self.own_clusters(*i, k).iter().any(|n| n == service))
                .count(),
        }
    }

    fn note_error(&self, error: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 10 {
            errors.push(error);
        }
    }
}

/// Any resource's name: field 1 of every weft.config.v1 resource
/// (RouteConfiguration.name, Cluster.name, ClusterLoadAssignment.
/// cluster_name, InboundPolicy.service); prost skips the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The names a stream holds of one type.
#[derive(Default)]
struct NameSet {
    bits: Vec<u64>,
    /// Names outside the mesh (Consul's own `consul` service).
    extra: BTreeSet<String>,
}

impl NameSet {
    fn insert(&mut self, index: &HashMap<String, u32>, name: &str) {
        match index.get(name) {
            Some(&i) => {
                let (word, bit) = (i as usize / 64, i % 64);
                if self.bits.len() <= word {
                    self.bits.resize(word + 1, 0);
                }
                self.bits[word] |= 1 << bit;
            }
            None => {
                self.extra.insert(name.to_owned());
            }
        }
    }

    fn remove(&mut self, index: &HashMap<String, u32>, name: &str) {
        match index.get(name) {
            Some(&i) => {
                if let Some(word) = self.bits.get_mut(i as usize / 64) {
                    *word &= !(1 << (i % 64));
                }
            }
            None => {
                self.extra.remove(name);
            }
        }
    }

    fn contains(&self, index: &HashMap<String, u32>, name: &str) -> bool {
        match index.get(name) {
            Some(&i) => self
                .bits
                .get(i as usize / 64)
                .is_some_and(|word| word & (1 << (i % 64)) != 0),
            None => self.extra.contains(name),
        }
    }

    fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.extra.clear();
    }
}

#[derive(Default)]
struct TypeHeld {
    /// Version of the last accepted response ("" before the first).
    version: String,
    /// Nonce of the last response received.
    nonce: String,
    accepted: bool,
    names: NameSet,
    /// Name -> SHA-256 of the encoded resource (verifying streams only).
    hashes: Option<BTreeMap<String, [u8; 32]>>,
}

const ROUTES: usize = 0;
const CLUSTERS: usize = 1;
const ASSIGNMENTS: usize = 2;
const POLICY: usize = 3;
const TYPES: [&str; 4] = [
    type_url::ROUTE_CONFIGURATION,
    type_url::CLUSTER,
    type_url::CLUSTER_LOAD_ASSIGNMENT,
    type_url::INBOUND_POLICY,
];

/// One simulated sidecar's protocol state; survives reconnects.
struct Sidecar {
    i: usize,
    shared: Arc<Shared>,
    node: Node,
    held: [TypeHeld; 4],
    /// Route tables asked for by name (None: wildcard).
    route_names: Option<Arc<[String]>>,
    /// Clusters (and assignments) subscribed; None until known.
    cluster_names: Option<Arc<[String]>>,
    clusters_asked: bool,
    complete: bool,
    last_change: Option<u64>,
    /// Stream 0 with `--subscribe all`: (endpoints, healthy) per assignment
    /// of the mesh's services (Consul's own `consul` left out).
    probe: Option<BTreeMap<String, (u64, u64)>>,
}

impl Sidecar {
    fn new(i: usize, shared: Arc<Shared>) -> Self {
        let config = &shared.config;
        let service = shared.services[i % shared.services.len()].clone();
        let mut features = Vec::new();
        if config.incremental {
            features.push(client_features::INCREMENTAL.to_owned());
        }
        let node = Node {
            id: format!("bench-{i}"),
            instance: format!("{service}-{}", i / shared.services.len()),
            service,
            build_version: concat!("weft-bench-scale/", env!("CARGO_PKG_VERSION")).to_owned(),
            metadata: Default::default(),
            client_features: features,
        };
        let own = match config.subscribe {
            Subscribe::All => None,
            Subscribe::Count(k) => Some(shared.own_clusters(i, k)),
        };
        let route_names = match config.routes {
            Routes::Subscribed => own.clone(),
            Routes::Wildcard => None,
        };
        let verify = config.verify_every > 0 && i.is_multiple_of(config.verify_every);
        let mut held: [TypeHeld; 4] = Default::default();
        if verify {
            held.iter_mut()
                .for_each(|h| h.hashes = Some(BTreeMap::new()));
        }
        let probe = (i == 0 && config.subscribe == Subscribe::All).then(BTreeMap::new);
        Self {
            i,
            node,
            held,
            route_names,
            cluster_names: own,
            clusters_asked: false,
            complete: false,
            last_change: None,
            probe,
            shared,
        }
    }

    fn names(&self, t: usize) -> Vec<String> {
        match t {
            ROUTES => self.route_names.as_deref().map(<[String]>::to_vec),
            POLICY => Some(vec![self.node.service.clone()]),
            _ => self.cluster_names.as_deref().map(<[String]>::to_vec),
        }
        .unwrap_or_default()
    }

    fn request(&self, t: usize, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.held[t].version.clone(),
            node: None,
            resource_names: self.names(t),
            type_url: TYPES[t].to_owned(),
            response_nonce: self.held[t].nonce.clone(),
            error_detail: error.map(|message| ErrorDetail { code: 3, message }),
        }
    }

    /// As `Core::initial_requests`: routes (with the node) and policy
    /// always; clusters and assignments once the routes are known, with
    /// the versions held (a reconnect).
    fn initial_requests(&self) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for t in [ROUTES, POLICY, CLUSTERS, ASSIGNMENTS] {
            if (t == CLUSTERS || t == ASSIGNMENTS) && !self.clusters_asked {
                continue;
            }
            let mut request = self.request(t, None);
            request.response_nonce.clear();
            if out.is_empty() {
                request.node = Some(self.node.clone());
            }
            out.push(request);
        }
        out
    }

    /// Applies one response. Returns the requests to send, the change it
    /// delivered (if any), and whether the config just became complete.
    fn handle(
        &mut self,
        resp: DiscoveryResponse,
    ) -> (Vec<DiscoveryRequest>, Option<Arc<Change>>, bool) {
        let Some(t) = TYPES.iter().position(|u| *u == resp.type_url) else {
            return (Vec::new(), None, false);
        };
        let shared = self.shared.clone();
        self.held[t].nonce = resp.nonce.clone();
        let mut errors = Vec::new();
        let mut names = Vec::with_capacity(resp.resources.len());
        for (k, any) in resp.resources.iter().enumerate() {
            if any.type_url != resp.type_url {
                errors.push(format!(
                    "resources[{k}]: type {} in a {} response",
                    any.type_url, resp.type_url
                ));
                continue;
            }
            match NameOnly::decode(any.value.clone()) {
                Ok(n) => names.push(n.name),
                Err(e) => errors.push(format!("resources[{k}]: cannot decode: {e}")),
            }
        }
        if !errors.is_empty() {
            shared.counters.nacks.fetch_add(1, Ordering::Relaxed);
            shared.note_error(format!(
                "stream {} NACKed {}: {}",
                self.i,
                type_url::short(TYPES[t]),
                errors.join("; ")
            ));
            return (vec![self.request(t, Some(errors.join("\n")))], None, false);
        }

        let incremental = shared.config.incremental;
        let held = &mut self.held[t];
        if !incremental {
            held.names.clear();
            if let Some(h) = &mut held.hashes {
                h.clear();
            }
        }
        for name in &resp.removed_resources {
            held.names.remove(&shared.index, name);
            if let Some(h) = &mut held.hashes {
                h.remove(name);
            }
        }
        for (name, any) in names.iter().zip(&resp.resources) {
            held.names.insert(&shared.index, name);
            if let Some(h) = &mut held.hashes {
                h.insert(name.clone(), Sha256::digest(&any.value).into());
            }
        }
        if let Some(hashes) = &held.hashes {
            shared
                .counters
                .versions_checked
                .fetch_add(1, Ordering::Relaxed);
            let version = version_of(hashes);
            if version != resp.version_info {
                shared
                    .counters
                    .version_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                shared.note_error(format!(
                    "stream {}: {} version {} is not the hash of the {} resources held ({version})",
                    self.i,
                    type_url::short(TYPES[t]),
                    resp.version_info,
                    hashes.len()
                ));
            }
        }
        held.version = resp.version_info.clone();
        held.accepted = true;

        let mut resubscribe = false;
        let mut delivered = None;
        match t {
            ROUTES if shared.config.subscribe == Subscribe::All => {
                let named = self.route_clusters(&resp, &names);
                resubscribe = self.cluster_names.as_deref() != Some(&named[..]);
                self.cluster_names = Some(named);
            }
            ASSIGNMENTS => {
                delivered = self.delivered_change(&resp, &names);
                self.update_probe(&resp);
            }
            _ => {}
        }

        let mut out = vec![self.request(t, None)];
        if t == ROUTES && self.cluster_names.is_some() && (resubscribe || !self.clusters_asked) {
            self.clusters_asked = true;
            out.push(self.request(CLUSTERS, None));
            out.push(self.request(ASSIGNMENTS, None));
        }
        let newly_complete = !self.complete && self.is_complete();
        self.complete |= newly_complete;
        (out, delivered, newly_complete)
    }

    /// The clusters the route tables name. State of the world: from this
    /// response alone, decoded once per version for all streams.
    /// Incremental: added to those already named (the benchmark never
    /// changes routes, so names are never dropped).
    fn route_clusters(&self, resp: &DiscoveryResponse, names: &[String]) -> Arc<[String]> {
        let shared = &self.shared;
        if !shared.config.incremental
            && let Some(cached) = shared.route_cache.load().as_deref()
            && cached.0 == resp.version_info
        {
            return cached.1.clone();
        }
        let mut named: BTreeSet<String> = if shared.config.incremental {
            self.cluster_names
                .iter()
                .flat_map(|n| n.iter().cloned())
                .collect()
        } else {
            BTreeSet::new()
        };
        for (any, _) in resp.resources.iter().zip(names) {
            let Ok(routes) = RouteConfiguration::decode(any.value.clone()) else {
                continue;
            };
            for action in routes
                .virtual_hosts
                .iter()
                .flat_map(|v| &v.routes)
                .filter_map(|r| r.action.as_ref())
            {
                match &action.destination {
                    Some(route_action::Destination::Cluster(c)) => {
                        named.insert(c.clone());
                    }
                    Some(route_action::Destination::WeightedClusters(w)) => {
                        named.extend(w.clusters.iter().map(|c| c.name.clone()));
                    }
                    None => {}
                }
            }
        }
        let named: Arc<[String]> = named.into_iter().collect();
        if !shared.config.incremental {
            shared
                .route_cache
                .store(Some(Arc::new((resp.version_info.clone(), named.clone()))));
        }
        named
    }

    /// The pending change, if this response carries its endpoint in the
    /// expected state (and this stream has not counted it yet).
    fn delivered_change(&self, resp: &DiscoveryResponse, names: &[String]) -> Option<Arc<Change>> {
        let change = self.shared.change.load_full()?;
        if self.last_change == Some(change.index) {
            return None;
        }
        let k = names.iter().position(|n| *n == change.cluster)?;
        let cla = ClusterLoadAssignment::decode(resp.resources[k].value.clone()).ok()?;
        let want = if change.expect_healthy {
            endpoint::Health::Healthy
        } else {
            endpoint::Health::Unhealthy
        };
        cla.endpoints
            .iter()
            .any(|e| e.instance_id == change.instance_id && e.health == want as i32)
            .then_some(change)
    }

    fn update_probe(&mut self, resp: &DiscoveryResponse) {
        let Some(probe) = &mut self.probe else {
            return;
        };
        if !self.shared.config.incremental {
            probe.clear();
        }
        for name in &resp.removed_resources {
            probe.remove(name);
        }
        for any in &resp.resources {
            if let Ok(cla) = ClusterLoadAssignment::decode(any.value.clone())
                && self.shared.index.contains_key(&cla.cluster_name)
            {
                let healthy = cla
                    .endpoints
                    .iter()
                    .filter(|e| e.health == endpoint::Health::Healthy as i32)
                    .count() as u64;
                probe.insert(cla.cluster_name, (cla.endpoints.len() as u64, healthy));
            }
        }
        let (total, healthy) = probe
            .values()
            .fold((0, 0), |(t, h), (et, eh)| (t + et, h + eh));
        self.shared
            .stream0_endpoints
            .store(total, Ordering::Relaxed);
        self.shared
            .stream0_healthy
            .store(healthy, Ordering::Relaxed);
    }

    /// As `Core::waiting_for().is_empty()`: routes, policy, and every
    /// subscribed cluster's Cluster and assignment held.
    fn is_complete(&self) -> bool {
        let index = &self.shared.index;
        let all_held = |t: usize, names: &Option<Arc<[String]>>| {
            self.held[t].accepted
                && names
                    .iter()
                    .flat_map(|n| n.iter())
                    .all(|n| self.held[t].names.contains(index, n))
        };
        self.cluster_names.is_some()
            && all_held(ROUTES, &self.route_names)
            && self.held[POLICY].accepted
            && all_held(CLUSTERS, &self.cluster_names)
            && all_held(ASSIGNMENTS, &self.cluster_names)
    }

    /// One stream: connect, subscribe, answer responses until `stop`.
    async fn session(
        &mut self,
        permits: &Semaphore,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let permit = permits.acquire().await?;
        let endpoint = Endpoint::from_shared(shared.config.agent.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            // As the real sidecar: pings every 10 s, dead after 20 s.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .context("connecting to the agent: timed out")?
            .context("connecting to the agent")?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        // Bounded: a handful of requests per response at most.
        let (tx, rx) = mpsc::channel(16);
        for request in self.initial_requests() {
            tx.send(request).await?;
        }
        let mut responses = tokio::time::timeout(
            OPEN_TIMEOUT,
            client.stream_resources(ReceiverStream::new(rx)),
        )
        .await
        .context("opening the ADS stream: timed out")?
        .context("opening the ADS stream")?
        .into_inner();
        drop(permit);
        loop {
            // No timeout of our own: an idle stream is normal, and HTTP/2
            // keep-alive ends a dead one within 30 s.
            let message = tokio::select! {
                message = responses.message() => message,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => bail!("the agent closed the stream"),
                Err(status) => bail!("stream error: {status}"),
            };
            let size = resp.encoded_len() as u64;
            let counters = &shared.counters;
            counters.bytes.fetch_add(size, Ordering::Relaxed);
            counters.responses.fetch_add(1, Ordering::Relaxed);
            counters
                .max_response_bytes
                .fetch_max(size, Ordering::Relaxed);
            let (requests, delivered, newly_complete) = self.handle(resp);
            for request in requests {
                tx.send(request)
                    .await
                    .map_err(|_| anyhow::anyhow!("the request stream closed"))?;
            }
            // A push counts as delivered once its ACK is on its way.
            let now = shared.now_ns();
            if let Some(change) = delivered {
                self.last_change = Some(change.index);
                change.record(now);
            }
            if newly_complete {
                shared.complete_at[self.i].store(now + 1, Ordering::Relaxed);
                if shared.complete.fetch_add(1, Ordering::AcqRel) + 1 == shared.config.streams {
                    shared.all_complete.notify_waiters();
                }
            }
        }
    }
}

/// The agent's version of a set of resources (proto/README.md,
/// "Versions"): SHA-256 over the sorted (name, 0, SHA-256 of the encoded
/// resource), first 16 hex digits.
fn version_of(hashes: &BTreeMap<String, [u8; 32]>) -> String {
    let mut hasher = Sha256::new();
    for (name, hash) in hashes {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(hash);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Runs stream `i` until `stop`, reconnecting (100 ms doubling to 5 s) and
/// keeping its state across reconnects, as the real sidecar does.
async fn run_stream(
    i: usize,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sidecar = Sidecar::new(i, shared.clone());
    let mut backoff = Duration::from_millis(100);
    loop {
        match sidecar.session(&permits, &mut stop).await {
            Ok(()) => return,
            Err(error) => {
                shared
                    .counters
                    .stream_errors
                    .fetch_add(1, Ordering::Relaxed);
                shared.note_error(format!("stream {i}: {error:#}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Starts every stream; they run until `stop` turns true.
pub fn start(shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> tokio::task::JoinSet<()> {
    let permits = Arc::new(Semaphore::new(shared.config.connect_concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..shared.config.streams {
        tasks.spawn(run_stream(i, shared.clone(), permits.clone(), stop.clone()));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(services: usize, streams: usize, subscribe: Subscribe) -> Arc<Shared> {
        Shared::new(SimConfig {
            agent: "http://127.0.0.1:1".into(),
            streams,
            subscribe,
            routes: Routes::Wildcard,
            incremental: false,
            verify_every: 0,
            connect_concurrency: 1,
            mesh: Mesh {
                services,
                instances: 1,
            },
        })
    }

    #[test]
    fn name_sets_hold_mesh_names_as_bits_and_others_by_name() {
        let shared = shared(100, 1, Subscribe::All);
        let mut set = NameSet::default();
        set.insert(&shared.index, "svc-0099");
        set.insert(&shared.index, "consul");
        assert!(set.contains(&shared.index, "svc-0099"));
        assert!(set.contains(&shared.index, "consul"));
        assert!(!set.contains(&shared.index, "svc-0098"));
        set.remove(&shared.index, "svc-0099");
        assert!(!set.contains(&shared.index, "svc-0099"));
        set.clear();
        assert!(!set.contains(&shared.index, "consul"));
    }

    #[test]
    fn k_clusters_per_stream_spread_evenly_over_the_services() {
        let shared = shared(1000, 2000, Subscribe::Count(5));
        let own = shared.own_clusters(199, 5);
        assert_eq!(own.len(), 5);
        assert_eq!(&own[0], "svc-0995");
        for s in [0, 1, 500, 999] {
            assert_eq!(shared.subscribers(&format!("svc-{s:04}")), 10, "svc {s}");
        }
    }

    #[test]
    fn versions_follow_the_agents_rule() {
        // SHA-256 of "a" 0 sha256("x") "b" 0 sha256("y"), first 8 bytes.
        let mut hashes = BTreeMap::new();
        hashes.insert("b".to_owned(), Sha256::digest(b"y").into());
        hashes.insert("a".to_owned(), Sha256::digest(b"x").into());
        let mut hasher = Sha256::new();
        for (name, value) in [("a", b"x"), ("b", b"y")] {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(Sha256::digest(value));
        }
        assert_eq!(version_of(&hashes), hex::encode(&hasher.finalize()[..8]));
        assert_eq!(version_of(&hashes).len(), 16);
    }

    #[test]
    fn subscribe_parses_all_or_a_positive_count() {
        assert_eq!("all".parse::<Subscribe>(), Ok(Subscribe::All));
        assert_eq!("5".parse::<Subscribe>(), Ok(Subscribe::Count(5)));
        assert!("0".parse::<Subscribe>().is_err());
        assert!("some".parse::<Subscribe>().is_err());
    }
}
