//! Which bucket (or Redis window) a request counts against.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// What a limit keys on (`RateLimitKey` in ratelimit.proto).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Every request: one bucket.
    Whole,
    /// Per route (outbound): its name, else its position in its table.
    Route,
    /// Per calling service.
    Source,
    /// Per value of this header; requests without it share one bucket.
    Header(HeaderName),
    ClientIp,
}

/// What the layers above know about a request, borrowed for key extraction.
pub struct RequestFacts<'a> {
    /// `None` on the inbound side.
    pub route: Option<&'a str>,
    /// The calling service: the verified peer's (inbound), this sidecar's
    /// own (outbound); `None` for a caller without a mesh identity.
    pub source: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// As formatted once per connection (`Exchange::client_ip`).
    pub client_ip: &'a str,
}

/// The bucket of a request that lacks what the key needs (no identity,
/// no such header): one shared bucket, so leaving the header off is no
/// way around the limit. Not a valid header value or service name, so
/// it never collides with a real one.
pub const ABSENT: &str = "\u{0}absent";

/// The longest key value kept as it is; longer (or unusual) values are
/// hashed, so a caller cannot make the sidecar hold big keys.
const MAX_PLAIN: usize = 64;

impl KeyKind {
    /// The key of `facts` under this kind; borrowed (no allocation) but
    /// for a header value that has to be hashed.
    pub fn extract<'a>(&self, facts: &RequestFacts<'a>) -> Cow<'a, str> {
        match self {
            Self::Whole => Cow::Borrowed(""),
            Self::Route => Cow::Borrowed(facts.route.unwrap_or(ABSENT)),
            Self::Source => Cow::Borrowed(facts.source.unwrap_or(ABSENT)),
            Self::ClientIp => Cow::Borrowed(facts.client_ip),
            Self::Header(name) => match facts.headers.get(name) {
                Some(value) => bounded(value.as_bytes()),
                None => Cow::Borrowed(ABSENT),
            },
        }
    }
}

/// The value itself when short and plain (readable in Redis), else
/// `sha256:` and the first 128 bits of its hash.
fn bounded(value: &[u8]) -> Cow<'_, str> {
    let plain = value.len() <= MAX_PLAIN
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    match std::str::from_utf8(value) {
        Ok(text) if plain => Cow::Borrowed(text),
        _ => Cow::Owned(format!(
            "sha256:{}",
            hex::encode(&Sha256::digest(value)[..16])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(headers: &HeaderMap) -> RequestFacts<'_> {
        RequestFacts {
            route: Some("v2"),
            source: Some("web"),
            headers,
            client_ip: "10.1.2.3",
        }
    }

    #[test]
    fn each_kind_extracts_its_part_of_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "key-A".parse().unwrap());
        let f = facts(&headers);
        assert_eq!(KeyKind::Whole.extract(&f), "");
        assert_eq!(KeyKind::Route.extract(&f), "v2");
        assert_eq!(KeyKind::Source.extract(&f), "web");
        assert_eq!(KeyKind::ClientIp.extract(&f), "10.1.2.3");
        let header = KeyKind::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(header.extract(&f), "key-A");
    }

    #[test]
    fn missing_parts_share_one_bucket_that_no_value_can_name() {
        let headers = HeaderMap::new();
        let f = RequestFacts {
            route: None,
            source: None,
            ..facts(&headers)
        };
        let header = KeyKind::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(header.extract(&f), ABSENT);
        assert_eq!(KeyKind::Source.extract(&f), ABSENT);
        assert_ne!(bounded(ABSENT.as_bytes()), ABSENT);
    }

    #[test]
    fn long_or_unusual_values_are_hashed_to_a_bounded_key() {
        let long = "k".repeat(10_000);
        let key = bounded(long.as_bytes());
        assert!(key.starts_with("sha256:") && key.len() == 7 + 32, "{key}");
        assert_ne!(
            bounded(b"a{b}"),
            "a{b}",
            "braces would break a Redis hash tag"
        );
        assert_ne!(bounded(b"a b"), bounded(b"a_b"));
    }
}
