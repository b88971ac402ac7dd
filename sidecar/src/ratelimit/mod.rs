//! Rate limits, local and global, compiled once per update and read by the
//! `ratelimit` layer on each request.
//!
//! * `bucket` — local token buckets per key (GCRA, atomic, bounded keys).
//! * `key` — which bucket a request counts against.
//! * `redis` — global sliding windows in Redis (one Lua round trip).
//! * `headers` — the 429 (Retry-After, RateLimit-Policy, RateLimit).
//! * `layer` — the tower layers, outbound (the cluster's limits) and
//!   inbound (the service's own, from its `InboundPolicy`).
//! * `metrics` — decisions by limit, encoded into `/metrics` from the
//!   limiters the table hands in.
//!
//! A request must pass every limit, in order; the first that refuses
//! answers and the request goes no further. Local buckets and Redis
//! connections belong to a limit and outlive config updates that leave
//! that limit as it was ([`RateLimiter::keeping_state_of`]).

pub mod bucket;
pub mod headers;
pub mod key;
pub mod layer;
pub mod metrics;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use weft_proto::config::v1 as pb;

pub use key::{KeyKind, RequestFacts};
pub use layer::{InboundRateLimitLayer, OutboundRateLimitLayer, RateLimitTarget};

use bucket::{BucketRate, KeyedBuckets, Take};
use redis::{RedisBackend, WindowDecision};

/// ratelimit.proto's default for `max_keys`.
const DEFAULT_MAX_KEYS: u32 = 10_000;
/// ratelimit.proto's default for the Redis timeout.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// What a limit does, as configured (compared to keep state across updates).
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    Local { rate: BucketRate, max_keys: u32 },
    Global { requests: u32, window: Duration },
}

#[derive(Debug)]
pub struct Limit {
    pub name: Arc<str>,
    pub key: KeyKind,
    pub algorithm: Algorithm,
    /// The `RateLimit-Policy` value, made once.
    policy: HeaderValue,
    /// Local limits only.
    buckets: Option<Arc<KeyedBuckets>>,
    /// How it decided, kept (like the buckets) while its config stays.
    decisions: Arc<Decisions>,
}

/// A limit's decisions since it was configured as it is (`/metrics`).
#[derive(Debug, Default)]
pub struct Decisions {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    /// Global limits only: Redis did not answer in time (`on_unavailable`
    /// decided).
    pub undecided: AtomicU64,
}

impl Limit {
    fn same_config(&self, other: &Limit) -> bool {
        self.name == other.name && self.key == other.key && self.algorithm == other.algorithm
    }
}

/// What happens to a request when Redis cannot decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnavailable {
    FailOpen,
    FailClosed(StatusCode),
}

/// Every limit of one document (a destination's or a service's).
#[derive(Debug)]
pub struct RateLimiter {
    /// `out:<destination>` or `in:<service>`: the Redis key prefix, so that
    /// the callers of a destination and the service itself never share a
    /// window by accident.
    scope: Arc<str>,
    limits: Vec<Limit>,
    redis: Option<Arc<RedisBackend>>,
    on_unavailable: OnUnavailable,
}

impl PartialEq for RateLimiter {
    /// Same configuration (state aside).
    fn eq(&self, other: &Self) -> bool {
        self.scope == other.scope
            && self.on_unavailable == other.on_unavailable
            && self.redis.as_ref().map(|r| (&r.url, r.timeout, &r.ca_pem))
                == other.redis.as_ref().map(|r| (&r.url, r.timeout, &r.ca_pem))
            && self.limits.len() == other.limits.len()
            && self
                .limits
                .iter()
                .zip(&other.limits)
                .all(|(a, b)| a.same_config(b))
    }
}

/// Why a request may not go on.
pub enum Refusal {
    Limited {
        name: Arc<str>,
        policy: HeaderValue,
        retry_after: Duration,
    },
    Unavailable {
        name: Arc<str>,
        status: StatusCode,
    },
}

impl Refusal {
    /// The refusal `error_response` answers the caller with.
    pub fn into_error(self) -> crate::error::ProxyError {
        match self {
            Self::Limited {
                name,
                policy,
                retry_after,
            } => headers::limited(&name, &policy, retry_after),
            Self::Unavailable { name, status } => headers::unavailable(&name, status),
        }
    }
}

/// Nanoseconds on the limiter's monotonic clock (never 0, which marks a
/// bucket never used).
fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// A duration that must be set and above 0 (a limit's period or window).
fn duration(d: Option<&prost_types::Duration>, field: &str) -> Result<Duration, String> {
    let d = d.ok_or_else(|| format!("{field}: required"))?;
    weft_rules::duration::from_proto(d)
        .and_then(weft_rules::duration::check_positive)
        .map_err(|reason| format!("{field}: {reason}"))
}

