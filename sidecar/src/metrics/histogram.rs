//! A latency histogram the request path updates with two atomic adds and
//! no lock: fixed bucket bounds, one counter per bucket, the sum in
//! nanoseconds. Read (not reset) at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; 19],
    sum_nanos: AtomicU64,
}

/// A histogram as read at one scrape.
#[derive(Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, observations in that bucket alone).
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = BOUNDS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
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
}
