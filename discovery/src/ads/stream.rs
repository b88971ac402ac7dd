//! One sidecar's discovery stream: subscriptions, pushes, ACKs and NACKs
//! (the rules are in proto/README.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};
use weft_proto::type_url;

use super::status::{NackStatus, SidecarRegistry, unix_now};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, Subscription};

/// Per resource type: what the sidecar wants and what it was sent.
struct TypeState {
    subscription: Subscription,
    /// Version of the last response sent (ACKed or not).
    sent_version: Option<String>,
    /// Nonce of the last response sent; requests echoing another are stale.
    last_nonce: String,
    /// The subscription changed: answer even if the version did not.
    dirty: bool,
    /// The last response sent because the snapshot changed (not because
    /// the subscription did): its nonce and when the change reached the
    /// agent, so its ACK can be timed (`push_latency_seconds`).
    timed_push: Option<(String, Instant)>,
}

pub struct SidecarStream {
    id: u64,
    peer: String,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    registry: Arc<SidecarRegistry>,
    metrics: Arc<Metrics>,
    types: BTreeMap<&'static str, TypeState>,
    nonce: u64,
    node_id: String,
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
            nonce: 0,
            node_id: String::new(),
        }
    }

    pub async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        outbox: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let peer = self.peer.clone();
        self.registry.update(self.id, |status| {
            status.peer = peer;
            status.connected_at_unix = unix_now();
        });
        self.metrics.connected_sidecars.inc();

        loop {
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                for response in self.pending_responses(&snapshot) {
                    if outbox.send(Ok(response)).await.is_err() {
                        break;
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
        self.registry.remove(self.id);
        self.metrics.connected_sidecars.dec();
    }

    fn handle(&mut self, request: DiscoveryRequest) {
        if let Some(node) = &request.node
            && self.node_id != node.id
        {
            self.node_id = node.id.clone();
            tracing::info!(node = %node.id, service = %node.service, peer = %self.peer, "sidecar connected");
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
        let state = self.types.entry(type_url).or_insert_with(|| TypeState {
            subscription: Subscription::Wildcard,
            sent_version: None,
            last_nonce: String::new(),
            dirty: true,
            timed_push: None,
        });
        if !request.response_nonce.is_empty() && request.response_nonce != state.last_nonce {
            // Answers an older response; the sidecar will answer the newer one.
            return;
        }
        let short = type_url::short(type_url).to_string();
        let timed_push = state.timed_push.take();
        if let Some(error) = &request.error_detail {
            self.metrics.nacks_received.inc();
            tracing::warn!(
                node = %self.node_id,
                r#type = %short,
                rejected_version = ?state.sent_version,
                reason = %error.message,
                "sidecar rejected a config push (NACK); it keeps its last good config"
            );
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
            if let Some((nonce, changed_at)) = timed_push
                && nonce == request.response_nonce
            {
                self.metrics
                    .push_acknowledged(type_url::short(type_url), changed_at.elapsed());
            }
            self.registry.update(self.id, |status| {
                status.types.entry(short.clone()).or_default().acked_version =
                    request.version_info.clone();
            });
        }
        // An empty list is "everything" on a type's first request only;
        // once the sidecar named resources, it means none (it dropped its
        // last on-demand cluster), as in Envoy's xDS.
        let subscription = match &state.subscription {
            Subscription::Names(_)
                if request.resource_names.is_empty() && !state.last_nonce.is_empty() =>
            {
                Subscription::Names(Default::default())
            }
            _ => Subscription::from_names(&request.resource_names),
        };
        if request.response_nonce.is_empty() || subscription != state.subscription {
            let subscribed = match &subscription {
                Subscription::Wildcard => vec!["*".to_string()],
                Subscription::Names(names) => names.iter().cloned().collect(),
            };
            self.registry.update(self.id, |status| {
                status.types.entry(short).or_default().subscribed = subscribed;
            });
            state.subscription = subscription;
            state.dirty = true;
        }
    }

    /// Responses owed to the sidecar: for each subscribed type whose selected
    /// resources changed since the last response, or whose subscription changed.
    fn pending_responses(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut responses = Vec::new();
        for type_url in type_url::ALL {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            let selection = snapshot.select(type_url, &state.subscription);
            if !state.dirty && state.sent_version.as_deref() == Some(selection.version.as_str()) {
                continue;
            }
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            // Timed only when the snapshot changed under a standing
            // subscription: a new subscription's first answer measures the
            // sidecar's start, not a change's journey.
            let pushed_for_change = !state.dirty && state.sent_version.is_some();
            state.timed_push = snapshot
                .changed_at
                .filter(|_| pushed_for_change)
                .map(|changed_at| (nonce.clone(), changed_at));
            state.dirty = false;
            state.last_nonce = nonce.clone();
            state.sent_version = Some(selection.version.clone());
            let version = selection.version.clone();
            self.registry.update(self.id, |status| {
                status
                    .types
                    .entry(type_url::short(type_url).to_string())
                    .or_default()
                    .sent_version = version;
            });
            tracing::debug!(node = %self.node_id, r#type = type_url::short(type_url), version = %selection.version, resources = selection.resources.len(), "push");
            responses.push(DiscoveryResponse {
                version_info: selection.version,
                resources: selection.resources,
                type_url: type_url.to_string(),
                nonce,
                removed_resources: Vec::new(),
            });
        }
        responses
    }
}
