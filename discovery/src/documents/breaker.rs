//! The circuit-breaking fields of a destination document
//! (`circuit_breakers`, `breaker`, `outlier_detection`) and their
//! translation to breaker.proto. Absent `breaker` means none; absent
//! `outlier_detection` means the sidecar's built-in ejection of unreachable
//! endpoints; present, every unset field takes the default below (every
//! count 0: no ejection at all).

use std::time::Duration;

use serde::Deserialize;
use weft_proto::config::v1 as proto;

use super::duration;
use super::error::{FieldError, join};

/// Open after this many failures in a row: enough to ignore a blip.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// A failure ratio over fewer requests is noise.
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_OPEN_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_OPEN_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 1;
/// Envoy's outlier defaults for the count and times.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Half the endpoints always keep traffic, so a shared dependency failing
/// cannot eject the whole service.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// An endpoint that refuses connections (or whose app does) cannot serve
/// any request: out at its first such answer.
pub const DEFAULT_CONSECUTIVE_UNREACHABLE: u32 = 1;

/// Concurrency thresholds beside `connection_pool.max_requests`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Most retries in flight at once from one sidecar; absent = no limit.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Most connections open at once from one sidecar to all of the
    /// service's endpoints; absent = no limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection (over `max_connections`);
    /// absent = no limit beyond `connection_pool.max_requests`, 0 = none
    /// may wait.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
}

/// A ratio in [0, 1] (JSON has no NaN, so equality is total).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl Eq for Ratio {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Failure {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "timeout")]
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Absent = only consecutive failures open the breaker.
    #[serde(default)]
    pub failure_ratio: Option<Ratio>,
    #[serde(default = "default_window", with = "duration::text")]
    pub window: Duration,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_open_interval", with = "duration::text")]
    pub open_interval: Duration,
    #[serde(default = "default_max_open_interval", with = "duration::text")]
    pub max_open_interval: Duration,
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
    #[serde(default = "default_failure_on")]
    pub failure_on: Vec<Failure>,
    #[serde(default)]
    pub grpc_statuses: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// 0 = off (then `consecutive_gateway_errors` must be set).
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    /// Refused or timed-out connects, or the endpoint's sidecar answering
    /// that its app refused, in a row; 0 = off.
    #[serde(default = "default_consecutive_unreachable")]
    pub consecutive_unreachable: u32,
    #[serde(default = "default_base_ejection_time", with = "duration::text")]
    pub base_ejection_time: Duration,
    #[serde(default = "default_max_ejection_time", with = "duration::text")]
    pub max_ejection_time: Duration,
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_unreachable() -> u32 {
    DEFAULT_CONSECUTIVE_UNREACHABLE
}
fn default_consecutive_failures() -> u32 {
    DEFAULT_CONSECUTIVE_FAILURES
}
fn default_window() -> Duration {
    DEFAULT_WINDOW
}
fn default_min_requests() -> u32 {
    DEFAULT_MIN_REQUESTS
}
fn default_open_interval() -> Duration {
    DEFAULT_OPEN_INTERVAL
}
fn default_max_open_interval() -> Duration {
    DEFAULT_MAX_OPEN_INTERVAL
}
fn default_half_open_probes() -> u32 {
    DEFAULT_HALF_OPEN_PROBES
}
/// What a caller would call the service being down: 5xx, unreachable, too
/// slow; not its 4xx answers.
fn default_failure_on() -> Vec<Failure> {
    vec![
        Failure::ServerError,
        Failure::ConnectFailure,
        Failure::Timeout,
    ]
}
fn default_consecutive_5xx() -> u32 {
    DEFAULT_CONSECUTIVE_5XX
}
fn default_base_ejection_time() -> Duration {
    DEFAULT_BASE_EJECTION_TIME
}
fn default_max_ejection_time() -> Duration {
    DEFAULT_MAX_EJECTION_TIME
}
fn default_max_ejection_percent() -> u32 {
    DEFAULT_MAX_EJECTION_PERCENT
}

fn positive(key: &str, field: String, d: Duration, errors: &mut Vec<FieldError>) {
    if d.is_zero() {
        errors.push(FieldError::new(key, field, "must be greater than 0"));
    }
}

