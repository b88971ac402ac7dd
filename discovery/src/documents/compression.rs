//! The `compression` section of route documents (per route) and policy
//! documents (the service's default): the typed model, its rules
//! (`weft_rules::compression`, the sidecar's own), and the translation into
//! the protocol's `CompressionPolicy`.

use serde::Deserialize;
use weft_proto::config::v1 as proto;

use super::error::{FieldError, join};

/// How a proxy compresses responses (and, if asked, decodes requests).
/// Every field has a default, so `{}` turns compression on as documented.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionDocument {
    /// Most preferred first (ties of `Accept-Encoding` q-values). Default:
    /// zstd, br, gzip.
    #[serde(default)]
    pub encodings: Option<Vec<String>>,
    /// Default: 1024 bytes.
    #[serde(default)]
    pub min_length: Option<u64>,
    /// Default: the text types (`weft_rules::compression::DEFAULT_CONTENT_TYPES`).
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    /// Default: 6.
    #[serde(default)]
    pub gzip_level: Option<u32>,
    /// Default: 4.
    #[serde(default)]
    pub brotli_quality: Option<u32>,
    /// Default: 3.
    #[serde(default)]
    pub zstd_level: Option<i32>,
    #[serde(default)]
    pub decompress_requests: bool,
}

impl CompressionDocument {
    /// The rules a sidecar applies when it compiles the policy, with the
    /// same reasons; `at` is the section's path (`routes[0].compression`,
    /// `compression`).
    pub(super) fn check(&self, key: &str, at: &str) -> Vec<FieldError> {
        use weft_rules::compression as rules;
        let mut errors = Vec::new();
        let mut error =
            |field: String, reason: String| errors.push(FieldError::new(key, field, reason));
        let mut seen = Vec::new();
        for (index, name) in self.encodings.iter().flatten().enumerate() {
            let field = format!("{at}.encodings[{index}]");
            match rules::check_encoding(name) {
                Ok(encoding) => {
                    if let Err(reason) = rules::check_no_duplicate(encoding, &seen) {
                        error(field, reason);
                    }
                    seen.push(encoding);
                }
                Err(reason) => error(field, reason),
            }
        }
        if let Some(min_length) = self.min_length
            && let Err(reason) = rules::check_min_length(min_length)
        {
            error(join(at, "min_length"), reason);
        }
        for (index, media_type) in self.content_types.iter().flatten().enumerate() {
            if let Err(reason) = rules::check_content_type(media_type) {
                error(format!("{at}.content_types[{index}]"), reason);
            }
        }
        if let Some(level) = self.gzip_level
            && let Err(reason) = rules::check_gzip_level(level)
        {
            error(join(at, "gzip_level"), reason);
        }
        if let Some(quality) = self.brotli_quality
            && let Err(reason) = rules::check_brotli_quality(quality)
        {
            error(join(at, "brotli_quality"), reason);
        }
        if let Some(level) = self.zstd_level
            && let Err(reason) = rules::check_zstd_level(level)
        {
            error(join(at, "zstd_level"), reason);
        }
        errors
    }

    pub fn to_proto(&self) -> proto::CompressionPolicy {
        use proto::compression_policy::Encoding;
        let encoding = |name: &String| {
            let encoding = match name.as_str() {
                "gzip" => Encoding::Gzip,
                "br" => Encoding::Br,
                "zstd" => Encoding::Zstd,
                // Refused by `check`; sent as the sidecar would refuse it.
                _ => Encoding::Unspecified,
            };
            encoding as i32
        };
        proto::CompressionPolicy {
            encodings: self.encodings.iter().flatten().map(encoding).collect(),
            min_length: self.min_length,
            content_types: self.content_types.clone().unwrap_or_default(),
            gzip_level: self.gzip_level,
            brotli_quality: self.brotli_quality,
            zstd_level: self.zstd_level,
            decompress_requests: self.decompress_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_compression_section_translates_field_for_field() {
        let section: CompressionDocument = serde_json::from_value(json!({
            "encodings": ["br", "gzip"], "min_length": 256,
            "content_types": ["application/json", "text/*"],
            "gzip_level": 9, "brotli_quality": 5, "zstd_level": 7,
            "decompress_requests": true }))
        .unwrap();
        assert_eq!(section.check("routes/users", "routes[0].compression"), []);
        use proto::compression_policy::Encoding;
        let policy = section.to_proto();
        assert_eq!(
            policy.encodings,
            [Encoding::Br as i32, Encoding::Gzip as i32]
        );
        assert_eq!(policy.min_length, Some(256));
        assert_eq!(policy.content_types, ["application/json", "text/*"]);
        assert_eq!(
            (policy.gzip_level, policy.brotli_quality, policy.zstd_level),
            (Some(9), Some(5), Some(7))
        );
        assert!(policy.decompress_requests);
    }

    #[test]
    fn an_empty_section_takes_every_default() {
        let section: CompressionDocument = serde_json::from_value(json!({})).unwrap();
        assert_eq!(section.check("routes/users", "compression"), []);
        let policy = section.to_proto();
        assert!(policy.encodings.is_empty() && policy.content_types.is_empty());
        assert_eq!(policy.min_length, None);
        assert!(!policy.decompress_requests);
    }

    #[test]
    fn each_rule_names_its_field() {
        let section: CompressionDocument = serde_json::from_value(json!({
            "encodings": ["gzip", "deflate", "gzip"], "min_length": 2_000_000_000u64,
            "content_types": ["text/html; charset=utf-8"],
            "gzip_level": 0, "brotli_quality": 12, "zstd_level": 20 }))
        .unwrap();
        let fields: Vec<String> = section
            .check("policies/users", "compression")
            .into_iter()
            .map(|error| error.field)
            .collect();
        assert_eq!(
            fields,
            [
                "compression.encodings[1]",
                "compression.encodings[2]",
                "compression.min_length",
                "compression.content_types[0]",
                "compression.gzip_level",
                "compression.brotli_quality",
                "compression.zstd_level",
            ]
        );
    }
}
