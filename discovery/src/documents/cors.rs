//! The `cors` section of route documents (per route) and policy documents
//! (the service's default): the typed model, its rules (`weft_rules::cors`
//! and the method, header and regex rules, the sidecar's own), and the
//! translation into the protocol's `CorsPolicy`.

use std::time::Duration;

use serde::Deserialize;
use weft_proto::config::v1 as proto;

use super::duration;
use super::error::{FieldError, join};

/// Which origins' pages may call, and what the answers allow them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsDocument {
    pub allow_origins: Vec<OriginEntry>,
    /// Default: GET, HEAD and POST (the safelisted methods).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Default: none (the browser's own, 5 s).
    #[serde(default, deserialize_with = "duration::text::deserialize_option")]
    pub max_age: Option<Duration>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// One allowed origin: a string is the exact origin (`*`: any); an object
/// names one pattern.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OriginEntry {
    Origin(String),
    Pattern(OriginPattern),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginPattern {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// The `*` that stands for any origin.
const ANY_ORIGIN: &str = "*";

impl CorsDocument {
    /// The rules a sidecar applies when it compiles the policy, with the
    /// same reasons; `at` is the section's path (`routes[0].cors`, `cors`).
    pub(super) fn check(&self, key: &str, at: &str) -> Vec<FieldError> {
        use weft_rules::cors;
        let mut errors = Vec::new();
        let mut error =
            |field: String, reason: String| errors.push(FieldError::new(key, field, reason));
        if let Err(reason) = cors::check_origins_listed(self.allow_origins.len()) {
            error(join(at, "allow_origins"), reason);
        }
        let mut any_origin = false;
        for (index, origin) in self.allow_origins.iter().enumerate() {
            let field = format!("{at}.allow_origins[{index}]");
            match origin {
                OriginEntry::Origin(any) if any == ANY_ORIGIN => any_origin = true,
                OriginEntry::Origin(exact) => {
                    if let Err(reason) = cors::check_exact_origin(exact) {
                        error(field, reason);
                    }
                }
                OriginEntry::Pattern(pattern) => {
                    if let Some(regex) = &pattern.regex
                        && let Err(reason) = weft_rules::regex::check(regex)
                    {
                        error(join(&field, "regex"), reason);
                    }
                }
            }
        }
        if let Err(reason) = cors::check_credentials(any_origin, self.allow_credentials) {
            error(join(at, "allow_credentials"), reason);
        }
        for (index, method) in self.allow_methods.iter().enumerate() {
            if let Err(reason) = weft_rules::method::check(method) {
                error(format!("{at}.allow_methods[{index}]"), reason);
            }
        }
        for (list, names) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for (index, name) in names.iter().enumerate() {
                if let Err(reason) = weft_rules::header::check_name(name) {
                    error(format!("{at}.{list}[{index}]"), reason);
                }
            }
        }
        if let Some(max_age) = self.max_age
            && let Err(reason) = cors::check_max_age(max_age)
        {
            error(join(at, "max_age"), reason);
        }
        errors
    }

    pub fn to_proto(&self) -> proto::CorsPolicy {
        use proto::origin_matcher::Pattern;
        let origin = |entry: &OriginEntry| {
            let pattern = match entry {
                OriginEntry::Origin(any) if any == ANY_ORIGIN => Pattern::Any(true),
                OriginEntry::Origin(exact) => Pattern::Exact(exact.clone()),
                OriginEntry::Pattern(OriginPattern {
                    prefix: Some(prefix),
                    ..
                }) => Pattern::Prefix(prefix.clone()),
                OriginEntry::Pattern(OriginPattern {
                    suffix: Some(suffix),
                    ..
                }) => Pattern::Suffix(suffix.clone()),
                OriginEntry::Pattern(OriginPattern { regex, .. }) => {
                    Pattern::Regex(regex.clone().unwrap_or_default())
                }
            };
            proto::OriginMatcher {
                pattern: Some(pattern),
            }
        };
        proto::CorsPolicy {
            allow_origins: self.allow_origins.iter().map(origin).collect(),
            allow_methods: self.allow_methods.clone(),
            allow_headers: self.allow_headers.clone(),
            expose_headers: self.expose_headers.clone(),
            max_age: self.max_age.map(weft_rules::duration::to_proto),
            allow_credentials: self.allow_credentials,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_cors_section_translates_field_for_field() {
        let section: CorsDocument = serde_json::from_value(json!({
            "allow_origins": ["https://app.example.com", "*", { "suffix": ".example.com" },
                              { "prefix": "https://dev-" }, { "regex": "https://[a-z]+\\.test" }],
            "allow_methods": ["PUT"], "allow_headers": ["x-api-key"],
            "expose_headers": ["x-request-id"], "max_age": "10m" }))
        .unwrap();
        assert_eq!(section.check("routes/users", "routes[0].cors"), []);
        use proto::origin_matcher::Pattern;
        let policy = section.to_proto();
        let patterns: Vec<Pattern> = policy
            .allow_origins
            .into_iter()
            .map(|origin| origin.pattern.unwrap())
            .collect();
        assert_eq!(
            patterns,
            [
                Pattern::Exact("https://app.example.com".into()),
                Pattern::Any(true),
                Pattern::Suffix(".example.com".into()),
                Pattern::Prefix("https://dev-".into()),
                Pattern::Regex("https://[a-z]+\\.test".into()),
            ]
        );
        assert_eq!(policy.allow_methods, ["PUT"]);
        assert_eq!(policy.max_age.unwrap().seconds, 600);
        assert!(!policy.allow_credentials);
    }
}
