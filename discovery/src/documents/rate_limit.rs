//! The `rate_limits` section of destination documents (the callers'
//! side: be a good client) and policy documents (the service's own side:
//! protect me), and its translation to `weft.config.v1.RateLimits`.
//!
//! ```json
//! { "rate_limits": {
//!     "redis": { "url": "redis://10.0.0.5:6379", "timeout": "50ms", "on_unavailable": "fail_open" },
//!     "limits": [
//!       { "name": "per-key", "key": "header", "header": "x-api-key",
//!         "local": { "requests": 100, "per": "1s", "burst": 200 } },
//!       { "name": "all", "key": "whole", "global": { "requests": 6000, "window": "1m" } } ] } }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use weft_proto::config::v1 as proto;

use super::duration;
use super::error::{FieldError, join};

/// Default bound on one global decision: a local Redis answers in well
/// under a millisecond, so 50 ms means trouble, and a request never waits
/// longer than this for its limit.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Default most keys a local limit tracks per sidecar: enough for a busy
/// API's active clients, ~100 bytes each.
pub const DEFAULT_MAX_KEYS: u32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSection {
    #[serde(default)]
    pub redis: Option<RedisSection>,
    pub limits: Vec<RateLimitSection>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: String,
    /// Default: [`DEFAULT_REDIS_TIMEOUT`].
    #[serde(default = "default_redis_timeout", with = "duration::text")]
    pub timeout: Duration,
    #[serde(default)]
    pub on_unavailable: Unavailable,
    /// 429 or 503 (the schema says which); default 503.
    #[serde(default = "default_fail_closed_status")]
    pub fail_closed_status: u16,
    /// With `rediss://` only: the CA(s) of a private Redis's certificate.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// Redis trouble never refuses traffic (the global limit is off meanwhile).
    #[default]
    FailOpen,
    FailClosed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Whole,
    Route,
    Source,
    Header,
    ClientIp,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub name: String,
    pub key: KeyKind,
    /// Only with `key: header`.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub local: Option<LocalSection>,
    #[serde(default)]
    pub global: Option<GlobalSection>,
    /// Default: [`DEFAULT_MAX_KEYS`].
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    pub requests: u32,
    #[serde(with = "duration::text")]
    pub per: Duration,
    /// Default: `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSection {
    pub requests: u32,
    #[serde(with = "duration::text")]
    pub window: Duration,
}

fn default_redis_timeout() -> Duration {
    DEFAULT_REDIS_TIMEOUT
}
fn default_fail_closed_status() -> u16 {
    503
}
fn default_max_keys() -> u32 {
    DEFAULT_MAX_KEYS
}

/// Which document the section sits in: inbound limits have no routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Destination,
    Policy,
}

