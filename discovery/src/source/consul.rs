//! The Consul backend: a few blocking-query watches and on-demand reads that
//! keep the [`MeshStore`] up to date with Consul's catalog, health and KV,
//! on a bounded number of connections whatever the catalog's size.
//!
//! # What is watched
//!
//! Five blocking queries, each on its own connection, for any catalog size:
//!
//! - `/v1/catalog/services`: the service names (index: Consul's services
//!   table, which moves on every registration and deregistration, not on
//!   check changes).
//! - `/v1/health/state/critical` and `/v1/health/state/warning`: the
//!   failing checks (index: the checks table, so they wake on every check
//!   change and every registration that writes checks; Consul finds the
//!   answer through its status index, so it costs what it holds, not what
//!   the datacenter holds). Each answer is diffed with the last
//!   per `(Node, CheckID)` on status and owner: a check entering the set
//!   turned critical or warning, one leaving it passes again or is gone;
//!   those services are re-read. A node-level check (no `ServiceName`, e.g.
//!   `serfHealth`) marks every service on its node.
//! - `<prefix>?recurse` in KV: the configuration documents.
//! - `/v1/connect/intentions`: Consul's intentions (who may call whom),
//!   merged with the `policies/` documents into each service's inbound
//!   policy. The first full sync waits for them too: serving policies
//!   without Consul's denies, even briefly, would let denied callers in.
//!
//! A service's instances come from non-blocking reads of
//! `/v1/health/service/<name>` (without `passing`, so unhealthy instances
//! are known too), for the names that changed, at most
//! [`ConsulClient::short_request_capacity`] at once, one read per name at a
//! time (a name marked again while read is read once more after). Its
//! entries say what the name is: a name whose instances all have a `Kind`
//! (`connect-proxy`, gateways) is infrastructure and is not a destination
//! (Consul 1.8 ignores `filter` on the catalog endpoint).
//!
//! ## Registrations and deregistrations
//!
//! A registration or deregistration of passing instances moves the
//! catalog's index but changes no failing check. The catalog's answer at
//! raft index `C` is *explained* when a failing-checks watch saw the same
//! index `C` and named services (a registration with a critical check).
//! Otherwise, once both have reached `C` or 100 ms went by, an *audit*
//! reads every check once (`/v1/health/state/any`, not blocking) and diffs
//! it with the previous audit (the first is taken at start): the services
//! whose checks were added or removed are re-read. If the audit's index is
//! not `C`, or it names nothing (an instance without checks, a
//! re-registration with a new port and the same checks), every name is
//! re-read: a *sweep*. Audits run one at a time and coalesce; a sweep adds
//! every name to the same set of names to read, so sweeps coalesce too and
//! share the same bounded concurrency. A full sweep also runs every
//! `resync` (default 5 min) as a backstop.
//!
//! ## Cost and limits
//!
//! Connections: five held by the watches, plus at most the read capacity
//! (the client's short lane, 24 of the default 32) while reads or an audit
//! run; all bounded by the client's `max_connections`. Per check change:
//! one answer of each failing-checks watch (the failing checks only: ~1 ms
//! at 20,000 checks on an idle 2-core VM, where a `filter` on
//! `/v1/health/state/any` takes ~15 ms and every check ~200 ms) and one
//! read per affected name. Per registration
//! or deregistration with checks: the catalog names (~50 bytes per name),
//! one audit (every check: ~7.7 MB and ~200 ms of Consul's time at 10,000
//! instances with sidecars) and one read per affected name; registrations
//! in a burst share audits. Per registration without checks, and when
//! changes come faster than an audit can attribute them, a sweep: one read
//! per catalog name (~1 ms of Consul's time each). The store only changes
//! (and sidecars only hear of it) for destinations whose endpoints really
//! changed. Consul 1.8 offers no cheaper way to learn which instances a
//! registration touched (its filters cannot compare indexes, and
//! `/v1/catalog/services` lists names only).

//! # Meshed services
//!
//! A destination whose instances have Connect sidecar proxies (registered
//! the Consul way, `connect.sidecar_service`, kind `connect-proxy`) is
//! *meshed*: its endpoints are those proxies: address = proxy's
//! `Service.Address` or else its `Node.Address`, port = proxy port. This is
//! exactly the set `/v1/health/connect/<name>` returns (proxies whose
//! `Proxy.DestinationServiceName` is the name), but it is read from the
//! proxies' own `/v1/health/service/<proxy-name>` answers, which are read
//! anyway to classify the proxy names; a change of a proxy name re-derives
//! the endpoints of the destinations it fronts.
//!
//! A meshed endpoint is healthy when the proxy's checks *and* its app
//! instance's checks all pass (the sidecar's default alias check mirrors the
//! app, but only after the agent notices; reading the app's checks directly
//! reacts as fast as Consul does). Its weight is the app instance's
//! `Weights.Passing` (Consul does not copy weights to the sidecar), falling
//! back to the proxy's; `instance_id` is the proxy's service ID.
//! Otherwise the endpoints are the instances themselves, `meshed = false`,
//! healthy when every check passes, weight `Weights.Passing` (default 1).
//! Every endpoint's `region` is its node's datacenter and `zone` the `zone`
//! key of the service's meta, else of the node's (empty if neither has one).
//!
//! Each service's declared upstreams (its sidecar proxies'
//! `Proxy.Upstreams[].DestinationName`, service upstreams only) go to the
//! store with [`MeshStore::set_upstreams`].
//!
//! # Static stability
//!
//! An error (refused, timeout, 5xx, "No cluster leader", a connection
//! closed over Consul's per-client limit) never changes the store: the
//! watch or read keeps its last state, retries with exponential backoff and
//! full jitter, and after an error a watch reads afresh (index 0) so a
//! restarted Consul with a lower index is picked up at once. Only an answer
//! from Consul changes the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::consul::{
    CheckStatus, CheckSummary, ConsulClient, ConsulError, Intention as ConsulIntention, KvPair,
    QueryMeta, QueryOptions, ServiceEntry, ServiceKind, next_index,
};
use crate::metrics::Metrics;
use crate::model::{Endpoint, Health, Intention, IntentionAction, RawDocument};
use crate::store::MeshStore;

/// The KV prefix documents live under unless configured otherwise.
pub const DEFAULT_KV_PREFIX: &str = "weft/";

