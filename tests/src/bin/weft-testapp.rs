//! `weft-testapp`: the upstream app of the end-to-end tests.
//!
//! One port serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c):
//! - `GET|POST|... /*`: answers JSON `{service, instance, method, path, query,
//!   version, headers, body}` so a test can tell which instance answered, which
//!   path it saw (after a rewrite) and which headers arrived;
//! - `/status/<code>`: the same JSON with that status code;
//! - `/delay/<ms>`: the same JSON after waiting that long;
//! - `/call/<service>/<rest>`: calls `<service>` at `/<rest>` through the
//!   sidecar's outbound listener (`--outbound`), forwarding the trace
//!   headers (`traceparent`, `tracestate`, `b3`, `x-b3-*`) and
//!   `x-request-id` as a traced app does; answers with the downstream's
//!   status and the echo JSON plus `downstream` (its JSON answer, or its
//!   text) — a chain a -> b -> c is `/call/c/...` sent to b;
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
//!   `{"requests": N, "connections": C, "peak_connections": P,
//!   "grpc_requests": G}`: the (non-gRPC) requests this instance has seen
//!   (faulted ones included, control ones not), the connections open now
//!   and the most open at once since the last `DELETE /_weft/stats/peak`
//!   (which resets it to the current count), and the gRPC calls it has seen;
//! - gRPC faults, for the echo service's calls only (other faults leave
//!   gRPC alone, and these leave plain HTTP alone): `{"grpc_status": 14}`
//!   answers every call with that status in a trailers-only answer (the
//!   status in the response head, no message), the way a call fails
//!   before it starts; with `"grpc_trailers_only": false` the answer is one
//!   reply message, then the status in the trailers (a call that fails
//!   after it started). `"count": N` as above; `grpc_status` cannot be
//!   combined with `status`, `delay_ms` or `reset`.
//!
//! With `--speaks http1` it is an HTTP/1.1-only app (the HTTP/2 preface
//! ends the connection, as most HTTP/1.1 servers do), with `--speaks h2c`
//! an HTTP/2-only one (prior knowledge): what a test needs to show that a
//! proxy chose the app's protocol right.
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
    /// The sidecar's outbound listener, for `/call/...`.
    #[arg(long, env = "WEFT_OUTBOUND")]
    outbound: Option<SocketAddr>,
    /// Which HTTP versions the port serves.
    #[arg(long, value_enum, default_value_t = Speaks::Both)]
    speaks: Speaks,
}

/// The HTTP versions the app's port serves.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Speaks {
    /// HTTP/1.1 and h2c, told apart by the first bytes.
    Both,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge only.
    H2c,
}

/// The headers a traced app copies from the request it serves onto the
/// calls it makes.
const FORWARDED: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
];

type OutboundClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Who this process is, shared by every connection.
struct Identity {
    service: String,
    instance: String,
    faults: Faults,
    /// Where `/call/...` goes, and the client for it.
    outbound: Option<(SocketAddr, OutboundClient)>,
}

/// The fault switch and the request counter (see the module docs).
#[derive(Default)]
struct Faults {
    /// A test app: a plain mutex, held for a few instructions, is fine.
    current: Mutex<Option<Fault>>,
    requests: AtomicU64,
    connections: ConnectionCount,
    grpc_requests: AtomicU64,
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
    /// A gRPC status (1-16) for the echo service's calls.
    #[serde(default)]
    grpc_status: Option<i32>,
    /// With `grpc_status`: in the head, no message (`true`, the default),
    /// or in the trailers after one reply (`false`).
    #[serde(default)]
    grpc_trailers_only: Option<bool>,
}

impl Fault {
    /// Why this fault cannot be set, if it cannot.
    fn invalid(&self) -> Option<&'static str> {
        if self.count == Some(0) {
            return Some("count must be at least 1");
        }
        match self.grpc_status {
            Some(code) if !(1..=16).contains(&code) => {
                Some("grpc_status must be a failing gRPC status, 1-16")
            }
            Some(_) if self.status.is_some() || self.delay_ms.is_some() || self.reset => Some(
                "grpc_status applies to gRPC calls only: it cannot be combined with status, delay_ms or reset",
            ),
            None if self.grpc_trailers_only.is_some() => {
                Some("grpc_trailers_only needs a grpc_status")
            }
            _ => None,
        }
    }

    /// Takes one use; true when it was the last.
    fn spend(&mut self) -> bool {
        match self.count.as_mut() {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            None => false,
        }
    }
}

