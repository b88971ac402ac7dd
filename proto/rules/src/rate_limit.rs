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
}