/// How long a catalog change waits for the failing-checks watches to reach
/// the same raft index before it counts as unexplained (and an audit runs).
/// Both watches wake within milliseconds of the same write; this only
/// covers scheduling jitter.
const EXPLAIN_GRACE: Duration = Duration::from_millis(100);

/// The failing states, one blocking watch each (`/v1/health/state/<state>`):
/// Consul wakes them on every change of its checks table but finds their
/// checks through its status index and answers with those only (a few
/// bytes in a healthy datacenter, 1 ms at 20,000 checks, where a `filter`
/// on `/v1/health/state/any` evaluates every check: 15 ms, and all checks
/// 200 ms and 7.7 MB). A check that fails enters one of these sets, one
/// that passes again leaves it. Maintenance mode is `critical`.
const FAILING: [&str; 2] = ["critical", "warning"];

/// How many recent checks-watch indexes are remembered to explain catalog
/// changes with (a catalog answer older than these is swept).
const RECENT_CHECK_INDEXES: usize = 64;

/// Settings of the Consul backend. `Default` is what production uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulSourceOptions {
    /// KV prefix of the configuration documents (default `weft/`). A
    /// missing trailing `/` is added; the empty prefix watches the whole KV.
    pub kv_prefix: String,
    /// Longest time a blocking query waits for a change (default 5 min,
    /// Consul's own default). Changes wake queries at once whatever this is;
    /// it only bounds how long an idle query holds its connection.
    pub wait: Duration,
    /// First retry delay after an error (default 50 ms): a Consul restart is
    /// picked up quickly.
    pub backoff_base: Duration,
    /// Longest retry delay (default 5 s): an outage costs every watch one
    /// cheap request per 5 s at most, and recovery is noticed within 5 s.
    pub backoff_max: Duration,
    /// How often every catalog name is re-read even when no watch reported
    /// a change (default 5 min, `--consul-resync`): the backstop for a
    /// change neither index explains.
    pub resync: Duration,
}

impl Default for ConsulSourceOptions {
    fn default() -> Self {
        Self {
            kv_prefix: DEFAULT_KV_PREFIX.to_owned(),
            wait: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            resync: Duration::from_secs(5 * 60),
        }
    }
}

/// The Consul backend of the discovery agent:
/// `ConsulSource::new(client, "weft/").run(store).await`.
pub struct ConsulSource {
    client: ConsulClient,
    options: ConsulSourceOptions,
    /// Where watch errors and retries are counted.
    metrics: Arc<Metrics>,
}

impl ConsulSource {
    /// A source reading documents under `kv_prefix`, other settings default.
    pub fn new(client: ConsulClient, kv_prefix: impl Into<String>) -> Self {
        Self::with_options(
            client,
            ConsulSourceOptions {
                kv_prefix: kv_prefix.into(),
                ..ConsulSourceOptions::default()
            },
        )
    }

    /// A source with every setting explicit.
    pub fn with_options(client: ConsulClient, mut options: ConsulSourceOptions) -> Self {
        if !options.kv_prefix.is_empty() && !options.kv_prefix.ends_with('/') {
            options.kv_prefix.push('/');
        }
        Self {
            client,
            options,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts watch errors and retries in `metrics` (the agent's
    /// `/metrics`) instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.consul_watches_known(&WATCH_LABELS, &crate::consul::ConsulError::KINDS);
        self.metrics = metrics;
        self
    }

    /// Watches Consul and keeps `store` up to date, forever. Abort the task
    /// (or drop the future) to stop it: every watch stops with it.
    pub async fn run(self, store: Arc<MeshStore>) {
        Supervisor::new(self.client, store, self.options, self.metrics)
            .run()
            .await;
    }
}

/// Shorthand for `ConsulSource::new(client, kv_prefix).run(store)`.
pub async fn run(client: ConsulClient, kv_prefix: String, store: Arc<MeshStore>) {
    ConsulSource::new(client, kv_prefix).run(store).await;
}

/// Every value of the `watch` label of the agent's Consul metrics: the
/// blocking watches (`checks` for both failing states, and for audits), and
/// `service` for the reads of changed services.
const WATCH_LABELS: [&str; 5] = ["catalog", "checks", "service", "kv", "intentions"];

/// The `watch` label of a failed service read.
const SERVICE_LABEL: &str = "service";

/// What one blocking watch reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Catalog,
    /// Index into [`FAILING`].
    Checks(usize),
    Kv(String),
    Intentions,
}

impl Target {
    /// The `watch` label of the agent's Consul metrics.
    fn label(&self) -> &'static str {
        match self {
            Target::Catalog => "catalog",
            Target::Checks(_) => "checks",
            Target::Kv(_) => "kv",
            Target::Intentions => "intentions",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Catalog => f.write_str("/v1/catalog/services"),
            Target::Checks(state) => write!(f, "/v1/health/state/{}", FAILING[*state]),
            Target::Kv(prefix) => write!(f, "/v1/kv/{prefix}?recurse"),
            Target::Intentions => f.write_str("/v1/connect/intentions"),
        }
    }
}

/// What a watch read.
enum Payload {
    Catalog(BTreeSet<String>),
    Checks(Vec<CheckSummary>),
    Kv(Vec<KvPair>),
    Intentions(Vec<ConsulIntention>),
}

impl Target {
    async fn fetch(
        &self,
        client: &ConsulClient,
        options: &QueryOptions,
    ) -> Result<(Payload, QueryMeta), ConsulError> {
        Ok(match self {
            Target::Catalog => {
                let (services, meta) = client.catalog_services(options).await?;
                (Payload::Catalog(services.into_keys().collect()), meta)
            }
            Target::Checks(state) => {
                let (checks, meta) = client.health_state(FAILING[*state], options).await?;
                (Payload::Checks(checks), meta)
            }
            Target::Kv(prefix) => {
                let (pairs, meta) = client.kv_list(prefix, options).await?;
                (Payload::Kv(pairs), meta)
            }
            Target::Intentions => {
                let (intentions, meta) = client.intentions(options).await?;
                (Payload::Intentions(intentions), meta)
            }
        })
    }
}

/// A watch's answer (sent only when its index moved, or the first time),
/// with the raft index Consul gave it.
struct Event {
    target: Target,
    payload: Payload,
    index: u64,
}

