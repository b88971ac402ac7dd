//! Host and service names, and authorities.

/// Whether `name` can name a host or service: one or more letters, digits,
/// `.`, `_` and `-`. Every such name is a valid route domain and a valid
/// Host, so a catalog service named otherwise gets no route table: one
/// would make every sidecar refuse the whole push.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(is_name_char)
}

/// One character of a valid name.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A query parameter a route matches on: named.
pub fn check_query_parameter_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

/// A `host[:port]` a route may send as the Host / :authority upstream.
pub fn check_authority(text: &str) -> Result<http::uri::Authority, String> {
    text.parse::<http::uri::Authority>()
        .map_err(|_| format!("`{text}` is not a valid host[:port]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_host_and_optional_port() {
        assert!(check_authority("users.internal:8080").is_ok());
        assert_eq!(
            check_authority("bad host").unwrap_err(),
            "`bad host` is not a valid host[:port]"
        );
    }

    #[test]
    fn names_are_letters_digits_dots_underscores_and_dashes() {
        for good in ["users", "orders-v2", "a.b_c", "..", "-"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "a b", "a/b", "a:80", "<b>", "ünï"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
