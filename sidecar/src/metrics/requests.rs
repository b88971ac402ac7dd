//! Request counts and latencies of one destination (or of the local app,
//! inbound): atomics indexed by method and status class, so recording a
//! request takes no lock and builds no label set. Label values come from
//! fixed lists, so the series stay bounded whatever callers send.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

use super::histogram::{LatencyHistogram, SizeHistogram};
use crate::error::ErrorKind;

/// The `method` label: the standard methods, anything else `OTHER`.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];

/// The `status_class` label.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `cause` label of refusals: the codes of `crate::error::ErrorKind`
/// (JWT authentication and rate limits included), the same as their
/// `x-weft-error` values; anything else (a peer's code this sidecar does
/// not know) `other`.
pub const CAUSES: [&str; 32] = [
    "no-route",
    "no-healthy-endpoint",
    "connect-failed",
    "upstream-reset",
    "upstream-protocol-error",
    "timeout",
    "overflow",
    "circuit-open",
    "bad-request",
    "denied",
    "unsupported",
    "rate-limited",
    "rate-limit-unavailable",
    "internal",
    "jwt-missing",
    "jwt-malformed",
    "jwt-algorithm-not-allowed",
    "jwt-unknown-kid",
    "jwt-bad-signature",
    "jwt-expired",
    "jwt-not-yet-valid",
    "jwt-wrong-issuer",
    "jwt-wrong-audience",
    "jwt-claim-mismatch",
    "jwt-insufficient-role",
    "jwt-keys-unavailable",
    "path-not-normalized",
    "discovery-timeout",
    "malformed-request",
    "cors-origin-refused",
    "validation-failed",
    "other",
];

/// The cause of this sidecar's own refusal of `kind`.
pub fn cause_of(kind: ErrorKind) -> usize {
    cause_index(kind.code().as_bytes())
}

/// The cause of a code: a peer sidecar's `x-weft-error`, or a kind's code.
pub fn cause_index(code: &[u8]) -> usize {
    CAUSES
        .iter()
        .position(|cause| cause.as_bytes() == code)
        .unwrap_or(CAUSES.len() - 1)
}

pub fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

pub fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

#[derive(Debug, Default)]
pub struct RequestStats {
    counts: [[AtomicU64; 5]; 10],
    /// Refusals by cause (index into [`CAUSES`]).
    refusals: [AtomicU64; CAUSES.len()],
    /// Refusals answered with a status below 500 (a 4xx): failures the
    /// caller saw all the same, which the 5xx class does not count.
    refusals_below_500: AtomicU64,
    /// Until the response head (what the caller waits before it can act).
    pub duration: LatencyHistogram,
    /// Request body bytes received from the caller.
    pub request_size: SizeHistogram,
    /// Response body bytes sent back to the caller.
    pub response_size: SizeHistogram,
    /// Outbound: answers by route name and status class.
    pub routes: RouteCounts,
}

impl RequestStats {
    pub fn record(&self, method: usize, status: StatusCode, elapsed: Duration) {
        self.record_traced(method, status, elapsed, None, 0);
    }

    /// [`Self::record`] with the request's trace id as the latency
    /// bucket's exemplar (`second`: see `LatencyHistogram::observe_traced`).
    pub fn record_traced(
        &self,
        method: usize,
        status: StatusCode,
        elapsed: Duration,
        trace_id: Option<u128>,
        second: u64,
    ) {
        self.count(method, status);
        self.duration.observe_traced(elapsed, trace_id, second);
    }

    /// Counts an answer without its latency.
    pub fn count(&self, method: usize, status: StatusCode) {
        self.counts[method][class_index(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal of `cause`, answered with `status`.
    pub fn record_refusal(&self, cause: usize, status: StatusCode) {
        self.refusals[cause].fetch_add(1, Ordering::Relaxed);
        if status.as_u16() < 500 {
            self.refusals_below_500.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many refusals were answered below 500.
    pub fn refusals_below_500(&self) -> u64 {
        self.refusals_below_500.load(Ordering::Relaxed)
    }

    /// `(cause, count)` for every cause that happened.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.refusals.iter().enumerate().filter_map(|(i, count)| {
            let n = count.load(Ordering::Relaxed);
            (n > 0).then_some((CAUSES[i], n))
        })
    }

    /// `(method, status class, count)` for every non-zero count.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.counts.iter().enumerate().flat_map(|(m, classes)| {
            classes.iter().enumerate().filter_map(move |(c, count)| {
                let n = count.load(Ordering::Relaxed);
                (n > 0).then_some((METHODS[m], CLASSES[c], n))
            })
        })
    }
}

