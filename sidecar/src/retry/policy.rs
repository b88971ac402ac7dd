//! A retry policy as the data path uses it, compiled from the
//! `weft.config.v1.RetryPolicy` of a Cluster or a route, and the judgement
//! of one try's outcome: retry it or not.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use weft_proto::config::v1 as pb;

use super::budget::BudgetLimits;
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError, UNREACHED_HEADER};

/// The gRPC status a trailers-only answer carries in its headers.
///
/// Retries judge a try by its response head only, as Envoy does: once a
/// gRPC answer's head has gone on without a status, its messages are on
/// their way to the caller and a status in the trailers comes too late to
/// try again. A call that fails before any message (the usual UNAVAILABLE)
/// is a trailers-only answer, and is retried. (The breaker and outlier
/// ejection do wait for the trailers: `body::grpc`.)
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Defaults for fields a policy leaves at proto zero (the agent always sets
/// them; these keep a hand-written Cluster sensible). Same values as the
/// document defaults (`discovery/src/documents/retry.rs`).
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; at least 1.
    pub max_attempts: u32,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub status_codes: Vec<StatusCode>,
    pub grpc_statuses: Vec<u32>,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget: BudgetLimits,
    pub retry_non_idempotent: bool,
    pub max_body_bytes: usize,
    /// The built-in retry of unreached requests: an answer says
    /// `x-weft-attempts` only when it was retried, so a destination without
    /// a policy looks as it did unless the retry saved a request.
    pub builtin: bool,
}

impl RetryPolicy {
    /// The built-in retry of a destination without a policy: once more, to
    /// another endpoint, at once, whatever the method, and only a try that
    /// reached no app (a connect that failed here, or the endpoint's
    /// sidecar's `x-weft-unreached` answer). No budget: at most one retry
    /// per request, and only unreachable endpoints cause them, which
    /// ejection takes out after their first such answer.
    pub fn unreached_once() -> Arc<Self> {
        static POLICY: LazyLock<Arc<RetryPolicy>> = LazyLock::new(|| {
            Arc::new(RetryPolicy {
                max_attempts: 2,
                on_5xx: false,
                on_gateway_error: false,
                on_connect_failure: true,
                on_reset: false,
                status_codes: Vec::new(),
                grpc_statuses: Vec::new(),
                per_try_timeout: None,
                backoff_base: Duration::ZERO,
                backoff_max: Duration::ZERO,
                budget: BudgetLimits {
                    ratio: 1.0,
                    min_retries_per_second: u32::MAX,
                },
                retry_non_idempotent: true,
                max_body_bytes: 0,
                builtin: true,
            })
        });
        POLICY.clone()
    }

    /// Whether requests with this method may be sent more than once.
    pub fn may_retry(&self, method: &Method) -> bool {
        self.max_attempts > 1 && (self.retry_non_idempotent || method.is_idempotent())
    }

    /// Whether a try that ended in `outcome` should be tried again (budget
    /// and attempts aside).
    pub fn retries(&self, outcome: &Result<http::Response<ProxyBody>, ProxyError>) -> bool {
        match outcome {
            Ok(response) => self.retries_response(response),
            Err(error) => self.retries_error(error),
        }
    }

    fn retries_response(&self, response: &http::Response<ProxyBody>) -> bool {
        let status = response.status();
        if self.on_connect_failure
            && status == StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key(UNREACHED_HEADER)
        {
            // The endpoint's sidecar could not connect to its app.
            return true;
        }
        let gateway_error = matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        );
        (self.on_5xx && status.is_server_error())
            || (self.on_gateway_error && gateway_error)
            || self.status_codes.contains(&status)
            || (!self.grpc_statuses.is_empty()
                && response
                    .headers()
                    .get(GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|code| self.grpc_statuses.contains(&code)))
    }

    fn retries_error(&self, error: &ProxyError) -> bool {
        match error.kind {
            ErrorKind::ConnectFailed => self.on_connect_failure,
            ErrorKind::UpstreamReset => self.on_reset,
            // A per-try timeout stands for the 504 it would have been.
            ErrorKind::Timeout => self.on_5xx || self.on_gateway_error,
            _ => false,
        }
    }
}