impl RateLimiter {
    /// Compiles `proto` for `scope`; every problem as `rate_limits.<field>:
    /// reason`. New limits start with full buckets.
    pub fn compile(proto: &pb::RateLimits, scope: &str) -> Result<Self, Vec<String>> {
        use pb::rate_limit::Algorithm as PbAlgorithm;
        use pb::rate_limit_key::Kind;
        let mut errors = Vec::new();
        let mut limits = Vec::with_capacity(proto.limits.len());
        for (i, limit) in proto.limits.iter().enumerate() {
            let at = format!("rate_limits.limits[{i}]");
            if let Err(reason) = weft_rules::rate_limit::check_limit_name(&limit.name) {
                errors.push(format!("{at}.name: {reason}"));
                continue;
            }
            let key = match limit.key.as_ref().and_then(|k| k.kind.as_ref()) {
                Some(Kind::Whole(_)) => KeyKind::Whole,
                Some(Kind::Route(_)) => KeyKind::Route,
                Some(Kind::Source(_)) => KeyKind::Source,
                Some(Kind::ClientIp(_)) => KeyKind::ClientIp,
                Some(Kind::Header(name)) => match weft_rules::header::check_name(name) {
                    Ok(name) => KeyKind::Header(name),
                    Err(reason) => {
                        errors.push(format!("{at}.key.header: {reason}"));
                        continue;
                    }
                },
                None => {
                    errors.push(format!("{at}.key: required"));
                    continue;
                }
            };
            let requests = match &limit.algorithm {
                Some(PbAlgorithm::Local(local)) => Some(("local", local.requests)),
                Some(PbAlgorithm::Global(global)) => Some(("global", global.requests)),
                None => None,
            };
            if let Some((which, requests)) = requests
                && let Err(reason) = weft_rules::rate_limit::check_requests(requests)
            {
                errors.push(format!("{at}.{which}.requests: {reason}"));
                continue;
            }
            let algorithm = match &limit.algorithm {
                Some(PbAlgorithm::Local(local)) => {
                    match duration(local.per.as_ref(), &format!("{at}.local.per")) {
                        Ok(per) => {
                            let burst = if local.burst == 0 {
                                local.requests
                            } else {
                                local.burst
                            };
                            let max_keys = if limit.max_keys == 0 {
                                DEFAULT_MAX_KEYS
                            } else {
                                limit.max_keys
                            };
                            (
                                Algorithm::Local {
                                    rate: BucketRate::new(local.requests, per, burst),
                                    max_keys,
                                },
                                headers::policy_value(&limit.name, u64::from(local.requests), per),
                            )
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
                Some(PbAlgorithm::Global(global)) => {
                    let field = format!("{at}.global.window");
                    match duration(global.window.as_ref(), &field).and_then(|window| {
                        weft_rules::rate_limit::check_global_window(window)
                            .map_err(|reason| format!("{field}: {reason}"))
                    }) {
                        Ok(window) => (
                            Algorithm::Global {
                                requests: global.requests,
                                window,
                            },
                            headers::policy_value(&limit.name, u64::from(global.requests), window),
                        ),
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
                None => {
                    errors.push(format!("{at}: needs `local` or `global`"));
                    continue;
                }
            };
            let (algorithm, policy) = algorithm;
            let buckets = match &algorithm {
                Algorithm::Local { max_keys, .. } => {
                    Some(Arc::new(KeyedBuckets::new(*max_keys as usize)))
                }
                Algorithm::Global { .. } => None,
            };
            limits.push(Limit {
                name: limit.name.as_str().into(),
                key,
                algorithm,
                policy,
                buckets,
                decisions: Arc::default(),
            });
        }
        let mut on_unavailable = OnUnavailable::FailOpen;
        let redis = match &proto.redis {
            Some(settings) => {
                let timeout = match &settings.timeout {
                    None => Ok(DEFAULT_REDIS_TIMEOUT),
                    Some(d) => weft_rules::duration::from_proto(d)
                        .and_then(weft_rules::rate_limit::check_redis_timeout)
                        .map_err(|reason| format!("rate_limits.redis.timeout: {reason}")),
                };
                on_unavailable = match pb::redis_settings::Unavailable::try_from(
                    settings.on_unavailable,
                ) {
                    Ok(pb::redis_settings::Unavailable::FailOpen) => OnUnavailable::FailOpen,
                    Ok(pb::redis_settings::Unavailable::FailClosed) => {
                        match settings.fail_closed_status {
                            0 | 503 => OnUnavailable::FailClosed(StatusCode::SERVICE_UNAVAILABLE),
                            429 => OnUnavailable::FailClosed(StatusCode::TOO_MANY_REQUESTS),
                            other => {
                                errors.push(format!("rate_limits.redis.fail_closed_status: {other} is neither 429 nor 503"));
                                OnUnavailable::FailOpen
                            }
                        }
                    }
                    Err(_) => {
                        errors.push(format!(
                            "rate_limits.redis.on_unavailable: unknown value {}",
                            settings.on_unavailable
                        ));
                        OnUnavailable::FailOpen
                    }
                };
                match timeout
                    .and_then(|timeout| {
                        weft_rules::rate_limit::check_redis_url(&settings.url)
                            .map(|()| timeout)
                            .map_err(|reason| format!("rate_limits.redis.url: {reason}"))
                    })
                    .and_then(|timeout| {
                        let ca_pem = Some(settings.ca_pem.as_str()).filter(|pem| !pem.is_empty());
                        RedisBackend::new(&settings.url, timeout, ca_pem)
                            .map_err(|e| format!("rate_limits.redis.{e}"))
                    }) {
                    Ok(backend) => Some(Arc::new(backend)),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            }
            None => None,
        };
        if redis.is_none()
            && proto.redis.is_none()
            && limits
                .iter()
                .any(|l| matches!(l.algorithm, Algorithm::Global { .. }))
        {
            errors.push("rate_limits.redis: a global limit needs a Redis".into());
        }
        if errors.is_empty() {
            Ok(Self {
                scope: scope.into(),
                limits,
                redis,
                on_unavailable,
            })
        } else {
            Err(errors)
        }
    }

    /// This limiter with the state of `previous` wherever the config is
    /// the same: buckets of unchanged limits (by name), and the Redis
    /// connection when URL, timeout and CA are unchanged.
    pub fn keeping_state_of(mut self, previous: &RateLimiter) -> Self {
        for limit in &mut self.limits {
            if let Some(old) = previous.limits.iter().find(|old| old.same_config(limit)) {
                limit.buckets = old.buckets.clone();
                limit.decisions = old.decisions.clone();
            }
        }
        if let (Some(new), Some(old)) = (&self.redis, &previous.redis)
            && (&new.url, new.timeout, &new.ca_pem) == (&old.url, old.timeout, &old.ca_pem)
        {
            self.redis = Some(old.clone());
        }
        self
    }

    /// `new`, holding the state of `previous` where its config is the same
    /// (see [`RateLimiter::keeping_state_of`]).
    pub fn carry_over(new: Arc<Self>, previous: Option<&RateLimiter>) -> Arc<Self> {
        match (previous, Arc::try_unwrap(new)) {
            (Some(previous), Ok(new)) => Arc::new(new.keeping_state_of(previous)),
            (None, Ok(new)) => Arc::new(new),
            (_, Err(shared)) => shared,
        }
    }

    /// Whether every limit is local: [`RateLimiter::check_local`] then
    /// decides at once, with no future to await.
    pub fn is_local_only(&self) -> bool {
        self.limits
            .iter()
            .all(|l| matches!(l.algorithm, Algorithm::Local { .. }))
    }

    /// Whether a limit keys on the route (its name is then worked out for
    /// every request; otherwise never).
    pub fn keys_on_route(&self) -> bool {
        self.limits.iter().any(|l| l.key == KeyKind::Route)
    }

    /// Checks every limit in order. Local limits decide at once; a global
    /// one waits for Redis at most its timeout.
    pub async fn check(&self, facts: &RequestFacts<'_>) -> Result<(), Refusal> {
        for limit in &self.limits {
            match &limit.algorithm {
                Algorithm::Local { .. } => self.take_local(limit, facts)?,
                Algorithm::Global { requests, window } => {
                    let Some(redis) = &self.redis else { continue };
                    let key = limit.key.extract(facts);
                    let redis_key = redis::window_key(&self.scope, &limit.name, &key);
                    match redis.decide(&redis_key, *requests, *window).await {
                        Ok(WindowDecision::Allowed { .. }) => {
                            limit.decisions.allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(WindowDecision::Limited { retry_after }) => {
                            return Err(self.limited(limit, retry_after));
                        }
                        Err(unavailable) => {
                            limit.decisions.undecided.fetch_add(1, Ordering::Relaxed);
                            if redis.should_warn(now_nanos() / 1_000_000_000) {
                                tracing::warn!(limit = %limit.name, scope = %self.scope, reason = %unavailable.0, fail = ?self.on_unavailable, "global rate limit undecided");
                            }
                            if let OnUnavailable::FailClosed(status) = self.on_unavailable {
                                return Err(Refusal::Unavailable {
                                    name: limit.name.clone(),
                                    status,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// [`RateLimiter::check`] for a limiter whose limits are all local
    /// ([`RateLimiter::is_local_only`]): no await, so the layer needs no
    /// boxed future on the request path.
    pub fn check_local(&self, facts: &RequestFacts<'_>) -> Result<(), Refusal> {
        for limit in &self.limits {
            self.take_local(limit, facts)?;
        }
        Ok(())
    }

    /// Takes a token of a local limit (a global one passes here).
    fn take_local(&self, limit: &Limit, facts: &RequestFacts<'_>) -> Result<(), Refusal> {
        if let (Algorithm::Local { rate, .. }, Some(buckets)) = (&limit.algorithm, &limit.buckets) {
            let key = limit.key.extract(facts);
            if let Take::Limited { retry_after } = buckets.take(&key, *rate, now_nanos()) {
                return Err(self.limited(limit, retry_after));
            }
            limit.decisions.allowed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Each limit's name and decisions, in order.
    pub fn decisions(&self) -> impl Iterator<Item = (&str, &Decisions)> {
        self.limits.iter().map(|l| (&*l.name, &*l.decisions))
    }

    fn limited(&self, limit: &Limit, retry_after: Duration) -> Refusal {
        limit.decisions.limited.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(limit = %limit.name, scope = %self.scope, ?retry_after, "rate limited");
        Refusal::Limited {
            name: limit.name.clone(),
            policy: limit.policy.clone(),
            retry_after,
        }
    }

    /// The limits' names, for config dumps and logs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.limits.iter().map(|l| &*l.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::rate_limit::Algorithm as PbAlgorithm;
    use pb::rate_limit_key::Kind;

    fn local(name: &str, kind: Kind, requests: u32) -> pb::RateLimit {
        pb::RateLimit {
            name: name.into(),
            key: Some(pb::RateLimitKey { kind: Some(kind) }),
            algorithm: Some(PbAlgorithm::Local(pb::LocalTokenBucket {
                requests,
                per: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                burst: 0,
            })),
            max_keys: 0,
        }
    }

    fn facts<'a>(headers: &'a http::HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            route: None,
            source: Some("web"),
            headers,
            client_ip: "127.0.0.1",
        }
    }

    #[tokio::test]
    async fn buckets_survive_an_update_that_leaves_their_limit_alone() {
        let first = pb::RateLimits {
            limits: vec![
                local("a", Kind::Whole(true), 1),
                local("b", Kind::Source(true), 5),
            ],
            redis: None,
        };
        let old = RateLimiter::compile(&first, "in:users").unwrap();
        let headers = http::HeaderMap::new();
        assert!(old.check(&facts(&headers)).await.is_ok());
        assert!(old.check(&facts(&headers)).await.is_err(), "`a` is drained");

        // `b` changes, `a` does not: `a` stays drained.
        let mut second = first.clone();
        second.limits[1] = local("b", Kind::Source(true), 50);
        let new = RateLimiter::compile(&second, "in:users")
            .unwrap()
            .keeping_state_of(&old);
        assert!(new.check(&facts(&headers)).await.is_err());

        // `a` itself changes: a fresh bucket.
        let mut third = second.clone();
        third.limits[0] = local("a", Kind::Whole(true), 2);
        let newer = RateLimiter::compile(&third, "in:users")
            .unwrap()
            .keeping_state_of(&new);
        assert!(newer.check(&facts(&headers)).await.is_ok());
    }

    #[test]
    fn invalid_limits_are_refused_with_their_field() {
        let bad = pb::RateLimits {
            limits: vec![
                local("a", Kind::Header("bad header".into()), 1),
                pb::RateLimit {
                    name: "g".into(),
                    key: Some(pb::RateLimitKey {
                        kind: Some(Kind::Whole(true)),
                    }),
                    algorithm: Some(PbAlgorithm::Global(pb::GlobalSlidingWindow {
                        requests: 1,
                        window: Some(prost_types::Duration {
                            seconds: 1,
                            nanos: 0,
                        }),
                    })),
                    max_keys: 0,
                },
            ],
            redis: Some(pb::RedisSettings {
                url: "http://not-redis".into(),
                ..Default::default()
            }),
        };
        let errors = RateLimiter::compile(&bad, "in:users").unwrap_err();
        assert!(
            errors[0].starts_with("rate_limits.limits[0].key.header:"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("rate_limits.redis.url:"),
            "{errors:?}"
        );
    }
}
