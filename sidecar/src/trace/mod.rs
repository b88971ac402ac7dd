//! Distributed tracing: trace context propagation (W3C Trace Context and
//! B3) on both listeners, a span per request (SERVER inbound, CLIENT
//! outbound) with OpenTelemetry's HTTP conventions, exported over OTLP.
//!
//! * `context` — the headers: parsing and writing, strict and total.
//! * `sampler` — which traces record spans (`OTEL_TRACES_SAMPLER`).
//! * `settings` — endpoint, protocol and sampler from flags and `OTEL_*`.
//! * `layer` — the tower layer on the request path.
//! * `span` — a finished span: ids, times, cheap clones of the request's parts.
//! * `export` — the bounded queue, the batching task, gRPC and HTTP sending.
//! * `otlp` — OTLP protobuf written straight from span records.
//!
//! No OpenTelemetry SDK on the request path or in the export: a sampled
//! request's span is a record of reference-counted clones handed to the
//! export queue with one `try_send`; the export task writes OTLP protobuf
//! itself. Measured (bench/tracing_instructions.sh), the SDK's `SpanData`
//! through opentelemetry-otlp cost ~20,000 instructions per span, 75 % of
//! the proxy's own work per request; this costs a fraction of it.
//! Unsampled requests and a sidecar with tracing off only parse and write
//! headers.

pub mod context;
pub mod export;
pub mod layer;
pub mod otlp;
pub mod sampler;
pub mod settings;
pub mod span;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use layer::{TraceLayer, TraceTarget};
pub use settings::TraceSettings;

use export::{ExportCounters, SpanQueue};
use sampler::Sampler;

/// What the trace layers of one sidecar share. Cheap to clone; off by
/// default.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<TracerInner>>,
}

struct TracerInner {
    sampler: Sampler,
    queue: SpanQueue,
}

impl Tracer {
    /// Propagation only: nothing is recorded.
    pub fn off() -> Self {
        Self::default()
    }

    /// Starts export when `settings` has an endpoint; the task ends (after
    /// one last export) when `shutdown` turns true.
    pub fn start(
        settings: &TraceSettings,
        service: &str,
        instance: &str,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Self, Option<JoinHandle<()>>)> {
        let Some(export) = &settings.export else {
            return Ok((Self::off(), None));
        };
        let resource = otlp::Resource {
            service: service.to_owned(),
            instance: instance.to_owned(),
        };
        let (queue, task) = export::start(export, resource, shutdown)?;
        let tracer = Self {
            inner: Some(Arc::new(TracerInner {
                sampler: settings.sampler,
                queue,
            })),
        };
        Ok((tracer, Some(task)))
    }

    /// The export counters, when tracing is on.
    pub fn counters(&self) -> Option<Arc<ExportCounters>> {
        self.inner.as_ref().map(|i| i.queue.counters().clone())
    }
}
