//! `weft_discovery_convergence_seconds`: how long a change takes to reach
//! every sidecar it concerns (as Istio's `pilot_proxy_convergence_time`).
//!
//! Per snapshot built for a change, the agent counts the streams that have
//! yet to look at it and the pushes made for it that await their ACK. The
//! builder opens the entry with every connected stream still to look
//! ([`Convergence::published`]); each stream says when it has looked
//! ([`Convergence::considered`], whether it had anything to send or not),
//! and each push made for the change adds one ACK to wait for
//! ([`Convergence::pushed`]). An ACK ends that wait and notes its time; a
//! NACK, a newer push before the ACK or a closed stream ends it without an
//! ACK. When nothing is left to wait for, the time from the change to the
//! last ACK is observed (nothing, if no stream had anything to receive).
//!
//! One mutex, taken a few times per push and ACK by each stream task: the
//! discovery path, never a request's.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Changes tracked at once. A stream stuck without ACKing keeps its change
/// open until the stream closes (at most 20 s of missed keep-alives); past
/// this many open changes the oldest is dropped unobserved.
const MAX_OPEN: usize = 256;

/// Bucket bounds: 1 ms to about 33 s, doubling (a loopback mesh converges
/// in a few ms after the 20 ms debounce; seconds mean a mesh too large
/// for its agent, or slow sidecars).
fn bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

struct Open {
    changed_at: Instant,
    /// Streams connected when the snapshot was published that have not
    /// looked at it yet.
    unconsidered: usize,
    /// Pushes made for it that await an ACK.
    outstanding: usize,
    last_ack: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    live_streams: usize,
    /// The generation of the latest published snapshot.
    latest: u64,
    open: BTreeMap<u64, Open>,
}

pub struct Convergence {
    inner: Mutex<Inner>,
    histogram: Histogram,
    /// The histogram's counts again, per bucket (the last one +Inf), so
    /// `/status` can estimate quantiles (prometheus-client does not expose
    /// its buckets).
    counts: Vec<AtomicU64>,
}

/// Quantiles estimated from the buckets (linear within a bucket).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

impl Default for Convergence {
    fn default() -> Self {
        Self::new()
    }
}

