//! CORS policies (the Fetch standard's cross-origin protocol).

use std::time::Duration;

/// Browsers cap how long they keep a preflight's answer (Firefox at 24 h,
/// Chromium at 2 h); a longer `max_age` is a mistake.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A policy allows at least one origin (or `*`).
pub fn check_origins_listed(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err("no origin: list the origins whose pages may call, or `*` for any".into());
    }
    Ok(())
}

/// An exact origin as a browser sends it: `scheme://host[:port]`, nothing
/// after. A trailing `/` or a path never matches, since the `Origin`
/// header never carries one.
pub fn check_exact_origin(origin: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "`{origin}` is not an origin: scheme://host[:port], with no path or trailing `/`"
        ))
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return refuse();
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.parse::<http::uri::Authority>().is_err()
    {
        return refuse();
    }
    Ok(())
}

/// The standard forbids `Access-Control-Allow-Origin: *` on a response a
/// page may read with credentials: a browser refuses it.
pub fn check_credentials(any_origin: bool, allow_credentials: bool) -> Result<(), String> {
    if any_origin && allow_credentials {
        return Err(
            "`*` cannot allow credentials: browsers refuse such an answer; list the origins".into(),
        );
    }
    Ok(())
}

/// How long a browser may keep a preflight's answer: above 0, at most
/// [`MAX_AGE`].
pub fn check_max_age(max_age: Duration) -> Result<(), String> {
    if max_age.is_zero() || max_age > MAX_AGE {
        return Err("must be greater than 0 and at most 24h (browsers cap it)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port() {
        for good in [
            "https://app.example.com",
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "https://[::1]:8443",
        ] {
            assert!(check_exact_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://user@app.example.com",
            "://x",
        ] {
            let reason = check_exact_origin(bad).unwrap_err();
            assert!(reason.contains("is not an origin"), "{bad}: {reason}");
        }
    }

    #[test]
    fn any_origin_never_with_credentials_and_max_age_is_bounded() {
        assert!(check_credentials(true, true).is_err());
        assert!(check_credentials(true, false).is_ok());
        assert!(check_credentials(false, true).is_ok());
        assert!(check_origins_listed(0).is_err());
        assert!(check_max_age(Duration::ZERO).is_err());
        assert!(check_max_age(Duration::from_secs(600)).is_ok());
        assert!(check_max_age(MAX_AGE + Duration::from_secs(1)).is_err());
    }
}
