//! The retry state of one destination, shared by its requests.

use std::sync::atomic::AtomicU64;

use super::budget::RetryBudget;

/// Retry state of one cluster: the budget and the counters `/clusters`
/// shows. Lives in the cluster's shared state, so it survives config
/// updates (a policy change keeps the window's history).
#[derive(Debug, Default)]
pub struct RetryState {
    pub budget: RetryBudget,
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries the policy wanted but the budget refused.
    pub budget_exhausted: AtomicU64,
    /// Tries cut short by the per-try timeout.
    pub per_try_timeouts: AtomicU64,
}
