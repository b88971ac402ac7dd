//! Weighted splits of traffic between destinations.

/// A split must send its traffic somewhere: the weights may not all be 0
/// (an empty split sums to 0 too).
pub fn check_weights(weights: impl IntoIterator<Item = u32>) -> Result<(), String> {
    if weights.into_iter().map(u64::from).sum::<u64>() == 0 {
        return Err("the weights sum to 0: give at least one destination a weight above 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_needs_some_weight() {
        assert!(check_weights([0, 0]).is_err());
        assert!(check_weights([]).is_err());
        assert_eq!(check_weights([0, 1]), Ok(()));
        assert_eq!(check_weights([u32::MAX, u32::MAX]), Ok(()));
    }
}
