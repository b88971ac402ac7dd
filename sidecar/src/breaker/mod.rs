//! Circuit breaking for one destination, on the caller's side (Envoy's
//! circuit breakers, Hystrix's breaker states):
//!
//! - [`thresholds`]: concurrency limits over which a request fails fast with
//!   503 `overflow` and `x-weft-overflow: <which>` (the `requests` one is
//!   `breaker::concurrency`; `retries` is a guard the retry layer takes);
//! - [`circuit`]: the closed / open / half-open breaker of a cluster;
//! - [`outcome`]: what a finished request counts as, and the
//!   [`outcome::Observer`] told how it ended: the breaker's layer, and the
//!   balancer for outlier ejection (its own feature, `crate::ejection`);
//! - [`grpc`]: gRPC statuses as outcomes, from the head (the trailers are
//!   watched by the answer's body, `crate::body::grpc`).
//!
//! Settings are compiled from the Cluster ([`settings`]); the runtime state
//! lives in `ClusterShared`, which table rebuilds carry over, so a breaker
//! stays open across config updates. The hot path is atomics only; a short
//! mutex is taken on state transitions.

pub mod circuit;
pub(crate) mod compile;
mod concurrency;
pub mod grpc;
mod layer;
pub mod outcome;
pub mod settings;
pub mod thresholds;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, ConcurrencyTarget, RequestsFull};
pub use layer::{Breaker, BreakerDestination, BreakerLayer, BreakerTarget, Watch};
pub use outcome::Outcome;
pub use settings::{BreakerSettings, FailureOn, Thresholds};

use crate::clock::{millis, millis_since};
