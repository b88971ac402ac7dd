//! Bounds shared by the document schema's checks and the sidecar's compile
//! step.

use std::time::Duration;

/// Most memory one compiled regex may take. A hostile or careless pattern
/// (`(\w{100}){100}`) would otherwise cost every sidecar megabytes per route.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Most tries (the first included) a retry policy may ask for: beyond this a
/// retry storm multiplies load more than it hides failures.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Longest a sidecar waits on Redis for a global rate-limit decision, so
/// that Redis trouble never stalls traffic.
pub const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Shortest window of a global rate limit: Redis counts in milliseconds
/// across sidecars whose clocks differ.
pub const MIN_GLOBAL_WINDOW: Duration = Duration::from_secs(1);
