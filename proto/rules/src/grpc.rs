//! gRPC status codes, as breakers and retries count them.

/// The highest gRPC status code (`UNAUTHENTICATED`).
pub const MAX_STATUS: u32 = 16;

/// A gRPC status code: 0 to [`MAX_STATUS`].
pub fn check_status(code: u32) -> Result<(), String> {
    if code > MAX_STATUS {
        return Err(format!("{code} is not a gRPC status (0-{MAX_STATUS})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_0_to_16() {
        assert!(check_status(0).is_ok());
        assert!(check_status(16).is_ok());
        assert_eq!(
            check_status(17).unwrap_err(),
            "17 is not a gRPC status (0-16)"
        );
    }
}
