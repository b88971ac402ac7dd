//! Destination documents (`destinations/<service>`): how callers talk to a
//! service, and the translation to a `Cluster`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::breaker::{Breaker, CircuitBreakers, OutlierDetection};
use super::error::{FieldError, from_serde, join, with_rule_reasons};
use super::rate_limit::{RateLimitsSection, Side};
use super::retry::RetryDocument;
use super::{DocumentKind, duration, schema};

/// Default TCP connect timeout: long enough for a loaded host on the same
/// network, short enough that a dead endpoint is skipped within a request.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time until response headers: generous for ordinary APIs;
/// streaming or slow endpoints set their own.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default bound on requests in flight from one sidecar to one service, so a
/// stuck service cannot absorb a caller's whole memory.
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// Default idle keep-alive connections kept per endpoint.
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: u32 = 64;
/// Default idle connection lifetime: under the common 120 s server-side
/// keep-alive limits, so the caller closes first and never reuses a
/// connection the server is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The traffic policy for calls to one service. Every field has a default,
/// so `{}` (or no document at all) is the default policy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationDocument {
    /// Default: least request.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Default: [`DEFAULT_CONNECT_TIMEOUT`].
    #[serde(default = "default_connect_timeout", with = "duration::text")]
    pub connect_timeout: Duration,
    /// Default: [`DEFAULT_REQUEST_TIMEOUT`].
    #[serde(default = "default_request_timeout", with = "duration::text")]
    pub request_timeout: Duration,
    /// Default: auto.
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub connection_pool: ConnectionPoolSettings,
    /// Default: no limits beyond `connection_pool.max_requests`.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// Default: no breaker.
    #[serde(default)]
    pub breaker: Option<Breaker>,
    /// Default: no ejection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits every caller's sidecar enforces on its calls here. Default: none.
    #[serde(default)]
    pub rate_limits: Option<RateLimitsSection>,
    /// Default: none (no request is retried).
    #[serde(default)]
    pub retries: Option<RetryDocument>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Power of two choices by requests in flight, weighted: adapts to slow
    /// endpoints without coordination.
    #[default]
    LeastRequest,
    /// Weighted round robin.
    RoundRobin,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Forward with the protocol the caller used.
    #[default]
    Auto,
    Http1,
    Http2,
    /// Opaque TCP: bytes, no HTTP (a database, a cache). Callers reach it
    /// through their sidecar's `--tcp-upstream` port; its own sidecar
    /// accepts tunnels only for it, decided by L4 intentions.
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// Default: [`DEFAULT_MAX_REQUESTS`]. At least 1.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// Default: [`DEFAULT_MAX_IDLE_PER_ENDPOINT`]. At least 1.
    #[serde(default = "default_max_idle_per_endpoint")]
    pub max_idle_per_endpoint: u32,
    /// Default: [`DEFAULT_IDLE_TIMEOUT`].
    #[serde(default = "default_idle_timeout", with = "duration::text")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionPoolSettings {
    fn default() -> Self {
        Self {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_idle_per_endpoint: DEFAULT_MAX_IDLE_PER_ENDPOINT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Default for DestinationDocument {
    fn default() -> Self {
        Self {
            load_balancer: LoadBalancer::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            protocol: Protocol::default(),
            connection_pool: ConnectionPoolSettings::default(),
            circuit_breakers: CircuitBreakers::default(),
            breaker: None,
            outlier_detection: None,
            rate_limits: None,
            retries: None,
        }
    }
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_max_requests() -> u32 {
    DEFAULT_MAX_REQUESTS
}
fn default_max_idle_per_endpoint() -> u32 {
    DEFAULT_MAX_IDLE_PER_ENDPOINT
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

/// Schema, then typed parse, then semantic checks; every error at once.
pub(super) fn parse(key: &str, value: &Value) -> Result<DestinationDocument, Vec<FieldError>> {
    let schema_errors = schema::validate(key, DocumentKind::Destination, value);
    let typed = serde_path_to_error::deserialize::<_, DestinationDocument>(value);
    if !schema_errors.is_empty() {
        // Where the typed model still reads the document, its rules speak
        // for the fields they check (a sidecar's reasons).
        let rules = typed
            .map(|document| document.check(key))
            .unwrap_or_default();
        return Err(with_rule_reasons(schema_errors, rules));
    }
    let document = typed.map_err(|error| vec![from_serde(key, "", error)])?;
    let errors = document.check(key);
    if errors.is_empty() {
        Ok(document)
    } else {
        Err(errors)
    }
}

impl DestinationDocument {
    fn check(&self, key: &str) -> Vec<FieldError> {
        let rate_limits = self
            .rate_limits
            .iter()
            .flat_map(|limits| limits.check(key, Side::Destination));
        let mut errors: Vec<FieldError> = [
            ("connect_timeout".to_string(), self.connect_timeout),
            ("request_timeout".to_string(), self.request_timeout),
            (
                join("connection_pool", "idle_timeout"),
                self.connection_pool.idle_timeout,
            ),
        ]
        .into_iter()
        .filter(|(_, duration)| duration.is_zero())
        .map(|(field, _)| FieldError::new(key, field, "must be greater than 0"))
        .chain(rate_limits)
        .collect();
        if let Some(breaker) = &self.breaker {
            breaker.check(key, &mut errors);
        }
        if let Some(outlier) = &self.outlier_detection {
            outlier.check(key, &mut errors);
        }
        if let Some(retries) = &self.retries {
            errors.extend(retries.check(key, "retries"));
        }
        errors
    }

    /// The cluster for calls to `service`, every field explicit (no
    /// "0 means default" left for the sidecar to interpret).
    pub fn to_cluster(&self, service: &str) -> proto::Cluster {
        proto::Cluster {
            name: service.into(),
            lb_policy: match self.load_balancer {
                LoadBalancer::LeastRequest => proto::cluster::LbPolicy::LeastRequest,
                LoadBalancer::RoundRobin => proto::cluster::LbPolicy::RoundRobin,
            }
            .into(),
            connect_timeout: Some(weft_rules::duration::to_proto(self.connect_timeout)),
            request_timeout: Some(weft_rules::duration::to_proto(self.request_timeout)),
            connection_pool: Some(proto::ConnectionPool {
                max_requests: self.connection_pool.max_requests,
                max_idle_per_endpoint: self.connection_pool.max_idle_per_endpoint,
                idle_timeout: Some(weft_rules::duration::to_proto(
                    self.connection_pool.idle_timeout,
                )),
            }),
            protocol: match self.protocol {
                Protocol::Auto => proto::cluster::Protocol::Auto,
                Protocol::Http1 => proto::cluster::Protocol::Http1,
                Protocol::Http2 => proto::cluster::Protocol::Http2,
                Protocol::Tcp => proto::cluster::Protocol::Tcp,
            }
            .into(),
            // Set by the snapshot builder when the mesh has a CA.
            identity: String::new(),
            circuit_breakers: Some(self.circuit_breakers.to_proto()),
            breaker: self.breaker.as_ref().map(Breaker::to_proto),
            outlier_detection: self
                .outlier_detection
                .as_ref()
                .map(OutlierDetection::to_proto),
            rate_limits: self.rate_limits.as_ref().map(RateLimitsSection::to_proto),
            retry_policy: self.retries.as_ref().map(RetryDocument::to_proto),
        }
    }
}

/// The cluster of a service without a destination document: the defaults.
pub fn default_cluster(service: &str) -> proto::Cluster {
    DestinationDocument::default().to_cluster(service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{LbPolicy, Protocol as ProtoProtocol};
    use serde_json::json;

    fn secs(seconds: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos: 0 })
    }

    #[test]
    fn an_empty_document_is_the_documented_defaults() {
        let document = parse("destinations/users", &json!({})).unwrap();
        assert_eq!(document, DestinationDocument::default());
        let cluster = document.to_cluster("users");
        assert_eq!(cluster, default_cluster("users"));
        assert_eq!(cluster.name, "users");
        assert_eq!(cluster.lb_policy(), LbPolicy::LeastRequest);
        assert_eq!(cluster.protocol(), ProtoProtocol::Auto);
        assert_eq!(cluster.connect_timeout, secs(1));
        assert_eq!(cluster.request_timeout, secs(15));
        let pool = cluster.connection_pool.unwrap();
        assert_eq!((pool.max_requests, pool.max_idle_per_endpoint), (1024, 64));
        assert_eq!(pool.idle_timeout, secs(90));
    }

    #[test]
    fn every_field_translates_to_the_cluster() {
        let document = parse(
            "destinations/orders",
            &json!({ "load_balancer": "round_robin", "connect_timeout": "250ms", "request_timeout": "1m",
                     "protocol": "http2",
                     "connection_pool": { "max_requests": 10, "max_idle_per_endpoint": 2, "idle_timeout": "5s" } }),
        )
        .unwrap();
        let cluster = document.to_cluster("orders");
        assert_eq!(cluster.lb_policy(), LbPolicy::RoundRobin);
        assert_eq!(cluster.protocol(), ProtoProtocol::Http2);
        assert_eq!(
            cluster.connect_timeout,
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
        assert_eq!(cluster.request_timeout, secs(60));
        let pool = cluster.connection_pool.unwrap();
        assert_eq!((pool.max_requests, pool.max_idle_per_endpoint), (10, 2));
        assert_eq!(pool.idle_timeout, secs(5));
    }

    #[test]
    fn retries_translate_and_are_checked_with_their_field() {
        let document = parse(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 3, "per_try_timeout": "300ms" } }),
        )
        .unwrap();
        let policy = document.to_cluster("users").retry_policy.unwrap();
        assert_eq!(policy.max_attempts, 3);
        assert!(default_cluster("users").retry_policy.is_none());
        let errors = parse(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 0, "retry_on": ["sometimes"] } }),
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field.starts_with("retries.retry_on")),
            "{errors:?}"
        );
        let errors = parse(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 11 } }),
        )
        .unwrap_err();
        assert_eq!(errors[0].field, "retries.max_attempts", "{errors:?}");
    }

    #[test]
    fn protocol_tcp_marks_an_opaque_tcp_destination() {
        let document = parse("destinations/redis", &json!({ "protocol": "tcp" })).unwrap();
        assert_eq!(document.to_cluster("redis").protocol(), ProtoProtocol::Tcp);
        let errors = parse("destinations/redis", &json!({ "protocol": "udp" })).unwrap_err();
        assert_eq!(errors[0].field, "protocol", "{errors:?}");
    }

    #[test]
    fn zero_and_malformed_durations_are_all_reported() {
        let errors = parse(
            "destinations/users",
            &json!({ "connect_timeout": "0s", "request_timeout": "0ms", "connection_pool": { "idle_timeout": "0h" } }),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "connect_timeout",
                "request_timeout",
                "connection_pool.idle_timeout"
            ]
        );
        assert!(errors.iter().all(|e| e.reason == "must be greater than 0"));

        let errors = parse(
            "destinations/users",
            &json!({ "connect_timeout": "1 second" }),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "connect_timeout");
        assert!(
            errors[0].reason.contains("a number and a unit"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn unknown_fields_and_out_of_range_values_are_rejected() {
        let errors = parse(
            "destinations/users",
            &json!({ "colour": 3, "connection_pool": { "max_requests": 0 } }),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"colour"), "{errors:?}");
        assert!(
            fields.contains(&"connection_pool.max_requests"),
            "{errors:?}"
        );
    }
}
