//! Finished spans leave the request path through a bounded queue (one
//! `try_send`: no lock, never waits) to a task that batches them, encodes
//! each batch as OTLP protobuf (`otlp.rs`) and sends it over the sidecar's
//! hyper client: gRPC (`TraceService/Export` over h2c) or HTTP/protobuf
//! (`POST /v1/traces`). A full queue drops the span and counts it; a
//! failed or timed-out export drops its batch and counts it (no retries:
//! the next batch is already waiting). A collector that is down therefore
//! costs requests nothing, and memory stays at most one queue plus one
//! batch.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::otlp::{self, Resource};
use super::settings::{ExportSettings, Protocol};
use super::span::SpanRecord;

/// What became of the spans, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub exported: AtomicU64,
    /// The queue was full (the collector is slow or down).
    pub dropped_queue_full: AtomicU64,
    /// Their batch failed to export (refused, unreachable, timed out).
    pub dropped_export_failed: AtomicU64,
}

/// The request path's end of the queue.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanRecord>,
    counters: Arc<ExportCounters>,
}

impl fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanQueue").finish_non_exhaustive()
    }
}

impl SpanQueue {
    /// Hands a finished span to the exporter; never waits.
    pub fn submit(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.counters
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counters(&self) -> &Arc<ExportCounters> {
        &self.counters
    }
}

/// The gRPC method of OTLP trace export.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A collector's answer is small; anything bigger is refused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where and how batches go.
struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    protocol: Protocol,
    timeout: Duration,
}

impl Sender {
    fn new(settings: &ExportSettings) -> anyhow::Result<Self> {
        let url = match settings.protocol {
            Protocol::HttpProtobuf => settings.endpoint.clone(),
            Protocol::Grpc => format!("{}{GRPC_PATH}", settings.endpoint.trim_end_matches('/')),
        };
        let url = url
            .parse()
            .with_context(|| format!("the OTLP endpoint {url:?} is not a URL"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_max_idle_per_host(1);
        if settings.protocol == Protocol::Grpc {
            builder.http2_only(true);
        }
        Ok(Self {
            client: builder.build(connector),
            url,
            protocol: settings.protocol,
            timeout: settings.timeout,
        })
    }

    /// Sends one encoded `ExportTraceServiceRequest`.
    async fn send(&self, body: &[u8]) -> anyhow::Result<()> {
        let (content_type, body) = match self.protocol {
            Protocol::HttpProtobuf => ("application/x-protobuf", Bytes::copy_from_slice(body)),
            Protocol::Grpc => {
                // gRPC framing: uncompressed flag, big-endian length.
                let mut framed = BytesMut::with_capacity(body.len() + 5);
                framed.put_u8(0);
                framed.put_u32(body.len() as u32);
                framed.put_slice(body);
                ("application/grpc", framed.freeze())
            }
        };
        let mut request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .context("building the export request")?;
        if self.protocol == Protocol::Grpc {
            request
                .headers_mut()
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let grpc_in_head = response.headers().get("grpc-status").cloned();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the collector's answer: {e}"))?;
            if !status.is_success() {
                bail!("the collector answered {status}");
            }
            if self.protocol == Protocol::Grpc {
                let grpc_status = grpc_in_head
                    .or_else(|| body.trailers().and_then(|t| t.get("grpc-status")).cloned());
                match grpc_status.as_ref().map(HeaderValue::as_bytes) {
                    Some(b"0") => {}
                    Some(other) => {
                        bail!(
                            "the collector answered grpc-status {}",
                            String::from_utf8_lossy(other)
                        )
                    }
                    None => bail!("the collector's answer has no grpc-status"),
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                anyhow::anyhow!("no answer from the collector within {:?}", self.timeout)
            })?
    }
}

/// Starts the batching task for `settings`; it exports what is queued and
/// ends (after one last, short try) when `shutdown` turns true.
pub fn start(
    settings: &ExportSettings,
    resource: Resource,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SpanQueue, JoinHandle<()>)> {
    let sender = Sender::new(settings)?;
    let (tx, mut rx) = mpsc::channel(settings.queue_size);
    let counters = Arc::new(ExportCounters::default());
    let queue = SpanQueue {
        tx,
        counters: counters.clone(),
    };
    let batch_size = settings.batch_size;
    let delay = settings.schedule_delay;
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(batch_size);
        let mut body = Vec::new();
        'batches: loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => if n == 0 { return },
                _ = shutdown.wait_for(|s| *s) => break,
            }
            // Wait up to the schedule delay for the batch to fill; a
            // shutdown meanwhile sends it at once (the sidecar waits only
            // briefly for this task, less than the delay).
            let fill = tokio::time::sleep(delay);
            tokio::pin!(fill);
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = &mut fill => break,
                    _ = shutdown.wait_for(|s| *s) => break 'batches,
                }
            }
            export(&sender, &resource, &mut batch, &mut body, &counters).await;
        }
        // Shutdown: what is queued now goes out in one last try, briefly.
        while let Ok(span) = rx.try_recv() {
            batch.push(span);
        }
        let last = Sender {
            timeout: sender.timeout.min(Duration::from_secs(2)),
            ..sender
        };
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(batch_size));
            export(&last, &resource, &mut batch, &mut body, &counters).await;
            batch = rest;
        }
    });
    Ok((queue, task))
}

async fn export(
    sender: &Sender,
    resource: &Resource,
    batch: &mut Vec<SpanRecord>,
    body: &mut Vec<u8>,
    counters: &ExportCounters,
) {
    otlp::encode(resource, batch, body);
    let n = batch.len() as u64;
    batch.clear();
    match sender.send(body).await {
        Ok(()) => {
            counters.exported.fetch_add(n, Ordering::Relaxed);
        }
        Err(error) => {
            counters
                .dropped_export_failed
                .fetch_add(n, Ordering::Relaxed);
            tracing::debug!(
                error = format!("{error:#}"),
                spans = n,
                "span export failed"
            );
        }
    }
    // A burst's buffer is not kept forever.
    body.truncate(0);
    body.shrink_to(1 << 20);
}

/// `weft_trace_spans_exported_total` and `weft_trace_spans_dropped_total`
/// by reason.
#[derive(Debug)]
pub struct ExportCollector(pub Arc<ExportCounters>);

impl Collector for ExportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let c = &self.0;
        let exported = encoder.encode_descriptor(
            "weft_trace_spans_exported",
            "Spans the OTLP collector accepted.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(c.exported.load(Ordering::Relaxed)).encode(exported)?;
        let mut dropped = encoder.encode_descriptor(
            "weft_trace_spans_dropped",
            "Spans lost: the export queue was full, or their batch failed to export.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in [
            ("queue-full", &c.dropped_queue_full),
            ("export-failed", &c.dropped_export_failed),
        ] {
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(dropped.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}