/// A gRPC failure to answer one call with.
struct GrpcFailure {
    code: i32,
    trailers_only: bool,
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
        // A gRPC fault is not this request's.
        let Some(fault) = current.as_mut().filter(|f| f.grpc_status.is_none()) else {
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

    /// Counts a call of the echo service and takes one use of a gRPC fault.
    fn next_grpc(&self) -> Option<GrpcFailure> {
        self.grpc_requests.fetch_add(1, Ordering::Relaxed);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fault = current.as_mut()?;
        let failure = GrpcFailure {
            code: fault.grpc_status?,
            trailers_only: fault.grpc_trailers_only.unwrap_or(true),
        };
        if fault.spend() {
            *current = None;
        }
        Some(failure)
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
            let grpc = identity.faults.grpc_requests.load(Ordering::Relaxed);
            text(
                StatusCode::OK,
                format!(
                    "{{\"requests\":{requests},\"connections\":{connections},\"peak_connections\":{peak},\"grpc_requests\":{grpc}}}\n"
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
                Ok(fault) if fault.invalid().is_some() => text(
                    StatusCode::BAD_REQUEST,
                    format!("bad fault: {}\n", fault.invalid().unwrap_or_default()),
                ),
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
        outbound: args.outbound.map(|addr| {
            let client =
                hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
            (addr, client)
        }),
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
        let speaks = args.speaks;
        tokio::spawn(async move {
            let _open = identity.connection_opened();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let identity = identity.clone();
                let mut grpc = grpc.clone();
                async move {
                    if is_grpc(&req) {
                        if req.uri().path().starts_with(ECHO_PATH)
                            && let Some(failure) = identity.faults.next_grpc()
                        {
                            return Ok(grpc_failure(&identity, req, failure).await);
                        }
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
            let io = TokioIo::new(stream);
            let served = match speaks {
                Speaks::Both => hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(io, service)
                    .await
                    .map_err(|e| e.to_string()),
                Speaks::Http1 => hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
                    .map_err(|e| e.to_string()),
                Speaks::H2c => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// The path prefix of the echo service's calls.
const ECHO_PATH: &str = "/weft.test.echo.Echo/";

/// A failed call, answered by hand: tonic's server would always fail a
/// unary call in a trailers-only answer.
async fn grpc_failure(
    identity: &Identity,
    req: Request<Incoming>,
    failure: GrpcFailure,
) -> Response<Body> {
    // Read the call first, as a server does, so the answer never races it.
    let _ = req.into_body().collect().await;
    let status = header::HeaderValue::from(failure.code);
    let message = header::HeaderValue::from_static("injected fault");
    let (body, trailers_only) = if failure.trailers_only {
        (
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            true,
        )
    } else {
        let reply = prost::Message::encode_to_vec(&EchoReply {
            message: "before the failure".into(),
            served_by: identity.instance.clone(),
        });
        // The gRPC message frame: not compressed, big-endian length.
        let mut framed = Vec::with_capacity(5 + reply.len());
        framed.push(0);
        framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
        framed.extend_from_slice(&reply);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", status.clone());
        trailers.insert("grpc-message", message.clone());
        let frames: [Result<hyper::body::Frame<Bytes>, BoxError>; 2] = [
            Ok(hyper::body::Frame::data(Bytes::from(framed))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        (
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
            false,
        )
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/grpc"),
    );
    if trailers_only {
        headers.insert("grpc-status", status);
        headers.insert("grpc-message", message);
    }
    response
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

    let downstream = match path.strip_prefix("/call/") {
        Some(target) => match call_onward(identity, target, req.headers()).await {
            Ok((code, answer)) => {
                status = code;
                Some(answer)
            }
            Err(error) => return text(StatusCode::BAD_GATEWAY, format!("{error:#}\n")),
        },
        None => None,
    };

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
    let mut echo = serde_json::json!({
        "service": identity.service,
        "instance": identity.instance,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body": body,
    });
    if let Some(downstream) = downstream {
        echo["downstream"] = downstream;
    }
    let mut response = Response::new(full(echo.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `/call/<service>/<rest>`: GET `/<rest>` of `<service>` through the
/// sidecar, with the trace headers forwarded. The downstream's status and
/// answer (JSON if it is, else text).
async fn call_onward(
    identity: &Identity,
    target: &str,
    incoming: &header::HeaderMap,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let (outbound, client) = identity
        .outbound
        .as_ref()
        .context("/call/... needs --outbound (the sidecar's outbound listener)")?;
    let (service, rest) = target.split_once('/').unwrap_or((target, ""));
    let mut request = Request::get(format!("http://{outbound}/{rest}"))
        .header(header::HOST, service)
        .body(Full::new(Bytes::new()))
        .context("building the onward call")?;
    for name in FORWARDED {
        for value in incoming.get_all(name) {
            request.headers_mut().append(name, value.clone());
        }
    }
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .context("the onward call timed out")?
        .with_context(|| format!("calling {service} through {outbound}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the onward answer")?
        .to_bytes();
    let answer = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status, answer))
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
