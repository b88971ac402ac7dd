//! Header names and values, as matchers, mutations and limit keys use them.

use http::{HeaderName, HeaderValue};

/// A header name as HTTP allows it (a token; any case, compared
/// case-insensitively). Empty is not a name.
pub fn check_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!("`{name}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)")
    })
}

/// A header name that must be written in lower case (where the name is
/// compared as written, such as policy permissions and limit keys).
pub fn check_lower_case_name(name: &str) -> Result<HeaderName, String> {
    let header = check_name(name)?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "header names are written in lower case here: `{}`",
            name.to_ascii_lowercase()
        ));
    }
    Ok(header)
}

/// A header value a sidecar can send: visible ASCII, spaces and tabs (no
/// control characters, so no header injection through a line break).
pub fn check_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value)
        .map_err(|_| "not a valid header value (control characters are not allowed)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens() {
        assert!(check_name("x-api-key").is_ok());
        assert!(check_name("X-Api-Key").is_ok());
        for bad in ["", "bad name", "bad:name", "(x)"] {
            let reason = check_name(bad).unwrap_err();
            assert!(reason.contains("not a valid header name"), "{reason}");
        }
        assert!(
            check_lower_case_name("X-Key")
                .unwrap_err()
                .contains("`x-key`")
        );
    }

    #[test]
    fn values_have_no_control_characters() {
        assert!(check_value("a b\tc").is_ok());
        assert!(check_value("line\nbreak").is_err());
    }
}
