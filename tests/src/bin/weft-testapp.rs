//! `weft-testapp`: the upstream app of the end-to-end tests.
//!
//! One port serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c):
//! - `GET|POST|... /*`: answers JSON `{service, instance, method, path, query,
//!   version, headers, body}` so a test can tell which instance answered, which
//!   path it saw (after a rewrite) and which headers arrived;
//! - `/status/<code>`: the same JSON with that status code;
//! - `/delay/<ms>`: the same JSON after waiting that long;
//! - `/ws`: a WebSocket echo (text and binary frames come back unchanged);
//!   every WebSocket upgrade request, on any path, is logged
//!   (`websocket upgrade requested`); on another path it gets that path's
//!   ordinary answer, the way an app declines an upgrade;
//! - `content-type: application/grpc*`: the `weft.test.echo.Echo` gRPC service;
//! - faults on command, for resilience tests (never faulted or counted
//!   themselves): `PUT /_weft/fault` with `{"status": 503}`,
//!   `{"delay_ms": 500}` or `{"reset": true}` (the connection is closed
//!   without an answer), each with an optional `"count": N` (the next N
//!   requests; without it, until cleared), applies to every other request;
//!   `DELETE /_weft/fault` clears it; `GET /_weft/stats` answers
//!   `{"requests": N, "connections": C, "peak_connections": P}`: the
//!   requests this instance has seen (faulted ones included, control ones
//!   not), the connections open now and the most open at once since the
//!   last `DELETE /_weft/stats/peak` (which resets it to the current count).
//!
//! It prints `READY <addr>` on stdout once listening (`--listen` may use port 0),
//! which is what the harness waits on.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, Stream, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::{Status, Streaming};
use tower::Service as _;
use weft_e2e::echo::echo_server::{Echo, EchoServer};
use weft_e2e::echo::{EchoReply, EchoRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Parser, Debug)]
#[command(about = "Upstream app for Weft's end-to-end tests (HTTP/1.1, h2c, WebSocket, gRPC echo)")]
struct Args {
    /// Service name reported in every answer.
    #[arg(long)]
    service: String,
    /// Instance id reported in every answer; defaults to `<service>-<port>`.
    #[arg(long)]
    instance: Option<String>,
    /// Listen address; port 0 picks a free port (printed on the READY line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Who this process is, shared by every connection.
struct Identity {
    service: String,
    instance: String,
    faults: Faults,
}

/// The fault switch and the request counter (see the module docs).
#[derive(Default)]
struct Faults {
    /// A test app: a plain mutex, held for a few instructions, is fine.
    current: Mutex<Option<Fault>>,
    requests: AtomicU64,
    connections: ConnectionCount,
}

/// Connections open now and the most open at once (what a sidecar's
/// connection limit is checked against).
#[derive(Default)]
struct ConnectionCount {
    open: AtomicU64,
    peak: AtomicU64,
}

impl Identity {
    fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        let counts = &self.faults.connections;
        let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak.fetch_max(open, Ordering::SeqCst);
        OpenConnection(self.clone())
    }
}

/// One accepted connection; dropping it counts it closed.
struct OpenConnection(Arc<Identity>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .faults
            .connections
            .open
            .fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fault {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    reset: bool,
    /// Requests left to fault; `None`: until cleared.
    #[serde(default)]
    count: Option<u64>,
}

/// What to do with one request.
enum Injected {
    None,
    Status(StatusCode),
    Delay(Duration),
    Reset,
}

impl Faults {
    /// Counts the request and takes one use of the current fault.
    fn next(&self) -> Injected {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fault) = current.as_mut() else {
            return Injected::None;
        };
        let injected = if fault.reset {
            Injected::Reset
        } else if let Some(ms) = fault.delay_ms {
            Injected::Delay(Duration::from_millis(ms))
        } else {
            fault
                .status
                .and_then(|code| StatusCode::from_u16(code).ok())
                .map_or(Injected::None, Injected::Status)
        };
        if let Some(count) = fault.count.as_mut() {
            *count = count.saturating_sub(1);
            if *count == 0 {
                *current = None;
            }
        }
        injected
    }
}

