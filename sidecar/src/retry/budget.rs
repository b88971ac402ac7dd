//! The retry budget of one destination, like linkerd's: over a sliding
//! window of [`WINDOW_SECONDS`], retries may number at most `ratio` times
//! the requests of that window plus `min_retries_per_second` times its
//! length. When a service fails every request, its callers add at most that
//! share of extra load instead of multiplying it by `max_attempts`.
//!
//! Lock-free: one packed atomic per one-second slot and kind (requests,
//! retries), holding the slot's second (high 32 bits) and its count (low
//! 32 bits), so a slot is reset and counted in one compare-and-swap. A
//! check-then-count under concurrency may let a few retries past the line;
//! the bound is approximate by that much, never unbounded.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// Length of the window, in one-second slots.
pub const WINDOW_SECONDS: u64 = 10;
const SLOTS: usize = WINDOW_SECONDS as usize;
const COUNT_MASK: u64 = 0xFFFF_FFFF;

/// Counts of one destination; outlives config updates (it lives in the
/// cluster's shared state), so a policy change keeps the window's history.
#[derive(Debug)]
pub struct RetryBudget {
    start: Instant,
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }
}

/// The parameters, from the policy in force.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetLimits {
    pub ratio: f64,
    pub min_retries_per_second: u32,
}

impl RetryBudget {
    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Counts one request (a first try) into the window.
    pub fn deposit(&self) {
        let now = self.second();
        count(&self.requests, now);
    }

    /// Takes one retry from the budget if the window allows it; `false`
    /// means the budget is spent and the request must not be retried.
    pub fn try_withdraw(&self, limits: BudgetLimits) -> bool {
        let now = self.second();
        let requests = total(&self.requests, now) as f64;
        let retries = total(&self.retries, now) as f64;
        let allowed = limits.ratio * requests
            + f64::from(limits.min_retries_per_second) * WINDOW_SECONDS as f64;
        if retries < allowed {
            count(&self.retries, now);
            true
        } else {
            false
        }
    }

    /// (requests, retries) in the current window, for `/clusters`.
    pub fn window(&self) -> (u64, u64) {
        let now = self.second();
        (total(&self.requests, now), total(&self.retries, now))
    }
}

fn count(slots: &[AtomicU64; SLOTS], second: u64) {
    let slot = &slots[(second % WINDOW_SECONDS) as usize];
    let tag = second & COUNT_MASK;
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let next = if current >> 32 == tag {
            current.saturating_add(1).min((tag << 32) | COUNT_MASK)
        } else {
            // A slot last used a window ago (or more): start it over.
            (tag << 32) | 1
        };
        match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

fn total(slots: &[AtomicU64; SLOTS], second: u64) -> u64 {
    let tag = second & COUNT_MASK;
    slots
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|packed| tag.wrapping_sub(packed >> 32) & COUNT_MASK < WINDOW_SECONDS)
        .map(|packed| packed & COUNT_MASK)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: BudgetLimits = BudgetLimits {
        ratio: 0.2,
        min_retries_per_second: 1,
    };

    fn withdraw_all(budget: &RetryBudget) -> usize {
        (0..10_000)
            .take_while(|_| budget.try_withdraw(LIMITS))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_second_times_the_window_with_no_requests() {
        let budget = RetryBudget::default();
        assert_eq!(withdraw_all(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_ratio_of_requests_plus_the_floor() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 10 + 20);
        assert_eq!(budget.window(), (100, 30));
        // More requests earn more retries.
        for _ in 0..50 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_old_requests_and_retries_out() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 30);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(withdraw_all(&budget), 0, "still inside the window");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.window(), (0, 0), "10 s later both have left");
        assert_eq!(withdraw_all(&budget), 10, "only the floor again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_at_full_failure_keeps_retries_near_the_ratio() {
        // 50 requests a second for 60 s, each retried as long as the budget
        // lets it: after the first window, retries track 20 % + the floor.
        let budget = RetryBudget::default();
        let (mut requests, mut retries) = (0u64, 0u64);
        for _ in 0..60 {
            for _ in 0..50 {
                budget.deposit();
                requests += 1;
                if budget.try_withdraw(LIMITS) {
                    retries += 1;
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let ratio = retries as f64 / requests as f64;
        assert!((0.2..0.25).contains(&ratio), "retry ratio {ratio}");
    }
}