impl Convergence {
    pub fn new() -> Self {
        Self {
            inner: Mutex::default(),
            histogram: Histogram::new(bounds()),
            counts: (0..=bounds().count()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The histogram, for the registry.
    pub fn histogram(&self) -> Histogram {
        self.histogram.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the counts consistent: keep using them.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot was published; `changed_at` is when its change reached
    /// the agent (None: no change behind it, nothing to measure).
    pub fn published(&self, generation: u64, changed_at: Option<Instant>) {
        let mut inner = self.lock();
        inner.latest = generation;
        if let Some(changed_at) = changed_at {
            let unconsidered = inner.live_streams;
            inner.open.insert(
                generation,
                Open {
                    changed_at,
                    unconsidered,
                    outstanding: 0,
                    last_ack: None,
                },
            );
            while inner.open.len() > MAX_OPEN {
                inner.open.pop_first();
            }
            self.finish(&mut inner, generation);
        }
    }

    /// A stream opened. Returns the generation it is taken to have
    /// considered already (snapshots published before it do not wait for it).
    pub fn opened(&self) -> u64 {
        let mut inner = self.lock();
        inner.live_streams += 1;
        inner.latest
    }

    /// A stream closed having considered snapshots up to `considered`.
    pub fn closed(&self, considered: u64) {
        let mut inner = self.lock();
        inner.live_streams = inner.live_streams.saturating_sub(1);
        self.considered_locked(&mut inner, considered, u64::MAX);
    }

    /// A stream looked at every snapshot after `from` up to `to`.
    pub fn considered(&self, from: u64, to: u64) {
        if to > from {
            let mut inner = self.lock();
            self.considered_locked(&mut inner, from, to);
        }
    }

    fn considered_locked(&self, inner: &mut Inner, from: u64, to: u64) {
        let generations: Vec<u64> = inner
            .open
            .range(from.saturating_add(1)..=to)
            .map(|(generation, _)| *generation)
            .collect();
        for generation in generations {
            if let Some(open) = inner.open.get_mut(&generation) {
                open.unconsidered = open.unconsidered.saturating_sub(1);
            }
            self.finish(inner, generation);
        }
    }

    /// A push was made for the change of `generation`.
    pub fn pushed(&self, generation: u64) {
        if let Some(open) = self.lock().open.get_mut(&generation) {
            open.outstanding += 1;
        }
    }

    /// A push for `generation` was ACKed at `at`.
    pub fn acked(&self, generation: u64, at: Instant) {
        let mut inner = self.lock();
        if let Some(open) = inner.open.get_mut(&generation) {
            open.outstanding = open.outstanding.saturating_sub(1);
            open.last_ack = Some(open.last_ack.map_or(at, |last| last.max(at)));
        }
        self.finish(&mut inner, generation);
    }

    /// A push for `generation` will never be ACKed (NACK, superseded,
    /// stream closed).
    pub fn abandoned(&self, generation: u64) {
        let mut inner = self.lock();
        if let Some(open) = inner.open.get_mut(&generation) {
            open.outstanding = open.outstanding.saturating_sub(1);
        }
        self.finish(&mut inner, generation);
    }

    /// Observes and forgets `generation` when nothing is left to wait for.
    fn finish(&self, inner: &mut Inner, generation: u64) {
        let done = inner
            .open
            .get(&generation)
            .is_some_and(|open| open.unconsidered == 0 && open.outstanding == 0);
        if !done {
            return;
        }
        if let Some(open) = inner.open.remove(&generation)
            && let Some(last_ack) = open.last_ack
        {
            self.observe(
                last_ack
                    .saturating_duration_since(open.changed_at)
                    .as_secs_f64(),
            );
        }
    }

    fn observe(&self, seconds: f64) {
        self.histogram.observe(seconds);
        let bucket = bounds()
            .position(|bound| seconds <= bound)
            .unwrap_or(self.counts.len() - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// p50 and p99 estimated from the buckets; None before any observation.
    pub fn quantiles(&self) -> Option<Quantiles> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let bounds: Vec<f64> = bounds().collect();
        let quantile = |q: f64| {
            let rank = q * total as f64;
            let mut below = 0u64;
            for (i, count) in counts.iter().enumerate() {
                if *count > 0 && (below + count) as f64 >= rank {
                    let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
                    // Past the last bound: the last bound is all we know.
                    let Some(upper) = bounds.get(i).copied() else {
                        return lower;
                    };
                    let within = (rank - below as f64) / *count as f64;
                    return lower + (upper - lower) * within.clamp(0.0, 1.0);
                }
                below += count;
            }
            bounds[bounds.len() - 1]
        };
        Some(Quantiles {
            count: total,
            p50_seconds: quantile(0.5),
            p99_seconds: quantile(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn observes_the_last_ack_once_every_stream_has_looked() {
        let convergence = Convergence::new();
        let (a, b, c) = (
            convergence.opened(),
            convergence.opened(),
            convergence.opened(),
        );
        assert_eq!((a, b, c), (0, 0, 0));
        let changed_at = Instant::now();
        convergence.published(1, Some(changed_at));
        // a and b get a push each; c has nothing to receive.
        convergence.pushed(1);
        convergence.considered(0, 1);
        convergence.pushed(1);
        convergence.considered(0, 1);
        convergence.acked(1, changed_at + Duration::from_millis(3));
        convergence.acked(1, changed_at + Duration::from_millis(40));
        assert!(convergence.quantiles().is_none(), "c has not looked yet");
        convergence.considered(0, 1);
        let quantiles = convergence.quantiles().expect("observed");
        assert_eq!(quantiles.count, 1);
        assert!(
            (0.032..=0.064).contains(&quantiles.p99_seconds),
            "the last ACK (40 ms) decides: {quantiles:?}"
        );
    }

    #[test]
    fn a_nack_or_a_closed_stream_stops_counting_and_no_push_observes_nothing() {
        let convergence = Convergence::new();
        convergence.opened();
        convergence.opened();
        let changed_at = Instant::now();
        convergence.published(1, Some(changed_at));
        convergence.pushed(1);
        convergence.pushed(1);
        convergence.considered(0, 1);
        convergence.acked(1, changed_at + Duration::from_millis(2));
        convergence.abandoned(1); // the other stream's sidecar NACKed
        convergence.closed(0); // and its stream closed before looking again
        assert_eq!(convergence.quantiles().map(|q| q.count), Some(1));

        // A change nobody had to receive is not observed.
        convergence.opened();
        convergence.published(2, Some(Instant::now()));
        convergence.considered(1, 2);
        convergence.considered(1, 2);
        assert_eq!(convergence.quantiles().map(|q| q.count), Some(1));
    }

    #[test]
    fn a_stream_opened_after_the_publish_is_not_waited_for() {
        let convergence = Convergence::new();
        let changed_at = Instant::now();
        convergence.published(1, Some(changed_at));
        assert_eq!(convergence.opened(), 1);
        convergence.opened();
        convergence.published(2, Some(changed_at));
        convergence.pushed(2);
        convergence.acked(2, changed_at + Duration::from_millis(5));
        convergence.considered(1, 2);
        assert!(
            convergence.quantiles().is_none(),
            "one stream still to look"
        );
        convergence.considered(1, 2);
        assert_eq!(convergence.quantiles().map(|q| q.count), Some(1));
    }
}
