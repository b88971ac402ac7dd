//! The compiled outlier ejection settings of a cluster (from the
//! Cluster's `outlier_detection`, breaker.proto), every default explained
//! where it is set.

use std::time::Duration;

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
