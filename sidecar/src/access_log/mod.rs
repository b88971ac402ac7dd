//! Optional JSON-lines access log: one line per request, written off the
//! request path.
//!
//! The metrics layer, which already sees each request's start and answer,
//! has a [`Record`] made for it when the log is on (by the request, through
//! the layer's `MetricsTarget`; one allocation, none when it is off). The layers below fill in what only they know (the endpoint
//! `forward` sent it to); the body meters add the bytes each way. When the
//! last holder lets go (the response body ended, or was dropped), the
//! record becomes an [`Entry`] and goes to a bounded channel; a writer
//! thread turns it into JSON and writes it. A full channel drops the line
//! and counts it (`weft_access_log_dropped_total`): the log never makes a
//! request wait.
//!
//! Sampling: failed requests (5xx, or any answer with a Weft error cause)
//! are always logged; the others with probability `sampling`.

pub mod line;
pub mod metrics;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::uri::Authority;
use http::{HeaderValue, Method, Uri};

use crate::model::{Answer, Direction, Exchange};
use crate::request_body::{BodySizeSink, Side};

/// Where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// `--access-log` and `--access-log-sampling`.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogSettings {
    pub target: Target,
    /// Share of successful requests logged, 0 to 1 (failures always are).
    pub sampling: f64,
}

/// How many lines may wait for the writer: about a second of a busy
/// sidecar's traffic; beyond it lines are dropped, never waited for.
const QUEUE: usize = 8192;

/// The process's access log, once installed.
pub struct AccessLog {
    queue: std::sync::mpsc::SyncSender<Entry>,
    sampling: f64,
    /// This sidecar's service: the destination of inbound requests.
    service: Arc<str>,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();
/// Lines handed to the writer, and lines dropped with its queue full.
pub static QUEUED: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Starts the writer and turns logging on for this process (the first
/// call wins: one log per process).
pub fn install(settings: &AccessLogSettings, service: &str) -> anyhow::Result<()> {
    let out = writer::open(&settings.target)?;
    let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE);
    let log = AccessLog {
        queue,
        sampling: settings.sampling.clamp(0.0, 1.0),
        service: service.into(),
    };
    if LOG.set(log).is_err() {
        tracing::warn!("an access log is already on in this process; keeping it");
        return Ok(());
    }
    writer::spawn(out, lines)?;
    Ok(())
}

/// The access log, if on (one atomic load).
#[inline]
pub fn installed() -> Option<&'static AccessLog> {
    LOG.get()
}

/// What a finished request's line says.
pub struct Entry {
    pub time: SystemTime,
    pub direction: Direction,
    pub method: Method,
    pub uri: Uri,
    pub request_id: Option<HeaderValue>,
    pub trace_id: Option<u128>,
    pub source_identity: Option<Arc<weft_certs::SpiffeId>>,
    pub client: SocketAddr,
    pub destination: Option<Arc<str>>,
    /// The route's name.
    pub route: Option<Arc<str>>,
    /// The endpoint's address, as sent upstream.
    pub endpoint: Option<Authority>,
    pub status: u16,
    pub cause: Option<&'static str>,
    pub attempts: Option<u32>,
    pub response_head: Duration,
    pub duration: Duration,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// One request's line in the making, shared by the metrics layer's
/// future, the request context (for the endpoint) and the body meters.
pub struct Record {
    /// Taken when the line is sent.
    entry: Option<Entry>,
    started: Instant,
    outcome: OnceLock<Answer>,
    /// Set by `forward` for each try: the last one's is logged. A lock
    /// no one else takes: only this request's tries set it, one after
    /// another.
    endpoint: Mutex<Option<Authority>>,
    /// The destination's size histograms, for the body meters that hold
    /// this record instead of them (`None` before a destination is known).
    sizes: Option<Arc<dyn BodySizeSink>>,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
}

impl Record {
    /// The request's facts, as it enters the metrics layer: its route's
    /// name; outbound, the destination's name (inbound: this service); the
    /// size histograms it counts in. `None` for a request refused before it
    /// had a route or a destination.
    pub fn new(
        log: &AccessLog,
        req: &impl Exchange,
        route: Option<Arc<str>>,
        destination: Option<Arc<str>>,
        sizes: Option<Arc<dyn BodySizeSink>>,
    ) -> Self {
        let destination = match req.direction() {
            Direction::Inbound => Some(log.service.clone()),
            Direction::Outbound => destination,
        };
        let http = req.http();
        Self {
            entry: Some(Entry {
                time: SystemTime::now(),
                direction: req.direction(),
                method: http.method().clone(),
                uri: http.uri().clone(),
                request_id: http.headers().get(crate::model::REQUEST_ID).cloned(),
                trace_id: crate::traceparent::TraceContext::of(http.headers()).map(|t| t.trace_id),
                source_identity: req.peer_identity().map(|p| p.id.clone()),
                client: req.client_addr(),
                destination,
                route,
                endpoint: None,
                status: 0,
                cause: None,
                attempts: None,
                response_head: Duration::ZERO,
                duration: Duration::ZERO,
                bytes_received: 0,
                bytes_sent: 0,
            }),
            started: Instant::now(),
            outcome: OnceLock::new(),
            endpoint: Mutex::new(None),
            sizes,
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        }
    }

    /// The answer (its head): set once.
    pub fn answered(&self, outcome: Answer) {
        let _ = self.outcome.set(outcome);
    }

    /// Where this try went (`forward`, for each try).
    pub fn sent_to(&self, endpoint: &Authority) {
        let mut slot = self.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(endpoint.clone());
    }

    pub fn add_bytes(&self, side: Side, bytes: u64) {
        let count = match side {
            Side::Request => &self.bytes_received,
            Side::Response => &self.bytes_sent,
        };
        count.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A body's size counts in the request's line and, through the record, in
/// the destination's stats (the body meters hold the record instead).
impl BodySizeSink for Record {
    fn record(&self, side: Side, bytes: u64) {
        self.add_bytes(side, bytes);
        if let Some(sizes) = &self.sizes {
            sizes.record(side, bytes);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let (Some(log), Some(mut entry), Some(outcome)) =
            (installed(), self.entry.take(), self.outcome.take())
        else {
            // Abandoned before an answer (the caller went away): like the
            // metrics, no line.
            return;
        };
        let failed = outcome.status >= 500 || outcome.cause.is_some();
        let sampled = log.sampling >= 1.0 || rand::random::<f64>() < log.sampling;
        if !(failed || sampled) {
            return;
        }
        entry.status = outcome.status;
        entry.cause = outcome.cause;
        entry.attempts = outcome.attempts;
        entry.response_head = outcome.response_head;
        entry.duration = self.started.elapsed();
        entry.endpoint = self
            .endpoint
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        entry.bytes_received = *self.bytes_received.get_mut();
        entry.bytes_sent = *self.bytes_sent.get_mut();
        match log.queue.try_send(entry) {
            Ok(()) => QUEUED.fetch_add(1, Ordering::Relaxed),
            Err(_) => DROPPED.fetch_add(1, Ordering::Relaxed),
        };
    }
}
