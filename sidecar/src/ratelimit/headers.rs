//! What a refusal carries to the caller: 429 with `Retry-After` and the
//! rate-limit fields of draft-ietf-httpapi-ratelimit-headers-10 (the same
//! syntax as -09): `RateLimit-Policy: "<name>";q=<quota>;w=<window
//! seconds>` and `RateLimit: "<name>";r=<remaining>;t=<seconds until a
//! request is allowed>`; or, when Redis cannot decide and the limit fails
//! closed, the configured status (503 or 429). Each is a [`ProxyError`]
//! with those headers; `error_response` makes the response, as for every
//! other refusal.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use crate::error::{ErrorKind, ProxyError};

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` value of a limit, made once when it compiles.
pub fn policy_value(name: &str, quota: u64, window: Duration) -> HeaderValue {
    let seconds = window.as_secs_f64().ceil().max(1.0) as u64;
    HeaderValue::from_str(&format!("\"{name}\";q={quota};w={seconds}"))
        .unwrap_or(HeaderValue::from_static("\"default\""))
}

/// Whole seconds, rounded up: a caller that waits that long gets through.
fn ceil_seconds(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

/// The refusal (429) of a limited request.
pub fn limited(name: &str, policy: &HeaderValue, retry_after: Duration) -> ProxyError {
    let seconds = ceil_seconds(retry_after);
    let error = ProxyError::new(
        ErrorKind::RateLimited,
        format!("rate limit `{name}` exceeded; retry in {seconds}s"),
    )
    .with_header(http::header::RETRY_AFTER, HeaderValue::from(seconds))
    .with_header(RATELIMIT_POLICY, policy.clone());
    match HeaderValue::from_str(&format!("\"{name}\";r=0;t={seconds}")) {
        Ok(value) => error.with_header(RATELIMIT, value),
        Err(_) => error,
    }
}

/// The refusal of a request Redis did not decide in time, for a limit
/// that fails closed with `status`.
pub fn unavailable(name: &str, status: StatusCode) -> ProxyError {
    ProxyError::new(
        ErrorKind::RateLimitUnavailable { status },
        format!("rate limit `{name}` cannot be checked (Redis unavailable) and fails closed"),
    )
    .with_header(http::header::RETRY_AFTER, HeaderValue::from(1u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_response_carries_every_field() {
        let policy = policy_value("per-key", 100, Duration::from_secs(60));
        assert_eq!(policy, "\"per-key\";q=100;w=60");
        let response = limited("per-key", &policy, Duration::from_millis(2300)).to_response();
        assert_eq!(response.status(), 429);
        let h = response.headers();
        assert_eq!(h["retry-after"], "3");
        assert_eq!(h["ratelimit-policy"], "\"per-key\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"per-key\";r=0;t=3");
        assert_eq!(h["x-weft-error"], "rate-limited");
        // The order the limiter wrote them in when it made the 429 itself.
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-weft-error",
                "content-type",
                "retry-after",
                "ratelimit-policy",
                "ratelimit"
            ]
        );
    }

    #[test]
    fn sub_second_waits_round_up_to_one_second() {
        let policy = policy_value("fast", 100, Duration::from_millis(500));
        assert_eq!(policy, "\"fast\";q=100;w=1");
        let response = limited("fast", &policy, Duration::from_millis(10)).to_response();
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn fail_closed_uses_the_configured_status() {
        let response = unavailable("all", StatusCode::SERVICE_UNAVAILABLE).to_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["x-weft-error"], "rate-limit-unavailable");
        assert_eq!(response.headers()["retry-after"], "1");
        let response = unavailable("all", StatusCode::TOO_MANY_REQUESTS).to_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["x-weft-error"], "rate-limit-unavailable");
    }
}
