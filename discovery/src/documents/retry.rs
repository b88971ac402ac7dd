//! The `retries` section of destination documents (and of routes, where it
//! replaces the destination's): which failures are tried again, how often,
//! how long each try may take, the backoff between tries and the budget
//! that keeps retries from multiplying the load on a failing service.

use std::time::Duration;

use serde::Deserialize;
use weft_proto::config::v1 as proto;

use super::duration;
use super::error::{FieldError, join};

/// Default tries in all: one retry, the common case that fixes a transient
/// failure without doubling a failing service's load twice over.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;
/// Default first backoff: long enough for a connection reset to clear,
/// short against a typical request timeout.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Default longest backoff (Envoy's default is 10 x the base, as here).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Default share of requests that may be retried (linkerd's default).
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
/// Default retries per second always allowed, so a quiet service still
/// gets its transient failures retried (linkerd's default).
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
/// Default bound on a buffered request body: covers typical JSON API calls
/// while keeping memory per retriable request small.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 64 * 1024;

/// Which outcomes are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// No connection could be made (the request was never sent).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection closed or reset before a response.
    #[serde(rename = "reset")]
    Reset,
}

/// gRPC status names as `retriable_grpc_statuses` takes them, by code.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDocument {
    /// Tries in all, the first included. Default [`DEFAULT_MAX_ATTEMPTS`].
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Default: gateway-error, connect-failure, reset.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Statuses retried whatever `retry_on` says. Default none.
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// gRPC statuses (names of [`GRPC_STATUS_NAMES`]). Default none.
    #[serde(default)]
    pub retriable_grpc_statuses: Vec<String>,
    /// Default: none (only the request timeout bounds the tries).
    #[serde(default, deserialize_with = "duration::text::deserialize_option")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: BackoffDocument,
    #[serde(default)]
    pub budget: BudgetDocument,
    /// Default false: POST, PATCH and CONNECT are never retried.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Default [`DEFAULT_MAX_BODY_BYTES`].
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
}

// The ratio is finite (schema and check), so equality is total.
impl Eq for RetryDocument {}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffDocument {
    #[serde(default = "default_backoff_base", with = "duration::text")]
    pub base: Duration,
    #[serde(default = "default_backoff_max", with = "duration::text")]
    pub max: Duration,
}

