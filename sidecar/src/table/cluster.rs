//! Clusters and endpoints as the data path sees them.
//!
//! A [`Cluster`] is rebuilt whenever its Cluster or ClusterLoadAssignment
//! changes, but the state requests mutate survives: the round-robin position,
//! in-flight count and circuit breaker live in [`ClusterShared`], and each
//! endpoint's counters, outlier ejection and connection pool in
//! [`EndpointStats`] / the endpoint's client, all carried over by address
//! from the previous table.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use crate::breaker::thresholds::{Overflow, RetryCounter, RetryGuard};
use crate::error::ProxyError;
use crate::request_body::{BodySizeSink, Side};
use crate::retry::{RetryPolicy, RetryState};
use crate::upstream::{EndpointAddr, PoolSettings, UpstreamClient};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    /// Power of two random choices, the one with fewer in-flight requests
    /// per unit of weight wins.
    LeastRequest,
    /// Smooth weighted round robin.
    RoundRobin,
}

/// How to talk to the endpoints: which HTTP version, or opaque TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Whatever the caller used (HTTP/1.1 or HTTP/2).
    Auto,
    Http1,
    Http2,
    /// Opaque bytes (`crate::tcp`): reached through a `--tcp-upstream`
    /// port; an HTTP request routed here is refused (501 `unsupported`).
    Tcp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    pub lb: LbPolicy,
    /// Whole-request timeout (until response headers); `None` = none.
    pub request_timeout: Option<Duration>,
    /// Most requests in flight from this sidecar; more get 503 `overflow`.
    pub max_requests: usize,
    pub protocol: Protocol,
    pub pool: PoolSettings,
    /// The SPIFFE ID the destination's sidecars must present; meshed
    /// endpoints are reached over mTLS when set and this sidecar has an
    /// identity of its own.
    pub identity: Option<weft_certs::SpiffeId>,
    /// Concurrency thresholds beside `max_requests` (circuit_breakers).
    pub thresholds: crate::breaker::Thresholds,
    /// The closed/open/half-open breaker; `None` = none.
    pub breaker: Option<crate::breaker::BreakerSettings>,
    /// Per-endpoint outlier ejection; `None` = none.
    pub outlier: Option<crate::ejection::OutlierSettings>,
    /// The destination's rate limits, with their buckets (kept across
    /// updates that leave a limit alone); `None`: no limits.
    pub rate_limits: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// Retries of requests to this cluster (a route may replace it);
    /// `None` = none.
    pub retry: Option<Arc<RetryPolicy>>,
}

impl Default for ClusterSettings {
    /// The proto defaults (a cluster enters the table only once its Cluster
    /// and its assignment have both arrived; these fill unset fields).
    fn default() -> Self {
        Self {
            lb: LbPolicy::LeastRequest,
            // Envoy's route default: long enough for slow calls, short
            // enough that a stuck upstream frees the caller.
            request_timeout: Some(Duration::from_secs(15)),
            // Proto default (cluster.proto, ConnectionPool.max_requests).
            max_requests: 1024,
            protocol: Protocol::Auto,
            pool: PoolSettings::default(),
            identity: None,
            thresholds: crate::breaker::Thresholds::default(),
            breaker: None,
            outlier: None,
            rate_limits: None,
            retry: None,
        }
    }
}

/// Counters and gauges that outlive table swaps (keyed by address).
#[derive(Debug, Default)]
pub struct ClusterShared {
    pub rr_position: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub overflows: AtomicU64,
    /// Retries in flight (`circuit_breakers.max_retries`).
    pub retries: Arc<RetryCounter>,
    /// The breaker's state: open stays open across unrelated updates.
    pub breaker: crate::breaker::circuit::BreakerState,
    /// Serialises ejection decisions (the max_ejection_percent check).
    pub ejection_lock: crate::ejection::EjectionLock,
    /// When an endpoint last answered unreachable (the built-in retry).
    pub unreachable_seen: crate::ejection::UnreachableSeen,
    /// Retry budget and counters.
    pub retry: RetryState,
    /// Connections open to the cluster, under `max_connections`; shared
    /// by every endpoint's connector.
    pub connections: Arc<crate::upstream::ConnectionLimit>,
    /// Requests by method and status class, and their latency (`/metrics`).
    pub requests: crate::metrics::requests::RequestStats,
    /// The coarse second of the last request routed here (0: none yet),
    /// written by `split` (`crate::outbound::on_demand::OnDemand::touch`): the
    /// xDS client drops an on-demand cluster idle for too long.
    pub last_used: AtomicU32,
    /// The inbound cluster's: whether the app accepts connections (`/ready`).
    pub app_health: Option<Arc<crate::app_health::AppHealth>>,
}

