//! One sidecar's discovery stream: subscriptions, pushes, ACKs and NACKs
//! (the rules are in proto/README.md), state of the world or incremental.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tonic::Streaming;
use weft_proto::client_features;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};
use weft_proto::type_url;

use super::status::{NackStatus, SidecarRegistry, Subscribed, unix_now};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, Subscription};

/// `removed_resources` of an incremental response that replaces whatever
/// the sidecar holds of the type (the agent does not know what it holds:
/// the first response on a stream that did not reconnect with the current
/// version, or the first after a NACK of one).
pub const REMOVE_ALL: &str = "*";

/// What a sidecar holds (or will, once it accepts a response): the
/// selection of `subscription` in `snapshot`. Two pointers and a short
/// string; the snapshot is shared with every other stream.
#[derive(Clone)]
struct Held {
    snapshot: Arc<Snapshot>,
    subscription: Subscription,
    version: String,
}

/// The last response, when it was sent because the snapshot changed (not
/// because the subscription did): its ACK is timed.
struct TimedPush {
    changed_at: Instant,
    generation: u64,
}

/// Per resource type: what the sidecar wants and what it was sent.
struct TypeState {
    subscription: Subscription,
    /// The version the sidecar said it holds when it opened this type on
    /// this stream (a reconnect): taken as what it holds if it is the
    /// current version, and then nothing is sent.
    claimed_version: Option<String>,
    /// Version of the last response sent (ACKed or not).
    sent_version: Option<String>,
    /// Nonce of the last response sent; requests echoing another are stale.
    last_nonce: String,
    /// The subscription changed: answer even if the version did not.
    dirty: bool,
    /// What the sidecar holds once it accepts the last response sent.
    sent: Option<Held>,
    /// Incremental only: what the sidecar holds by its last ACK, the base
    /// the next response is computed from (a NACKed one left it unchanged).
    acked: Option<Held>,
    /// Incremental only: the last response awaits its ACK or NACK. The next
    /// waits for it, so that it is computed from what the sidecar holds.
    in_flight: bool,
    timed_push: Option<TimedPush>,
}

pub struct SidecarStream {
    id: u64,
    peer: String,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    registry: Arc<SidecarRegistry>,
    metrics: Arc<Metrics>,
    types: BTreeMap<&'static str, TypeState>,
    /// Nonces are `nonce_base + n` in hex: random per stream, so a request
    /// carrying a nonce of an earlier stream (a sidecar that reconnected)
    /// never passes for the answer to one of this stream's responses.
    nonce_base: u64,
    nonce: u64,
    node_id: String,
    /// The sidecar listed `weft.incremental` in its Node.client_features.
    incremental: bool,
    /// The newest snapshot generation this stream has looked at (for
    /// `convergence_seconds`).
    considered: u64,
}

