//! The calls sidecars report, kept for a sliding window per reporter and
//! destination, and the edges (caller service -> destination service) they
//! add up to: request rate, error ratio and p99 over the window.
//!
//! Reports carry cumulative counters; the window keeps a few timestamped
//! readings of each counter and takes the difference between the oldest
//! and the newest, so a lost report loses nothing and a restarted sidecar
//! (counters back at zero) starts a fresh series. Everything is bounded:
//! readings are at least [`MIN_SPACING`] apart (a window holds about 60),
//! at most [`MAX_SERIES`] reporter/destination pairs are tracked, and a
//! reporter silent for a whole window is forgotten.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_proto::telemetry::v1::CallReport;

/// How far back rates, error ratios and p99 look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Readings closer together than this replace each other, which bounds the
/// readings per series whatever interval sidecars report at.
pub const MIN_SPACING: Duration = Duration::from_secs(1);
/// Destinations one report may carry (the sidecar sends its busiest).
pub const MAX_DESTINATIONS: usize = 256;
/// Reporter/destination pairs tracked at once: with ~60 readings of ~200
/// bytes each, about 50 MB at worst.
pub const MAX_SERIES: usize = 4096;
/// Latency buckets a report may carry.
pub const MAX_BUCKETS: usize = 64;
/// Longest service or node name accepted (Consul's own limit is lower).
pub const MAX_NAME: usize = 256;

/// Why a report was refused; the text goes back to the sidecar.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("invalid call report: {0}")]
    Invalid(String),
    #[error("the agent already tracks {MAX_SERIES} caller/destination pairs; report dropped")]
    Full,
}

/// One reading of a destination's counters.
#[derive(Clone, Debug, PartialEq)]
struct Reading {
    at: Instant,
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl Reading {
    fn zero(at: Instant, buckets: usize) -> Self {
        Self {
            at,
            requests: 0,
            errors: 0,
            buckets: vec![0; buckets],
        }
    }
}

struct Reporter {
    service: String,
    instance: String,
    /// Bucket upper bounds (seconds) of this reporter's histograms.
    bounds: Vec<f64>,
    last_report: Instant,
    series: BTreeMap<String, VecDeque<Reading>>,
}

/// What the sidecars reported, by node id.
#[derive(Default)]
pub struct CallMap {
    /// Written once per report (every few seconds per sidecar), read by
    /// `/ui/graph.json`: never on a request path, so a mutex is simplest.
    reporters: Mutex<BTreeMap<String, Reporter>>,
}

/// The calls from one service to another over the window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Edge {
    pub source: String,
    pub destination: String,
    /// Requests and errors within the window.
    pub requests: u64,
    pub errors: u64,
    pub rate_rps: f64,
    /// errors / requests (0 without requests).
    pub error_ratio: f64,
    /// The 99th percentile latency, interpolated within its bucket as
    /// Prometheus' histogram_quantile does; None without requests.
    pub p99_ms: Option<f64>,
    /// Sidecars of the source service whose reports make up the edge.
    pub reporters: usize,
}

impl CallMap {
    /// Takes one report received at `now`, `now_unix_ms` on the wall clock.
    pub fn record(
        &self,
        report: &CallReport,
        now: Instant,
        now_unix_ms: u64,
    ) -> Result<(), ReportError> {
        validate(report)?;
        let mut reporters = self.lock();
        forget_silent(&mut reporters, now);
        let series_now: usize = reporters.values().map(|r| r.series.len()).sum();
        let buckets = report.latency_bounds_seconds.len() + 1;
        // Where a destination first seen in this report starts from zero:
        // the previous report (it was not in it, so its counters were
        // zero then), or for a new sidecar its start, when that is within
        // the window (its counters count from there). A sidecar first
        // heard from long after its start has no zero: its first reading
        // is the baseline.
        let (reporter, zero_at) = match reporters.get_mut(&report.node_id) {
            Some(reporter) => {
                let zero_at = Some(reporter.last_report);
                (reporter, zero_at)
            }
            None => {
                if series_now + report.destinations.len() > MAX_SERIES {
                    return Err(ReportError::Full);
                }
                let age =
                    Duration::from_millis(now_unix_ms.saturating_sub(report.started_at_unix_ms));
                let zero_at = (age < WINDOW).then(|| now.checked_sub(age)).flatten();
                let reporter = Reporter {
                    service: report.service.clone(),
                    instance: report.instance.clone(),
                    bounds: report.latency_bounds_seconds.clone(),
                    last_report: now,
                    series: BTreeMap::new(),
                };
                (
                    reporters.entry(report.node_id.clone()).or_insert(reporter),
                    zero_at,
                )
            }
        };
        if reporter.bounds != report.latency_bounds_seconds {
            // Another build of the sidecar: earlier readings do not compare.
            reporter.bounds = report.latency_bounds_seconds.clone();
            reporter.series.clear();
        }
        let previous_report = reporter.last_report;
        let mut added = 0;
        for calls in &report.destinations {
            let reading = Reading {
                at: now,
                requests: calls.requests,
                errors: calls.errors,
                buckets: calls.latency_buckets.clone(),
            };
            let readings = match reporter.series.get_mut(&calls.destination) {
                Some(readings) => readings,
                None => {
                    if series_now + added >= MAX_SERIES {
                        continue;
                    }
                    added += 1;
                    let readings = zero_at
                        .map(|at| Reading::zero(at, buckets))
                        .into_iter()
                        .collect();
                    reporter
                        .series
                        .entry(calls.destination.clone())
                        .or_insert(readings)
                }
            };
            push_reading(readings, reading, previous_report, buckets);
        }
        reporter.last_report = now;
        Ok(())
    }

