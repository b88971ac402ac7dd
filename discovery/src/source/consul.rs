//! The Consul backend: blocking-query watches that keep the [`MeshStore`] up
//! to date with Consul's catalog, health and KV.
//!
//! # What is watched
//!
//! - `/v1/catalog/services`: the service names. One watch task per name is
//!   started and stopped as names come and go.
//! - `/v1/health/service/<name>` for every catalog name, without `passing`,
//!   so the agent also knows unhealthy instances. Its entries say what the
//!   name is: a name whose instances all have a `Kind` (`connect-proxy`,
//!   gateways) is infrastructure and is not a destination (Consul 1.8 ignores
//!   `filter` on the catalog endpoint, so the kind comes from here).
//! - `<prefix>?recurse` in KV: the configuration documents.
//! - `/v1/connect/intentions`: Consul's intentions (who may call whom),
//!   merged with the `policies/` documents into each service's inbound
//!   policy. The first full sync waits for them too: serving policies
//!   without Consul's denies, even briefly, would let denied callers in.
//!
//! # Meshed services
//!
//! A destination whose instances have Connect sidecar proxies (registered
//! the Consul way, `connect.sidecar_service`, kind `connect-proxy`) is
//! *meshed*: its endpoints are those proxies: address = proxy's
//! `Service.Address` or else its `Node.Address`, port = proxy port. This is
//! exactly the set `/v1/health/connect/<name>` returns (proxies whose
//! `Proxy.DestinationServiceName` is the name), but it is read from the
//! proxies' own `/v1/health/service/<proxy-name>` watches, which run anyway to
//! classify the proxy names. That keeps one long poll per catalog name instead
//! of two per destination: Consul caps HTTP connections per client address
//! (`limits.http_max_conns_per_client`, default 200), and every blocking query
//! holds one.
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
//! # Static stability
//!
//! An error (refused, timeout, 5xx, "No cluster leader") never changes the
//! store: the watch keeps its last state, retries with exponential backoff
//! and full jitter, and after an error reads afresh (index 0) so a restarted
//! Consul with a lower index is picked up at once. Only an answer from Consul
//! changes the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::consul::{
    ConsulClient, ConsulError, Intention as ConsulIntention, KvPair, QueryMeta, QueryOptions,
    ServiceEntry, ServiceKind, next_index,
};
use crate::metrics::Metrics;
use crate::model::{Endpoint, Health, Intention, IntentionAction, RawDocument};
use crate::store::MeshStore;

/// The KV prefix documents live under unless configured otherwise.
pub const DEFAULT_KV_PREFIX: &str = "weft/";

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
}