/// How many route names one destination counts apart; the routes of one
/// host are few, and a bound keeps the series bounded whatever the config.
pub const MAX_ROUTES: usize = 16;

/// Answers by route name and status class. A route's slot is claimed by
/// its first answer (one small allocation per route and destination, ever)
/// and found again by comparing names: no lock, no map on the request
/// path. Names beyond [`MAX_ROUTES`] are not counted by route (they still
/// count in the destination's totals).
#[derive(Debug, Default)]
pub struct RouteCounts {
    slots: [RouteSlot; MAX_ROUTES],
}

#[derive(Debug, Default)]
struct RouteSlot {
    name: OnceLock<Box<str>>,
    counts: [AtomicU64; 5],
}

impl RouteCounts {
    /// The slot of `route` (claimed on first use); `None` once every slot
    /// holds another name.
    pub fn slot(&self, route: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| **slot.name.get_or_init(|| route.into()) == *route)
    }

    pub fn record_slot(&self, slot: usize, status: StatusCode) {
        if let Some(slot) = self.slots.get(slot) {
            slot.counts[class_index(status)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record(&self, route: &str, status: StatusCode) {
        if let Some(slot) = self.slot(route) {
            self.record_slot(slot, status);
        }
    }

    /// `(route, status class, count)` for every non-zero count.
    pub fn counts(&self) -> impl Iterator<Item = (&str, &'static str, u64)> + '_ {
        self.slots.iter().flat_map(|slot| {
            let name = slot.name.get().map_or("", |n| &**n);
            slot.counts
                .iter()
                .enumerate()
                .filter_map(move |(c, count)| {
                    let n = count.load(Ordering::Relaxed);
                    (n > 0).then_some((name, CLASSES[c], n))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_by_method_and_status_class() {
        let stats = RequestStats::default();
        let get = method_index(&Method::GET);
        stats.record(get, StatusCode::OK, Duration::from_millis(1));
        stats.record(get, StatusCode::NO_CONTENT, Duration::from_millis(1));
        stats.record(
            get,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(1),
        );
        let odd = Method::from_bytes(b"PURGE").unwrap();
        stats.record(method_index(&odd), StatusCode::OK, Duration::from_millis(1));
        let counts: Vec<_> = stats.counts().collect();
        assert_eq!(
            counts,
            [("GET", "2xx", 2), ("GET", "5xx", 1), ("OTHER", "2xx", 1)]
        );
        assert_eq!(stats.duration.snapshot().count, 4);
    }

    #[test]
    fn routes_count_by_name_up_to_the_bound() {
        let routes = RouteCounts::default();
        routes.record("api", StatusCode::OK);
        routes.record("", StatusCode::OK);
        routes.record("api", StatusCode::NOT_FOUND);
        routes.record("api", StatusCode::OK);
        for i in 0..MAX_ROUTES {
            routes.record(&format!("r{i}"), StatusCode::OK);
        }
        let counts: Vec<_> = routes.counts().collect();
        assert_eq!(
            counts[..3],
            [("api", "2xx", 2), ("api", "4xx", 1), ("", "2xx", 1)]
        );
        // 16 slots: api, "", r0..r13; r14 and r15 are not counted by route.
        assert_eq!(counts.len(), 3 + MAX_ROUTES - 2);
    }

    #[test]
    fn error_codes_are_causes_and_anything_else_is_other() {
        // Every ErrorKind's code is checked in error.rs's tests.
        assert_eq!(CAUSES[cause_index(b"internal")], "internal");
        assert_eq!(CAUSES[cause_index(b"jwt-expired")], "jwt-expired");
        assert_eq!(CAUSES[cause_index(b"made-up")], "other");
    }
}