/// A finished read of one name's instances.
struct ReadDone {
    name: String,
    result: Result<Vec<ServiceEntry>, ConsulError>,
}

/// A finished audit: every check, read because of the catalog's change at
/// `catalog_index` (0: the baseline at start).
struct AuditDone {
    catalog_index: u64,
    result: Result<(Vec<CheckSummary>, QueryMeta), ConsulError>,
}

/// What is known of one catalog name.
enum NameState {
    /// Not read yet.
    Pending,
    /// Its first read failed; no data (retried with backoff).
    Failed,
    Loaded(Vec<ServiceEntry>),
}

impl NameState {
    fn entries(&self) -> &[ServiceEntry] {
        match self {
            NameState::Loaded(entries) => entries,
            NameState::Pending | NameState::Failed => &[],
        }
    }
}

/// The part of a check that decides health and who owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CheckState {
    status: CheckStatus,
    /// Empty for a node-level check.
    service_name: String,
}

/// Owns all state derived from Consul and is the only writer to the store,
/// so every store update is computed from one consistent view.
struct Supervisor {
    client: ConsulClient,
    store: Arc<MeshStore>,
    options: ConsulSourceOptions,
    metrics: Arc<Metrics>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    reads_tx: mpsc::Sender<ReadDone>,
    reads: mpsc::Receiver<ReadDone>,
    /// Every watch and read task; dropping the set (when `run` is dropped)
    /// aborts them all.
    tasks: JoinSet<()>,
    catalog_loaded: bool,
    /// Per failing state ([`FAILING`]): whether its watch answered.
    checks_loaded: [bool; FAILING.len()],
    kv_loaded: bool,
    intentions_loaded: bool,
    /// Every catalog name and what is known of it.
    names: BTreeMap<String, NameState>,
    /// Names with no answer yet ([`NameState::Pending`]): nothing is
    /// published while there are any.
    pending: usize,
    /// Destination name -> the names whose entries hold a Connect proxy of it.
    proxies_of: BTreeMap<String, BTreeSet<String>>,
    /// Per failing state: its checks as of its watch's last answer, by
    /// (node, check id).
    failing: [HashMap<(String, String), CheckState>; FAILING.len()],
    /// Every check as of the last audit (a full read of
    /// `/v1/health/state/any`), to tell which services a registration or
    /// deregistration touched; `None` until the first audit answered.
    baseline: Option<HashMap<(String, String), CheckState>>,
    /// Whether an audit is running, and the catalog index of one to run
    /// after it (audits coalesce, one at a time).
    auditing: bool,
    audit_again: Option<u64>,
    audits_tx: mpsc::Sender<AuditDone>,
    audits: mpsc::Receiver<AuditDone>,
    /// The last indexes of the catalog and checks watches.
    catalog_index: u64,
    /// Per failing state: its watch's last index.
    checks_index: [u64; FAILING.len()],
    /// Recent checks answers: (index, whether the diff named services).
    recent_checks: VecDeque<(u64, bool)>,
    /// A catalog index not explained yet by the checks, and until when to
    /// wait for the checks watch before sweeping.
    unexplained: Option<(u64, Instant)>,
    /// Names to read (a set: marks coalesce).
    to_read: BTreeSet<String>,
    /// Names being read now (one read per name at a time).
    reading: BTreeSet<String>,
    /// Most reads at once.
    read_capacity: usize,
    /// Names whose read failed, read again at `retry_at`.
    retry: BTreeSet<String>,
    retry_at: Option<Instant>,
    read_backoff: Backoff,
    /// Names read since the last publish (their destinations are re-derived).
    touched: BTreeSet<String>,
    /// Whether the set of destinations may have changed since the last publish.
    destinations_changed: bool,
    /// Whether some proxy's upstreams may have changed since the last publish.
    upstreams_changed: bool,
    next_resync: Instant,
}

impl Supervisor {
    fn new(
        client: ConsulClient,
        store: Arc<MeshStore>,
        options: ConsulSourceOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Watches wait on a full channel, which is fine: the supervisor
        // only does in-memory work per event.
        let (events_tx, events) = mpsc::channel(16);
        let read_capacity = client.short_request_capacity().max(1);
        // Never full: at most `read_capacity` reads run.
        let (reads_tx, reads) = mpsc::channel(read_capacity);
        // One audit at a time.
        let (audits_tx, audits) = mpsc::channel(1);
        let read_backoff = Backoff::new(options.backoff_base, options.backoff_max);
        let next_resync = Instant::now() + options.resync;
        Self {
            client,
            store,
            options,
            metrics,
            events_tx,
            events,
            reads_tx,
            reads,
            tasks: JoinSet::new(),
            catalog_loaded: false,
            checks_loaded: [false; FAILING.len()],
            kv_loaded: false,
            intentions_loaded: false,
            names: BTreeMap::new(),
            pending: 0,
            proxies_of: BTreeMap::new(),
            failing: Default::default(),
            baseline: None,
            auditing: false,
            audit_again: None,
            audits_tx,
            audits,
            catalog_index: 0,
            checks_index: [0; FAILING.len()],
            recent_checks: VecDeque::with_capacity(RECENT_CHECK_INDEXES),
            unexplained: None,
            to_read: BTreeSet::new(),
            reading: BTreeSet::new(),
            read_capacity,
            retry: BTreeSet::new(),
            retry_at: None,
            read_backoff,
            touched: BTreeSet::new(),
            destinations_changed: false,
            upstreams_changed: false,
            next_resync,
        }
    }

