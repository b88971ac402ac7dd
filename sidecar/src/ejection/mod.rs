//! Outlier ejection (Envoy's outlier detection, Linkerd's failure
//! accrual): an endpoint of a destination that fails too often in a row
//! leaves the balancer for a while.
//!
//! - [`settings`]: the compiled `outlier_detection` of a cluster, and the
//!   built-in default that ejects unreachable endpoints; `compile` makes
//!   them from the Cluster;
//! - [`state`]: an endpoint's ejection state, the cluster's ejection lock,
//!   [`UnreachableSeen`] (read by the retry layer) and the [`Verdict`] on
//!   an outcome;
//! - [`outcome`]: what a finished request counts as here (5xx, gateway
//!   error; a gRPC status as the HTTP status it stands for).
//!
//! The balancer (`crate::proxy::balance`) skips ejected endpoints and
//! tells an endpoint's state how each request ended; the state lives in
//! `EndpointStats` / `ClusterShared`, which table rebuilds carry over, so
//! an endpoint stays ejected across config updates. `/metrics`
//! (`weft_outlier_ejections`, `weft_endpoints_ejected`, written by
//! `crate::table::metrics`) and `/clusters` read the state.

pub(crate) mod compile;
pub mod outcome;
pub mod settings;
pub mod state;

pub use settings::{EjectionBackoff, OutlierSettings};
pub use state::{EjectionLock, EjectionState, UnreachableSeen, Verdict};

use crate::clock::{millis, millis_since};
