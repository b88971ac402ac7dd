//! The compiled breaker settings of a cluster (from breaker.proto), every
//! default explained where it is set.

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Eject after this many 5xx / connect failures / resets in a row; 0 = off.
    pub consecutive_5xx: u32,
    /// Eject after this many 502/503/504 / connect failures / resets in a row; 0 = off.
    pub consecutive_gateway_errors: u32,
    /// Eject after this many unreachable answers in a row (a refused or
    /// timed-out connect, or the endpoint's sidecar reporting that its app
    /// refused the connection); 0 = off.
    pub consecutive_unreachable: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// At most this share (percent) of the serving endpoints ejected at once.
    pub max_ejection_percent: u32,
    /// How the ejection time grows with each ejection.
    pub backoff: EjectionBackoff,
}

/// How long the `n`th ejection of an endpoint lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionBackoff {
    /// `base x n`, capped: Envoy's outlier detection, what a destination
    /// document's `outlier_detection` means.
    Linear,
    /// `base x 2^(n-1)`, capped, then shortened by up to a quarter at
    /// random: Linkerd's failure-accrual backoff, for the built-in default.
    ExponentialJittered,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            // Envoy's defaults for the counts and times.
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            // A refused connect is not a slow or flaky answer: the endpoint
            // cannot serve at all, and every request sent there fails fast
            // (which least-request balancing would even favour).
            consecutive_unreachable: 1,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            // Half: whatever happens, half the endpoints keep traffic, so
            // a shared dependency failing does not eject the whole cluster.
            max_ejection_percent: 50,
            backoff: EjectionBackoff::Linear,
        }
    }
}

impl OutlierSettings {
    /// What a destination without an `outlier_detection` section gets: an
    /// endpoint that cannot be reached (its app dead behind a live sidecar,
    /// or nothing listening) leaves the balancer at its first unreachable
    /// answer, and is tried again after 1 s, 2 s, 4 s ... up to 30 s. An
    /// endpoint's other answers (its app's 5xx) are the app's business and
    /// eject nothing.
    pub fn unreachable_default() -> Self {
        Self {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 0,
            consecutive_unreachable: 1,
            // A restarted app (a container runtime's restart, a deploy) is
            // back within seconds; a probe costs one request, which the
            // default retry of unreached requests sends elsewhere.
            base_ejection_time: Duration::from_secs(1),
            // A long-dead app costs each caller one probe per 30 s.
            max_ejection_time: Duration::from_secs(30),
            // Every unreachable endpoint may leave; when all have, the
            // balancer uses them all again (panic mode, as Envoy's), since
            // an empty cluster would fail every request anyway.
            max_ejection_percent: 100,
            backoff: EjectionBackoff::ExponentialJittered,
        }
    }

    /// Whether only unreachable answers count: then a gRPC answer's
    /// trailers cannot change the verdict and are not waited for.
    pub fn counts_unreachable_only(&self) -> bool {
        self.consecutive_5xx == 0 && self.consecutive_gateway_errors == 0
    }
}