    async fn run(mut self) {
        tracing::info!(
            consul = %self.client.address(),
            kv_prefix = %self.options.kv_prefix,
            max_connections = self.client.max_connections(),
            "watching Consul"
        );
        self.spawn(Target::Catalog);
        for state in 0..FAILING.len() {
            self.spawn(Target::Checks(state));
        }
        self.spawn(Target::Kv(self.options.kv_prefix.clone()));
        self.spawn(Target::Intentions);
        loop {
            // `select!` needs a future in every branch, even a disabled one.
            let never = Instant::now() + Duration::from_secs(3600);
            let explain_deadline = self.unexplained.map_or(never, |(_, deadline)| deadline);
            let retry_at = self.retry_at.unwrap_or(never);
            tokio::select! {
                Some(event) = self.events.recv() => self.handle(event),
                Some(done) = self.reads.recv() => self.read_done(done),
                Some(done) = self.audits.recv() => self.audit_done(done),
                () = tokio::time::sleep_until(explain_deadline), if self.unexplained.is_some() => {
                    if let Some((index, _)) = self.unexplained.take() {
                        self.audit(index);
                    }
                }
                () = tokio::time::sleep_until(retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    let retry = std::mem::take(&mut self.retry);
                    self.to_read.extend(retry);
                }
                () = tokio::time::sleep_until(self.next_resync) => {
                    self.next_resync = Instant::now() + self.options.resync;
                    if self.catalog_loaded {
                        tracing::debug!(names = self.names.len(), "periodic full resync");
                        self.to_read.extend(self.names.keys().cloned());
                    }
                }
                // Reap finished tasks so the set does not grow.
                Some(_) = self.tasks.join_next() => {}
            }
            self.start_reads();
            self.publish();
            let open = i64::try_from(self.client.connections_open()).unwrap_or(i64::MAX);
            self.metrics.consul_connections.set(open);
        }
    }

    fn spawn(&mut self, target: Target) {
        let watch = Watch {
            client: self.client.clone(),
            target,
            options: self.options.clone(),
            metrics: self.metrics.clone(),
            events: self.events_tx.clone(),
        };
        self.tasks.spawn(watch.run());
    }

    fn handle(&mut self, event: Event) {
        match (event.target, event.payload) {
            (Target::Catalog, Payload::Catalog(names)) => self.set_catalog(names, event.index),
            (Target::Checks(state), Payload::Checks(checks)) => {
                self.set_checks(state, checks, event.index);
            }
            (Target::Kv(_), Payload::Kv(pairs)) => {
                self.kv_loaded = true;
                self.store
                    .set_documents(documents(&self.options.kv_prefix, pairs));
            }
            (Target::Intentions, Payload::Intentions(intentions)) => {
                self.intentions_loaded = true;
                self.store.set_intentions(mesh_intentions(intentions));
            }
            _ => {}
        }
    }

    /// New names are read, names gone are forgotten, and a change of the
    /// catalog's index that the checks do not explain re-reads every name.
    fn set_catalog(&mut self, names: BTreeSet<String>, index: u64) {
        let first = !self.catalog_loaded;
        self.catalog_loaded = true;
        let gone: Vec<String> = self
            .names
            .keys()
            .filter(|name| !names.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(state) = self.names.remove(&name) {
                if matches!(state, NameState::Pending) {
                    self.pending -= 1;
                }
                self.forget_proxies(&name, state.entries());
                self.touch_destinations_of(&name, state.entries());
                self.to_read.remove(&name);
                self.retry.remove(&name);
                self.destinations_changed = true;
                tracing::debug!(service = %name, "service left the catalog");
            }
        }
        for name in names {
            if !self.names.contains_key(&name) {
                tracing::debug!(service = %name, "service joined the catalog");
                self.names.insert(name.clone(), NameState::Pending);
                self.pending += 1;
                self.to_read.insert(name);
                self.destinations_changed = true;
            }
        }
        let previous = std::mem::replace(&mut self.catalog_index, index);
        if first {
            // Every name is being read; the audit only takes the baseline.
            self.audit(0);
            return;
        }
        if index < previous {
            // Consul's index went back (a restore, a new cluster): nothing
            // it said before can be trusted to explain anything.
            self.recent_checks.clear();
            self.sweep(index, "Consul's catalog index went back");
            return;
        }
        self.explain(index);
    }

    /// Decides whether the catalog's change at `index` is explained by the
    /// checks, needs a sweep, or must wait a moment for the checks watch.
    fn explain(&mut self, index: u64) {
        let named = self
            .recent_checks
            .iter()
            .any(|&(at, named)| at == index && named);
        if named {
            self.unexplained = None;
        } else if (0..FAILING.len())
            .all(|state| self.checks_loaded[state] && self.checks_index[state] >= index)
        {
            // Both failing-check watches are at or past the catalog's
            // index, and neither named a service at it.
            self.audit(index);
        } else {
            self.unexplained = Some((index, Instant::now() + EXPLAIN_GRACE));
        }
    }

    /// Reads every check once (not blocking) to find which services the
    /// catalog's change at `index` touched: one runs at a time, and audits
    /// asked for meanwhile become one more after it.
    fn audit(&mut self, index: u64) {
        self.unexplained = None;
        if self.auditing {
            self.audit_again = Some(self.audit_again.map_or(index, |again| again.max(index)));
            return;
        }
        self.auditing = true;
        let client = self.client.clone();
        let done = self.audits_tx.clone();
        self.tasks.spawn(async move {
            let result = client.health_state("any", &QueryOptions::default()).await;
            // The receiver lives as long as the tasks (same owner).
            let _ = done
                .send(AuditDone {
                    catalog_index: index,
                    result,
                })
                .await;
        });
    }

    /// Re-reads the services whose checks were added or removed since the
    /// last audit; if that does not explain the catalog's change (the
    /// checks are not at the catalog's index, or nothing changed: a
    /// registration without checks), re-reads every name.
    fn audit_done(&mut self, done: AuditDone) {
        self.auditing = false;
        match done.result {
            Ok((checks, meta)) => {
                let current = check_map(checks);
                let named = match &self.baseline {
                    Some(baseline) => {
                        let names = self.names_touched(baseline, &current);
                        let named = !names.is_empty();
                        self.mark(names);
                        named
                    }
                    None => false,
                };
                let had_baseline = self.baseline.replace(current).is_some();
                if done.catalog_index != 0 {
                    if !had_baseline {
                        self.sweep(done.catalog_index, "no earlier audit to compare with");
                    } else if meta.index != done.catalog_index {
                        self.sweep(
                            done.catalog_index,
                            "the checks are not at the catalog's index",
                        );
                    } else if !named {
                        self.sweep(done.catalog_index, "a registration changed no check");
                    }
                }
            }
            Err(error) => {
                self.metrics.consul_watch_failed("checks", error.kind());
                tracing::warn!(%error, "reading every check failed; re-reading every service instead");
                if done.catalog_index != 0 {
                    self.sweep(done.catalog_index, "the audit failed");
                }
            }
        }
        if let Some(index) = self.audit_again.take() {
            self.audit(index);
        }
    }