    /// The edges as of `now`: every caller/destination pair with requests
    /// in the window, sorted by source then destination.
    pub fn edges(&self, now: Instant) -> Vec<Edge> {
        let mut reporters = self.lock();
        forget_silent(&mut reporters, now);
        let mut sums: BTreeMap<(String, String), EdgeSum> = BTreeMap::new();
        for reporter in reporters.values() {
            for (destination, readings) in &reporter.series {
                let (Some(oldest), Some(newest)) = (readings.front(), readings.back()) else {
                    continue;
                };
                let requests = newest.requests.saturating_sub(oldest.requests);
                if requests == 0 {
                    continue;
                }
                let span = newest.at.duration_since(oldest.at).max(MIN_SPACING);
                let sum = sums
                    .entry((reporter.service.clone(), destination.clone()))
                    .or_insert_with(|| EdgeSum {
                        bounds: reporter.bounds.clone(),
                        buckets: vec![0; reporter.bounds.len() + 1],
                        ..EdgeSum::default()
                    });
                sum.requests += requests;
                sum.errors += newest.errors.saturating_sub(oldest.errors);
                sum.rate += requests as f64 / span.as_secs_f64();
                sum.reporters += 1;
                if sum.bounds == reporter.bounds {
                    for (total, (new, old)) in sum
                        .buckets
                        .iter_mut()
                        .zip(newest.buckets.iter().zip(&oldest.buckets))
                    {
                        *total += new.saturating_sub(*old);
                    }
                }
            }
        }
        sums.into_iter()
            .map(|((source, destination), sum)| Edge {
                source,
                destination,
                requests: sum.requests,
                errors: sum.errors,
                rate_rps: sum.rate,
                error_ratio: sum.errors as f64 / sum.requests as f64,
                p99_ms: quantile(0.99, &sum.bounds, &sum.buckets).map(|s| s * 1000.0),
                reporters: sum.reporters,
            })
            .collect()
    }

