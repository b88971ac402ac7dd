//! Retries: sends a request again when a try fails in a way the policy
//! names (a 5xx or gateway error, a connect failure, a reset, a listed
//! status or gRPC status, a per-try timeout), to another endpoint when the
//! destination has one, after a jittered exponential backoff, while the
//! destination's retry budget allows. The response says how many tries it
//! took in `x-weft-attempts`.
//!
//! Placement: below the overall `timeout` (which bounds every try and
//! backoff together) and above `balance` (so each try picks an endpoint,
//! skipping the ones already tried), `concurrency` and `forward`. The
//! per-try timeout is applied here, around each try.
//!
//! The policy is the route's (`RouteAction.retry_policy`) if it has one,
//! else the cluster's. A request of a destination without one passes
//! straight through: no buffering, no allocation, one branch. With a
//! policy, an idempotent request (or any, with `retry_non_idempotent`)
//! has its body read into memory before the first try, up to
//! `max_body_bytes`; a larger body streams through once, never retried.
//!
//! A destination without a policy still gets one retry of a request no
//! app saw ([`RetryPolicy::unreached_once`]): a refused or timed-out
//! connect, or the endpoint's sidecar saying its app refused. Whatever the
//! method, with no backoff, on another endpoint; only when the
//! destination has another serving endpoint and the request's body is
//! already whole (a GET, or a body in memory), so that nothing is buffered
//! that would not be anyway. It goes with unreachable-endpoint ejection
//! (`consecutive_unreachable`), and is off where that is. And it is armed
//! only for [`UNREACHED_RETRY_WINDOW`] after an endpoint of the destination
//! last answered unreachable: keeping a request's copy costs a few
//! allocations, which a healthy destination does not pay (one load). So
//! the first unreachable answer after a quiet time reaches its caller; the
//! requests after it, and the probes of the ejected endpoint, are saved.
//!
//! The layer ([`RetryLayer`]) never names the proxy's request type: it
//! reads a request through [`RetryTarget`] and its destination through
//! [`RetryDestination`] (the cluster's retry state, its
//! `circuit_breakers.max_retries` slots, its unreachable endpoints), which
//! `crate::table::request` implements. Each try carries an [`Attempt`]:
//! the endpoints to avoid, and where `balance` sent it.

mod backoff;
pub mod budget;
mod layer;
pub mod policy;
mod state;

pub use budget::RetryBudget;
pub use layer::{
    ATTEMPTS_HEADER, Attempt, Replay, Retry, RetryDestination, RetryLayer, RetryTarget, Retrying,
    UNREACHED_RETRY_WINDOW,
};
pub use policy::RetryPolicy;
pub use state::RetryState;