    /// Marks `names` (those still in the catalog) to be read.
    fn mark(&mut self, names: BTreeSet<String>) {
        for name in names {
            if self.names.contains_key(&name) {
                self.to_read.insert(name);
            }
        }
    }

    /// The services whose checks differ between `previous` and `current`
    /// (added, removed, or another status or owner); a node-level check
    /// stands for every service on its node.
    fn names_touched(
        &self,
        previous: &HashMap<(String, String), CheckState>,
        current: &HashMap<(String, String), CheckState>,
    ) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut nodes = BTreeSet::new();
        let mut note = |key: &(String, String), state: &CheckState| {
            if state.service_name.is_empty() {
                nodes.insert(key.0.clone());
            } else {
                names.insert(state.service_name.clone());
            }
        };
        for (key, state) in current {
            match previous.get(key) {
                Some(before) if before == state => {}
                Some(before) => {
                    note(key, before);
                    note(key, state);
                }
                None => note(key, state),
            }
        }
        for (key, before) in previous {
            if !current.contains_key(key) {
                note(key, before);
            }
        }
        if !nodes.is_empty() {
            for (name, state) in &self.names {
                if state
                    .entries()
                    .iter()
                    .any(|entry| nodes.contains(&entry.node.node))
                {
                    names.insert(name.clone());
                }
            }
        }
        names
    }

    /// Marks every name to be read again.
    fn sweep(&mut self, index: u64, why: &'static str) {
        self.unexplained = None;
        tracing::debug!(
            index,
            why,
            names = self.names.len(),
            "catalog change not explained by checks; re-reading every service"
        );
        self.to_read.extend(self.names.keys().cloned());
    }

    /// Diffs the failing checks with the last answer and marks the names
    /// whose health changed: a check entering the set turned critical (or
    /// warning), one leaving it passes again or is gone.
    fn set_checks(&mut self, state: usize, checks: Vec<CheckSummary>, index: u64) {
        let first = !self.checks_loaded[state];
        self.checks_loaded[state] = true;
        let current = check_map(checks);
        let previous = std::mem::replace(&mut self.failing[state], current);
        if index < self.checks_index[state] {
            self.recent_checks.clear();
        }
        self.checks_index[state] = index;
        if first {
            // The baseline: every name is read anyway at the first sync.
            return;
        }
        let changed = self.names_touched(&previous, &self.failing[state]);
        let named = !changed.is_empty();
        tracing::debug!(index, services = changed.len(), "failing checks changed");
        self.mark(changed);
        if self.recent_checks.len() == RECENT_CHECK_INDEXES {
            self.recent_checks.pop_front();
        }
        self.recent_checks.push_back((index, named));
        if let Some((waiting, _)) = self.unexplained
            && index >= waiting
        {
            self.explain(waiting);
        }
    }

    /// Starts reads of marked names while there is room.
    fn start_reads(&mut self) {
        while self.reading.len() < self.read_capacity {
            let Some(name) = self
                .to_read
                .iter()
                .find(|name| !self.reading.contains(*name))
                .cloned()
            else {
                return;
            };
            self.to_read.remove(&name);
            self.reading.insert(name.clone());
            let client = self.client.clone();
            let done = self.reads_tx.clone();
            self.tasks.spawn(async move {
                let result = client
                    .health_service(&name, &QueryOptions::default())
                    .await
                    .map(|(entries, _)| entries);
                // The receiver lives as long as the tasks (same owner).
                let _ = done.send(ReadDone { name, result }).await;
            });
        }
    }

    fn read_done(&mut self, done: ReadDone) {
        self.reading.remove(&done.name);
        let Some(state) = self.names.get_mut(&done.name) else {
            return; // left the catalog since
        };
        match done.result {
            Ok(entries) => {
                if self.retry.is_empty() {
                    self.read_backoff.reset();
                }
                let old = std::mem::replace(state, NameState::Loaded(entries));
                if matches!(old, NameState::Pending) {
                    self.pending -= 1;
                }
                let name = done.name;
                let old_entries = old.entries();
                let new_infra = self
                    .names
                    .get(&name)
                    .map(|s| is_infrastructure(s.entries()));
                if !matches!(old, NameState::Loaded(_))
                    || Some(is_infrastructure(old_entries)) != new_infra
                {
                    self.destinations_changed = true;
                }
                self.forget_proxies(&name, old_entries);
                self.touch_destinations_of(&name, old_entries);
                if old_entries
                    .iter()
                    .any(|entry| entry.service.kind == ServiceKind::ConnectProxy)
                {
                    self.upstreams_changed = true;
                }
                self.learn_proxies(&name);
                self.touched.insert(name);
            }
            Err(error) => {
                if matches!(state, NameState::Pending) {
                    *state = NameState::Failed;
                    self.pending -= 1;
                }
                self.metrics
                    .consul_watch_failed(SERVICE_LABEL, error.kind());
                self.metrics.consul_watch_retried(SERVICE_LABEL);
                let delay = self.read_backoff.next_delay();
                if self.read_backoff.should_log() {
                    tracing::warn!(
                        service = %done.name,
                        %error,
                        retryable = error.is_retryable(),
                        retry_in = ?delay,
                        "reading a service from Consul failed; keeping its last known state"
                    );
                }
                self.retry.insert(done.name);
                if self.retry_at.is_none() {
                    self.retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// Forgets which destinations `name`'s old entries proxied.
    fn forget_proxies(&mut self, name: &str, entries: &[ServiceEntry]) {
        for destination in proxied(entries) {
            if let Some(names) = self.proxies_of.get_mut(destination) {
                names.remove(name);
                if names.is_empty() {
                    self.proxies_of.remove(destination);
                }
            }
        }
    }

    /// Notes which destinations `name`'s current entries proxy.
    fn learn_proxies(&mut self, name: &str) {
        let Some(state) = self.names.get(name) else {
            return;
        };
        let mut any = false;
        for destination in proxied(state.entries()) {
            any = true;
            self.proxies_of
                .entry(destination.to_owned())
                .or_default()
                .insert(name.to_owned());
        }
        if any {
            self.upstreams_changed = true;
        }
    }

    /// Marks the destinations `name`'s entries proxied for re-deriving.
    fn touch_destinations_of(&mut self, name: &str, entries: &[ServiceEntry]) {
        let destinations: Vec<String> = proxied(entries).map(str::to_owned).collect();
        self.touched.extend(destinations);
        self.touched.insert(name.to_owned());
    }

    /// Writes what changed since the last publish to the store: the
    /// destination list if it may have changed, the endpoints of every
    /// destination a read touched (directly or through its proxies), the
    /// upstreams if a proxy changed.
    fn publish(&mut self) {
        if !self.catalog_loaded {
            return;
        }
        // A name that has not answered yet may be the sidecar that makes
        // another service meshed: publishing before it answers could send a
        // meshed service's plaintext address for a moment. First reads take
        // milliseconds, and one that fails stops counting as pending.
        if self.pending > 0 {
            return;
        }
        if std::mem::take(&mut self.destinations_changed) {
            let destinations: BTreeSet<String> = self
                .names
                .iter()
                .filter(|(_, state)| is_destination(state))
                .map(|(name, _)| name.clone())
                .collect();
            self.store.set_service_names(&destinations);
        }
        let touched = std::mem::take(&mut self.touched);
        let mut destinations = BTreeSet::new();
        for name in &touched {
            // A proxy name re-derives the destinations it fronts now.
            if let Some(state) = self.names.get(name) {
                destinations.extend(proxied(state.entries()).map(str::to_owned));
            }
            destinations.insert(name.clone());
        }
        for name in &destinations {
            let Some(state) = self.names.get(name) else {
                continue;
            };
            if !is_destination(state) {
                continue;
            }
            let proxies = self.proxies_for(name);
            self.store
                .set_endpoints(name, endpoints(state.entries(), &proxies));
        }
        if std::mem::take(&mut self.upstreams_changed) {
            self.store
                .set_upstreams(upstreams(self.names.values().map(NameState::entries)));
        }
        let all_loaded = self
            .names
            .values()
            .all(|state| matches!(state, NameState::Loaded(_)));
        if self.kv_loaded
            && self.intentions_loaded
            && self.checks_loaded.iter().all(|loaded| *loaded)
            && all_loaded
            && !self.store.is_synced()
        {
            let services = self.names.values().filter(|s| is_destination(s)).count();
            tracing::info!(
                services,
                names = self.names.len(),
                "first full sync from Consul done"
            );
            self.store.mark_synced();
        }
    }

    /// The Connect proxies whose destination is `destination`, from the
    /// infrastructure names that hold them.
    fn proxies_for(&self, destination: &str) -> Vec<&ServiceEntry> {
        let Some(names) = self.proxies_of.get(destination) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| self.names.get(name))
            .map(NameState::entries)
            .filter(|entries| is_infrastructure(entries))
            .flatten()
            .filter(|entry| proxy_destination(entry) == Some(destination))
            .collect()
    }
}

/// Checks by (node, check id), with what decides health and ownership.
fn check_map(checks: Vec<CheckSummary>) -> HashMap<(String, String), CheckState> {
    checks
        .into_iter()
        .map(|check| {
            let state = CheckState {
                status: check.status,
                service_name: check.service_name,
            };
            ((check.node, check.check_id), state)
        })
        .collect()
}

/// A loaded name whose instances are apps (not proxies or gateways).
fn is_destination(state: &NameState) -> bool {
    matches!(state, NameState::Loaded(entries) if !is_infrastructure(entries))
}

/// The destination a Connect proxy entry fronts.
fn proxy_destination(entry: &ServiceEntry) -> Option<&str> {
    if entry.service.kind != ServiceKind::ConnectProxy {
        return None;
    }
    entry
        .service
        .proxy
        .as_ref()
        .map(|proxy| proxy.destination_service_name.as_str())
        .filter(|name| !name.is_empty())
}

/// The destinations the Connect proxies among `entries` front.
fn proxied(entries: &[ServiceEntry]) -> impl Iterator<Item = &str> {
    entries.iter().filter_map(proxy_destination)
}

/// Service name -> the services its sidecar proxies declare as upstreams
/// (`Proxy.Upstreams[].DestinationName`; prepared-query upstreams name no
/// service and are left out).
fn upstreams<'a>(
    names: impl Iterator<Item = &'a [ServiceEntry]>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut upstreams: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entries in names {
        for entry in entries {
            let Some(service) = proxy_destination(entry) else {
                continue;
            };
            let Some(proxy) = &entry.service.proxy else {
                continue;
            };
            let declared = proxy
                .upstreams
                .iter()
                .filter(|upstream| {
                    matches!(upstream.destination_type.as_str(), "" | "service")
                        && !upstream.destination_name.is_empty()
                })
                .map(|upstream| upstream.destination_name.clone());
            upstreams
                .entry(service.to_owned())
                .or_default()
                .extend(declared);
        }
    }
    // A service whose sidecars declare nothing has no entry.
    upstreams.retain(|_, declared| !declared.is_empty());
    upstreams
}