/// A body's size goes to the cluster's size histograms.
impl BodySizeSink for ClusterShared {
    fn record(&self, side: Side, bytes: u64) {
        let histogram = match side {
            Side::Request => &self.requests.request_size,
            Side::Response => &self.requests.response_size,
        };
        histogram.observe(bytes);
    }
}

#[derive(Debug, Default)]
pub struct EndpointStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Outlier ejection state: kept while the address stays in the set.
    pub outlier: crate::ejection::EjectionState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
}

impl Health {
    /// Only HEALTHY and UNKNOWN endpoints receive traffic.
    pub fn serves(self) -> bool {
        matches!(self, Self::Healthy | Self::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Healthy => "HEALTHY",
            Self::Unhealthy => "UNHEALTHY",
            Self::Draining => "DRAINING",
        }
    }
}

pub struct Endpoint {
    pub addr: EndpointAddr,
    /// `addr` as a URI authority, prebuilt for HTTP/1 requests.
    pub authority: http::uri::Authority,
    pub health: Health,
    /// At least 1.
    pub weight: u32,
    pub meshed: bool,
    pub instance_id: String,
    pub zone: String,
    pub stats: Arc<EndpointStats>,
    pub client: UpstreamClient,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("health", &self.health)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub settings: ClusterSettings,
    /// Every endpoint of the assignment (for /clusters).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints that receive traffic (HEALTHY/UNKNOWN).
    pub serving: Vec<Arc<Endpoint>>,
    /// Smooth weighted round-robin order over `serving` (indices).
    pub rr_schedule: Vec<u32>,
    /// Cumulative weights of `serving`, for weighted random draws.
    pub cumulative: Vec<u64>,
    pub shared: Arc<ClusterShared>,
}

/// The longest round-robin schedule kept; larger total weights are scaled
/// down (keeping proportions to within 1/MAX) so memory stays bounded.
const MAX_SCHEDULE: u64 = 4096;

impl Cluster {
    pub fn new(
        name: Arc<str>,
        settings: ClusterSettings,
        endpoints: Vec<Arc<Endpoint>>,
        shared: Arc<ClusterShared>,
    ) -> Self {
        let serving: Vec<_> = endpoints
            .iter()
            .filter(|e| e.health.serves())
            .cloned()
            .collect();
        let weights: Vec<u32> = serving.iter().map(|e| e.weight.max(1)).collect();
        let rr_schedule = smooth_wrr_schedule(&weights);
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        Self {
            name,
            settings,
            endpoints,
            serving,
            rr_schedule,
            cumulative,
            shared,
        }
    }

    /// Next endpoint in weighted round-robin order. Lock-free: one atomic
    /// increment into a precomputed schedule.
    pub fn pick_round_robin(&self) -> Option<&Arc<Endpoint>> {
        if self.rr_schedule.is_empty() {
            return None;
        }
        let n = self.shared.rr_position.fetch_add(1, Ordering::Relaxed);
        let i = self.rr_schedule[n % self.rr_schedule.len()] as usize;
        self.serving.get(i)
    }

