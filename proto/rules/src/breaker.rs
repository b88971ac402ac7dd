//! Circuit breakers.

/// A breaker must have a way to open: failures in a row
/// (`consecutive_failures` above 0) or a failure ratio (`failure_ratio`,
/// `None` or 0 when unset).
pub fn check_can_open(consecutive_failures: u32, failure_ratio: Option<f64>) -> Result<(), String> {
    if consecutive_failures == 0 && failure_ratio.is_none_or(|ratio| ratio == 0.0) {
        return Err("is 0 and failure_ratio is not set: the breaker could never open".into());
    }
    Ok(())
}

/// The share of failed requests that opens the breaker: 0 to 1.
pub fn check_failure_ratio(ratio: f64) -> Result<(), String> {
    if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
        return Err(format!("{ratio} is not a ratio between 0 and 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_needs_a_way_to_open() {
        assert!(check_can_open(0, None).is_err());
        assert!(check_can_open(0, Some(0.0)).is_err());
        assert!(check_can_open(0, Some(0.5)).is_ok());
        assert!(check_can_open(5, None).is_ok());
    }

    #[test]
    fn a_failure_ratio_is_between_0_and_1() {
        assert!(check_failure_ratio(0.5).is_ok());
        assert!(check_failure_ratio(1.5).is_err());
        assert!(check_failure_ratio(f64::NAN).is_err());
    }
}
