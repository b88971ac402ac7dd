//! The breaker of one cluster: closed (requests pass and are counted),
//! open (requests fail fast), half-open (a bounded number of probes pass).
//!
//! The request path reads the state and bumps counters with atomics only;
//! the short `transition` mutex is taken to change state, and a
//! `generation` number bumped on every change makes outcomes of requests
//! admitted under an earlier state count for nothing (a slow request
//! admitted while closed cannot reopen a breaker that has since closed).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{BreakerSettings, Outcome, millis, millis_since};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// A request the breaker let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    generation: u64,
    probe: bool,
}

/// The breaker refused: it is open, or half-open with every probe taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub state: State,
    /// Until the next probe may go (zero when waiting on probes).
    pub retry_in: Duration,
}

/// The rolling window: `BUCKETS` slots of `window / BUCKETS` each, one
/// packed atomic per slot.
const BUCKETS: usize = 10;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 24) - 1;

/// Runtime state of a cluster's breaker (lives in `ClusterShared`).
#[derive(Debug)]
pub struct BreakerState {
    epoch: Instant,
    state: AtomicU8,
    generation: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Per slot: bucket number (24 bits) | requests (20) | failures (20).
    window: [AtomicU64; BUCKETS],
    /// While open: when the first probe may go (ms since `epoch`).
    open_until: AtomicU64,
    /// Times reopened from half-open since last closed: the backoff exponent.
    reopenings: AtomicU32,
    probes_admitted: AtomicU32,
    probe_successes: AtomicU32,
    transition: Mutex<()>,
    pub opened_total: AtomicU64,
    pub half_opened_total: AtomicU64,
    pub closed_total: AtomicU64,
    pub rejected_total: AtomicU64,
}

impl Default for BreakerState {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            state: AtomicU8::new(0),
            generation: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            window: Default::default(),
            open_until: AtomicU64::new(0),
            reopenings: AtomicU32::new(0),
            probes_admitted: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            transition: Mutex::new(()),
            opened_total: AtomicU64::new(0),
            half_opened_total: AtomicU64::new(0),
            closed_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
        }
    }
}

/// How long the breaker stays open after `reopenings` failed half-opens:
/// the interval doubles each time, capped.
pub fn open_interval(s: &BreakerSettings, reopenings: u32) -> Duration {
    s.open_interval
        .saturating_mul(1u32 << reopenings.min(20))
        .min(s.max_open_interval.max(s.open_interval))
}

impl BreakerState {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// While open, how long until probes may go.
    pub fn open_remaining(&self, now: Instant) -> Option<Duration> {
        (self.state() == State::Open).then(|| {
            let until = self.open_until.load(Ordering::Acquire);
            Duration::from_millis(until.saturating_sub(millis_since(self.epoch, now)))
        })
    }

