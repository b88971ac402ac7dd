//! Exponential backoff with full jitter: before retry `n` (1, 2, ...) a
//! uniform random wait in `[0, min(max, base * 2^(n-1))]`. Full jitter
//! spreads the retries of many callers that failed together over the whole
//! interval, instead of sending them back in synchronized waves.

use std::time::Duration;

/// The longest wait before retry `retry` (1-based): `base * 2^(retry-1)`,
/// capped at `max` (and never overflowing).
pub fn ceiling(base: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// The wait before retry `retry`; `draw(n)` returns a uniform integer in
/// `0..=n` (the thread RNG in production, a fixed value in tests).
pub fn delay(base: Duration, max: Duration, retry: u32, draw: impl FnOnce(u64) -> u64) -> Duration {
    let ceiling = ceiling(base, max, retry);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(draw(nanos).min(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(25);
    const MAX: Duration = Duration::from_millis(250);

    #[test]
    fn the_ceiling_doubles_per_retry_up_to_the_max() {
        let ceilings: Vec<u64> = (1..=6)
            .map(|n| ceiling(BASE, MAX, n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
        assert_eq!(ceiling(BASE, MAX, 100), MAX, "no overflow on many retries");
        assert_eq!(ceiling(BASE, MAX, 0), BASE, "retry 0 is read as the first");
    }

    #[test]
    fn the_delay_is_anywhere_from_zero_to_the_ceiling() {
        assert_eq!(delay(BASE, MAX, 3, |_| 0), Duration::ZERO);
        assert_eq!(delay(BASE, MAX, 3, |n| n), Duration::from_millis(100));
        assert_eq!(
            delay(BASE, MAX, 3, |n| n / 2),
            Duration::from_millis(50),
            "uniform over the whole interval (full jitter)"
        );
        assert_eq!(
            delay(BASE, MAX, 3, |_| u64::MAX),
            Duration::from_millis(100),
            "a draw is clamped to the ceiling"
        );
    }

    #[test]
    fn real_draws_stay_within_the_ceiling() {
        use rand::Rng;
        let mut rng = rand::rng();
        for n in 1..=5 {
            let d = delay(BASE, MAX, n, |hi| rng.random_range(0..=hi));
            assert!(d <= ceiling(BASE, MAX, n), "{d:?} on retry {n}");
        }
    }
}