/// A destination's endpoints: its Connect proxies when it has any (meshed),
/// else its own instances.
fn endpoints(instances: &[ServiceEntry], proxies: &[&ServiceEntry]) -> Vec<Endpoint> {
    if proxies.is_empty() {
        instances
            .iter()
            .filter(|entry| entry.service.kind == ServiceKind::Typical)
            .map(plain_endpoint)
            .collect()
    } else {
        proxies
            .iter()
            .map(|proxy| meshed_endpoint(proxy, instances))
            .collect()
    }
}

/// A name is infrastructure (proxies, gateways) when it has instances and all
/// of them have a kind; an app name never has one.
fn is_infrastructure(entries: &[ServiceEntry]) -> bool {
    !entries.is_empty()
        && entries
            .iter()
            .all(|entry| entry.service.kind != ServiceKind::Typical)
}

fn plain_endpoint(entry: &ServiceEntry) -> Endpoint {
    Endpoint {
        address: entry.address().to_owned(),
        port: entry.service.port,
        health: health(entry.is_passing()),
        weight: weight(entry),
        meshed: false,
        instance_id: entry.service.id.clone(),
        region: entry.node.datacenter.clone(),
        zone: zone(entry),
    }
}

fn meshed_endpoint(proxy: &ServiceEntry, instances: &[ServiceEntry]) -> Endpoint {
    let destination_id = proxy
        .service
        .proxy
        .as_ref()
        .map(|p| p.destination_service_id.as_str())
        .unwrap_or_default();
    // The app instance this sidecar fronts: same node, the proxy's destination id.
    let app = instances
        .iter()
        .find(|app| app.service.id == destination_id && app.node.node == proxy.node.node);
    let passing = proxy.is_passing() && app.is_none_or(ServiceEntry::is_passing);
    Endpoint {
        address: proxy.address().to_owned(),
        port: proxy.service.port,
        health: health(passing),
        weight: app.map_or_else(|| weight(proxy), weight),
        meshed: true,
        instance_id: proxy.service.id.clone(),
        region: proxy.node.datacenter.clone(),
        zone: app.map_or_else(|| zone(proxy), zone),
    }
}

