//! Outlier ejection.

/// The most endpoints ejected at once, as a share of the service's: a
/// percentage.
pub fn check_max_ejection_percent(percent: u32) -> Result<(), String> {
    if percent > 100 {
        return Err(format!(
            "{percent} is over 100 (a percentage of the service's endpoints)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentage_is_at_most_100() {
        assert!(check_max_ejection_percent(100).is_ok());
        assert!(check_max_ejection_percent(101).is_err());
    }
}
