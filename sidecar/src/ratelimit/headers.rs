//! What a refused caller sees: 429 with `Retry-After` and the rate-limit
//! fields of draft-ietf-httpapi-ratelimit-headers-10 (the same syntax as
//! -09): `RateLimit-Policy: "<name>";q=<quota>;w=<window seconds>` and
//! `RateLimit: "<name>";r=<remaining>;t=<seconds until a request is
//! allowed>`; or, when Redis cannot decide and the limit fails closed, the
//! configured status (503 or 429).

use std::time::Duration;

use http::{HeaderValue, StatusCode};

use crate::error::{ErrorKind, error_response};
use crate::proxy::ProxyResponse;

pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";
/// `x-weft-error` when Redis could not decide and the limit fails closed.
pub const UNAVAILABLE_CODE: &str = "rate-limit-unavailable";

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

/// The 429 of a refused request.
pub fn limited(name: &str, policy: &HeaderValue, retry_after: Duration) -> ProxyResponse {
    let seconds = ceil_seconds(retry_after);
    let mut response = error_response(
        ErrorKind::RateLimited.status(),
        ErrorKind::RateLimited.code(),
        &format!("rate limit `{name}` exceeded; retry in {seconds}s"),
    );
    let headers = response.headers_mut();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    headers.insert(RATELIMIT_POLICY, policy.clone());
    if let Ok(value) = HeaderValue::from_str(&format!("\"{name}\";r=0;t={seconds}")) {
        headers.insert(RATELIMIT, value);
    }
    response
}

/// A request refused because Redis did not decide in time and the limit
/// fails closed.
pub fn unavailable(name: &str, status: StatusCode) -> ProxyResponse {
    let mut response = error_response(
        status,
        UNAVAILABLE_CODE,
        &format!("rate limit `{name}` cannot be checked (Redis unavailable) and fails closed"),
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(1u64));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_response_carries_every_field() {
        let policy = policy_value("per-key", 100, Duration::from_secs(60));
        assert_eq!(policy, "\"per-key\";q=100;w=60");
        let response = limited("per-key", &policy, Duration::from_millis(2300));
        assert_eq!(response.status(), 429);
        let h = response.headers();
        assert_eq!(h["retry-after"], "3");
        assert_eq!(h["ratelimit-policy"], "\"per-key\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"per-key\";r=0;t=3");
        assert_eq!(h["x-weft-error"], "rate-limited");
    }

    #[test]
    fn sub_second_waits_round_up_to_one_second() {
        let policy = policy_value("fast", 100, Duration::from_millis(500));
        assert_eq!(policy, "\"fast\";q=100;w=1");
        let response = limited("fast", &policy, Duration::from_millis(10));
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn fail_closed_uses_the_configured_status() {
        let response = unavailable("all", StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["x-weft-error"], UNAVAILABLE_CODE);
    }
}