impl RateLimitsSection {
    /// What the schema cannot say, every problem at once, fields under
    /// `rate_limits`.
    pub(super) fn check(&self, key: &str, side: Side) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let at = "rate_limits";
        let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, limit) in self.limits.iter().enumerate() {
            let at = format!("{at}.limits[{index}]");
            let mut error = |field: &str, reason: String| {
                errors.push(FieldError::new(key, join(&at, field), reason));
            };
            if let Err(reason) = weft_rules::rate_limit::check_limit_name(&limit.name) {
                error("name", reason);
            } else if let Some(first) = first_of.insert(&limit.name, index) {
                first_of.insert(&limit.name, first);
                error(
                    "name",
                    format!(
                        "`{}` already names rate_limits.limits[{first}]: names must be unique (they name the policy in the RateLimit headers and the Redis keys)",
                        limit.name
                    ),
                );
            }
            match (&limit.local, &limit.global) {
                (Some(_), Some(_)) => error("global", "set only one of `local` or `global`".into()),
                (None, None) => error("local", "needs one of `local` or `global`".into()),
                _ => {}
            }
            match (limit.key, &limit.header) {
                (KeyKind::Header, None) => error(
                    "header",
                    "`key: header` needs the header's name, e.g. \"header\": \"x-api-key\"".into(),
                ),
                (KeyKind::Header, Some(name)) => {
                    if let Err(reason) = weft_rules::header::check_lower_case_name(name) {
                        error("header", reason);
                    }
                }
                (_, Some(_)) => error("header", "only with `key: header`".into()),
                _ => {}
            }
            if limit.key == KeyKind::Route && side == Side::Policy {
                error(
                    "key",
                    "`route` keys only a destination's limits (the inbound side has no routes): use `whole`".into(),
                );
            }
            if let Some(local) = &limit.local {
                if let Err(reason) = weft_rules::rate_limit::check_requests(local.requests) {
                    error("local.requests", reason);
                }
                if let Err(reason) = weft_rules::duration::check_positive(local.per) {
                    error("local.per", reason);
                }
                if local.burst == Some(0) {
                    error("local.burst", "must be at least 1".into());
                }
            }
            if let Some(global) = &limit.global {
                if let Err(reason) = weft_rules::rate_limit::check_requests(global.requests) {
                    error("global.requests", reason);
                }
                if let Err(reason) = weft_rules::rate_limit::check_global_window(global.window) {
                    error("global.window", reason);
                }
                if self.redis.is_none() {
                    errors.push(FieldError::new(
                        key,
                        join(&at, "global"),
                        "a global limit needs `rate_limits.redis` (where the sidecars count)",
                    ));
                }
            }
        }
        if let Some(redis) = &self.redis {
            let at = join(at, "redis");
            if let Err(reason) = weft_rules::rate_limit::check_redis_url(&redis.url) {
                errors.push(FieldError::new(key, join(&at, "url"), reason));
            }
            if let Some(pem) = &redis.ca_pem {
                let reason = if redis.url.starts_with("rediss://") {
                    weft_rules::pem::check_has_certificate(pem).err()
                } else {
                    Some("only with a rediss:// (TLS) url".into())
                };
                if let Some(reason) = reason {
                    errors.push(FieldError::new(key, join(&at, "ca_pem"), reason));
                }
            }
            if let Err(reason) = weft_rules::rate_limit::check_redis_timeout(redis.timeout) {
                errors.push(FieldError::new(key, join(&at, "timeout"), reason));
            }
        }
        errors
    }

    pub fn to_proto(&self) -> proto::RateLimits {
        use proto::rate_limit::Algorithm;
        use proto::rate_limit_key::Kind;
        proto::RateLimits {
            limits: self
                .limits
                .iter()
                .map(|limit| proto::RateLimit {
                    name: limit.name.clone(),
                    key: Some(proto::RateLimitKey {
                        kind: Some(match limit.key {
                            KeyKind::Whole => Kind::Whole(true),
                            KeyKind::Route => Kind::Route(true),
                            KeyKind::Source => Kind::Source(true),
                            KeyKind::ClientIp => Kind::ClientIp(true),
                            KeyKind::Header => {
                                Kind::Header(limit.header.clone().unwrap_or_default())
                            }
                        }),
                    }),
                    algorithm: match (&limit.local, &limit.global) {
                        (Some(local), _) => Some(Algorithm::Local(proto::LocalTokenBucket {
                            requests: local.requests,
                            per: Some(weft_rules::duration::to_proto(local.per)),
                            burst: local.burst.unwrap_or(local.requests),
                        })),
                        (None, Some(global)) => {
                            Some(Algorithm::Global(proto::GlobalSlidingWindow {
                                requests: global.requests,
                                window: Some(weft_rules::duration::to_proto(global.window)),
                            }))
                        }
                        (None, None) => None,
                    },
                    max_keys: limit.max_keys,
                })
                .collect(),
            redis: self.redis.as_ref().map(|redis| proto::RedisSettings {
                url: redis.url.clone(),
                timeout: Some(weft_rules::duration::to_proto(redis.timeout)),
                on_unavailable: match redis.on_unavailable {
                    Unavailable::FailOpen => proto::redis_settings::Unavailable::FailOpen,
                    Unavailable::FailClosed => proto::redis_settings::Unavailable::FailClosed,
                }
                .into(),
                fail_closed_status: u32::from(redis.fail_closed_status),
                ca_pem: redis.ca_pem.clone().unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn section(value: serde_json::Value) -> RateLimitsSection {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let s = section(json!({ "limits": [
            { "name": "a", "key": "header", "local": { "requests": 1, "per": "1s" } },
            { "name": "a", "key": "route", "header": "X-Key", "global": { "requests": 1, "window": "1s" } },
        ]}));
        let errors: Vec<String> = s
            .check("policies/users", Side::Policy)
            .iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect();
        let fields: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "rate_limits.limits[0].header",
                "rate_limits.limits[1].name",
                "rate_limits.limits[1].header",
                "rate_limits.limits[1].key",
                "rate_limits.limits[1].global",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn documents_carry_their_limits_to_the_resources() {
        let limits = json!({
            "redis": { "url": "redis://127.0.0.1:6379", "on_unavailable": "fail_closed", "fail_closed_status": 429 },
            "limits": [
                { "name": "per-key", "key": "header", "header": "x-api-key", "local": { "requests": 5, "per": "1s", "burst": 10 } },
                { "name": "all", "key": "whole", "global": { "requests": 100, "window": "1m" } } ] });
        let destination = super::super::destination::parse(
            "destinations/users",
            &json!({ "rate_limits": limits }),
        )
        .unwrap();
        let cluster = destination.to_cluster("users");
        let proto_limits = cluster.rate_limits.expect("the cluster carries the limits");
        assert_eq!(proto_limits.limits.len(), 2);
        let redis = proto_limits.redis.unwrap();
        assert_eq!((redis.on_unavailable, redis.fail_closed_status), (1, 429));

        let policy =
            super::super::policy::parse("policies/users", &json!({ "rate_limits": limits }))
                .unwrap();
        assert_eq!(policy.rate_limits.unwrap().to_proto().limits.len(), 2);
    }

    #[test]
    fn an_invalid_section_is_rejected_with_key_field_and_reason() {
        let errors = super::super::policy::parse(
            "policies/users",
            &json!({ "rate_limits": { "limits": [
                { "name": "r", "key": "route", "local": { "requests": 0, "per": "1s" } },
                { "name": "g", "key": "whole", "global": { "requests": 5, "window": "10s" } } ] } }),
        )
        .unwrap_err();
        let found: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("policies/users: rate_limits.limits[0].local.requests: ")),
            "{found:#?}"
        );
        let errors = super::super::policy::parse(
            "policies/users",
            &json!({ "rate_limits": { "limits": [
                { "name": "r", "key": "route", "local": { "requests": 1, "per": "1s" } },
                { "name": "g", "key": "whole", "global": { "requests": 5, "window": "10s" } } ] } }),
        )
        .unwrap_err();
        let found: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "policies/users: rate_limits.limits[0].key: `route` keys only a destination's limits (the inbound side has no routes): use `whole`",
                "policies/users: rate_limits.limits[1].global: a global limit needs `rate_limits.redis` (where the sidecars count)",
            ]
        );
    }

    #[test]
    fn redis_urls_and_timeouts_are_checked() {
        for (url, ok) in [
            ("redis://127.0.0.1:6379", true),
            ("rediss://:secret@cache.internal:6380/2", true),
            ("http://cache:6379", false),
            ("redis://:6379", false),
        ] {
            let s = section(json!({ "redis": { "url": url }, "limits": [] }));
            let errors = s.check("destinations/users", Side::Destination);
            assert_eq!(errors.is_empty(), ok, "{url}: {errors:?}");
        }
        let s = section(json!({ "redis": { "url": "redis://r", "timeout": "5s" }, "limits": [] }));
        let errors = s.check("destinations/users", Side::Destination);
        assert_eq!(errors[0].field, "rate_limits.redis.timeout");
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let s = section(json!({ "limits": [
            { "name": "a", "key": "whole", "local": { "requests": 7, "per": "1m" } } ] }));
        let limits = s.to_proto();
        match &limits.limits[0].algorithm {
            Some(proto::rate_limit::Algorithm::Local(local)) => {
                assert_eq!((local.requests, local.burst), (7, 7));
                assert_eq!(local.per.as_ref().map(|d| d.seconds), Some(60));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(limits.limits[0].max_keys, DEFAULT_MAX_KEYS);
    }
}
