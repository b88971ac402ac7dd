//! Finished spans leave the request path through a bounded queue (one
//! `try_send`: no lock, never waits) to a task that batches them and
//! exports each batch with opentelemetry-otlp, over gRPC or HTTP/protobuf.
//! A full queue drops the span and counts it; a failed or timed-out export
//! drops its batch and counts it. A collector that is down therefore costs
//! requests nothing, and memory stays at most one queue plus one batch.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::http_client::HyperClient;
use super::settings::{ExportSettings, Protocol};

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
    tx: mpsc::Sender<SpanData>,
    counters: Arc<ExportCounters>,
}

impl fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanQueue").finish_non_exhaustive()
    }
}

impl SpanQueue {
    /// Hands a finished span to the exporter; never waits.
    pub fn submit(&self, span: SpanData) {
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

/// Builds the exporter for `settings` and starts the batching task, which
/// exports what is queued and ends when `shutdown` turns true. Needs the
/// tokio runtime (the gRPC channel connects lazily on it).
pub fn start(
    settings: &ExportSettings,
    service: &str,
    instance: &str,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SpanQueue, JoinHandle<()>)> {
    let what = || {
        format!(
            "cannot set up OTLP export to {} ({:?})",
            settings.endpoint, settings.protocol
        )
    };
    let mut exporter = match settings.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HyperClient::new(settings.timeout))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .build(),
    }
    .with_context(what)?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", service.to_owned()),
                KeyValue::new("service.instance.id", instance.to_owned()),
                KeyValue::new("telemetry.sdk.name", "weft-sidecar"),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build(),
    );
    let (tx, mut rx) = mpsc::channel(settings.queue_size);
    let counters = Arc::new(ExportCounters::default());
    let queue = SpanQueue {
        tx,
        counters: counters.clone(),
    };
    let batch_size = settings.batch_size;
    let delay = settings.schedule_delay;
    // A little over the exporter's own deadline: its retries are inside.
    let deadline = settings.timeout + Duration::from_secs(1);
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => if n == 0 { return },
                _ = shutdown.wait_for(|s| *s) => break,
            }
            // Wait up to the schedule delay for the batch to fill.
            let fill = tokio::time::sleep(delay);
            tokio::pin!(fill);
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = &mut fill => break,
                }
            }
            export(&exporter, &mut batch, deadline, &counters).await;
        }
        // Shutdown: what is queued now goes out in one last try, briefly.
        while let Ok(span) = rx.try_recv() {
            batch.push(span);
        }
        let deadline = deadline.min(Duration::from_secs(2));
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(batch_size));
            export(&exporter, &mut batch, deadline, &counters).await;
            batch = rest;
        }
    });
    Ok((queue, task))
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    deadline: Duration,
    counters: &ExportCounters,
) {
    let spans = std::mem::take(batch);
    let n = spans.len() as u64;
    match tokio::time::timeout(deadline, exporter.export(spans)).await {
        Ok(Ok(())) => {
            counters.exported.fetch_add(n, Ordering::Relaxed);
        }
        outcome => {
            counters
                .dropped_export_failed
                .fetch_add(n, Ordering::Relaxed);
            match outcome {
                Ok(Err(error)) => tracing::debug!(%error, spans = n, "span export failed"),
                _ => tracing::debug!(spans = n, "span export timed out"),
            }
        }
    }
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