    /// (requests, failures) in the rolling window.
    pub fn window_counts(&self, s: &BreakerSettings, now: Instant) -> (u64, u64) {
        let current = self.bucket(s, now);
        self.window
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|packed| {
                let age = current.wrapping_sub(packed >> (2 * COUNT_BITS)) & EPOCH_MASK;
                age < BUCKETS as u64
            })
            .fold((0, 0), |(r, f), packed| {
                (
                    r + ((packed >> COUNT_BITS) & COUNT_MAX),
                    f + (packed & COUNT_MAX),
                )
            })
    }

    fn bucket(&self, s: &BreakerSettings, now: Instant) -> u64 {
        let width = (millis(s.window) / BUCKETS as u64).max(1);
        (millis_since(self.epoch, now) / width) & EPOCH_MASK
    }

    fn count(&self, s: &BreakerSettings, now: Instant, failed: bool) {
        let bucket = self.bucket(s, now);
        let slot = &self.window[bucket as usize % BUCKETS];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (requests, failures) = if packed >> (2 * COUNT_BITS) == bucket && packed != 0 {
                ((packed >> COUNT_BITS) & COUNT_MAX, packed & COUNT_MAX)
            } else {
                (0, 0)
            };
            let requests = (requests + 1).min(COUNT_MAX);
            let failures = (failures + u64::from(failed)).min(COUNT_MAX);
            Some((bucket << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | failures)
        });
    }

    /// May a request go? Moves open -> half-open when the interval is over.
    pub fn admit(
        &self,
        s: &BreakerSettings,
        cluster: &str,
        now: Instant,
    ) -> Result<Admitted, Rejected> {
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            match self.state() {
                State::Closed => {
                    return Ok(Admitted {
                        generation,
                        probe: false,
                    });
                }
                State::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    let at = millis_since(self.epoch, now);
                    if at < until {
                        self.rejected_total.fetch_add(1, Ordering::Relaxed);
                        return Err(Rejected {
                            state: State::Open,
                            retry_in: Duration::from_millis(until - at),
                        });
                    }
                    self.half_open(generation, cluster);
                    // Loop: now half-open (or moved on by another request).
                }
                State::HalfOpen => {
                    let max = s.half_open_probes.max(1);
                    let took = self.probes_admitted.fetch_update(
                        Ordering::AcqRel,
                        Ordering::Acquire,
                        |n| (n < max).then_some(n + 1),
                    );
                    if took.is_ok() && self.generation.load(Ordering::Acquire) == generation {
                        return Ok(Admitted {
                            generation,
                            probe: true,
                        });
                    }
                    if took.is_ok() {
                        // The state moved under us: give back the slot we
                        // took (whichever half-open it counted in; entering
                        // half-open resets the count) and look again.
                        let _ = self.probes_admitted.fetch_update(
                            Ordering::AcqRel,
                            Ordering::Acquire,
                            |n| n.checked_sub(1),
                        );
                        continue;
                    }
                    self.rejected_total.fetch_add(1, Ordering::Relaxed);
                    return Err(Rejected {
                        state: State::HalfOpen,
                        retry_in: Duration::ZERO,
                    });
                }
            }
        }
    }

    /// The admitted request ended with `outcome` (or was abandoned: `None`,
    /// e.g. the caller went away; a probe slot is then freed).
    pub fn record(
        &self,
        s: &BreakerSettings,
        cluster: &str,
        admitted: Admitted,
        outcome: Option<Outcome>,
        now: Instant,
    ) {
        if self.generation.load(Ordering::Acquire) != admitted.generation {
            return;
        }
        let Some(outcome) = outcome else {
            if admitted.probe {
                self.release_probe(admitted.generation);
            }
            return;
        };
        let failed = outcome.is_failure(&s.failure_on);
        if admitted.probe {
            if failed {
                self.reopen(s, cluster, admitted.generation, outcome, now);
            } else if outcome.is_success() {
                let successes = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                if successes >= s.half_open_probes.max(1) {
                    self.close(cluster, admitted.generation, successes);
                }
            } else {
                self.release_probe(admitted.generation);
            }
            return;
        }
        if !failed && !outcome.is_success() {
            return;
        }
        self.count(s, now, failed);
        if !failed {
            // Read first: a store on every success would bounce the cache
            // line between cores even while nothing fails.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let consecutive = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if s.consecutive_failures > 0 && consecutive >= s.consecutive_failures {
            let reason = format!("{consecutive} consecutive failures (last: {outcome:?})");
            self.trip(s, cluster, admitted.generation, &reason, now);
            return;
        }
        if s.failure_ratio > 0.0 {
            let (requests, failures) = self.window_counts(s, now);
            if requests >= u64::from(s.min_requests.max(1))
                && failures as f64 >= s.failure_ratio * requests as f64
            {
                let reason = format!(
                    "{failures} of {requests} requests failed within {:?} (failure_ratio {})",
                    s.window, s.failure_ratio
                );
                self.trip(s, cluster, admitted.generation, &reason, now);
            }
        }
    }

    /// Back to closed with clean counters (after a settings change too).
    pub fn reset(&self) {
        let _lock = self.lock();
        self.state.store(0, Ordering::Release);
        self.clear_counts();
        self.reopenings.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The mutex guards no data, only the order of transitions.
        self.transition.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear_counts(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        for slot in &self.window {
            slot.store(0, Ordering::Relaxed);
        }
        self.probes_admitted.store(0, Ordering::Relaxed);
        self.probe_successes.store(0, Ordering::Relaxed);
    }

    fn release_probe(&self, generation: u64) {
        let _lock = self.lock();
        if self.generation.load(Ordering::Acquire) == generation {
            let _ = self
                .probes_admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    fn open_for(&self, interval: Duration, now: Instant) {
        let until = millis_since(self.epoch, now) + millis(interval);
        self.open_until.store(until, Ordering::Release);
        self.state.store(1, Ordering::Release);
        self.opened_total.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn trip(
        &self,
        s: &BreakerSettings,
        cluster: &str,
        generation: u64,
        reason: &str,
        now: Instant,
    ) {
        let _lock = self.lock();
        if self.generation.load(Ordering::Acquire) != generation || self.state() != State::Closed {
            return;
        }
        let interval = open_interval(s, 0);
        self.reopenings.store(0, Ordering::Relaxed);
        self.open_for(interval, now);
        tracing::info!(cluster, reason, open_for = ?interval, "circuit breaker opened");
    }

    fn half_open(&self, generation: u64, cluster: &str) {
        let _lock = self.lock();
        if self.generation.load(Ordering::Acquire) != generation || self.state() != State::Open {
            return;
        }
        self.probes_admitted.store(0, Ordering::Relaxed);
        self.probe_successes.store(0, Ordering::Relaxed);
        self.state.store(2, Ordering::Release);
        self.half_opened_total.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(
            cluster,
            reason = "open interval over",
            "circuit breaker half-open"
        );
    }

    fn reopen(
        &self,
        s: &BreakerSettings,
        cluster: &str,
        generation: u64,
        outcome: Outcome,
        now: Instant,
    ) {
        let _lock = self.lock();
        if self.generation.load(Ordering::Acquire) != generation || self.state() != State::HalfOpen
        {
            return;
        }
        let reopenings = self.reopenings.fetch_add(1, Ordering::AcqRel) + 1;
        let interval = open_interval(s, reopenings);
        self.open_for(interval, now);
        let reason = format!("probe failed ({outcome:?})");
        tracing::info!(cluster, reason, open_for = ?interval, "circuit breaker reopened");
    }

    fn close(&self, cluster: &str, generation: u64, successes: u32) {
        let _lock = self.lock();
        if self.generation.load(Ordering::Acquire) != generation || self.state() != State::HalfOpen
        {
            return;
        }
        self.clear_counts();
        self.reopenings.store(0, Ordering::Relaxed);
        self.state.store(0, Ordering::Release);
        self.closed_total.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let reason = format!("{successes} probes succeeded");
        tracing::info!(cluster, reason, "circuit breaker closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome::Response {
        status: 200,
        grpc: None,
    };
    const FAIL: Outcome = Outcome::Response {
        status: 503,
        grpc: None,
    };

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            open_interval: Duration::from_secs(1),
            max_open_interval: Duration::from_secs(3),
            half_open_probes: 2,
            ..BreakerSettings::default()
        }
    }

    fn call(b: &BreakerState, s: &BreakerSettings, outcome: Outcome) -> Result<(), Rejected> {
        let now = Instant::now();
        let admitted = b.admit(s, "c", now)?;
        b.record(s, "c", admitted, Some(outcome), now);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (b, s) = (BreakerState::default(), settings());
        call(&b, &s, FAIL).unwrap();
        call(&b, &s, FAIL).unwrap();
        call(&b, &s, OK).unwrap();
        call(&b, &s, FAIL).unwrap();
        call(&b, &s, FAIL).unwrap();
        assert_eq!(b.state(), State::Closed);
        call(&b, &s, FAIL).unwrap();
        assert_eq!(b.state(), State::Open);
        let rejected = call(&b, &s, OK).unwrap_err();
        assert_eq!(rejected.retry_in, Duration::from_secs(1));
        assert_eq!(b.rejected_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_a_bounded_number_of_probes_and_successes_close() {
        let (b, s) = (BreakerState::default(), settings());
        for _ in 0..3 {
            call(&b, &s, FAIL).unwrap();
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(call(&b, &s, OK).is_err(), "still open before the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        let now = Instant::now();
        let first = b.admit(&s, "c", now).unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        let second = b.admit(&s, "c", now).unwrap();
        let third = b.admit(&s, "c", now).unwrap_err();
        assert_eq!(third.state, State::HalfOpen, "only 2 probes at once");
        b.record(&s, "c", first, Some(OK), now);
        assert_eq!(b.state(), State::HalfOpen, "one success of two");
        b.record(&s, "c", second, Some(OK), now);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.closed_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_a_doubled_capped_interval() {
        let (b, s) = (BreakerState::default(), settings());
        for _ in 0..3 {
            call(&b, &s, FAIL).unwrap();
        }
        for expected in [2, 3, 3] {
            let wait = b.open_remaining(Instant::now()).unwrap();
            tokio::time::advance(wait).await;
            call(&b, &s, FAIL).unwrap();
            assert_eq!(b.state(), State::Open);
            assert_eq!(
                b.open_remaining(Instant::now()),
                Some(Duration::from_secs(expected))
            );
        }
        // Closing resets the backoff.
        tokio::time::advance(Duration::from_secs(3)).await;
        call(&b, &s, OK).unwrap();
        call(&b, &s, OK).unwrap();
        assert_eq!(b.state(), State::Closed);
        for _ in 0..3 {
            call(&b, &s, FAIL).unwrap();
        }
        assert_eq!(
            b.open_remaining(Instant::now()),
            Some(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let s = BreakerSettings {
            half_open_probes: 1,
            ..settings()
        };
        let b = BreakerState::default();
        for _ in 0..3 {
            call(&b, &s, FAIL).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let probe = b.admit(&s, "c", now).unwrap();
        assert!(b.admit(&s, "c", now).is_err());
        b.record(&s, "c", probe, None, now);
        let probe = b.admit(&s, "c", now).unwrap();
        b.record(&s, "c", probe, Some(OK), now);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_ratio_needs_min_requests_within_the_window() {
        let s = BreakerSettings {
            consecutive_failures: 0,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            ..settings()
        };
        let b = BreakerState::default();
        // 4 failures of 8: half, but fewer than 10 requests.
        for outcome in [FAIL, OK].repeat(4) {
            call(&b, &s, outcome).unwrap();
        }
        assert_eq!(b.state(), State::Closed);
        // The window slides: these 8 are forgotten after 10 s.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.window_counts(&s, Instant::now()), (0, 0));
        for outcome in [OK, OK, OK, OK, OK, FAIL, FAIL, FAIL, FAIL] {
            call(&b, &s, outcome).unwrap();
        }
        assert_eq!(b.state(), State::Closed, "4 of 9");
        call(&b, &s, FAIL).unwrap();
        assert_eq!(b.state(), State::Open, "5 of 10");
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_from_before_a_transition_count_for_nothing() {
        let (b, s) = (BreakerState::default(), settings());
        let now = Instant::now();
        let slow = b.admit(&s, "c", now).unwrap();
        for _ in 0..3 {
            call(&b, &s, FAIL).unwrap();
        }
        assert_eq!(b.state(), State::Open);
        // Admitted while closed, answers while open: ignored.
        b.record(&s, "c", slow, Some(OK), now);
        assert_eq!(b.state(), State::Open);
        b.reset();
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn concurrent_requests_keep_the_transitions_consistent() {
        let s = BreakerSettings {
            consecutive_failures: 2,
            open_interval: Duration::from_millis(1),
            max_open_interval: Duration::from_millis(2),
            half_open_probes: 2,
            ..BreakerSettings::default()
        };
        let b = BreakerState::default();
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (b, s) = (&b, &s);
                scope.spawn(move || {
                    for i in 0..20_000u32 {
                        // Bursts of failures and of successes.
                        let outcome = if (i / 50 + t) % 2 == 0 { FAIL } else { OK };
                        let now = Instant::now();
                        if let Ok(admitted) = b.admit(s, "c", now) {
                            b.record(s, "c", admitted, Some(outcome), now);
                        }
                    }
                });
            }
        });
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (opened, half, closed) = (
            load(&b.opened_total),
            load(&b.half_opened_total),
            load(&b.closed_total),
        );
        assert!(opened > 0, "{opened} {half} {closed}");
        // Every half-open followed an open, every close a half-open, and
        // only the last episode may still be going.
        assert!(half <= opened && opened <= half + 1, "{opened} {half}");
        assert!(closed <= half, "{half} {closed}");
        assert!(b.probes_admitted.load(Ordering::Relaxed) <= s.half_open_probes);
        // Whatever state the race left, no probe slot leaked: once the
        // interval is over, successes close it.
        std::thread::sleep(s.max_open_interval);
        for _ in 0..s.half_open_probes {
            call(&b, &s, OK).unwrap();
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn open_interval_doubles_up_to_the_cap() {
        let s = settings();
        let got: Vec<_> = (0..4).map(|n| open_interval(&s, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 3, 3]);
        assert_eq!(open_interval(&s, 1000), Duration::from_secs(3));
    }
}