    /// `(node id, service, instance)` of every sidecar reporting now.
    pub fn reporters(&self) -> Vec<(String, String, String)> {
        self.lock()
            .iter()
            .map(|(node, r)| (node.clone(), r.service.clone(), r.instance.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Reporter>> {
        // Each update leaves whole readings: a poisoned map is consistent.
        self.reporters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct EdgeSum {
    requests: u64,
    errors: u64,
    rate: f64,
    reporters: usize,
    bounds: Vec<f64>,
    buckets: Vec<u64>,
}

fn validate(report: &CallReport) -> Result<(), ReportError> {
    let invalid = |reason: String| Err(ReportError::Invalid(reason));
    if report.node_id.is_empty() || report.service.is_empty() {
        return invalid("node_id and service must not be empty".into());
    }
    for name in [&report.node_id, &report.service, &report.instance] {
        if name.len() > MAX_NAME {
            return invalid(format!("a name is longer than {MAX_NAME} bytes"));
        }
    }
    if report.destinations.len() > MAX_DESTINATIONS {
        return invalid(format!(
            "{} destinations, at most {MAX_DESTINATIONS}",
            report.destinations.len()
        ));
    }
    let bounds = &report.latency_bounds_seconds;
    if bounds.len() + 1 > MAX_BUCKETS
        || bounds.windows(2).any(|pair| pair[0] >= pair[1])
        || bounds
            .iter()
            .any(|bound| !bound.is_finite() || *bound <= 0.0)
    {
        return invalid(format!(
            "latency_bounds_seconds must be at most {} positive, ascending, finite values",
            MAX_BUCKETS - 1
        ));
    }
    for calls in &report.destinations {
        if calls.destination.is_empty() || calls.destination.len() > MAX_NAME {
            return invalid(format!(
                "destination names must be 1 to {MAX_NAME} bytes long"
            ));
        }
        if calls.latency_buckets.len() != bounds.len() + 1 {
            return invalid(format!(
                "destination {:?}: {} latency buckets, want {} (the bounds and +Inf)",
                calls.destination,
                calls.latency_buckets.len(),
                bounds.len() + 1
            ));
        }
        if calls.errors > calls.requests {
            return invalid(format!(
                "destination {:?}: more errors than requests",
                calls.destination
            ));
        }
    }
    Ok(())
}

/// Appends a reading, starting the series afresh when the counters went
/// back (the destination left the sidecar's config and came back), and
/// keeps readings [`MIN_SPACING`] apart and within the window.
fn push_reading(
    readings: &mut VecDeque<Reading>,
    reading: Reading,
    previous_report: Instant,
    buckets: usize,
) {
    if let Some(last) = readings.back()
        && (reading.requests < last.requests || last.buckets.len() != buckets)
    {
        readings.clear();
        readings.push_back(Reading::zero(previous_report, buckets));
    }
    // The newest reading stands in until it is MIN_SPACING younger than
    // the one before it; the baseline (the first) always stays.
    let len = readings.len();
    if len >= 2 && readings[len - 1].at.duration_since(readings[len - 2].at) < MIN_SPACING {
        readings.pop_back();
    }
    let now = reading.at;
    readings.push_back(reading);
    // The oldest reading within the window is the baseline; older ones go.
    while readings.len() > 2
        && readings
            .get(1)
            .is_some_and(|second| now.duration_since(second.at) >= WINDOW)
    {
        readings.pop_front();
    }
}

fn forget_silent(reporters: &mut BTreeMap<String, Reporter>, now: Instant) {
    reporters.retain(|_, reporter| now.saturating_duration_since(reporter.last_report) < WINDOW);
}

/// The `q` quantile (seconds) of a histogram with `bounds` and per-bucket
/// `counts` (one more than bounds: +Inf), interpolated linearly within the
/// bucket it falls in; an observation in +Inf reads as the last bound.
pub fn quantile(q: f64, bounds: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, count) in counts.iter().enumerate() {
        let before = seen as f64;
        seen += count;
        if *count > 0 && seen as f64 >= rank {
            let Some(upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = (rank - before) / *count as f64;
            return Some(lower + (upper - lower) * within);
        }
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use weft_proto::telemetry::v1::DestinationCalls;

    use super::*;

    const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    fn report(
        node: &str,
        service: &str,
        started_ms: u64,
        calls: &[(&str, u64, u64)],
    ) -> CallReport {
        CallReport {
            node_id: node.into(),
            service: service.into(),
            instance: format!("{node}-instance"),
            started_at_unix_ms: started_ms,
            latency_bounds_seconds: BOUNDS.to_vec(),
            destinations: calls
                .iter()
                .map(|(destination, requests, errors)| DestinationCalls {
                    destination: (*destination).into(),
                    requests: *requests,
                    errors: *errors,
                    // Every call in the 1-10 ms bucket.
                    latency_buckets: vec![0, *requests, 0, 0],
                })
                .collect(),
        }
    }

    fn record(map: &CallMap, r: &CallReport, at: Instant, unix_ms: u64) {
        if let Err(error) = map.record(r, at, unix_ms) {
            panic!("report refused: {error}");
        }
    }

    #[test]
    fn a_new_sidecars_calls_since_its_start_count_and_later_reports_add_their_difference() {
        let map = CallMap::default();
        let t0 = Instant::now();
        let start_ms = 1_000_000;
        // First report 5 s after start: 50 calls, 5 errors.
        record(
            &map,
            &report("a-1", "a", start_ms, &[("b", 50, 5)]),
            t0 + Duration::from_secs(5),
            start_ms + 5_000,
        );
        let edges = map.edges(t0 + Duration::from_secs(5));
        assert_eq!(edges.len(), 1);
        let edge = &edges[0];
        assert_eq!(
            (edge.source.as_str(), edge.destination.as_str()),
            ("a", "b")
        );
        assert_eq!((edge.requests, edge.errors), (50, 5));
        assert!((edge.rate_rps - 10.0).abs() < 1e-9, "{}", edge.rate_rps);
        assert!((edge.error_ratio - 0.1).abs() < 1e-9);
        let p99 = edge.p99_ms.unwrap_or_default();
        assert!((1.0..=10.0).contains(&p99), "{p99}");

        // 5 s later, 100 in all: 100 in the window, over 10 s.
        record(
            &map,
            &report("a-1", "a", start_ms, &[("b", 100, 5)]),
            t0 + Duration::from_secs(10),
            start_ms + 10_000,
        );
        let edge = &map.edges(t0 + Duration::from_secs(10))[0];
        assert_eq!((edge.requests, edge.errors), (100, 5));
        assert!((edge.rate_rps - 10.0).abs() < 1e-9, "{}", edge.rate_rps);
    }

    #[test]
    fn a_sidecar_started_long_ago_counts_only_from_its_first_report_on() {
        let map = CallMap::default();
        let t0 = Instant::now();
        let now_ms = 10_000_000;
        let old_start = now_ms - 3_600_000;
        record(
            &map,
            &report("a-1", "a", old_start, &[("b", 1_000, 0)]),
            t0,
            now_ms,
        );
        assert!(
            map.edges(t0).is_empty(),
            "one reading of an old sidecar is no rate"
        );
        record(
            &map,
            &report("a-1", "a", old_start, &[("b", 1_020, 0)]),
            t0 + Duration::from_secs(2),
            now_ms + 2_000,
        );
        let edge = &map.edges(t0 + Duration::from_secs(2))[0];
        assert_eq!(edge.requests, 20);
        assert!((edge.rate_rps - 10.0).abs() < 1e-9);
    }

    #[test]
    fn instances_of_one_service_add_up_and_a_restart_starts_afresh() {
        let map = CallMap::default();
        let t0 = Instant::now();
        let ms = 5_000_000;
        record(
            &map,
            &report("a-1", "a", ms, &[("b", 10, 0)]),
            t0 + Duration::from_secs(1),
            ms + 1_000,
        );
        record(
            &map,
            &report("a-2", "a", ms, &[("b", 30, 3)]),
            t0 + Duration::from_secs(1),
            ms + 1_000,
        );
        // a-1's counters go back (its cluster was rebuilt): only what
        // came after counts.
        record(
            &map,
            &report("a-1", "a", ms, &[("b", 4, 0)]),
            t0 + Duration::from_secs(3),
            ms + 3_000,
        );
        let edges = map.edges(t0 + Duration::from_secs(3));
        assert_eq!(edges.len(), 1);
        assert_eq!(
            (edges[0].requests, edges[0].errors, edges[0].reporters),
            (34, 3, 2)
        );
    }

    #[test]
    fn silent_reporters_are_forgotten_after_the_window_and_readings_stay_bounded() {
        let map = CallMap::default();
        let t0 = Instant::now();
        let ms = 5_000_000;
        for i in 0..500u64 {
            let at = t0 + Duration::from_millis(200 * i);
            record(
                &map,
                &report("a-1", "a", ms, &[("b", i * 10, 0)]),
                at,
                ms + 200 * i,
            );
        }
        {
            let reporters = map.lock();
            let readings = &reporters["a-1"].series["b"];
            assert!(readings.len() <= 62, "{} readings kept", readings.len());
        }
        let last = t0 + Duration::from_millis(200 * 499);
        let edge = &map.edges(last)[0];
        assert!((edge.rate_rps - 50.0).abs() < 1.0, "{}", edge.rate_rps);
        assert!(map.edges(last + WINDOW).is_empty());
        assert!(map.reporters().is_empty());
    }

    #[test]
    fn malformed_or_oversized_reports_are_refused_with_a_reason() {
        let map = CallMap::default();
        let now = Instant::now();
        let mut bad = report("a-1", "a", 0, &[("b", 1, 2)]);
        assert!(
            matches!(map.record(&bad, now, 0), Err(ReportError::Invalid(reason)) if reason.contains("more errors"))
        );
        bad = report("a-1", "a", 0, &[("b", 1, 0)]);
        bad.destinations[0].latency_buckets.pop();
        assert!(
            matches!(map.record(&bad, now, 0), Err(ReportError::Invalid(reason)) if reason.contains("latency buckets"))
        );
        let many: Vec<(String, u64, u64)> = (0..=MAX_DESTINATIONS)
            .map(|i| (format!("d{i}"), 1, 0))
            .collect();
        let many: Vec<(&str, u64, u64)> =
            many.iter().map(|(d, r, e)| (d.as_str(), *r, *e)).collect();
        assert!(map.record(&report("a-1", "a", 0, &many), now, 0).is_err());
        assert!(map.record(&report("", "a", 0, &[]), now, 0).is_err());
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        assert_eq!(quantile(0.99, &BOUNDS, &[0, 0, 0, 0]), None);
        let p99 = quantile(0.99, &BOUNDS, &[0, 100, 0, 0]).unwrap_or_default();
        assert!((p99 - 0.00991).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &BOUNDS, &[0, 0, 0, 10]), Some(0.1));
    }
}
