//! The compiled breaker settings of a cluster (from breaker.proto), every
//! default explained where it is set. Outlier ejection's are
//! `crate::ejection::settings`.

use std::time::Duration;

/// Concurrency thresholds beside `ClusterSettings::max_requests`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    /// Most retries in flight at once; `None` = no limit.
    pub max_retries: Option<usize>,
    /// Most connections open to the cluster at once; `None` = no limit.
    pub max_connections: Option<usize>,
    /// Most requests waiting for a connection; `None` = no limit (beyond
    /// `max_requests`), 0 = none may wait.
    pub max_pending_requests: Option<usize>,
}

/// What counts as a failure for the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureOn {
    /// Any 5xx response.
    pub server_error: bool,
    /// 502, 503, 504, and resets / protocol errors before a response.
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub timeout: bool,
    /// gRPC statuses (from the response headers) that count.
    pub grpc_statuses: Vec<u32>,
}

impl Default for FailureOn {
    /// The proto's "empty list": what a caller would call the service
    /// being down (5xx, unreachable, too slow), not its 4xx answers.
    fn default() -> Self {
        Self {
            server_error: true,
            gateway_error: false,
            connect_failure: true,
            timeout: true,
            grpc_statuses: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Open after this many failures in a row; 0 = off.
    pub consecutive_failures: u32,
    /// Open at this failure ratio over `window`; 0 = off.
    pub failure_ratio: f64,
    pub window: Duration,
    /// The ratio is judged only over at least this many requests.
    pub min_requests: u32,
    pub open_interval: Duration,
    pub max_open_interval: Duration,
    /// Probes let through in half-open; that many successes close.
    pub half_open_probes: u32,
    pub failure_on: FailureOn,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            // Envoy's outlier default: enough to ignore a blip.
            consecutive_failures: 5,
            failure_ratio: 0.0,
            window: Duration::from_secs(10),
            // A ratio over fewer requests is noise.
            min_requests: 20,
            open_interval: Duration::from_secs(5),
            max_open_interval: Duration::from_secs(60),
            half_open_probes: 1,
            failure_on: FailureOn::default(),
        }
    }
}
