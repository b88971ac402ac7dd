//! HTTP methods, as routes, permissions and JWT rules name them.

/// A method written as the protocol sends it: an HTTP token in upper case
/// (`GET`, `PURGE`). Matching is exact, so `get` would never match anything.
pub fn check(name: &str) -> Result<http::Method, String> {
    match http::Method::from_bytes(name.as_bytes()) {
        Ok(method) if !name.is_empty() && !name.bytes().any(|b| b.is_ascii_lowercase()) => {
            Ok(method)
        }
        _ => Err(format!(
            "`{name}` is not an HTTP method in upper case, like GET"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_upper_case_tokens() {
        for good in ["GET", "DELETE", "PURGE", "M-SEARCH"] {
            assert_eq!(check(good).map(|m| m.to_string()), Ok(good.to_string()));
        }
        for bad in ["", "get", "G T", "GET\n", "(GET)"] {
            assert!(check(bad).unwrap_err().contains("in upper case"), "{bad:?}");
        }
    }
}