fn health(passing: bool) -> Health {
    if passing {
        Health::Healthy
    } else {
        Health::Unhealthy
    }
}

/// `Weights.Passing`, at least 1 (the model's floor; Consul's default is 1).
fn weight(entry: &ServiceEntry) -> u32 {
    entry
        .service
        .weights
        .map_or(1, |weights| weights.passing)
        .max(1)
}

fn zone(entry: &ServiceEntry) -> String {
    entry
        .service
        .meta
        .get("zone")
        .or_else(|| entry.node.meta.get("zone"))
        .cloned()
        .unwrap_or_default()
}

/// KV pairs under `prefix` as documents keyed relative to it. Folder keys
/// (ending in `/`) are not documents; an empty value is kept, so the
/// validator rejects it with a reason instead of the key silently vanishing.
fn documents(prefix: &str, pairs: Vec<KvPair>) -> BTreeMap<String, RawDocument> {
    pairs
        .into_iter()
        .filter(|pair| !pair.key.ends_with('/'))
        .filter_map(|pair| {
            let key = pair.key.strip_prefix(prefix)?.to_owned();
            let document = RawDocument {
                key: key.clone(),
                value: pair.value,
                origin: format!("consul kv {}", pair.key),
                yaml: false,
            };
            Some((key, document))
        })
        .collect()
}

/// Consul's intentions as the mesh model holds them. Intentions in another
/// namespace than `default` (Consul Enterprise) name services Weft does not
/// serve (its identities are all in `default`) and are left out. An action
/// other than allow or deny (a newer Consul's L7 intention, which Weft reads
/// from its own documents instead) is taken as deny: failing closed never
/// lets in a caller the operator meant to restrict.
fn mesh_intentions(intentions: Vec<ConsulIntention>) -> Vec<Intention> {
    let in_default = |namespace: &str| namespace.is_empty() || namespace == "default";
    intentions
        .into_iter()
        .filter(|intention| {
            let kept = in_default(&intention.source_ns) && in_default(&intention.destination_ns);
            if !kept {
                tracing::debug!(id = %intention.id, source_ns = %intention.source_ns, destination_ns = %intention.destination_ns, "intention outside the default namespace; ignored");
            }
            kept
        })
        .map(|intention| {
            let action = match intention.action.as_str() {
                "allow" => IntentionAction::Allow,
                "deny" => IntentionAction::Deny,
                other => {
                    tracing::warn!(
                        id = %intention.id,
                        source = %intention.source_name,
                        destination = %intention.destination_name,
                        action = other,
                        "Consul intention with an action other than allow or deny; enforcing it as deny"
                    );
                    IntentionAction::Deny
                }
            };
            Intention {
                id: intention.id,
                source: intention.source_name,
                destination: intention.destination_name,
                action,
            }
        })
        .collect()
}

/// One blocking-query loop.
struct Watch {
    client: ConsulClient,
    target: Target,
    options: ConsulSourceOptions,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Event>,
}

