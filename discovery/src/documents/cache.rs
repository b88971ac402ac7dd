//! The `cache` section of route documents (per route) and policy documents
//! (the service's default): the typed model, its rules (`weft_rules::cache`,
//! the sidecar's own), and the translation into the protocol's
//! `CachePolicy`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use weft_proto::config::v1 as proto;

use super::duration;
use super::error::{FieldError, join};

/// How a proxy caches responses. Every field has a default, so `{}` turns
/// the cache on as documented.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDocument {
    /// Default: 10000.
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// Default: 64 MiB. A number of bytes or `64MiB`.
    #[serde(default, deserialize_with = "size")]
    pub max_bytes: Option<u64>,
    /// Default: 1 MiB. A number of bytes or `1MiB`.
    #[serde(default, deserialize_with = "size")]
    pub max_body_bytes: Option<u64>,
    /// Default: 0s (answers without their own freshness are not stored).
    #[serde(default, deserialize_with = "duration::text::deserialize_option")]
    pub default_ttl: Option<Duration>,
    /// Default: GET, HEAD.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

/// A size written as a number of bytes or as text (`64MiB`).
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(Some(bytes)),
        Size::Text(text) => weft_rules::cache::parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl CacheDocument {
    /// The rules a sidecar applies when it compiles the policy, with the
    /// same reasons; `at` is the section's path (`routes[0].cache`, `cache`).
    pub(super) fn check(&self, key: &str, at: &str) -> Vec<FieldError> {
        use weft_rules::cache as rules;
        let mut errors = Vec::new();
        let mut error =
            |field: String, reason: String| errors.push(FieldError::new(key, field, reason));
        if let Some(max_entries) = self.max_entries
            && let Err(reason) = rules::check_max_entries(max_entries)
        {
            error(join(at, "max_entries"), reason);
        }
        let max_bytes = self.max_bytes.unwrap_or(rules::DEFAULT_MAX_BYTES);
        if let Err(reason) = rules::check_max_bytes(max_bytes) {
            error(join(at, "max_bytes"), reason);
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(rules::DEFAULT_MAX_BODY_BYTES);
        if let Err(reason) = rules::check_max_body_bytes(max_body_bytes, max_bytes) {
            error(join(at, "max_body_bytes"), reason);
        }
        if let Some(ttl) = self.default_ttl
            && let Err(reason) = rules::check_default_ttl(ttl)
        {
            error(join(at, "default_ttl"), reason);
        }
        let mut seen = Vec::new();
        for (index, name) in self.methods.iter().flatten().enumerate() {
            match rules::check_method(name, &seen) {
                Ok(method) => seen.push(method),
                Err(reason) => error(format!("{at}.methods[{index}]"), reason),
            }
        }
        errors
    }

    pub fn to_proto(&self) -> proto::CachePolicy {
        proto::CachePolicy {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            max_body_bytes: self.max_body_bytes,
            default_ttl: self.default_ttl.map(weft_rules::duration::to_proto),
            methods: self.methods.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_cache_section_translates_field_for_field() {
        let section: CacheDocument = serde_json::from_value(json!({
            "max_entries": 500, "max_bytes": "64MiB", "max_body_bytes": 65536,
            "default_ttl": "30s", "methods": ["GET"] }))
        .unwrap();
        assert_eq!(section.check("routes/users", "routes[0].cache"), []);
        let policy = section.to_proto();
        assert_eq!(policy.max_entries, Some(500));
        assert_eq!(policy.max_bytes, Some(64 << 20));
        assert_eq!(policy.max_body_bytes, Some(65536));
        assert_eq!(policy.default_ttl.map(|d| d.seconds), Some(30));
        assert_eq!(policy.methods, ["GET"]);
    }

    #[test]
    fn an_empty_section_takes_every_default() {
        let section: CacheDocument = serde_json::from_value(json!({})).unwrap();
        assert_eq!(section.check("routes/users", "cache"), []);
        let policy = section.to_proto();
        assert_eq!((policy.max_entries, policy.max_bytes), (None, None));
        assert!(policy.default_ttl.is_none() && policy.methods.is_empty());
    }

    #[test]
    fn a_malformed_size_is_refused_with_the_forms_it_takes() {
        let error = serde_json::from_value::<CacheDocument>(json!({ "max_bytes": "64 MB" }))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a size"), "{error}");
    }

    #[test]
    fn each_rule_names_its_field() {
        let section: CacheDocument = serde_json::from_value(json!({
            "max_entries": 0, "max_bytes": 100, "max_body_bytes": 0,
            "default_ttl": "25h", "methods": ["GET", "POST", "GET"] }))
        .unwrap();
        let fields: Vec<String> = section
            .check("policies/users", "cache")
            .into_iter()
            .map(|error| error.field)
            .collect();
        assert_eq!(
            fields,
            [
                "cache.max_entries",
                "cache.max_bytes",
                "cache.max_body_bytes",
                "cache.default_ttl",
                "cache.methods[1]",
                "cache.methods[2]",
            ]
        );
    }
}