impl Default for ConsulSourceOptions {
    fn default() -> Self {
        Self {
            kv_prefix: DEFAULT_KV_PREFIX.to_owned(),
            wait: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
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
        metrics.consul_watches_known(&Target::LABELS, &crate::consul::ConsulError::KINDS);
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

/// What one watch task reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Catalog,
    Service(String),
    Kv(String),
    Intentions,
}

impl Target {
    /// Every value of [`Target::label`].
    const LABELS: [&'static str; 4] = ["catalog", "service", "kv", "intentions"];

    /// The `watch` label of the agent's Consul metrics.
    fn label(&self) -> &'static str {
        match self {
            Target::Catalog => "catalog",
            Target::Service(_) => "service",
            Target::Kv(_) => "kv",
            Target::Intentions => "intentions",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Catalog => f.write_str("/v1/catalog/services"),
            Target::Service(name) => write!(f, "/v1/health/service/{name}"),
            Target::Kv(prefix) => write!(f, "/v1/kv/{prefix}?recurse"),
            Target::Intentions => f.write_str("/v1/connect/intentions"),
        }
    }
}

/// What a watch read.
enum Payload {
    Catalog(BTreeSet<String>),
    Service(Vec<ServiceEntry>),
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
            Target::Service(name) => {
                let (entries, meta) = client.health_service(name, options).await?;
                (Payload::Service(entries), meta)
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

/// A message from a watch task to the supervisor.
struct Event {
    target: Target,
    /// Which spawn of the watch sent it: a service removed and re-added gets
    /// a new epoch, so a late message from the old task is ignored.
    epoch: u64,
    update: Update,
}

enum Update {
    Loaded(Payload),
    /// The first read failed; sent once, so start-up is not held up waiting
    /// for a watch that cannot load.
    FirstLoadFailed,
}

/// Where one service's watch stands.
enum ServiceState {
    /// Started, no answer yet.
    Pending,
    /// Its first read failed; no data.
    Failed,
    Loaded(Vec<ServiceEntry>),
}

struct ServiceWatch {
    epoch: u64,
    abort: AbortHandle,
    state: ServiceState,
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
    /// Every watch task; dropping the set (when `run` is dropped) aborts them all.
    tasks: JoinSet<()>,
    catalog_loaded: bool,
    kv_loaded: bool,
    intentions_loaded: bool,
    services: BTreeMap<String, ServiceWatch>,
    next_epoch: u64,
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
        let (events_tx, events) = mpsc::channel(256);
        Self {
            client,
            store,
            options,
            metrics,
            events_tx,
            events,
            tasks: JoinSet::new(),
            catalog_loaded: false,
            kv_loaded: false,
            intentions_loaded: false,
            services: BTreeMap::new(),
            next_epoch: 0,
        }
    }

    async fn run(mut self) {
        tracing::info!(consul = %self.client.address(), kv_prefix = %self.options.kv_prefix, "watching Consul");
        self.spawn(Target::Catalog);
        self.spawn(Target::Kv(self.options.kv_prefix.clone()));
        self.spawn(Target::Intentions);
        loop {
            tokio::select! {
                Some(event) = self.events.recv() => self.handle(event),
                // Reap aborted service watches so the set does not grow.
                Some(_) = self.tasks.join_next() => {}
            }
        }
    }

    fn spawn(&mut self, target: Target) -> (u64, AbortHandle) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let watch = Watch {
            client: self.client.clone(),
            target,
            epoch,
            options: self.options.clone(),
            metrics: self.metrics.clone(),
            events: self.events_tx.clone(),
        };
        (epoch, self.tasks.spawn(watch.run()))
    }

    fn handle(&mut self, event: Event) {
        match (event.target, event.update) {
            (Target::Catalog, Update::Loaded(Payload::Catalog(names))) => {
                self.catalog_loaded = true;
                self.set_catalog(names);
            }
            (Target::Kv(_), Update::Loaded(Payload::Kv(pairs))) => {
                self.kv_loaded = true;
                self.store
                    .set_documents(documents(&self.options.kv_prefix, pairs));
            }
            (Target::Intentions, Update::Loaded(Payload::Intentions(intentions))) => {
                self.intentions_loaded = true;
                self.store.set_intentions(mesh_intentions(intentions));
            }
            (Target::Service(name), update) => {
                let Some(watch) = self.services.get_mut(&name) else {
                    return; // a watch stopped since
                };
                if watch.epoch != event.epoch {
                    return;
                }
                match update {
                    Update::Loaded(Payload::Service(entries)) => {
                        watch.state = ServiceState::Loaded(entries)
                    }
                    Update::FirstLoadFailed => {
                        if matches!(watch.state, ServiceState::Pending) {
                            watch.state = ServiceState::Failed;
                        }
                    }
                    Update::Loaded(_) => return,
                }
            }
            // A failed first catalog, KV or intentions read changes
            // nothing: the store stays unsynced until they load.
            _ => return,
        }
        self.publish();
    }

    /// Starts watches for new names and stops those of names that are gone.
    fn set_catalog(&mut self, names: BTreeSet<String>) {
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|name| !names.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(watch) = self.services.remove(&name) {
                watch.abort.abort();
                tracing::debug!(service = %name, "service left the catalog; watch stopped");
            }
        }
        for name in names {
            if !self.services.contains_key(&name) {
                let (epoch, abort) = self.spawn(Target::Service(name.clone()));
                tracing::debug!(service = %name, "service joined the catalog; watch started");
                self.services.insert(
                    name,
                    ServiceWatch {
                        epoch,
                        abort,
                        state: ServiceState::Pending,
                    },
                );
            }
        }
    }

    /// Writes the destinations and their endpoints to the store, from the
    /// current view of every watch.
    fn publish(&mut self) {
        if !self.catalog_loaded {
            return;
        }
        // A name that has not answered yet may be the sidecar that makes
        // another service meshed: publishing before it answers could send a
        // meshed service's plaintext address for a moment. First reads take
        // milliseconds, and one that fails stops counting as pending.
        if self
            .services
            .values()
            .any(|watch| matches!(watch.state, ServiceState::Pending))
        {
            return;
        }
        let view = CatalogView::new(&self.services);
        let names: BTreeSet<String> = view
            .destinations
            .keys()
            .map(|name| (*name).to_owned())
            .collect();
        self.store.set_service_names(&names);
        for (name, instances) in &view.destinations {
            self.store
                .set_endpoints(name, view.endpoints(name, instances));
        }
        let all_loaded = self
            .services
            .values()
            .all(|watch| matches!(watch.state, ServiceState::Loaded(_)));
        if self.kv_loaded && self.intentions_loaded && all_loaded && !self.store.is_synced() {
            tracing::info!(services = names.len(), "first full sync from Consul done");
            self.store.mark_synced();
        }
    }
}

/// The loaded services, split into destinations and the proxies that front them.
struct CatalogView<'a> {
    /// Destination name -> its own instances.
    destinations: BTreeMap<&'a str, &'a [ServiceEntry]>,
    /// Destination name -> Connect proxies whose destination it is.
    proxies: BTreeMap<&'a str, Vec<&'a ServiceEntry>>,
}

