//! A fake of Weft's own agent: an ADS endpoint (weft.discovery.v1) serving
//! fixed resources that a test replaces at will, and builders for those
//! resources. It speaks the protocol as the agent does (versions that change
//! with the names answered, one response per subscribed type and change) and
//! records every request, so a test can read a sidecar's ACKs and NACKs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::config::v1 as pb;
use weft_proto::discovery::v1::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};
use weft_proto::type_url;

/// The resources the fake agent serves; replace them with [`FakeAds::set`].
#[derive(Clone, Default)]
pub struct Snapshot {
    pub routes: Vec<pb::RouteConfiguration>,
    pub clusters: Vec<pb::Cluster>,
    pub assignments: Vec<pb::ClusterLoadAssignment>,
    /// Inbound policies; a requested service without one gets the default
    /// (allow), as the real agent answers every name.
    pub policies: Vec<pb::InboundPolicy>,
}

impl Snapshot {
    fn resources(&self, t: &str, names: &[String]) -> Vec<weft_proto::Any> {
        let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
        let any = |name: &str, bytes: Vec<u8>| {
            wanted(name).then(|| weft_proto::Any {
                type_url: t.to_owned(),
                value: bytes.into(),
            })
        };
        match t {
            type_url::ROUTE_CONFIGURATION => self
                .routes
                .iter()
                .filter_map(|r| any(&r.name, r.encode_to_vec()))
                .collect(),
            type_url::CLUSTER => self
                .clusters
                .iter()
                .filter_map(|c| any(&c.name, c.encode_to_vec()))
                .collect(),
            type_url::INBOUND_POLICY => names
                .iter()
                .filter_map(|name| {
                    let policy = self
                        .policies
                        .iter()
                        .find(|p| &p.service == name)
                        .cloned()
                        .unwrap_or_else(|| pb::InboundPolicy {
                            service: name.clone(),
                            default_action: pb::Action::Allow as i32,
                            ..Default::default()
                        });
                    any(name, policy.encode_to_vec())
                })
                .collect(),
            _ => self
                .assignments
                .iter()
                .filter_map(|c| any(&c.cluster_name, c.encode_to_vec()))
                .collect(),
        }
    }
}

#[derive(Clone)]
pub struct FakeAds {
    pub addr: SocketAddr,
    snapshot: Arc<watch::Sender<(u64, Snapshot)>>,
    /// Every request any sidecar sent, in order.
    pub requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
    shutdown: Arc<watch::Sender<bool>>,
}

struct Service {
    snapshot: Arc<watch::Sender<(u64, Snapshot)>>,
    requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamResourcesStream = ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;

    async fn stream_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamResourcesStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut snapshots = self.snapshot.subscribe();
        let log = self.requests.clone();
        tokio::spawn(async move {
            // Per type: subscribed names, and what was last sent (version, names).
            let mut subs: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut sent: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    req = incoming.next() => {
                        let Some(Ok(req)) = req else { return };
                        log.lock().unwrap().push(req.clone());
                        subs.insert(req.type_url.clone(), req.resource_names.clone());
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { return }
                    }
                }
                let (version, snap) = snapshots.borrow_and_update().clone();
                for (t, names) in &subs {
                    if sent.get(t) == Some(&(version, names.clone())) {
                        continue;
                    }
                    sent.insert(t.clone(), (version, names.clone()));
                    nonce += 1;
                    let resp = DiscoveryResponse {
                        // Like the agent's content hash, the version
                        // changes with the names answered, not only with
                        // the snapshot (a sidecar takes a response whose
                        // version it holds as nothing new).
                        version_info: if names.is_empty() {
                            format!("v{version}")
                        } else {
                            format!("v{version}:{}", names.join(","))
                        },
                        resources: snap.resources(t, names),
                        type_url: t.clone(),
                        nonce: nonce.to_string(),
                        removed_resources: Vec::new(),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

impl FakeAds {
    pub async fn start(snapshot: Snapshot) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), snapshot).await
    }

    pub async fn start_on(listener: TcpListener, snapshot: Snapshot) -> Self {
        let addr = listener.local_addr().unwrap();
        let snapshot = Arc::new(watch::channel((1, snapshot)).0);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let svc = Service {
            snapshot: snapshot.clone(),
            requests: requests.clone(),
        };
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )
                .await
                .unwrap();
        });
        Self {
            addr,
            snapshot,
            requests,
            shutdown: Arc::new(stop),
        }
    }

    /// Serves new resources (a new version of every type).
    pub fn set(&self, snapshot: Snapshot) {
        self.snapshot.send_modify(|(v, s)| {
            *v += 1;
            *s = snapshot;
        });
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn nacks(&self) -> Vec<DiscoveryRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.error_detail.is_some())
            .cloned()
            .collect()
    }
}

// ------------------------------------------------------- resource builders

pub fn route(prefix: &str, cluster: &str) -> pb::Route {
    pb::Route {
        name: format!("{prefix} -> {cluster}"),
        r#match: Some(pb::RouteMatch {
            path: Some(pb::route_match::Path::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(pb::RouteAction {
            destination: Some(pb::route_action::Destination::Cluster(cluster.into())),
            ..Default::default()
        }),
        request_headers: None,
        response_headers: None,
        cors: None,
        compression: None,
        cache: None,
        validation: None,
    }
}

/// The route table of `host` (domains `host`, `host.weft`).
pub fn route_config(host: &str, routes: Vec<pb::Route>) -> pb::RouteConfiguration {
    pb::RouteConfiguration {
        name: host.into(),
        virtual_hosts: vec![pb::VirtualHost {
            name: host.into(),
            domains: vec![host.into(), format!("{host}.weft")],
            routes,
        }],
    }
}

pub fn cluster(name: &str) -> pb::Cluster {
    pb::Cluster {
        name: name.into(),
        ..Default::default()
    }
}

pub fn assignment(
    name: &str,
    addrs: &[(SocketAddr, pb::endpoint::Health)],
) -> pb::ClusterLoadAssignment {
    pb::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: addrs
            .iter()
            .map(|(a, h)| pb::Endpoint {
                address: a.ip().to_string(),
                port: u32::from(a.port()),
                health: *h as i32,
                weight: 1,
                instance_id: format!("{name}-{}", a.port()),
                ..Default::default()
            })
            .collect(),
    }
}

pub fn healthy(addr: SocketAddr) -> (SocketAddr, pb::endpoint::Health) {
    (addr, pb::endpoint::Health::Healthy)
}
