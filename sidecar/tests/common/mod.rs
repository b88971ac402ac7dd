//! Test support for the sidecar's integration tests: a fake of our own
//! agent's ADS endpoint serving fixed resources, small upstream apps, and
//! HTTP helpers. Everything runs on loopback, on ports the OS picks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::config::v1 as pb;
use weft_proto::discovery::v1::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};
use weft_proto::type_url;

/// Polls `check` every 10 ms until it returns true, failing after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- fake ADS

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

// ---------------------------------------------------------------- upstreams

/// An HTTP/1.1 + HTTP/2 app that answers `<name> <METHOD> <path?query>` and
/// reports what it saw in `x-seen-*` headers. `/sleep/<ms>` waits first;
/// an `Upgrade` request is accepted and echoed back byte for byte.
pub async fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(name, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn handle(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let seen = |h: &str| {
        req.headers()
            .get(h)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default()
    };
    let mut resp = Response::builder()
        .header("x-upstream", name)
        .header("x-seen-host", seen("host"))
        .header(
            "x-seen-authority",
            req.uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        )
        .header("x-seen-version", format!("{:?}", req.version()))
        .header("x-seen-request-id", seen("x-request-id"))
        .header("x-seen-forwarded-for", seen("x-forwarded-for"))
        .header("x-seen-forwarded-proto", seen("x-forwarded-proto"))
        .header("x-seen-added", seen("x-added"))
        .header("x-seen-connection", seen("connection"))
        .header("x-seen-secret", seen("x-secret"));
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        resp = resp
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket");
        return Ok(resp.body(Full::new(Bytes::new())).unwrap());
    }
    let body = format!("{name} {} {path}", req.method());
    Ok(resp.body(Full::new(Bytes::from(body))).unwrap())
}

/// Like [`upstream`], also counting the TCP connections it accepted.
pub async fn counting_upstream(
    name: &'static str,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(name, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

/// Accepts connections, reads the request, and closes without answering.
pub async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    addr
}

/// A loopback address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ------------------------------------------------------------------ clients

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// One HTTP/1.1 request to `addr` with the given Host header.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends raw bytes and returns everything read until the peer closes or
/// `until` appears.
pub async fn raw(addr: SocketAddr, request: &str, until: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