/// Compiles a policy; `at` names where it sits (`retry_policy`,
/// `routes[1].action.retry_policy`) in every error.
pub fn compile(p: &pb::RetryPolicy, at: &str) -> Result<RetryPolicy, Vec<String>> {
    let mut errors = Vec::new();
    if let Err(reason) = weft_rules::retry::check_max_attempts(p.max_attempts) {
        errors.push(format!("{at}.max_attempts: {reason}"));
    }
    let mut status_codes = Vec::with_capacity(p.status_codes.len());
    for (i, code) in p.status_codes.iter().enumerate() {
        match weft_rules::retry::check_status_code(*code) {
            Ok(status) => status_codes.push(status),
            Err(reason) => errors.push(format!("{at}.status_codes[{i}]: {reason}")),
        }
    }
    for (i, code) in p.grpc_statuses.iter().enumerate() {
        if let Err(reason) = weft_rules::grpc::check_status(*code) {
            errors.push(format!("{at}.grpc_statuses[{i}]: {reason}"));
        }
    }
    let mut optional = |d: &Option<prost_types::Duration>, field: &str| match d {
        None => None,
        Some(d) => match weft_rules::duration::from_proto(d) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(reason) => {
                errors.push(format!("{at}.{field}: {reason}"));
                None
            }
        },
    };
    let per_try_timeout = optional(&p.per_try_timeout, "per_try_timeout");
    let backoff_base = optional(&p.backoff_base, "backoff_base").unwrap_or(DEFAULT_BACKOFF_BASE);
    let backoff_max = optional(&p.backoff_max, "backoff_max")
        .unwrap_or(DEFAULT_BACKOFF_MAX)
        .max(backoff_base);
    if let Err(reason) = weft_rules::retry::check_budget_ratio(p.budget_ratio) {
        errors.push(format!("{at}.budget_ratio: {reason}"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RetryPolicy {
        max_attempts: p.max_attempts,
        on_5xx: p.on_5xx,
        on_gateway_error: p.on_gateway_error,
        on_connect_failure: p.on_connect_failure,
        on_reset: p.on_reset,
        status_codes,
        grpc_statuses: p.grpc_statuses.clone(),
        per_try_timeout,
        backoff_base,
        backoff_max,
        budget: BudgetLimits {
            ratio: p.budget_ratio,
            min_retries_per_second: p.budget_min_retries_per_second,
        },
        retry_non_idempotent: p.retry_non_idempotent,
        max_body_bytes: p.max_body_bytes as usize,
        builtin: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: pb::RetryPolicy) -> RetryPolicy {
        compile(&p, "retry_policy").unwrap()
    }

    fn gateway() -> pb::RetryPolicy {
        pb::RetryPolicy {
            max_attempts: 2,
            on_gateway_error: true,
            on_connect_failure: true,
            on_reset: true,
            ..Default::default()
        }
    }

    fn response(status: u16, grpc: Option<&str>) -> Result<http::Response<ProxyBody>, ProxyError> {
        let mut r = http::Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc {
            r.headers_mut().insert(GRPC_STATUS, g.parse().unwrap());
        }
        Ok(r)
    }

    fn error(kind: ErrorKind) -> Result<http::Response<ProxyBody>, ProxyError> {
        Err(ProxyError::new(kind, "test"))
    }

    #[test]
    fn gateway_errors_connect_failures_and_resets_are_retried_other_failures_not() {
        let p = policy(gateway());
        for status in [502, 503, 504] {
            assert!(p.retries(&response(status, None)), "{status}");
        }
        for status in [200, 404, 500, 501] {
            assert!(!p.retries(&response(status, None)), "{status}");
        }
        assert!(p.retries(&error(ErrorKind::ConnectFailed)));
        assert!(p.retries(&error(ErrorKind::UpstreamReset)));
        assert!(p.retries(&error(ErrorKind::Timeout)), "a per-try timeout");
        for kind in [
            ErrorKind::Overflow,
            ErrorKind::NoHealthyEndpoint,
            ErrorKind::BadRequest,
            ErrorKind::UpstreamProtocol,
        ] {
            assert!(!p.retries(&error(kind)), "{kind:?}");
        }
    }

    #[test]
    fn five_xx_codes_and_grpc_statuses_are_retried_as_listed() {
        let p = policy(pb::RetryPolicy {
            max_attempts: 3,
            on_5xx: true,
            status_codes: vec![409],
            grpc_statuses: vec![14],
            ..Default::default()
        });
        assert!(p.retries(&response(500, None)));
        assert!(p.retries(&response(409, None)));
        assert!(p.retries(&response(200, Some("14"))), "UNAVAILABLE");
        assert!(!p.retries(&response(200, Some("5"))), "NOT_FOUND");
        assert!(!p.retries(&response(200, None)));
        assert!(!p.retries(&error(ErrorKind::ConnectFailed)), "not listed");
        let none = policy(pb::RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        });
        assert!(!none.retries(&error(ErrorKind::Timeout)));
    }

    #[test]
    fn only_idempotent_methods_unless_the_policy_says_so() {
        let p = policy(gateway());
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(p.may_retry(&method), "{method}");
        }
        assert!(!p.may_retry(&Method::POST));
        assert!(!p.may_retry(&Method::PATCH));
        let p = policy(pb::RetryPolicy {
            retry_non_idempotent: true,
            ..gateway()
        });
        assert!(p.may_retry(&Method::POST));
        let once = policy(pb::RetryPolicy {
            max_attempts: 1,
            ..gateway()
        });
        assert!(!once.may_retry(&Method::GET), "one try is no retry");
    }

    #[test]
    fn bad_values_are_all_reported_with_their_field() {
        let errors = compile(
            &pb::RetryPolicy {
                max_attempts: 0,
                status_codes: vec![1000],
                grpc_statuses: vec![17],
                budget_ratio: 2.0,
                ..Default::default()
            },
            "retry_policy",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("retry_policy.max_attempts"));
    }
}