impl Breaker {
    pub(super) fn check(&self, key: &str, errors: &mut Vec<FieldError>) {
        let at = |f: &str| join("breaker", f);
        if let Err(reason) = weft_rules::breaker::check_can_open(
            self.consecutive_failures,
            self.failure_ratio.map(|Ratio(r)| r),
        ) {
            errors.push(FieldError::new(key, at("consecutive_failures"), reason));
        }
        if let Some(Ratio(r)) = self.failure_ratio {
            let reason = match weft_rules::breaker::check_failure_ratio(r) {
                Err(reason) => Some(reason),
                // The protocol's 0 means "no ratio": a document says so by
                // leaving the field out.
                Ok(()) if r == 0.0 => Some("0 never opens the breaker: leave it out".into()),
                Ok(()) => None,
            };
            if let Some(reason) = reason {
                errors.push(FieldError::new(key, at("failure_ratio"), reason));
            }
        }
        for (index, code) in self.grpc_statuses.iter().enumerate() {
            if let Err(reason) = weft_rules::grpc::check_status(*code) {
                errors.push(FieldError::new(
                    key,
                    format!("breaker.grpc_statuses[{index}]"),
                    reason,
                ));
            }
        }
        for (field, d) in [
            ("window", self.window),
            ("open_interval", self.open_interval),
            ("max_open_interval", self.max_open_interval),
        ] {
            positive(key, at(field), d, errors);
        }
        if self.max_open_interval < self.open_interval {
            errors.push(FieldError::new(
                key,
                at("max_open_interval"),
                format!(
                    "{:?} is shorter than open_interval {:?}",
                    self.max_open_interval, self.open_interval
                ),
            ));
        }
    }

    pub(super) fn to_proto(&self) -> proto::Breaker {
        use proto::breaker::Failure as P;
        proto::Breaker {
            consecutive_failures: self.consecutive_failures,
            failure_ratio: self.failure_ratio.map_or(0.0, |r| r.0),
            window: Some(weft_rules::duration::to_proto(self.window)),
            min_requests: self.min_requests,
            open_interval: Some(weft_rules::duration::to_proto(self.open_interval)),
            max_open_interval: Some(weft_rules::duration::to_proto(self.max_open_interval)),
            half_open_probes: self.half_open_probes,
            failure_on: self
                .failure_on
                .iter()
                .map(|f| match f {
                    Failure::ServerError => P::ServerError,
                    Failure::GatewayError => P::GatewayError,
                    Failure::ConnectFailure => P::ConnectFailure,
                    Failure::Timeout => P::Timeout,
                } as i32)
                .collect(),
            grpc_statuses: self.grpc_statuses.clone(),
        }
    }
}

impl OutlierDetection {
    pub(super) fn check(&self, key: &str, errors: &mut Vec<FieldError>) {
        let at = |f: &str| join("outlier_detection", f);
        if let Err(reason) =
            weft_rules::ejection::check_max_ejection_percent(self.max_ejection_percent)
        {
            errors.push(FieldError::new(key, at("max_ejection_percent"), reason));
        }
        positive(
            key,
            at("base_ejection_time"),
            self.base_ejection_time,
            errors,
        );
        positive(key, at("max_ejection_time"), self.max_ejection_time, errors);
        if self.max_ejection_time < self.base_ejection_time {
            errors.push(FieldError::new(
                key,
                at("max_ejection_time"),
                format!(
                    "{:?} is shorter than base_ejection_time {:?}",
                    self.max_ejection_time, self.base_ejection_time
                ),
            ));
        }
    }

    pub(super) fn to_proto(&self) -> proto::OutlierDetection {
        proto::OutlierDetection {
            consecutive_5xx: self.consecutive_5xx,
            consecutive_gateway_errors: self.consecutive_gateway_errors,
            consecutive_unreachable: Some(self.consecutive_unreachable),
            base_ejection_time: Some(weft_rules::duration::to_proto(self.base_ejection_time)),
            max_ejection_time: Some(weft_rules::duration::to_proto(self.max_ejection_time)),
            max_ejection_percent: self.max_ejection_percent,
        }
    }
}

impl CircuitBreakers {
    pub(super) fn to_proto(&self) -> proto::CircuitBreakerThresholds {
        proto::CircuitBreakerThresholds {
            max_retries: self.max_retries.unwrap_or(0),
            max_connections: self.max_connections.unwrap_or(0),
            max_pending_requests: self.max_pending_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::destination::parse;
    use super::*;
    use serde_json::json;

    fn secs(seconds: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos: 0 })
    }

