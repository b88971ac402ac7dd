//! Retry policies: how many tries, on which statuses, with what budget.

use crate::limits::MAX_RETRY_ATTEMPTS;

/// Tries in all, the first included: 1 to [`MAX_RETRY_ATTEMPTS`].
pub fn check_max_attempts(attempts: u32) -> Result<(), String> {
    if !(1..=MAX_RETRY_ATTEMPTS).contains(&attempts) {
        return Err(format!(
            "{attempts} is out of range: tries in all, first included, 1 to {MAX_RETRY_ATTEMPTS}"
        ));
    }
    Ok(())
}

/// A status a response can carry (100 to 599).
pub fn check_status_code(code: u32) -> Result<http::StatusCode, String> {
    u16::try_from(code)
        .ok()
        .filter(|code| (100..=599).contains(code))
        .and_then(|code| http::StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("{code} is not an HTTP status (100 to 599)"))
}

/// The share of requests that may be retried, 0 to 1.
pub fn check_budget_ratio(ratio: f64) -> Result<(), String> {
    if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
        return Err(format!(
            "{ratio} is out of range: the share of requests that may be retried, 0 to 1"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(check_max_attempts(0).is_err());
        assert!(check_max_attempts(1).is_ok());
        assert!(check_max_attempts(MAX_RETRY_ATTEMPTS + 1).is_err());
        assert!(check_status_code(99).is_err());
        assert!(check_status_code(600).is_err());
        assert_eq!(
            check_status_code(503),
            Ok(http::StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(check_budget_ratio(f64::NAN).is_err());
        assert!(check_budget_ratio(1.5).is_err());
        assert!(check_budget_ratio(0.2).is_ok());
    }
}
