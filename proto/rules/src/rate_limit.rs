//! Rate limits.

use std::time::Duration;

use crate::limits::{MAX_REDIS_TIMEOUT, MIN_GLOBAL_WINDOW};

/// A global limit's window: at least [`MIN_GLOBAL_WINDOW`].
pub fn check_global_window(window: Duration) -> Result<Duration, String> {
    if window < MIN_GLOBAL_WINDOW {
        return Err(
            "must be at least 1s (Redis counts in milliseconds across sidecars whose clocks differ)"
                .into(),
        );
    }
    Ok(window)
}

/// The bound on one Redis decision: above 0 and at most
/// [`MAX_REDIS_TIMEOUT`].
pub fn check_redis_timeout(timeout: Duration) -> Result<Duration, String> {
    if timeout.is_zero() || timeout > MAX_REDIS_TIMEOUT {
        return Err(
            "must be greater than 0 and at most 1s, so that Redis trouble never stalls traffic"
                .into(),
        );
    }
    Ok(timeout)
}

/// The most characters in a limit's name (it goes into `RateLimit-Policy`
/// headers and metric labels).
pub const MAX_LIMIT_NAME_CHARS: usize = 64;

/// A limit's name: 1 to [`MAX_LIMIT_NAME_CHARS`] letters, digits, `.`, `_`
/// or `-`, so it can be quoted in a header and used as a label as it is.
pub fn check_limit_name(name: &str) -> Result<(), String> {
    let usable = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name.len() > MAX_LIMIT_NAME_CHARS || !name.bytes().all(usable) {
        return Err(format!(
            "`{name}` is not a usable name: 1 to {MAX_LIMIT_NAME_CHARS} letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

/// A limit lets at least one request through per period.
pub fn check_requests(requests: u32) -> Result<(), String> {
    if requests == 0 {
        return Err("must be at least 1 (to refuse every request, use an intention)".into());
    }
    Ok(())
}

/// Where the shared counters live: `redis://` or `rediss://` (TLS), then a
/// host. The Redis client parses the rest (port, password, database). The
/// URL may carry a password, so a reason never quotes it.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(
            "must start with redis:// (plain) or rediss:// (TLS): redis://[:password@]host:port[/db]"
                .into(),
        );
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("names no host: write redis://HOST:PORT".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_timeouts_are_bounded() {
        assert!(check_global_window(Duration::from_millis(999)).is_err());
        assert!(check_global_window(Duration::from_secs(1)).is_ok());
        assert!(check_redis_timeout(Duration::ZERO).is_err());
        assert!(check_redis_timeout(Duration::from_millis(1001)).is_err());
        assert!(check_redis_timeout(Duration::from_millis(50)).is_ok());
    }

    #[test]
    fn names_requests_and_redis_urls() {
        assert!(check_limit_name("per-client_1.v2").is_ok());
        for bad in ["", "bad name", "a\"b", &"x".repeat(65)] {
            assert!(check_limit_name(bad).is_err(), "{bad}");
        }
        assert!(check_requests(0).is_err());
        assert!(check_requests(1).is_ok());
        assert!(check_redis_url("rediss://cache:6380").is_ok());
        let refused = check_redis_url("http://user:secret@cache").unwrap_err();
        assert!(refused.starts_with("must start with redis://"), "{refused}");
        assert!(!refused.contains("secret"), "{refused}");
        assert!(check_redis_url("redis://:secret@:6379").is_err());
    }
}
