//! A compiled CORS policy: which origins, and the header values its
//! answers carry, made once when the policy arrives.

use http::HeaderValue;

/// How one allowed origin is matched against the `Origin` header, ASCII
/// case-insensitively (browsers send scheme and host in lower case; a
/// policy written in capitals still means the same site).
#[derive(Debug)]
pub enum OriginMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Anchored: the whole origin must match.
    Regex(regex::Regex),
}

impl OriginMatch {
    fn matches(&self, origin: &str) -> bool {
        let n = origin.len();
        match self {
            Self::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            Self::Prefix(prefix) => {
                n >= prefix.len() && origin[..prefix.len()].eq_ignore_ascii_case(prefix)
            }
            Self::Suffix(suffix) => {
                n >= suffix.len()
                    && origin.is_char_boundary(n - suffix.len())
                    && origin[n - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            Self::Regex(regex) => regex.is_match(origin),
        }
    }
}

/// One route's (or one service's) CORS policy.
#[derive(Debug)]
pub struct CorsPolicy {
    /// Any origin: answers say `*` (never with credentials).
    pub(super) any_origin: bool,
    pub(super) origins: Vec<OriginMatch>,
    /// `Access-Control-Allow-Methods` of a preflight's answer.
    pub(super) allow_methods: HeaderValue,
    /// `Access-Control-Allow-Headers`; `None`: the safelisted ones only.
    pub(super) allow_headers: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers` of every allowed answer.
    pub(super) expose_headers: Option<HeaderValue>,
    /// `Access-Control-Max-Age` (seconds) of a preflight's answer.
    pub(super) max_age: Option<HeaderValue>,
    pub(super) allow_credentials: bool,
}

impl CorsPolicy {
    /// Whether a page of `origin` may read the answers.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        // An origin is ASCII; anything else matches nothing.
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.origins.iter().any(|allowed| allowed.matches(origin))
    }
}