impl Default for BackoffDocument {
    fn default() -> Self {
        Self {
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetDocument {
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
}

impl Eq for BudgetDocument {}

impl Default for BudgetDocument {
    fn default() -> Self {
        Self {
            ratio: DEFAULT_BUDGET_RATIO,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::GatewayError,
        RetryOn::ConnectFailure,
        RetryOn::Reset,
    ]
}
fn default_backoff_base() -> Duration {
    DEFAULT_BACKOFF_BASE
}
fn default_backoff_max() -> Duration {
    DEFAULT_BACKOFF_MAX
}
fn default_budget_ratio() -> f64 {
    DEFAULT_BUDGET_RATIO
}
fn default_min_retries_per_second() -> u32 {
    DEFAULT_MIN_RETRIES_PER_SECOND
}
fn default_max_body_bytes() -> u32 {
    DEFAULT_MAX_BODY_BYTES
}

impl RetryDocument {
    /// The checks the schema cannot express; `field` is where this section
    /// sits (`retries`, `routes[1].retries`).
    pub(super) fn check(&self, key: &str, field: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |name: &str, reason: String| {
            errors.push(FieldError::new(key, join(field, name), reason))
        };
        if let Err(reason) = weft_rules::retry::check_max_attempts(self.max_attempts) {
            error("max_attempts", reason);
        }
        for (index, code) in self.retriable_status_codes.iter().enumerate() {
            if let Err(reason) = weft_rules::retry::check_status_code(u32::from(*code)) {
                error(&format!("retriable_status_codes[{index}]"), reason);
            }
        }
        for (index, name) in self.retriable_grpc_statuses.iter().enumerate() {
            if grpc_code(name).is_none() {
                error(
                    &format!("retriable_grpc_statuses[{index}]"),
                    format!(
                        "`{name}` is not a gRPC status; one of {}",
                        GRPC_STATUS_NAMES.join(", ")
                    ),
                );
            }
        }
        if self.per_try_timeout == Some(Duration::ZERO) {
            error("per_try_timeout", "must be greater than 0".into());
        }
        if self.backoff.base.is_zero() {
            error("backoff.base", "must be greater than 0".into());
        }
        if self.backoff.max < self.backoff.base {
            error(
                "backoff.max",
                format!(
                    "{:?} is shorter than backoff.base ({:?})",
                    self.backoff.max, self.backoff.base
                ),
            );
        }
        if let Err(reason) = weft_rules::retry::check_budget_ratio(self.budget.ratio) {
            error("budget.ratio", reason);
        }
        errors
    }

    pub fn to_proto(&self) -> proto::RetryPolicy {
        let on = |which| self.retry_on.contains(&which);
        proto::RetryPolicy {
            max_attempts: self.max_attempts,
            on_5xx: on(RetryOn::ServerError),
            on_gateway_error: on(RetryOn::GatewayError),
            on_connect_failure: on(RetryOn::ConnectFailure),
            on_reset: on(RetryOn::Reset),
            status_codes: self
                .retriable_status_codes
                .iter()
                .map(|c| u32::from(*c))
                .collect(),
            grpc_statuses: self
                .retriable_grpc_statuses
                .iter()
                .filter_map(|name| grpc_code(name))
                .collect(),
            per_try_timeout: self.per_try_timeout.map(weft_rules::duration::to_proto),
            backoff_base: Some(weft_rules::duration::to_proto(self.backoff.base)),
            backoff_max: Some(weft_rules::duration::to_proto(self.backoff.max)),
            budget_ratio: self.budget.ratio,
            budget_min_retries_per_second: self.budget.min_retries_per_second,
            retry_non_idempotent: self.retry_non_idempotent,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

fn grpc_code(name: &str) -> Option<u32> {
    GRPC_STATUS_NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> RetryDocument {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_empty_section_is_the_documented_defaults() {
        let policy = parse(json!({})).to_proto();
        assert_eq!(policy.max_attempts, 2);
        assert!(policy.on_gateway_error && policy.on_connect_failure && policy.on_reset);
        assert!(!policy.on_5xx && !policy.retry_non_idempotent);
        assert_eq!(policy.per_try_timeout, None);
        assert_eq!(policy.budget_ratio, 0.2);
        assert_eq!(policy.budget_min_retries_per_second, 10);
        assert_eq!(policy.max_body_bytes, 65536);
        assert_eq!(
            policy.backoff_base,
            Some(weft_rules::duration::to_proto(Duration::from_millis(25)))
        );
    }

    #[test]
    fn conditions_codes_and_grpc_names_translate() {
        let policy = parse(
            json!({ "retry_on": ["5xx"], "retriable_status_codes": [409],
            "retriable_grpc_statuses": ["unavailable", "resource_exhausted"] }),
        )
        .to_proto();
        assert!(policy.on_5xx && !policy.on_gateway_error && !policy.on_reset);
        assert_eq!(policy.status_codes, [409]);
        assert_eq!(policy.grpc_statuses, [14, 8]);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_field() {
        let document = parse(json!({ "max_attempts": 0, "retriable_status_codes": [42],
            "retriable_grpc_statuses": ["broken"], "per_try_timeout": "0s",
            "backoff": { "base": "1s", "max": "10ms" }, "budget": { "ratio": 1.5 } }));
        let errors = document.check("destinations/users", "retries");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "retries.max_attempts",
                "retries.retriable_status_codes[0]",
                "retries.retriable_grpc_statuses[0]",
                "retries.per_try_timeout",
                "retries.backoff.max",
                "retries.budget.ratio"
            ]
        );
        assert!(errors[2].reason.contains("unavailable"), "{}", errors[2]);
    }
}