/// The answer to a `/_weft/...` control request.
async fn control(identity: &Identity, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/_weft/stats") => {
            let requests = identity.faults.requests.load(Ordering::Relaxed);
            let connections = identity.faults.connections.open.load(Ordering::SeqCst);
            let peak = identity.faults.connections.peak.load(Ordering::SeqCst);
            text(
                StatusCode::OK,
                format!(
                    "{{\"requests\":{requests},\"connections\":{connections},\"peak_connections\":{peak}}}\n"
                ),
            )
        }
        ("DELETE", "/_weft/stats/peak") => {
            let counts = &identity.faults.connections;
            counts
                .peak
                .store(counts.open.load(Ordering::SeqCst), Ordering::SeqCst);
            text(StatusCode::OK, "peak reset\n".into())
        }
        ("DELETE", "/_weft/fault") => {
            *identity
                .faults
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            text(StatusCode::OK, "fault cleared\n".into())
        }
        ("PUT", "/_weft/fault") => {
            let body = match req.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the body: {error}\n"),
                    );
                }
            };
            match serde_json::from_slice::<Fault>(&body) {
                Ok(fault) if fault.count == Some(0) => {
                    text(StatusCode::BAD_REQUEST, "count must be at least 1\n".into())
                }
                Ok(fault) => {
                    tracing::info!(?fault, "fault set");
                    *identity
                        .faults
                        .current
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(fault);
                    text(StatusCode::OK, "fault set\n".into())
                }
                Err(error) => text(StatusCode::BAD_REQUEST, format!("bad fault: {error}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no control endpoint {path}\n"),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let identity = Arc::new(Identity {
        instance: args
            .instance
            .unwrap_or_else(|| format!("{}-{}", args.service, addr.port())),
        service: args.service,
        faults: Faults::default(),
    });
    let grpc = EchoServer::new(EchoService {
        identity: identity.clone(),
    });

    // The harness reads this line; flush so it never sits in a buffer.
    // One line at start-up: a blocking write is fine here.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY {addr}").context("writing the READY line")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);
    tracing::info!(%addr, service = %identity.service, instance = %identity.instance, "listening");

    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE under load: back off briefly rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let identity = identity.clone();
        let grpc = grpc.clone();
        tokio::spawn(async move {
            let _open = identity.connection_opened();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let identity = identity.clone();
                let mut grpc = grpc.clone();
                async move {
                    if is_grpc(&req) {
                        // EchoServer is always ready (no backpressure), so call directly.
                        let response = match grpc.call(req).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        };
                        return Ok::<_, std::io::Error>(
                            response.map(|body| body.map_err(BoxError::from).boxed_unsync()),
                        );
                    }
                    if req.uri().path().starts_with("/_weft/") {
                        return Ok(control(&identity, req).await);
                    }
                    match identity.faults.next() {
                        // An error from the service makes hyper drop the
                        // connection without an answer.
                        Injected::Reset => {
                            return Err(std::io::Error::other("injected reset"));
                        }
                        Injected::Delay(delay) => tokio::time::sleep(delay).await,
                        Injected::Status(status) => {
                            let mut response = handle_http(&identity, req).await;
                            *response.status_mut() = status;
                            return Ok(response);
                        }
                        Injected::None => {}
                    }
                    Ok(handle_http(&identity, req).await)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

async fn handle_http(identity: &Identity, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if is_websocket_upgrade(&req) {
        // The tests read this line to tell whether an upgrade reached the app.
        tracing::info!(%path, "websocket upgrade requested");
        if path == "/ws" {
            return websocket_upgrade(&mut req);
        }
    }
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
        {
            Some(code) => status = code,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("bad status code {code:?}\n"),
                );
            }
        }
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Err(_) => return text(StatusCode::BAD_REQUEST, format!("bad delay {ms:?}\n")),
        }
    }

    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let version = format!("{:?}", req.version());
    let body = match req.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}\n"),
            );
        }
    };
    let echo = serde_json::json!({
        "service": identity.service,
        "instance": identity.instance,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body": body,
    });
    let mut response = Response::new(full(echo.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Answers the RFC 6455 handshake and echoes frames on the upgraded connection.
fn websocket_upgrade(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing sec-websocket-key\n".into(),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!(%error, "websocket upgrade failed");
                return;
            }
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(message) = socket.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::debug!(%error, "websocket read failed");
                    return;
                }
            };
            if message.is_text() || message.is_binary() {
                if let Err(error) = socket.send(message).await {
                    tracing::debug!(%error, "websocket write failed");
                    return;
                }
            } else if message.is_close() {
                // tungstenite answers the close frame itself; drain until the stream ends.
                continue;
            }
        }
    });
    let mut response = Response::new(full(String::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn full(body: String) -> Body {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}

/// The gRPC echo: every reply names the instance that produced it.
struct EchoService {
    identity: Arc<Identity>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        Ok(tonic::Response::new(EchoReply {
            message: request.into_inner().message,
            served_by: self.identity.instance.clone(),
        }))
    }

    type ServerStreamStream = ReplyStream;

    /// `repeat` replies (at least one), numbered `<message>-<i>`.
    async fn server_stream(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, Status> {
        let request = request.into_inner();
        let served_by = self.identity.instance.clone();
        let replies = (0..request.repeat.max(1)).map(move |i| {
            Ok(EchoReply {
                message: format!("{}-{i}", request.message),
                served_by: served_by.clone(),
            })
        });
        Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(
            replies,
        ))))
    }

    type BidiStreamStream = ReplyStream;

    /// One reply per request, as each arrives.
    async fn bidi_stream(
        &self,
        request: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<Self::BidiStreamStream>, Status> {
        let served_by = self.identity.instance.clone();
        let replies = request.into_inner().map(move |request| {
            request.map(|request| EchoReply {
                message: request.message,
                served_by: served_by.clone(),
            })
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}
