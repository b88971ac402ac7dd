//! Outlier ejection: an endpoint that fails too many times in a row gets
//! no traffic for `base_ejection_time x times ejected` (capped), and never
//! more than `max_ejection_percent` of a cluster's serving endpoints are
//! out at once. The balancer skips ejected endpoints with one atomic load;
//! the decision to eject takes the cluster's short ejection mutex so two
//! endpoints failing together cannot both pass the percentage check (with
//! no share to keep, `max_ejection_percent` 100 as in the built-in default,
//! it takes no lock: a compare-and-swap on the endpoint's own state).
//! A healthy endpoint's answers cost loads only: a counter is written
//! when it changes.
//!
//! The state lives in `EndpointStats`, carried over by address when the
//! endpoint set changes, so an endpoint stays ejected across EDS updates.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::settings::{EjectionBackoff, OutlierSettings};
use super::{millis, millis_since};
use crate::body::grpc::Outcome;

#[derive(Debug)]
pub struct EjectionState {
    epoch: Instant,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_unreachable: AtomicU32,
    /// Ejected until this (ms since `epoch`); 0 = not ejected.
    ejected_until: AtomicU64,
    /// Times ejected, the multiplier of the base time; forgotten after
    /// `max_ejection_time` without an ejection.
    ejections: AtomicU32,
    /// When the last ejection ended (ms since `epoch`).
    returned_at: AtomicU64,
    pub ejections_total: AtomicU64,
}

impl Default for EjectionState {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_unreachable: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            returned_at: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
        }
    }
}

/// The cluster-wide lock of ejection decisions (in `ClusterShared`).
#[derive(Debug, Default)]
pub struct EjectionLock(Mutex<()>);

impl EjectionLock {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When an endpoint of a cluster last answered unreachable (in
/// `ClusterShared`): while that is recent, the built-in retry keeps a copy
/// of each request to send elsewhere (`crate::retry`); a cluster that never
/// had an unreachable endpoint, or not for a while, pays one load.
#[derive(Debug)]
pub struct UnreachableSeen {
    epoch: Instant,
    /// ms since `epoch` (plus one); 0 = not recently.
    at: AtomicU64,
}

impl Default for UnreachableSeen {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            at: AtomicU64::new(0),
        }
    }
}

impl UnreachableSeen {
    pub fn note(&self, now: Instant) {
        self.at
            .store(millis_since(self.epoch, now), Ordering::Relaxed);
    }

    /// Whether one was noted within `window`; forgets an older one.
    pub fn within(&self, window: Duration, now: impl FnOnce() -> Instant) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        if at == 0 {
            return false;
        }
        if millis_since(self.epoch, now()).saturating_sub(at) <= millis(window) {
            return true;
        }
        let _ = self
            .at
            .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }
}

/// How long the `n`th ejection (1-based) lasts at most (before jitter).
pub fn ejection_time(s: &OutlierSettings, n: u32) -> Duration {
    let n = n.max(1);
    let grown = match s.backoff {
        EjectionBackoff::Linear => s.base_ejection_time.saturating_mul(n),
        EjectionBackoff::ExponentialJittered => s
            .base_ejection_time
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX)),
    };
    grown.min(s.max_ejection_time.max(s.base_ejection_time))
}

/// The `n`th ejection's length: with jitter, `ejection_time` shortened by
/// `draw` quarters of it (`draw` in 0..=1), so that the callers of a
/// recovering endpoint do not all probe it in the same instant.
pub fn jittered_ejection_time(s: &OutlierSettings, n: u32, draw: f64) -> Duration {
    let time = ejection_time(s, n);
    match s.backoff {
        EjectionBackoff::Linear => time,
        EjectionBackoff::ExponentialJittered => time.mul_f64(1.0 - draw.clamp(0.0, 1.0) / 4.0),
    }
}

/// Whether one more of `serving` endpoints may be ejected when `ejected`
/// already are: never more than `max_percent` of them.
pub fn may_eject(ejected: usize, serving: usize, max_percent: u32) -> bool {
    (ejected as u64 + 1) * 100 <= serving as u64 * u64::from(max_percent.min(100))
}

/// Why an endpoint should be ejected after `outcome`, if it should.
pub enum Verdict {
    Keep,
    Eject(String),
}