impl Watch {
    async fn run(self) {
        let mut index = 0;
        let mut loaded = false;
        // Whether the last request failed (for the "answers again" log).
        let mut failing = false;
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        loop {
            let query = QueryOptions::blocking(index, self.options.wait);
            let started = Instant::now();
            match self.target.fetch(&self.client, &query).await {
                Ok((payload, meta)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(
                            watch = %self.target,
                            consul = %self.client.address(),
                            failures = backoff.failures,
                            "Consul answers again; resynced"
                        );
                    }
                    let changed = !loaded || meta.index != index;
                    let quick = started.elapsed() < self.options.wait / 2;
                    index = next_index(index, meta.index);
                    if changed {
                        loaded = true;
                        let event = Event {
                            target: self.target.clone(),
                            payload,
                            index: meta.index,
                        };
                        if self.events.send(event).await.is_err() {
                            return; // the source was stopped
                        }
                    }
                    // A blocking read that comes back at once with nothing
                    // new would loop hot (a misbehaving server or proxy);
                    // pace it like an error. A normal wake-up has a new index.
                    if !changed && quick {
                        self.metrics.consul_watch_retried(self.target.label());
                        tokio::time::sleep(backoff.next_delay()).await;
                    } else {
                        backoff.reset();
                    }
                }
                Err(error) => {
                    failing = true;
                    self.metrics
                        .consul_watch_failed(self.target.label(), error.kind());
                    self.metrics.consul_watch_retried(self.target.label());
                    let delay = backoff.next_delay();
                    if backoff.should_log() {
                        tracing::warn!(
                            watch = %self.target,
                            %error,
                            retryable = error.is_retryable(),
                            retry_in = ?delay,
                            "Consul watch failed; keeping the last known state"
                        );
                    }
                    // Read afresh next time: a restarted Consul may have a
                    // lower index, which a blocking read would sit on.
                    index = 0;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, base * 2^n)]`, so watches that failed together do not
/// retry together.
struct Backoff {
    base: Duration,
    max: Duration,
    /// Consecutive failures (and quick empty answers) since the last good answer.
    failures: u32,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    fn ceiling(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling();
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// One warning per backoff step while the delay grows, then one per
    /// minute or so at the ceiling, so an outage does not flood the log.
    fn should_log(&self) -> bool {
        let previous_ceiling = self
            .base
            .saturating_mul(1 << self.failures.saturating_sub(2).min(31))
            .min(self.max);
        if self.failures <= 1 || previous_ceiling < self.max {
            return true;
        }
        let per_minute = (60_000 / self.max.as_millis().max(1)).max(1);
        u128::from(self.failures) % per_minute == 0
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: serde_json::Value) -> ServiceEntry {
        match serde_json::from_value(json) {
            Ok(entry) => entry,
            Err(error) => panic!("test entry must decode: {error}"),
        }
    }

    fn app(id: &str, address: &str, port: u16, status: &str) -> ServiceEntry {
        entry(serde_json::json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
            "Service": {"ID": id, "Service": "web", "Address": address, "Port": port,
                        "Weights": {"Passing": 3, "Warning": 1}},
            "Checks": [{"CheckID": "ttl", "Status": status}]
        }))
    }

    fn sidecar(app_id: &str, port: u16, status: &str) -> ServiceEntry {
        entry(serde_json::json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
            "Service": {"Kind": "connect-proxy", "ID": format!("{app_id}-sidecar-proxy"),
                        "Service": "web-sidecar-proxy", "Address": "", "Port": port,
                        "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": app_id}},
            "Checks": [{"CheckID": "listening", "Status": status}]
        }))
    }

    #[test]
    fn an_unmeshed_service_is_served_by_its_instances() {
        let instances = vec![
            app("web-1", "", 8080, "passing"),
            app("web-2", "10.0.0.9", 8081, "critical"),
        ];
        let endpoints = endpoints(&instances, &[]);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(
            (endpoints[0].address.as_str(), endpoints[0].port),
            ("10.0.0.1", 8080)
        );
        assert_eq!(endpoints[0].health, Health::Healthy);
        assert_eq!(endpoints[0].weight, 3);
        assert!(!endpoints[0].meshed);
        assert_eq!(
            (endpoints[1].address.as_str(), endpoints[1].health),
            ("10.0.0.9", Health::Unhealthy)
        );
    }

    #[test]
    fn a_service_with_sidecars_is_meshed_and_its_proxies_are_not_destinations() {
        let instances = vec![app("web-1", "", 8080, "passing")];
        let proxies = vec![sidecar("web-1", 21000, "passing")];
        assert!(!is_infrastructure(&instances));
        assert!(is_infrastructure(&proxies));
        assert_eq!(proxied(&proxies).collect::<Vec<_>>(), vec!["web"]);
        let endpoints = endpoints(&instances, &proxies.iter().collect::<Vec<_>>());
        assert_eq!(endpoints.len(), 1);
        let endpoint = &endpoints[0];
        assert_eq!(
            (endpoint.address.as_str(), endpoint.port),
            ("10.0.0.1", 21000)
        );
        assert!(endpoint.meshed);
        assert_eq!(
            endpoint.weight, 3,
            "the app's weight, not the proxy's default"
        );
        assert_eq!(endpoint.instance_id, "web-1-sidecar-proxy");
        assert_eq!(endpoint.health, Health::Healthy);
    }

    #[test]
    fn a_meshed_endpoint_is_unhealthy_when_its_app_or_its_proxy_fails() {
        for (app_status, proxy_status) in [("critical", "passing"), ("passing", "critical")] {
            let instances = vec![app("web-1", "", 8080, app_status)];
            let proxies = [sidecar("web-1", 21000, proxy_status)];
            let endpoints = endpoints(&instances, &proxies.iter().collect::<Vec<_>>());
            assert_eq!(
                endpoints[0].health,
                Health::Unhealthy,
                "app {app_status}, proxy {proxy_status}"
            );
        }
    }

    #[test]
    fn upstreams_come_from_the_sidecars_service_upstreams_only() {
        let mut proxy = sidecar("web-1", 21000, "passing");
        let upstream = |kind: &str, name: &str| crate::consul::Upstream {
            destination_type: kind.into(),
            destination_name: name.into(),
            ..crate::consul::Upstream::default()
        };
        if let Some(config) = proxy.service.proxy.as_mut() {
            config.upstreams = vec![
                upstream("", "users"),
                upstream("service", "db"),
                upstream("prepared_query", "nearest-db"),
            ];
        }
        let quiet = sidecar("api-1", 21001, "passing");
        let instances = vec![app("web-1", "", 8080, "passing")];
        let found = upstreams([vec![proxy, quiet].as_slice(), instances.as_slice()].into_iter());
        assert_eq!(
            found,
            BTreeMap::from([(
                "web".to_owned(),
                BTreeSet::from(["db".to_owned(), "users".to_owned()])
            )])
        );
    }

    #[test]
    fn documents_are_keyed_relative_to_the_prefix_and_folders_skipped() {
        let pair = |key: &str, value: &'static [u8]| KvPair {
            key: key.to_owned(),
            value: bytes::Bytes::from_static(value),
            flags: 0,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            session: None,
        };
        let docs = documents(
            "weft/",
            vec![
                pair("weft/routes/", b""),
                pair("weft/routes/users", b"{}"),
                pair("weft/empty", b""),
            ],
        );
        assert_eq!(
            docs.keys().collect::<Vec<_>>(),
            vec!["empty", "routes/users"]
        );
        assert_eq!(docs["routes/users"].origin, "consul kv weft/routes/users");
        assert!(!docs["routes/users"].yaml);
        assert!(
            docs["empty"].value.is_empty(),
            "kept for the validator to reject"
        );
    }

    #[test]
    fn intentions_keep_their_id_and_names_and_unknown_actions_deny() {
        let consul =
            |id: &str, source: &str, destination: &str, action: &str, ns: &str| ConsulIntention {
                id: id.into(),
                source_name: source.into(),
                destination_name: destination.into(),
                source_ns: ns.into(),
                destination_ns: ns.into(),
                action: action.into(),
                ..ConsulIntention::default()
            };
        let intentions = mesh_intentions(vec![
            consul("1", "web", "db", "allow", "default"),
            consul("2", "*", "*", "deny", ""),
            consul("3", "web", "db", "", "default"),
            consul("4", "web", "db", "allow", "team-a"),
        ]);
        let found: Vec<_> = intentions
            .iter()
            .map(|i| {
                (
                    i.id.as_str(),
                    i.source.as_str(),
                    i.destination.as_str(),
                    i.action,
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("1", "web", "db", IntentionAction::Allow),
                ("2", "*", "*", IntentionAction::Deny),
                ("3", "web", "db", IntentionAction::Deny),
            ]
        );
    }

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_below_it() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay <= backoff.ceiling());
            ceilings.push(backoff.ceiling().as_millis());
        }
        assert_eq!(&ceilings[..4], &[50, 100, 200, 400]);
        assert_eq!(ceilings[9], 5000);
        backoff.reset();
        backoff.next_delay();
        assert_eq!(backoff.ceiling(), Duration::from_millis(50));
    }
}