    /// Weighted least-request, power of two choices: two weighted-random
    /// candidates, the one with fewer in-flight requests per weight wins.
    pub fn pick_least_request(&self, mut rand: impl FnMut(u64) -> u64) -> Option<&Arc<Endpoint>> {
        let total = *self.cumulative.last()?;
        let pick = |draw: u64| {
            let i = self.cumulative.partition_point(|c| *c <= draw);
            &self.serving[i.min(self.serving.len() - 1)]
        };
        let a = pick(rand(total));
        if self.serving.len() == 1 {
            return Some(a);
        }
        let b = pick(rand(total));
        // Compare in_flight_a / weight_a with in_flight_b / weight_b
        // without division.
        let load = |e: &Endpoint, other_weight: u32| {
            e.stats.in_flight.load(Ordering::Relaxed) * u64::from(other_weight)
        };
        Some(if load(b, a.weight) < load(a, b.weight) {
            b
        } else {
            a
        })
    }

    /// The balancer's choice: a draw by the cluster's policy, redrawn when
    /// it lands on an endpoint outlier ejection took out. Declared here,
    /// beside the policies it draws with, because the HTTP balancer
    /// (`proxy::balance`) and opaque TCP (`tcp::outbound`) both pick with it.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        let draw = || match self.settings.lb {
            LbPolicy::RoundRobin => self.pick_round_robin(),
            LbPolicy::LeastRequest => {
                let mut rng = rand::rng();
                self.pick_least_request(|n| rng.random_range(0..n))
            }
        };
        let first = draw()?;
        if self.settings.outlier.is_none() || self.available(first) {
            return Some(first);
        }
        (0..REDRAWS)
            .filter_map(|_| draw())
            .find(|e| self.available(e))
            .or_else(|| self.serving.iter().find(|e| self.available(e)))
            // Every endpoint ejected: an empty cluster would fail every request,
            // the ejected ones may still answer some.
            .or(Some(first))
    }

    /// Not ejected; notes (and logs) an ejection that has just ended.
    fn available(&self, endpoint: &Endpoint) -> bool {
        let outlier = &endpoint.stats.outlier;
        if outlier.is_ejected(Instant::now) {
            return false;
        }
        if outlier.note_return(Instant::now) {
            tracing::info!(
                cluster = %self.name,
                endpoint = %endpoint.addr,
                reason = "ejection time over",
                "outlier endpoint returned to the balancer"
            );
        }
        true
    }

    /// For the retry layer: a slot for one more retry under the cluster's
    /// `circuit_breakers.max_retries`, or the 503 `overflow` (`retries`)
    /// to answer with (or to give up retrying on).
    pub fn try_retry(&self) -> Result<RetryGuard, ProxyError> {
        let max = self.settings.thresholds.max_retries;
        self.shared.retries.try_retry(max).ok_or_else(|| {
            Overflow::Retries.error(
                &self.name,
                max.unwrap_or_default(),
                "circuit_breakers.max_retries",
            )
        })
    }
}

/// A draw that lands on an ejected endpoint draws again, this many times,
/// before the serving endpoints are scanned in order.
const REDRAWS: usize = 3;

