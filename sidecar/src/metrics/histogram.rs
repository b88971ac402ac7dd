//! Histograms the request path updates with two atomic adds and no lock:
//! fixed bucket bounds, one counter per bucket, the sum. Read (not reset)
//! at scrape time. [`LatencyHistogram`] (nanoseconds, shown in seconds)
//! also keeps one trace-id exemplar per bucket; [`SizeHistogram`] counts
//! body sizes in bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

/// Upper bounds in seconds: a loopback hop takes tens of microseconds, a
/// slow upstream seconds, so 50 µs to 10 s in roughly 1-2.5-5 steps.
pub const BOUNDS_SECONDS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 7.5, 10.0,
];

const BOUNDS_NANOS: [u64; 18] = {
    let mut nanos = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        nanos[i] = (BOUNDS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// Upper bounds of body sizes in bytes: empty bodies (most GETs and their
/// redirects) apart, then ×4 steps from 64 B to 64 MiB.
pub const BOUNDS_BYTES: [u64; 12] = [
    0,
    64,
    256,
    1024,
    4 * 1024,
    16 * 1024,
    64 * 1024,
    256 * 1024,
    1024 * 1024,
    4 * 1024 * 1024,
    16 * 1024 * 1024,
    64 * 1024 * 1024,
];

/// Per-bucket counters (not cumulative; the last is +Inf) and the sum.
#[derive(Debug)]
struct Buckets<const N: usize> {
    counts: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; N],
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Buckets<N> {
    /// Counts `value` in the first bucket whose bound holds it; returns
    /// that bucket.
    fn observe(&self, bounds: &[u64], value: u64) -> usize {
        let bucket = bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        bucket
    }

    /// `(sum / scale, count, (upper bound, count of that bucket alone))`.
    fn read(&self, bounds: impl Iterator<Item = f64>, scale: f64) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = bounds
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (
            self.sum.load(Ordering::Relaxed) as f64 / scale,
            count,
            buckets,
        )
    }
}

/// A latency histogram as read at one scrape.
#[derive(Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, observations in that bucket alone).
    pub buckets: Vec<(f64, u64)>,
}

/// A size histogram as read at one scrape.
#[derive(Debug, PartialEq)]
pub struct SizeSnapshot {
    pub sum_bytes: f64,
    pub count: u64,
    /// (upper bound in bytes, observations in that bucket alone).
    pub buckets: Vec<(f64, u64)>,
}

/// The request that last landed in a latency bucket (OpenMetrics
/// exemplar): a slow bucket in a dashboard leads to its trace.
#[derive(Debug, PartialEq)]
pub struct Exemplar {
    pub trace_id: u128,
    pub seconds: f64,
    pub at: SystemTime,
}

/// One exemplar per bucket, replaced at most once a second: the request
/// path pays one atomic load per request, and a store (one small
/// allocation) only when the bucket's second has turned.
#[derive(Debug, Default)]
struct ExemplarSlot {
    /// The second (of [`LatencyHistogram::observe`]'s clock) of the last
    /// store, plus one (0 = never).
    second: AtomicU64,
    last: ArcSwapOption<Exemplar>,
}

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: Buckets<19>,
    exemplars: [ExemplarSlot; 19],
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.observe_traced(elapsed, None, 0);
    }

    /// Observes `elapsed`; with the request's trace id, also offers it as
    /// the bucket's exemplar. `second` is any clock in whole seconds (the
    /// caller's monotonic one): one exemplar per bucket per second is kept.
    pub fn observe_traced(&self, elapsed: Duration, trace_id: Option<u128>, second: u64) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.buckets.observe(&BOUNDS_NANOS, nanos);
        let Some(trace_id) = trace_id else { return };
        let slot = &self.exemplars[bucket];
        let stamp = second + 1;
        let previous = slot.second.load(Ordering::Relaxed);
        // One store per bucket per second, by whoever wins the second.
        if previous != stamp
            && slot
                .second
                .compare_exchange(previous, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.last.store(Some(Arc::new(Exemplar {
                trace_id,
                seconds: elapsed.as_secs_f64(),
                at: SystemTime::now(),
            })));
        }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let (sum_seconds, count, buckets) = self.buckets.read(BOUNDS_SECONDS.iter().copied(), 1e9);
        HistogramSnapshot {
            sum_seconds,
            count,
            buckets,
        }
    }

    /// The exemplar of each bucket (in bucket order, +Inf last).
    pub fn exemplars(&self) -> impl Iterator<Item = Option<Arc<Exemplar>>> + '_ {
        self.exemplars.iter().map(|slot| slot.last.load_full())
    }
}

/// Body sizes in bytes.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    buckets: Buckets<13>,
}

impl SizeHistogram {
    pub fn observe(&self, bytes: u64) {
        self.buckets.observe(&BOUNDS_BYTES, bytes);
    }

    pub fn snapshot(&self) -> SizeSnapshot {
        let (sum_bytes, count, buckets) = self
            .buckets
            .read(BOUNDS_BYTES.iter().map(|b| *b as f64), 1.0);
        SizeSnapshot {
            sum_bytes,
            count,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(30)); // <= 50 µs
        h.observe(Duration::from_micros(50)); // exactly on a bound: that bucket
        h.observe(Duration::from_millis(3)); // <= 5 ms
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.00005, 2));
        assert_eq!(s.buckets[6], (0.005, 1));
        assert_eq!(s.buckets[18], (f64::INFINITY, 1));
        assert!((s.sum_seconds - 60.00308).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn a_bucket_keeps_one_exemplar_per_second() {
        let h = LatencyHistogram::default();
        let ms = Duration::from_millis(3);
        h.observe_traced(ms, Some(1), 100);
        h.observe_traced(ms, Some(2), 100); // same second: kept the first
        h.observe_traced(Duration::from_secs(60), None, 100); // untraced: none
        let first: Vec<_> = h.exemplars().map(|e| e.map(|e| e.trace_id)).collect();
        assert_eq!(first[6], Some(1));
        assert_eq!(first[18], None);
        h.observe_traced(ms, Some(3), 101);
        let later = h.exemplars().nth(6).flatten().unwrap();
        assert_eq!((later.trace_id, later.seconds), (3, 0.003));
    }

    #[test]
    fn sizes_count_empty_bodies_apart() {
        let h = SizeHistogram::default();
        h.observe(0);
        h.observe(100);
        h.observe(1 << 30);
        let s = h.snapshot();
        assert_eq!((s.count, s.sum_bytes), (3, 100.0 + f64::from(1 << 30)));
        assert_eq!(s.buckets[0], (0.0, 1));
        assert_eq!(s.buckets[2], (256.0, 1));
        assert_eq!(s.buckets[12], (f64::INFINITY, 1));
    }
}
