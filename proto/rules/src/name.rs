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

/// A domain a route table serves (the host, without port, as a request
/// names it): a host name or an IP literal, never empty and never holding a
/// space or a `/` (which no Host header carries).
pub fn check_domain(host: &str) -> Result<(), String> {
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return Err(format!(
            "`{host}` is not a domain: a host name as clients send it in Host, without scheme or path"
        ));
    }
    Ok(())
}

/// The caller an intention is about: a service name, or `*` for any caller.
/// Only emptiness is refused here: the agent's catalog may hold services
/// with any name, and an intention about one must still reach the sidecar.
pub fn check_intention_source(source: &str) -> Result<(), String> {
    if source.is_empty() {
        return Err("must not be empty: name the calling service, or `*` for any caller".into());
    }
    Ok(())
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
    fn domains_and_intention_sources() {
        assert!(check_domain("users.internal").is_ok());
        assert!(check_domain("bad host").is_err());
        assert!(check_domain("").is_err());
        assert!(check_domain("a/b").is_err());
        assert!(check_intention_source("*").is_ok());
        assert!(check_intention_source("").is_err());
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
