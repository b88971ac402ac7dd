//! Which service names a certificate may be asked for: Consul's rules for
//! service names, which are also valid SPIFFE path segments.

/// Longest service name accepted; Consul's DNS interface needs names to fit
/// one DNS label (63), and 64 keeps the leaf's common name within RFC 5280.
pub const MAX_SERVICE_NAME_LEN: usize = 64;

/// Checks a service name: 1 to 64 of `A-Z a-z 0-9 - _ .`, and not `.` or
/// `..` (not allowed as a SPIFFE path segment). The error says why.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the service name is empty".into());
    }
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "the service name is {} bytes long; at most {MAX_SERVICE_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the service name {name:?} contains {bad:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a service name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_style_names_pass() {
        for name in [
            "web",
            "users-v2",
            "billing_api",
            "a.b",
            "X9",
            &"a".repeat(64),
        ] {
            assert_eq!(check_service_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        let long = "a".repeat(65);
        let cases = [
            ("", "empty"),
            (long.as_str(), "at most 64"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("wéb", "'é'"),
            ("..", "not a service name"),
        ];
        for (name, reason) in cases {
            let error = check_service_name(name).expect_err(name);
            assert!(error.contains(reason), "{name}: {error}");
        }
    }
}
