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
}

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
pub const STATUS_ERROR: i32 = 2;

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    /// Test code only; held for a push or a copy.
    spans: Mutex<Vec<ReceivedSpan>>,
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
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(new);
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
    /// exports can be sent at once).
    pub async fn start() -> anyhow::Result<Self> {
        let received = Arc::new(Received::default());
        let grpc_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP gRPC receiver")?;
        let http_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP HTTP receiver")?;
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