impl SidecarStream {
    pub fn new(
        id: u64,
        peer: String,
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        registry: Arc<SidecarRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            id,
            peer,
            snapshots,
            registry,
            metrics,
            types: BTreeMap::new(),
            nonce_base: rand::random(),
            nonce: 0,
            node_id: String::new(),
            incremental: false,
            considered: 0,
        }
    }

    pub async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        outbox: mpsc::Sender<DiscoveryResponse>,
    ) {
        let peer = self.peer.clone();
        self.registry.update(self.id, |status| {
            status.peer = peer;
            status.connected_at_unix = unix_now();
        });
        self.metrics.connected_sidecars.inc();
        self.considered = self.metrics.convergence.opened();

        'stream: loop {
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                for response in self.pending_responses(&snapshot) {
                    if outbox.send(response).await.is_err() {
                        break 'stream;
                    }
                    self.metrics.responses_sent.inc();
                }
            }
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request),
                    Ok(None) => {
                        tracing::info!(node = %self.node_id, peer = %self.peer, "sidecar closed its discovery stream");
                        break;
                    }
                    Err(status) => {
                        tracing::info!(node = %self.node_id, peer = %self.peer, error = %status.message(), "sidecar discovery stream ended");
                        break;
                    }
                },
                changed = self.snapshots.changed() => if changed.is_err() { break },
                () = outbox.closed() => break,
            }
        }
        for state in self.types.values_mut() {
            if let Some(push) = state.timed_push.take() {
                self.metrics.convergence.abandoned(push.generation);
            }
        }
        self.metrics.convergence.closed(self.considered);
        self.registry.remove(self.id);
        self.metrics.connected_sidecars.dec();
    }

    fn handle(&mut self, request: DiscoveryRequest) {
        if let Some(node) = &request.node
            && self.node_id != node.id
        {
            self.node_id = node.id.clone();
            self.incremental = node
                .client_features
                .iter()
                .any(|feature| feature == client_features::INCREMENTAL);
            tracing::info!(node = %node.id, service = %node.service, peer = %self.peer, incremental = self.incremental, "sidecar connected");
            let node = node.clone();
            self.registry.update(self.id, |status| {
                status.node_id = node.id;
                status.service = node.service;
                status.instance = node.instance;
                status.build_version = node.build_version;
            });
        }
        let Some(type_url) = type_url::ALL
            .into_iter()
            .find(|known| *known == request.type_url)
        else {
            tracing::warn!(node = %self.node_id, type_url = %request.type_url, "sidecar asked for an unknown resource type; ignored");
            return;
        };
        let previous = self.types.get(type_url);
        let unchanged =
            previous.is_some_and(|state| state.subscription.is(&request.resource_names));
        // An empty list is "everything" on a type's first request only;
        // once the sidecar named resources on this stream, it means none
        // (it dropped its last on-demand cluster), as in Envoy's xDS. Named
        // on this stream, not answered: a reconnect whose held version the
        // agent adopted has had no response yet, and taking its next empty
        // list for "everything" would send it the whole mesh, then nothing
        // for a name it asks for again.
        let dropped_all = request.resource_names.is_empty()
            && previous.is_some_and(|state| matches!(state.subscription, Subscription::Names(_)));
        // The same names as another type's (Cluster and ClusterLoadAssignment
        // usually): share that set instead of holding a second copy.
        let subscription = if unchanged {
            None
        } else if dropped_all {
            Some(Subscription::Names(Default::default()))
        } else {
            Some(match Subscription::from_names(&request.resource_names) {
                Subscription::Names(names) => Subscription::Names(
                    self.types
                        .values()
                        .find_map(|other| match &other.subscription {
                            Subscription::Names(held) if *held == names => Some(held.clone()),
                            _ => None,
                        })
                        .unwrap_or(names),
                ),
                // A Gateway carries the private keys of its `kv`
                // certificates: it goes to a stream that names it, never
                // to one asking for every gateway's.
                Subscription::Wildcard if type_url == type_url::GATEWAY => {
                    Subscription::Names(Default::default())
                }
                wildcard => wildcard,
            })
        };
        let state = self.types.entry(type_url).or_insert_with(|| TypeState {
            subscription: Subscription::Wildcard,
            claimed_version: (request.response_nonce.is_empty()
                && !request.version_info.is_empty())
            .then(|| request.version_info.clone()),
            sent_version: None,
            last_nonce: String::new(),
            dirty: true,
            sent: None,
            acked: None,
            in_flight: false,
            timed_push: None,
        });
        // Answers an older response; the sidecar will answer the newer one.
        // (Before this stream sent anything of the type, a nonce can only
        // come from an earlier stream: not stale, just the sidecar's last.)
        if !request.response_nonce.is_empty()
            && !state.last_nonce.is_empty()
            && request.response_nonce != state.last_nonce
        {
            return;
        }
        let answers_last = !state.last_nonce.is_empty();
        let short = type_url::short(type_url).to_string();
        if let Some(error) = &request.error_detail {
            self.metrics.nacks_received.inc();
            tracing::warn!(
                node = %self.node_id,
                r#type = %short,
                rejected_version = ?state.sent_version,
                reason = %error.message,
                "sidecar rejected a config push (NACK); it keeps its last good config"
            );
            if answers_last {
                state.in_flight = false;
                if let Some(push) = state.timed_push.take() {
                    self.metrics.convergence.abandoned(push.generation);
                }
            }
            let nack = NackStatus {
                version: state.sent_version.clone().unwrap_or_default(),
                message: error.message.clone(),
                at_unix: unix_now(),
            };
            self.registry.update(self.id, |status| {
                let entry = status.types.entry(short.clone()).or_default();
                entry.last_nack = Some(nack);
                entry.acked_version = request.version_info.clone();
            });
        } else if !request.response_nonce.is_empty() {
            if answers_last {
                state.in_flight = false;
                state.acked = state.sent.clone();
                if let Some(push) = state.timed_push.take() {
                    let now = Instant::now();
                    self.metrics.push_acknowledged(
                        type_url::short(type_url),
                        now.saturating_duration_since(push.changed_at),
                    );
                    self.metrics.convergence.acked(push.generation, now);
                }
            }
            self.registry.update(self.id, |status| {
                status.types.entry(short.clone()).or_default().acked_version =
                    request.version_info.clone();
            });
        }
        let subscription = subscription.unwrap_or_else(|| state.subscription.clone());
        if request.response_nonce.is_empty() || subscription != state.subscription {
            let subscribed = Subscribed(match &subscription {
                Subscription::Wildcard => None,
                Subscription::Names(names) => Some(names.clone()),
            });
            self.registry.update(self.id, |status| {
                status.types.entry(short).or_default().subscribed = subscribed;
            });
            state.subscription = subscription;
            state.dirty = true;
        }
    }

    /// Responses owed to the sidecar: for each subscribed type whose selected
    /// resources changed since the last response, or whose subscription changed.
    fn pending_responses(&mut self, snapshot: &Arc<Snapshot>) -> Vec<DiscoveryResponse> {
        let mut responses = Vec::new();
        // An incremental type awaiting its ACK has not looked at this
        // snapshot yet: the change is not over for this stream.
        let mut waiting = false;
        for type_url in type_url::ALL {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            if self.incremental && state.in_flight {
                waiting = true;
                continue;
            }
            if adopt_claimed_version(type_url, state, snapshot) {
                let version = state.sent_version.clone().unwrap_or_default();
                tracing::debug!(node = %self.node_id, r#type = type_url::short(type_url), %version, "sidecar holds the current version; nothing to send");
                self.registry.update(self.id, |status| {
                    let entry = status
                        .types
                        .entry(type_url::short(type_url).to_string())
                        .or_default();
                    entry.sent_version = version.clone();
                    entry.acked_version = version;
                });
                continue;
            }
            let Some(content) = (if self.incremental {
                incremental_content(type_url, state, snapshot)
            } else {
                state_of_the_world_content(type_url, state, snapshot)
            }) else {
                continue;
            };
            self.nonce += 1;
            let nonce = format!("{:x}", self.nonce_base.wrapping_add(self.nonce));
            // Timed only when the snapshot changed under a standing
            // subscription: a new subscription's first answer measures the
            // sidecar's start, not a change's journey.
            let pushed_for_change = !state.dirty && state.sent.is_some();
            if let Some(superseded) = state.timed_push.take() {
                self.metrics.convergence.abandoned(superseded.generation);
            }
            state.timed_push =
                snapshot
                    .changed_at
                    .filter(|_| pushed_for_change)
                    .map(|changed_at| TimedPush {
                        changed_at,
                        generation: snapshot.generation(),
                    });
            if state.timed_push.is_some() {
                self.metrics.convergence.pushed(snapshot.generation());
            }
            state.dirty = false;
            state.in_flight = self.incremental;
            state.last_nonce = nonce.clone();
            state.sent_version = Some(content.version.clone());
            state.sent = Some(Held {
                snapshot: snapshot.clone(),
                subscription: state.subscription.clone(),
                version: content.version.clone(),
            });
            let version = content.version.clone();
            self.registry.update(self.id, |status| {
                status
                    .types
                    .entry(type_url::short(type_url).to_string())
                    .or_default()
                    .sent_version = version;
            });
            tracing::debug!(node = %self.node_id, r#type = type_url::short(type_url), version = %content.version, resources = content.resources.len(), removed = content.removed.len(), "push");
            responses.push(DiscoveryResponse {
                version_info: content.version,
                resources: content.resources,
                type_url: type_url.to_string(),
                nonce,
                removed_resources: content.removed,
            });
        }
        if !waiting {
            self.metrics
                .convergence
                .considered(self.considered, snapshot.generation());
            self.considered = self.considered.max(snapshot.generation());
        }
        responses
    }
}

/// The body of one response.
struct Content {
    version: String,
    resources: Vec<weft_proto::Any>,
    removed: Vec<String>,
}

/// On the first look at a type the sidecar (re)opened with a version: if
/// it is the version of the current selection, the sidecar holds exactly
/// that set, so nothing is sent (an agent restart does not make every
/// sidecar download everything again). Returns whether it was adopted.
fn adopt_claimed_version(
    type_url: &'static str,
    state: &mut TypeState,
    snapshot: &Arc<Snapshot>,
) -> bool {
    let Some(claimed) = state.claimed_version.take() else {
        return false;
    };
    if state.sent.is_some() {
        return false;
    }
    let version = snapshot.version(type_url, &state.subscription);
    if claimed != version {
        return false;
    }
    let held = Held {
        snapshot: snapshot.clone(),
        subscription: state.subscription.clone(),
        version: version.clone(),
    };
    state.sent = Some(held.clone());
    state.acked = Some(held);
    state.sent_version = Some(version);
    state.dirty = false;
    true
}

/// State of the world: every selected resource, when the selection's
/// version differs from the last sent or the subscription changed.
fn state_of_the_world_content(
    type_url: &'static str,
    state: &mut TypeState,
    snapshot: &Arc<Snapshot>,
) -> Option<Content> {
    if !state.dirty
        && let Some(sent) = &mut state.sent
        && sent.subscription == state.subscription
        && let Some(touched) = snapshot.touched_since(type_url, sent.snapshot.generation())
    {
        let affected = match &state.subscription {
            Subscription::Wildcard => !touched.is_empty(),
            Subscription::Names(names) => touched.iter().any(|name| names.contains(*name)),
        };
        if !affected {
            // Nothing it selects changed: no work beyond the change list.
            sent.snapshot = snapshot.clone();
            return None;
        }
    }
    let selection = snapshot.select(type_url, &state.subscription);
    if !state.dirty && state.sent_version.as_deref() == Some(selection.version.as_str()) {
        return None;
    }
    Some(Content {
        version: selection.version,
        resources: selection.resources,
        removed: Vec::new(),
    })
}

/// Incremental: what changed between what the sidecar holds (its last ACK)
/// and the current selection; everything, replacing what it holds, when
/// the agent does not know what it holds.
fn incremental_content(
    type_url: &'static str,
    state: &mut TypeState,
    snapshot: &Arc<Snapshot>,
) -> Option<Content> {
    let Some(base) = &mut state.acked else {
        let selection = snapshot.select(type_url, &state.subscription);
        if !state.dirty && state.sent_version.as_deref() == Some(selection.version.as_str()) {
            // The version it rejected: not again, only a newer one.
            return None;
        }
        return Some(Content {
            version: selection.version,
            resources: selection.resources,
            removed: vec![REMOVE_ALL.to_string()],
        });
    };
    let delta = snapshot.diff(
        type_url,
        &base.snapshot,
        &base.subscription,
        &state.subscription,
    );
    if delta.is_empty() {
        if !state.dirty {
            // It holds this snapshot's selection already: the next diff
            // starts here (and its change list stays short).
            base.snapshot = snapshot.clone();
            return None;
        }
        return Some(Content {
            version: base.version.clone(),
            resources: Vec::new(),
            removed: Vec::new(),
        });
    }
    let version = snapshot.version(type_url, &state.subscription);
    if !state.dirty && state.sent_version.as_deref() == Some(version.as_str()) {
        return None;
    }
    Some(Content {
        version,
        resources: delta
            .changed
            .iter()
            .map(|resource| resource.any.clone())
            .collect(),
        removed: delta.removed,
    })
}
