//! An OTLP trace receiver, as a collector (or Jaeger) would be: gRPC
//! (`TraceService/Export`, tonic on the opentelemetry-proto types) and
//! HTTP/protobuf (`POST /v1/traces`) on two loopback ports. It keeps every
//! span it receives; tests wait for the spans they expect with
//! [`OtlpReceiver::wait_for`] (woken by each export, no polling sleeps).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One received span, flattened for assertions.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// Lower-case hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    pub kind: i32,
    /// Values as text (numbers and booleans formatted).
    pub attributes: BTreeMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// `grpc` or `http`: how it arrived.
    pub via: &'static str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
pub const STATUS_ERROR: i32 = 2;

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

struct Received {
    /// Test code only; held for a push or a copy.
    spans: Mutex<Vec<ReceivedSpan>>,
    /// The oldest spans go past this many.
    max_spans: usize,
    arrived: Notify,
}

impl Received {
    fn add(&self, request: ExportTraceServiceRequest, via: &'static str) {
        let mut new = Vec::new();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let status = span.status.unwrap_or_default();
                    new.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        status_code: status.code,
                        status_message: status.message,
                        via,
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                    });
                }
            }
        }
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        spans.extend(new);
        let over = spans.len().saturating_sub(self.max_spans);
        spans.drain(..over);
        drop(spans);
        self.arrived.notify_waiters();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

struct Grpc(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; its servers stop when it is dropped.
pub struct OtlpReceiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    received: Arc<Received>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl OtlpReceiver {
    /// Listens on two free loopback ports (bound before this returns, so
    /// exports can be sent at once), keeping every span.
    pub async fn start() -> anyhow::Result<Self> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self::start_on(any, any, usize::MAX).await
    }

    /// Listens on `grpc` and `http`, keeping the last `max_spans` spans.
    pub async fn start_on(
        grpc: SocketAddr,
        http: SocketAddr,
        max_spans: usize,
    ) -> anyhow::Result<Self> {
        let received = Arc::new(Received {
            spans: Mutex::default(),
            max_spans,
            arrived: Notify::new(),
        });
        let grpc_listener = TcpListener::bind(grpc)
            .await
            .with_context(|| format!("binding the OTLP gRPC receiver to {grpc}"))?;
        let http_listener = TcpListener::bind(http)
            .await
            .with_context(|| format!("binding the OTLP HTTP receiver to {http}"))?;
        let grpc = grpc_listener.local_addr()?;
        let http = http_listener.local_addr()?;
        let service = TraceServiceServer::new(Grpc(received.clone()));
        let grpc_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            if let Err(error) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP gRPC receiver stopped: {error}");
            }
        });
        let http_task = tokio::spawn(serve_http(http_listener, received.clone()));
        Ok(Self {
            grpc,
            http,
            received,
            tasks: vec![grpc_task, http_task],
        })
    }

    /// `http://IP:PORT` of the gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://IP:PORT` of the HTTP receiver (a base: senders append
    /// `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `check` finds what it looks for in the spans received
    /// so far, checking again after each export; fails after `timeout`
    /// with `what` and the last reason `check` gave.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[ReceivedSpan]) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.received.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let last = match check(&self.spans()) {
                Ok(found) => return Ok(found),
                Err(why) => why,
            };
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let spans = self.spans();
                bail!(
                    "timed out after {timeout:?} waiting for {what}: {last:#}\n{} spans received: {:#?}",
                    spans.len(),
                    spans
                );
            }
        }
    }
}

async fn serve_http(listener: TcpListener, received: Arc<Received>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let received = received.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let received = received.clone();
                async move { Ok::<_, std::convert::Infallible>(http_export(req, &received).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn http_export(
    req: Request<hyper::body::Incoming>,
    received: &Received,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        response
    };
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return reply(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"POST /v1/traces"),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return reply(StatusCode::BAD_REQUEST, Bytes::from(error.to_string())),
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            received.add(request, "http");
            reply(
                StatusCode::OK,
                Bytes::from(ExportTraceServiceResponse::default().encode_to_vec()),
            )
        }
        Err(error) => reply(StatusCode::BAD_REQUEST, Bytes::from(error.to_string())),
    }
}

/// The spans of `trace_id` as an indented tree, parents before children,
/// siblings by start time: one line per span with its service, kind, name,
/// duration, status code, Weft error cause and the caller's identity.
pub fn render_trace(spans: &[ReceivedSpan], trace_id: &str) -> String {
    let mut trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    trace.sort_by_key(|s| s.start_unix_nano);
    let ids: std::collections::BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = format!("trace {trace_id}\n");
    // Roots: no parent, or a parent that is not in the trace (the app's).
    let roots = trace
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()));
    for root in roots {
        render_span(&trace, root, 0, &mut out);
    }
    out
}

fn render_span(trace: &[&ReceivedSpan], span: &ReceivedSpan, depth: usize, out: &mut String) {
    use std::fmt::Write as _;
    let kind = match span.kind {
        SPAN_KIND_SERVER => "server",
        SPAN_KIND_CLIENT => "client",
        _ => "span",
    };
    let millis = span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e6;
    // What the span is about: where a client span went, what a server
    // span was asked for.
    let what = match span.kind {
        SPAN_KIND_CLIENT => span
            .attr("peer.service")
            .map(|to| format!("{} -> {to}", span.name)),
        _ => span
            .attr("url.path")
            .map(|path| format!("{} {path}", span.name)),
    }
    .unwrap_or_else(|| span.name.clone());
    let _ = write!(
        out,
        "{:indent$}└─ {:<8} {kind:<6} {what:<28} {millis:>8.2} ms",
        "",
        span.service,
        indent = depth * 3
    );
    if let Some(status) = span.attr("http.response.status_code") {
        let _ = write!(out, "  {status}");
    }
    if let Some(cause) = span.attr("weft.error") {
        let _ = write!(out, "  weft.error={cause}");
    }
    if let Some(peer) = span.attr("weft.peer.identity") {
        let _ = write!(out, "  from {peer}");
    }
    out.push('\n');
    for child in trace.iter().filter(|c| c.parent_span_id == span.span_id) {
        render_span(trace, child, depth + 1, out);
    }
}
