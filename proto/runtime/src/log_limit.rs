//! At most one log line per interval per cause.
//!
//! An error that repeats as fast as a loop can spin (an accept loop out of
//! file descriptors) must not write a line per repeat: one user saw 75
//! million identical warnings (13 GB) in three minutes. The first line of a
//! cause goes out at once; repeats within the interval are counted, and the
//! next line after it carries that count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many causes one limiter tells apart. Callers key by a handful of
/// error kinds; past this the least recently logged cause is forgotten
/// (its suppressed count with it), so memory stays bounded whatever the
/// keys.
const MAX_CAUSES: usize = 16;

/// Admits at most one log line per `interval` per cause (`K`: an error
/// kind, an errno). For error paths, not the hot path: a short mutex, taken
/// only when something went wrong.
#[derive(Debug)]
pub struct LogLimiter<K> {
    interval: Duration,
    causes: Mutex<Vec<Cause<K>>>,
}

#[derive(Debug)]
struct Cause<K> {
    key: K,
    /// When a line of this cause was last admitted.
    logged_at: Instant,
    /// Repeats refused since then.
    suppressed: u64,
}

impl<K: PartialEq> LogLimiter<K> {
    /// One line per `interval` per cause.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            causes: Mutex::new(Vec::new()),
        }
    }

    /// One line per second per cause: what the accept loops use.
    pub fn per_second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    /// `Some(suppressed)` if a line for `cause` may be written now
    /// (`suppressed`: the repeats refused since the last one, for the line
    /// to say), `None` if it must be dropped.
    pub fn admit(&self, cause: K) -> Option<u64> {
        self.admit_at(cause, Instant::now())
    }

    /// [`LogLimiter::admit`] at a given instant (a controllable clock for
    /// tests).
    pub fn admit_at(&self, cause: K, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging;
        // the counts are still usable.
        let mut causes = self.causes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = causes.iter_mut().find(|c| c.key == cause) {
            if now.saturating_duration_since(seen.logged_at) < self.interval {
                seen.suppressed += 1;
                return None;
            }
            seen.logged_at = now;
            return Some(std::mem::take(&mut seen.suppressed));
        }
        if causes.len() >= MAX_CAUSES
            && let Some(oldest) = causes
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.logged_at)
                .map(|(i, _)| i)
        {
            causes.swap_remove(oldest);
        }
        causes.push(Cause {
            key: cause,
            logged_at: now,
            suppressed: 0,
        });
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_line_per_interval_then_the_count_of_repeats() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(
            limiter.admit_at("emfile", t0),
            Some(0),
            "the first line goes out"
        );
        for i in 1..1_000u32 {
            assert_eq!(
                limiter.admit_at("emfile", t0 + i * MS),
                None,
                "repeat at {i} ms"
            );
        }
        assert_eq!(
            limiter.admit_at("emfile", t0 + 1_000 * MS),
            Some(999),
            "the next line says how many were dropped"
        );
        assert_eq!(limiter.admit_at("emfile", t0 + 1_500 * MS), None);
        assert_eq!(limiter.admit_at("emfile", t0 + 5_000 * MS), Some(1));
        assert_eq!(limiter.admit_at("emfile", t0 + 6_000 * MS), Some(0));
    }

    #[test]
    fn causes_are_limited_apart() {
        let limiter = LogLimiter::per_second();
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at(24, t0), Some(0));
        assert_eq!(
            limiter.admit_at(103, t0),
            Some(0),
            "another cause is not held back"
        );
        assert_eq!(limiter.admit_at(24, t0 + MS), None);
        assert_eq!(limiter.admit_at(103, t0 + MS), None);
        assert_eq!(limiter.admit_at(103, t0 + 2 * MS), None);
        assert_eq!(limiter.admit_at(24, t0 + 1_000 * MS), Some(1));
        assert_eq!(limiter.admit_at(103, t0 + 1_000 * MS), Some(2));
    }

    #[test]
    fn many_causes_stay_bounded() {
        let limiter = LogLimiter::per_second();
        let t0 = Instant::now();
        for key in 0..1_000u32 {
            assert_eq!(limiter.admit_at(key, t0 + key * MS), Some(0));
        }
        let held = limiter.causes.lock().unwrap().len();
        assert_eq!(held, MAX_CAUSES);
        // The most recent causes are the ones kept.
        assert_eq!(limiter.admit_at(999, t0 + 1_000 * MS), None);
    }
}
