//! The `validation` section of route documents (per route) and policy
//! documents (the service's default): the typed model, its rules
//! (`weft_rules::validation`, the sidecar's own), and the translation into
//! the protocol's `ValidationPolicy`, whose schemas travel as JSON text.

use serde::Deserialize;
use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::error::{FieldError, join};

/// JSON Schemas (draft 2020-12) a request must satisfy, and the most body
/// bytes buffered to judge its body.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationDocument {
    /// The JSON body's schema. Absent: the body is not read.
    #[serde(default)]
    pub body: Option<Value>,
    /// The query parameters' schema, as an object of strings.
    #[serde(default)]
    pub query: Option<Value>,
    /// The named headers' schema, as an object of strings (lower case).
    #[serde(default)]
    pub headers: Option<Value>,
    /// Default: 65536.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

// JSON values hold no NaN (serde_json's numbers are finite), so equality
// is an equivalence, as the route documents holding this need.
impl Eq for ValidationDocument {}

impl ValidationDocument {
    /// The rules a sidecar applies when it compiles the policy, with the
    /// same reasons; `at` is the section's path (`routes[0].validation`,
    /// `validation`).
    pub(super) fn check(&self, key: &str, at: &str) -> Vec<FieldError> {
        use weft_rules::validation as rules;
        let mut errors = Vec::new();
        let mut error =
            |field: String, reason: String| errors.push(FieldError::new(key, field, reason));
        for (name, schema) in [
            ("body", &self.body),
            ("query", &self.query),
            ("headers", &self.headers),
        ] {
            if let Some(schema) = schema
                && let Err(reason) = rules::compile_schema(schema)
            {
                error(join(at, name), reason);
            }
        }
        if let Some(schema) = &self.headers
            && let Err(reason) = rules::check_header_schema(schema)
        {
            error(join(at, "headers"), reason);
        }
        if let Some(bytes) = self.max_body_bytes
            && let Err(reason) = rules::check_max_body_bytes(bytes)
        {
            error(join(at, "max_body_bytes"), reason);
        }
        errors
    }

    pub fn to_proto(&self) -> proto::ValidationPolicy {
        let text =
            |schema: &Option<Value>| schema.as_ref().map(Value::to_string).unwrap_or_default();
        proto::ValidationPolicy {
            body_schema: text(&self.body),
            query_schema: text(&self.query),
            header_schema: text(&self.headers),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_validation_section_travels_as_json_text() {
        let section: ValidationDocument = serde_json::from_value(json!({
            "body": {"type": "object", "required": ["name"]},
            "query": {"properties": {"page": {"pattern": "^[0-9]+$"}}},
            "max_body_bytes": 1024 }))
        .unwrap();
        assert_eq!(section.check("routes/users", "routes[0].validation"), []);
        let policy = section.to_proto();
        let body: Value = serde_json::from_str(&policy.body_schema).unwrap();
        assert_eq!(body, json!({"type": "object", "required": ["name"]}));
        assert!(policy.query_schema.contains("page"));
        assert_eq!(policy.header_schema, "");
        assert_eq!(policy.max_body_bytes, Some(1024));
    }

    #[test]
    fn each_rule_names_its_field() {
        let section: ValidationDocument = serde_json::from_value(json!({
            "body": {"type": "objekt"},
            "query": {"minLength": -1},
            "headers": {"required": ["X-Tenant"]},
            "max_body_bytes": 0 }))
        .unwrap();
        let errors = section.check("policies/users", "validation");
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "validation.body",
                "validation.query",
                "validation.headers",
                "validation.max_body_bytes",
            ]
        );
        assert!(errors[0].reason.contains("objekt"), "{}", errors[0].reason);
    }
}
