//! Outbound requests the sidecar refused before a destination was known:
//! no Host, no route for the host or the path (404 `no-route`), a route
//! to a cluster the table does not have yet. They never reach the metrics
//! layer (it sits below `split`, where the destination's stats are), so
//! `route` and `split` count them here as they refuse
//! (`outbound::route::refused`): under the destination `""` with their cause.
//! Nothing here runs for a routed request.

use std::sync::LazyLock;

use super::requests::RequestStats;

/// The stats of requests without a destination.
pub static UNROUTED: LazyLock<RequestStats> = LazyLock::new(RequestStats::default);