impl EjectionState {
    /// Time left in the current ejection.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let at = millis_since(self.epoch, now);
        (at < until).then(|| Duration::from_millis(until - at))
    }

    /// The hot-path check: one load (and no clock read) while not ejected.
    pub fn is_ejected(&self, now: impl FnOnce() -> Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && millis_since(self.epoch, now()) < until
    }

    pub fn times_ejected(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Notes that an ejection is over (once); true if this call did. Reads
    /// the clock only when there is an ejection to end.
    pub fn note_return(&self, now: impl FnOnce() -> Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        let at = millis_since(self.epoch, now());
        if at < until {
            return false;
        }
        let returned = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if returned {
            self.returned_at.store(at, Ordering::Relaxed);
        }
        returned
    }

    /// Counts one outcome; says whether it makes the endpoint an outlier.
    pub fn observe(&self, s: &OutlierSettings, outcome: Outcome) -> Verdict {
        if outcome == Outcome::Neutral || outcome == Outcome::Timeout {
            return Verdict::Keep;
        }
        let bump = |counter: &AtomicU32, hit: bool| {
            if hit {
                counter.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                // A load first: the counters of an endpoint every core
                // answers for stay shared in their caches while it is well.
                if counter.load(Ordering::Relaxed) != 0 {
                    counter.store(0, Ordering::Relaxed);
                }
                0
            }
        };
        let cu = bump(
            &self.consecutive_unreachable,
            outcome == Outcome::ConnectFailure,
        );
        if s.consecutive_unreachable > 0 && cu >= s.consecutive_unreachable {
            return Verdict::Eject(format!("{cu} unreachable in a row (connect failed)"));
        }
        let c5 = bump(&self.consecutive_5xx, outcome.is_5xx());
        let cg = bump(&self.consecutive_gateway, outcome.is_gateway_error());
        if s.consecutive_5xx > 0 && c5 >= s.consecutive_5xx {
            Verdict::Eject(format!("{c5} consecutive 5xx (last: {outcome:?})"))
        } else if s.consecutive_gateway_errors > 0 && cg >= s.consecutive_gateway_errors {
            Verdict::Eject(format!(
                "{cg} consecutive gateway errors (last: {outcome:?})"
            ))
        } else {
            Verdict::Keep
        }
    }

    /// Ejects this endpoint if the cluster's share allows: `ejected_now`
    /// counts the cluster's currently ejected endpoints, under `lock`.
    /// Returns the ejection's length.
    pub fn eject(
        &self,
        s: &OutlierSettings,
        lock: &EjectionLock,
        ejected_now: impl FnOnce(Instant) -> usize,
        serving: usize,
        now: Instant,
    ) -> Result<Duration, String> {
        let shared = s.max_ejection_percent < 100;
        let _lock = shared.then(|| lock.lock());
        let until = self.ejected_until.load(Ordering::Acquire);
        if self.ejected_for(now).is_some() {
            return Err("already ejected".into());
        }
        let ejected = if shared { ejected_now(now) } else { 0 };
        if shared && !may_eject(ejected, serving, s.max_ejection_percent) {
            // Start counting afresh: the next run of failures asks again.
            self.reset_counts();
            return Err(format!(
                "{ejected} of {serving} endpoints already ejected (max_ejection_percent {})",
                s.max_ejection_percent
            ));
        }
        let at = millis_since(self.epoch, now);
        let returned = self.returned_at.load(Ordering::Relaxed);
        if returned != 0 && at.saturating_sub(returned) >= millis(s.max_ejection_time) {
            // Healthy for a whole max_ejection_time: start from the base again.
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.load(Ordering::Acquire) + 1;
        let time = jittered_ejection_time(s, n, rand::random::<f64>());
        // Without the lock, two failures racing here eject once.
        if self
            .ejected_until
            .compare_exchange(
                until,
                at + millis(time),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err("already ejected".into());
        }
        self.ejections.fetch_add(1, Ordering::AcqRel);
        self.reset_counts();
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        Ok(time)
    }

    fn reset_counts(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_unreachable.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: 2,
            consecutive_gateway_errors: 0,
            consecutive_unreachable: 0,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
            backoff: EjectionBackoff::Linear,
        }
    }

    const E503: Outcome = Outcome::Response {
        status: 503,
        grpc: None,
    };
    const OK: Outcome = Outcome::Response {
        status: 200,
        grpc: None,
    };

    #[test]
    fn one_unreachable_answer_ejects_under_the_default_and_nothing_else_does() {
        let (e, s) = (
            EjectionState::default(),
            OutlierSettings::unreachable_default(),
        );
        for _ in 0..20 {
            assert!(matches!(e.observe(&s, E503), Verdict::Keep), "an app's 503");
            assert!(matches!(e.observe(&s, Outcome::Reset), Verdict::Keep));
        }
        assert!(matches!(
            e.observe(&s, Outcome::ConnectFailure),
            Verdict::Eject(_)
        ));
        // A document's section counts unreachable answers too, unless it
        // turns them off.
        let off = OutlierSettings {
            consecutive_unreachable: 0,
            ..settings()
        };
        let e = EjectionState::default();
        assert!(matches!(
            e.observe(&off, Outcome::ConnectFailure),
            Verdict::Keep
        ));
    }

    #[test]
    fn the_default_ejection_time_doubles_from_1s_to_30s_shortened_by_jitter() {
        let s = OutlierSettings::unreachable_default();
        let got: Vec<_> = (1..=7).map(|n| ejection_time(&s, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(ejection_time(&s, 100).as_secs(), 30, "no overflow");
        assert_eq!(jittered_ejection_time(&s, 3, 0.0), Duration::from_secs(4));
        assert_eq!(jittered_ejection_time(&s, 3, 1.0), Duration::from_secs(3));
        assert_eq!(
            jittered_ejection_time(&settings(), 1, 1.0),
            Duration::from_secs(10),
            "a document's linear times have no jitter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_share_to_keep_two_racing_failures_eject_once() {
        let (e, s, lock) = (
            EjectionState::default(),
            OutlierSettings::unreachable_default(),
            EjectionLock::default(),
        );
        let never_counted = |_| unreachable!("no share to count at 100 %");
        assert!(e.eject(&s, &lock, never_counted, 2, Instant::now()).is_ok());
        assert!(
            e.eject(&s, &lock, never_counted, 2, Instant::now())
                .is_err()
        );
        assert_eq!(e.ejections_total.load(Ordering::Relaxed), 1);
        assert_eq!(e.times_ejected(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_answer_is_remembered_for_its_window_only() {
        let seen = UnreachableSeen::default();
        let window = Duration::from_secs(60);
        assert!(!seen.within(window, || unreachable!("no clock read when never seen")));
        seen.note(Instant::now());
        tokio::time::advance(window).await;
        assert!(seen.within(window, Instant::now));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!seen.within(window, Instant::now));
        assert!(
            !seen.within(window, || unreachable!("forgotten: no clock read")),
            "forgotten"
        );
    }

    #[test]
    fn the_share_is_never_exceeded() {
        assert!(may_eject(0, 3, 50), "1 of 3 is 33 %");
        assert!(!may_eject(1, 3, 50), "2 of 3 is 67 %");
        assert!(may_eject(1, 4, 50) && !may_eject(2, 4, 50));
        assert!(!may_eject(0, 1, 50), "never the only endpoint at 50 %");
        assert!(may_eject(0, 1, 100));
        assert!(!may_eject(0, 10, 0));
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let s = settings();
        let got: Vec<_> = (1..=4).map(|n| ejection_time(&s, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 25, 25]);
    }

    #[test]
    fn consecutive_failures_make_an_outlier_and_a_success_resets() {
        let (e, s) = (EjectionState::default(), settings());
        assert!(matches!(e.observe(&s, E503), Verdict::Keep));
        assert!(matches!(e.observe(&s, OK), Verdict::Keep));
        assert!(matches!(e.observe(&s, E503), Verdict::Keep));
        assert!(matches!(e.observe(&s, Outcome::Reset), Verdict::Eject(_)));
        let gateway = OutlierSettings {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 2,
            ..settings()
        };
        let e = EjectionState::default();
        let e500 = Outcome::Response {
            status: 500,
            grpc: None,
        };
        assert!(matches!(e.observe(&gateway, e500), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, e500), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, E503), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, E503), Verdict::Eject(_)));
    }

    #[test]
    fn grpc_statuses_count_as_the_http_status_they_stand_for() {
        let grpc = |code| Outcome::Response {
            status: 200,
            grpc: Some(code),
        };
        let gateway = OutlierSettings {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 2,
            ..settings()
        };
        let e = EjectionState::default();
        // INTERNAL is a 500, not a gateway error; NOT_FOUND resets.
        assert!(matches!(e.observe(&gateway, grpc(14)), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, grpc(13)), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, grpc(14)), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, grpc(5)), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, grpc(14)), Verdict::Keep));
        assert!(matches!(e.observe(&gateway, grpc(4)), Verdict::Eject(_)));
        let e = EjectionState::default();
        assert!(matches!(e.observe(&settings(), grpc(13)), Verdict::Keep));
        assert!(matches!(e.observe(&settings(), grpc(2)), Verdict::Eject(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_returns_and_a_second_ejection_lasts_longer() {
        let (e, s, lock) = (
            EjectionState::default(),
            settings(),
            EjectionLock::default(),
        );
        let now = Instant::now();
        assert_eq!(
            e.eject(&s, &lock, |_| 0, 4, now),
            Ok(Duration::from_secs(10))
        );
        assert!(e.is_ejected(Instant::now));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!e.is_ejected(Instant::now));
        assert!(e.note_return(Instant::now));
        assert!(!e.note_return(Instant::now), "noted once");
        assert_eq!(
            e.eject(&s, &lock, |_| 0, 4, Instant::now()),
            Ok(Duration::from_secs(20))
        );
        // Refused when the share is taken; the count starts afresh.
        let other = EjectionState::default();
        assert!(other.eject(&s, &lock, |_| 2, 4, Instant::now()).is_err());
        assert!(!other.is_ejected(Instant::now));
    }

    #[tokio::test(start_paused = true)]
    async fn the_multiplier_is_forgotten_after_a_healthy_max_ejection_time() {
        let (e, s, lock) = (
            EjectionState::default(),
            settings(),
            EjectionLock::default(),
        );
        e.eject(&s, &lock, |_| 0, 4, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        e.note_return(Instant::now);
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(
            e.eject(&s, &lock, |_| 0, 4, Instant::now()),
            Ok(Duration::from_secs(10))
        );
    }
}