impl<'a> CatalogView<'a> {
    fn new(services: &'a BTreeMap<String, ServiceWatch>) -> Self {
        let mut destinations = BTreeMap::new();
        let mut proxies: BTreeMap<&str, Vec<&ServiceEntry>> = BTreeMap::new();
        for (name, watch) in services {
            let ServiceState::Loaded(entries) = &watch.state else {
                continue;
            };
            if is_infrastructure(entries) {
                for entry in entries {
                    if entry.service.kind != ServiceKind::ConnectProxy {
                        continue;
                    }
                    if let Some(proxy) = &entry.service.proxy
                        && !proxy.destination_service_name.is_empty()
                    {
                        proxies
                            .entry(proxy.destination_service_name.as_str())
                            .or_default()
                            .push(entry);
                    }
                }
            } else {
                destinations.insert(name.as_str(), entries.as_slice());
            }
        }
        Self {
            destinations,
            proxies,
        }
    }

    fn endpoints(&self, name: &str, instances: &[ServiceEntry]) -> Vec<Endpoint> {
        match self.proxies.get(name) {
            Some(proxies) if !proxies.is_empty() => proxies
                .iter()
                .map(|proxy| meshed_endpoint(proxy, instances))
                .collect(),
            _ => instances
                .iter()
                .filter(|entry| entry.service.kind == ServiceKind::Typical)
                .map(plain_endpoint)
                .collect(),
        }
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
    epoch: u64,
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
                        if !self.send(Update::Loaded(payload)).await {
                            return;
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
                    if !loaded && backoff.failures == 1 && !self.send(Update::FirstLoadFailed).await
                    {
                        return;
                    }
                    // Read afresh next time: a restarted Consul may have a
                    // lower index, which a blocking read would sit on.
                    index = 0;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// False when the supervisor is gone (the source was stopped).
    async fn send(&self, update: Update) -> bool {
        let event = Event {
            target: self.target.clone(),
            epoch: self.epoch,
            update,
        };
        self.events.send(event).await.is_ok()
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

    /// A loaded watch (must run inside a runtime, for the abort handle).
    fn loaded(entries: Vec<ServiceEntry>) -> ServiceWatch {
        ServiceWatch {
            epoch: 0,
            abort: tokio::spawn(async {}).abort_handle(),
            state: ServiceState::Loaded(entries),
        }
    }

    #[tokio::test]
    async fn an_unmeshed_service_is_served_by_its_instances() {
        let services = BTreeMap::from([(
            "web".to_owned(),
            loaded(vec![
                app("web-1", "", 8080, "passing"),
                app("web-2", "10.0.0.9", 8081, "critical"),
            ]),
        )]);
        let view = CatalogView::new(&services);
        let endpoints = view.endpoints("web", view.destinations["web"]);
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

    #[tokio::test]
    async fn a_service_with_sidecars_is_meshed_and_its_proxies_are_not_destinations() {
        let services = BTreeMap::from([
            (
                "web".to_owned(),
                loaded(vec![app("web-1", "", 8080, "passing")]),
            ),
            (
                "web-sidecar-proxy".to_owned(),
                loaded(vec![sidecar("web-1", 21000, "passing")]),
            ),
        ]);
        let view = CatalogView::new(&services);
        assert_eq!(
            view.destinations.keys().copied().collect::<Vec<_>>(),
            vec!["web"]
        );
        let endpoints = view.endpoints("web", view.destinations["web"]);
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

    #[tokio::test]
    async fn a_meshed_endpoint_is_unhealthy_when_its_app_or_its_proxy_fails() {
        for (app_status, proxy_status) in [("critical", "passing"), ("passing", "critical")] {
            let services = BTreeMap::from([
                (
                    "web".to_owned(),
                    loaded(vec![app("web-1", "", 8080, app_status)]),
                ),
                (
                    "web-sidecar-proxy".to_owned(),
                    loaded(vec![sidecar("web-1", 21000, proxy_status)]),
                ),
            ]);
            let view = CatalogView::new(&services);
            let endpoints = view.endpoints("web", view.destinations["web"]);
            assert_eq!(
                endpoints[0].health,
                Health::Unhealthy,
                "app {app_status}, proxy {proxy_status}"
            );
        }
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