    #[test]
    fn absent_sections_mean_no_breaker_and_no_ejection() {
        let cluster = parse("destinations/users", &json!({}))
            .unwrap()
            .to_cluster("users");
        assert_eq!(cluster.breaker, None);
        assert_eq!(cluster.outlier_detection, None);
        let thresholds = cluster.circuit_breakers.unwrap();
        assert_eq!(thresholds.max_retries, 0);
        assert_eq!(thresholds.max_connections, 0);
        assert_eq!(thresholds.max_pending_requests, None);
    }

    #[test]
    fn an_empty_section_is_the_documented_defaults() {
        let cluster = parse(
            "destinations/users",
            &json!({ "breaker": {}, "outlier_detection": {} }),
        )
        .unwrap()
        .to_cluster("users");
        let b = cluster.breaker.unwrap();
        assert_eq!(
            (b.consecutive_failures, b.min_requests, b.half_open_probes),
            (5, 20, 1)
        );
        assert_eq!(
            (b.open_interval, b.max_open_interval, b.window),
            (secs(5), secs(60), secs(10))
        );
        assert_eq!(b.failure_ratio, 0.0);
        assert_eq!(b.failure_on.len(), 3);
        let o = cluster.outlier_detection.unwrap();
        assert_eq!(
            (
                o.consecutive_5xx,
                o.consecutive_gateway_errors,
                o.max_ejection_percent
            ),
            (5, 0, 50)
        );
        assert_eq!(o.consecutive_unreachable, Some(1));
        assert_eq!(
            (o.base_ejection_time, o.max_ejection_time),
            (secs(30), secs(300))
        );
    }

    #[test]
    fn every_field_translates() {
        let cluster = parse(
            "destinations/users",
            &json!({
                "circuit_breakers": { "max_retries": 3, "max_connections": 8, "max_pending_requests": 0 },
                "breaker": { "consecutive_failures": 0, "failure_ratio": 0.5, "window": "30s", "min_requests": 10,
                             "open_interval": "1s", "max_open_interval": "8s", "half_open_probes": 2,
                             "failure_on": ["gateway-error", "timeout"], "grpc_statuses": [14] },
                "outlier_detection": { "consecutive_5xx": 0, "consecutive_gateway_errors": 3,
                                       "base_ejection_time": "2s", "max_ejection_time": "10s", "max_ejection_percent": 34 }
            }),
        )
        .unwrap()
        .to_cluster("users");
        let thresholds = cluster.circuit_breakers.unwrap();
        assert_eq!(
            (
                thresholds.max_retries,
                thresholds.max_connections,
                thresholds.max_pending_requests
            ),
            (3, 8, Some(0))
        );
        let b = cluster.breaker.unwrap();
        assert_eq!(b.failure_ratio, 0.5);
        assert_eq!(
            b.failure_on().collect::<Vec<_>>(),
            [
                proto::breaker::Failure::GatewayError,
                proto::breaker::Failure::Timeout
            ]
        );
        assert_eq!(b.grpc_statuses, [14]);
        let o = cluster.outlier_detection.unwrap();
        assert_eq!(
            (o.consecutive_gateway_errors, o.max_ejection_percent),
            (3, 34)
        );
        assert_eq!(o.base_ejection_time, secs(2));
    }

    #[test]
    fn invalid_values_name_key_field_and_reason() {
        let errors = parse(
            "destinations/users",
            &json!({
                "breaker": { "consecutive_failures": 0, "open_interval": "10s", "max_open_interval": "1s" },
                "outlier_detection": { "consecutive_5xx": 0, "base_ejection_time": "0s" }
            }),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "breaker.consecutive_failures",
                "breaker.max_open_interval",
                "outlier_detection.base_ejection_time",
            ],
            "{errors:?}"
        );
        assert!(errors.iter().all(|e| e.key == "destinations/users"));

        let errors = parse(
            "destinations/users",
            &json!({ "breaker": { "failure_ratio": 1.5, "failure_on": ["4xx"] },
                     "outlier_detection": { "max_ejection_percent": 101 },
                     "circuit_breakers": { "max_connections": 0, "max_pending_requests": -1 } }),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "breaker.failure_ratio",
            "breaker.failure_on[0]",
            "outlier_detection.max_ejection_percent",
            "circuit_breakers.max_connections",
            "circuit_breakers.max_pending_requests",
        ] {
            assert!(fields.contains(&field), "{field} not in {errors:?}");
        }
    }
}
