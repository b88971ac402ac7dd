//! A `ValidationPolicy` message compiled: every schema parsed and compiled
//! (`weft_rules::validation`), every problem reported at its field for the
//! NACK.

use weft_proto::config::v1 as pb;
use weft_rules::validation as rules;

use super::policy::ValidationPolicy;
use crate::nack::Errors;

/// Compiles `p`, reporting at `at` (`virtual_hosts[0].routes[1].validation`,
/// `validation`); `None` when anything is wrong.
pub(crate) fn compile(
    p: &pb::ValidationPolicy,
    at: &str,
    errs: &mut Errors,
) -> Option<ValidationPolicy> {
    let before = errs.0.len();
    let mut schema = |text: &str, field: &str| {
        if text.is_empty() {
            return None;
        }
        match rules::compile_schema_text(text) {
            Ok(validator) => Some(validator),
            Err(reason) => {
                errs.at(&format!("{at}.{field}"), reason);
                None
            }
        }
    };
    let body = schema(&p.body_schema, "body_schema");
    let query = schema(&p.query_schema, "query_schema");
    let headers = schema(&p.header_schema, "header_schema");
    let mut header_names = Vec::new();
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&p.header_schema) {
        match rules::check_header_schema(&value) {
            Ok(()) => {
                header_names = rules::header_names(&value)
                    .iter()
                    .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
                    .collect();
            }
            Err(reason) => errs.at(&format!("{at}.header_schema"), reason),
        }
    }
    let max_body_bytes = p.max_body_bytes.unwrap_or(rules::DEFAULT_MAX_BODY_BYTES);
    if let Err(reason) = rules::check_max_body_bytes(max_body_bytes) {
        errs.at(&format!("{at}.max_body_bytes"), reason);
    }
    if errs.0.len() > before {
        return None;
    }
    Some(ValidationPolicy {
        body,
        query,
        headers,
        header_names,
        // At most 16 MiB (checked above).
        max_body_bytes: max_body_bytes as usize,
    })
}