/// Interleaved weighted order (nginx's smooth weighted round robin), computed
/// once per update: weights 5,1,1 give a a b a c a a, not a a a a a b c.
pub fn smooth_wrr_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let scaled: Vec<i64> = if total > MAX_SCHEDULE {
        weights
            .iter()
            .map(|w| ((u64::from(*w) * MAX_SCHEDULE / total).max(1)) as i64)
            .collect()
    } else {
        weights.iter().map(|w| i64::from(*w)).collect()
    };
    // Shorten by the common divisor: 50/50 is the same as 1/1.
    let g = scaled.iter().fold(0i64, |g, w| gcd(g, *w)).max(1);
    let scaled: Vec<i64> = scaled.iter().map(|w| w / g).collect();
    let sum: i64 = scaled.iter().sum();
    let mut current = vec![0i64; scaled.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = 0;
        for i in 0..scaled.len() {
            current[i] += scaled[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= sum;
        out.push(best as u32);
    }
    out
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A loopback endpoint for unit tests.
#[cfg(test)]
pub(crate) fn test_endpoint(port: u16, weight: u32, health: Health) -> Arc<Endpoint> {
    let addr = EndpointAddr::Ip(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    Arc::new(Endpoint {
        authority: addr
            .to_string()
            .parse()
            .expect("a socket address is an authority"),
        client: UpstreamClient::new(
            addr.clone(),
            PoolSettings::default(),
            crate::upstream::Dns::default(),
            None,
            Arc::default(),
        ),
        addr,
        health,
        weight,
        meshed: false,
        instance_id: String::new(),
        zone: String::new(),
        stats: Arc::default(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::test_endpoint as endpoint;

    fn port(e: &Endpoint) -> u16 {
        match e.addr {
            EndpointAddr::Ip(a) => a.port(),
            EndpointAddr::Name { port, .. } => port,
        }
    }

    fn cluster(eps: Vec<Arc<Endpoint>>) -> Cluster {
        Cluster::new("c".into(), ClusterSettings::default(), eps, Arc::default())
    }

    #[test]
    fn retries_are_admitted_up_to_max_and_freed_on_drop() {
        let settings = ClusterSettings {
            thresholds: crate::breaker::Thresholds {
                max_retries: Some(2),
                ..crate::breaker::Thresholds::default()
            },
            ..ClusterSettings::default()
        };
        let cluster = Cluster::new("users".into(), settings, Vec::new(), Arc::default());
        let first = cluster.try_retry().unwrap();
        let _second = cluster.try_retry().unwrap();
        let refused = cluster.try_retry().unwrap_err();
        let response = refused.to_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["x-weft-error"], "overflow");
        assert_eq!(response.headers()["x-weft-overflow"], "retries");
        assert_eq!(cluster.shared.retries.overflows.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(cluster.try_retry().is_ok());
    }

    #[test]
    fn schedule_interleaves_by_weight() {
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr_schedule(&[50, 50]), [0, 1]);
        let big = smooth_wrr_schedule(&[1_000_000, 1]);
        assert!(big.len() as u64 <= MAX_SCHEDULE + 1);
        assert!(big.contains(&1), "a tiny weight still gets a turn");
    }

    #[test]
    fn round_robin_skips_unhealthy_and_honours_weights() {
        let c = cluster(vec![
            endpoint(1, 2, Health::Healthy),
            endpoint(2, 1, Health::Unhealthy),
            endpoint(3, 1, Health::Unknown),
            endpoint(4, 1, Health::Draining),
        ]);
        let picks: Vec<u16> = (0..6)
            .map(|_| port(c.pick_round_robin().unwrap()))
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 4);
        assert_eq!(picks.iter().filter(|p| **p == 3).count(), 2);
    }

    #[test]
    fn no_serving_endpoint_means_no_pick() {
        let c = cluster(vec![endpoint(1, 1, Health::Unhealthy)]);
        assert!(c.pick_round_robin().is_none());
        assert!(c.pick_least_request(|_| 0).is_none());
    }

    #[test]
    fn least_request_prefers_the_less_loaded_candidate() {
        let busy = endpoint(1, 1, Health::Healthy);
        busy.stats.in_flight.store(5, Ordering::Relaxed);
        let c = cluster(vec![busy, endpoint(2, 1, Health::Healthy)]);
        // Draws 0 then 1 make the candidates endpoint 1 then endpoint 2.
        let mut draws = [0u64, 1].into_iter();
        let e = c.pick_least_request(|_| draws.next().unwrap()).unwrap();
        assert_eq!(port(e), 2);
        let mut draws = [1u64, 0].into_iter();
        let e = c.pick_least_request(|_| draws.next().unwrap()).unwrap();
        assert_eq!(port(e), 2);
    }

    #[test]
    fn least_request_weights_load() {
        // 4 in flight on weight 4 is lighter than 2 in flight on weight 1.
        let heavy = endpoint(1, 4, Health::Healthy);
        heavy.stats.in_flight.store(4, Ordering::Relaxed);
        let light = endpoint(2, 1, Health::Healthy);
        light.stats.in_flight.store(2, Ordering::Relaxed);
        let c = cluster(vec![heavy, light]);
        let mut draws = [4u64, 0].into_iter();
        assert_eq!(
            port(c.pick_least_request(|_| draws.next().unwrap()).unwrap()),
            1
        );
    }
}
