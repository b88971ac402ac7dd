//! Distributed tracing: trace context propagation (W3C Trace Context and
//! B3) on both listeners, a span per request (SERVER inbound, CLIENT
//! outbound) with OpenTelemetry's HTTP conventions, exported over OTLP.
//!
//! * `context` — the headers: parsing and writing, strict and total.
//! * `sampler` — which traces record spans (`OTEL_TRACES_SAMPLER`).
//! * `settings` — endpoint, protocol and sampler from flags and `OTEL_*`.
//! * `layer` — the tower layer on the request path.
//! * `export` — the bounded queue and the batching OTLP export task.
//! * `http_client` — OTLP/HTTP over the sidecar's hyper client.
//!
//! The request path uses no SDK tracer: the layer builds the SDK's
//! `SpanData` itself when a span is sampled (a handful of allocations) and
//! hands it to the export queue with one `try_send`. Unsampled requests and
//! a sidecar with tracing off only parse and write headers.

pub mod context;
pub mod export;
pub mod http_client;
pub mod layer;
pub mod sampler;
pub mod settings;

use std::sync::Arc;

use opentelemetry::InstrumentationScope;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use layer::TraceLayer;
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
    scope: InstrumentationScope,
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
        let (queue, task) = export::start(export, service, instance, shutdown)?;
        let scope = InstrumentationScope::builder("weft-sidecar")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = Self {
            inner: Some(Arc::new(TracerInner {
                sampler: settings.sampler,
                queue,
                scope,
            })),
        };
        Ok((tracer, Some(task)))
    }

    /// The export counters, when tracing is on.
    pub fn counters(&self) -> Option<Arc<ExportCounters>> {
        self.inner.as_ref().map(|i| i.queue.counters().clone())
    }
}
