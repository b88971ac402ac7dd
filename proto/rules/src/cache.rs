//! Response cache policies: how much a proxy holds, for how long a
//! response without freshness of its own is kept, for which methods.

use std::time::Duration;

/// Defaults: room for ten thousand answers in 64 MiB, none bigger than
/// 1 MiB (a cache of small, hot answers; big ones stream through).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// A proxy's cache lives in its memory, beside every other route's: more
/// than a million entries or 4 GiB is a typo, not a plan.
pub const MAX_ENTRIES: u64 = 1_000_000;
pub const MAX_BYTES: u64 = 4 << 30;

/// Freshness given to answers without their own is at most a day: longer
/// would serve a stale answer for longer than anyone would notice it.
pub const MAX_DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// The methods whose responses may be stored (RFC 9110 §9.2.3: GET and
/// HEAD; POST needs Content-Location, which no proxy can rely on).
pub const METHODS: [&str; 2] = ["GET", "HEAD"];

/// A size as a policy writes it: a number of bytes, or a number followed
/// by `B`, `KiB`, `MiB` or `GiB` (`64MiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` is not a size: a number of bytes, or a number followed by B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a size: a number of bytes, or a number followed by B, KiB, MiB or GiB"))
}

pub fn check_max_entries(max_entries: u64) -> Result<(), String> {
    if !(1..=MAX_ENTRIES).contains(&max_entries) {
        return Err(format!("must be from 1 to {MAX_ENTRIES}"));
    }
    Ok(())
}

pub fn check_max_bytes(max_bytes: u64) -> Result<(), String> {
    if !(1024..=MAX_BYTES).contains(&max_bytes) {
        return Err(format!("must be from 1024 (1 KiB) to {MAX_BYTES} (4 GiB)"));
    }
    Ok(())
}

/// A body limit above the store's own would store nothing that large.
pub fn check_max_body_bytes(max_body_bytes: u64, max_bytes: u64) -> Result<(), String> {
    if max_body_bytes == 0 || max_body_bytes > max_bytes {
        return Err(format!("must be from 1 to max_bytes ({max_bytes})"));
    }
    Ok(())
}

pub fn check_default_ttl(ttl: Duration) -> Result<(), String> {
    if ttl > MAX_DEFAULT_TTL {
        return Err(
            "must be at most 1 day (24h); 0s stores only answers with their own freshness".into(),
        );
    }
    Ok(())
}

/// One method of `methods`: GET or HEAD, each once.
pub fn check_method(name: &str, earlier: &[http::Method]) -> Result<http::Method, String> {
    let method = match name {
        "GET" => http::Method::GET,
        "HEAD" => http::Method::HEAD,
        _ => return Err(format!("`{name}` is not a cacheable method: GET or HEAD")),
    };
    if earlier.contains(&method) {
        return Err(format!("`{name}` is listed twice"));
    }
    Ok(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10B"), Ok(10));
        for bad in [
            "",
            "MiB",
            "64 MiB",
            "64MB",
            "1.5MiB",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(
                parse_size(bad).unwrap_err().contains("not a size"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert!(check_max_entries(0).is_err());
        assert!(check_max_entries(DEFAULT_MAX_ENTRIES).is_ok());
        assert!(check_max_entries(MAX_ENTRIES + 1).is_err());
        assert!(check_max_bytes(1023).is_err());
        assert!(check_max_bytes(DEFAULT_MAX_BYTES).is_ok());
        assert!(check_max_bytes(MAX_BYTES + 1).is_err());
        assert!(check_max_body_bytes(0, DEFAULT_MAX_BYTES).is_err());
        assert!(check_max_body_bytes(DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BYTES).is_ok());
        assert!(check_max_body_bytes(2048, 1024).is_err());
        assert!(check_default_ttl(Duration::ZERO).is_ok());
        assert!(check_default_ttl(MAX_DEFAULT_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn methods_are_get_and_head_each_once() {
        assert_eq!(check_method("GET", &[]), Ok(http::Method::GET));
        assert!(check_method("HEAD", &[http::Method::GET]).is_ok());
        assert!(
            check_method("GET", &[http::Method::GET])
                .unwrap_err()
                .contains("twice")
        );
        for bad in ["POST", "get", ""] {
            assert!(check_method(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
