//! Request validation policies: JSON Schemas (draft 2020-12) for a
//! request's body, query parameters and named headers, and the most body
//! bytes the proxy buffers to judge it.

use jsonschema::Validator;
use serde_json::Value;

/// The body bytes buffered when a policy names no bound: larger than most
/// JSON API requests, small enough that many in flight stay cheap.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;

/// The highest bound a policy may set: the proxy holds a whole body in
/// memory to judge it, so a large upload belongs to a route without a body
/// schema.
pub const MAX_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// The bound on a body buffered for validation: 1 to 16 MiB.
pub fn check_max_body_bytes(bytes: u64) -> Result<(), String> {
    if (1..=MAX_MAX_BODY_BYTES).contains(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "max_body_bytes must be between 1 and {MAX_MAX_BODY_BYTES} (16 MiB), got {bytes}"
        ))
    }
}

/// `schema` compiled under JSON Schema draft 2020-12 (the schema is first
/// checked against the draft's meta-schema); the compiler's reason when it
/// does not compile. No remote `$ref` is fetched: jsonschema is built
/// without its HTTP and file resolvers, so such a reference is refused
/// here, at config time, rather than looked up per request.
pub fn compile_schema(schema: &Value) -> Result<Validator, String> {
    jsonschema::draft202012::new(schema)
        .map_err(|error| format!("not a valid JSON Schema (draft 2020-12): {error}"))
}

/// A schema sent as JSON text (the protocol's form), parsed and compiled.
pub fn compile_schema_text(text: &str) -> Result<Validator, String> {
    let schema: Value = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    compile_schema(&schema)
}

/// The header names a header schema lists (`properties` and `required`),
/// each lower case: the proxy looks headers up by these names, and HTTP
/// header names are case-insensitive, so an upper-case name would never
/// match what HTTP/2 and the proxy's HTTP/1 side carry.
pub fn check_header_schema(schema: &Value) -> Result<(), String> {
    for name in header_names(schema) {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("header name `{name}` must be lower case"));
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("`{name}` is not a valid header name"));
        }
    }
    Ok(())
}

/// The names a header schema reads: the keys of its top-level
/// `properties` and the entries of its `required`, each once.
pub fn header_names(schema: &Value) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let listed = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|properties| properties.keys().cloned());
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(str::to_owned));
    for name in listed.chain(required) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_body_bound_is_one_byte_to_sixteen_mebibytes() {
        assert!(check_max_body_bytes(1).is_ok());
        assert!(check_max_body_bytes(DEFAULT_MAX_BODY_BYTES).is_ok());
        assert!(check_max_body_bytes(MAX_MAX_BODY_BYTES).is_ok());
        for bad in [0, MAX_MAX_BODY_BYTES + 1] {
            let reason = check_max_body_bytes(bad).unwrap_err();
            assert!(reason.contains("max_body_bytes"), "{reason}");
        }
    }

    #[test]
    fn a_schema_compiles_under_draft_2020_12_or_says_why_not() {
        assert!(compile_schema(&json!({"type": "object"})).is_ok());
        assert!(compile_schema(&json!(true)).is_ok());
        let reason = compile_schema(&json!({"type": "objekt"})).unwrap_err();
        assert!(reason.contains("draft 2020-12"), "{reason}");
        assert!(reason.contains("objekt"), "{reason}");
        let reason = compile_schema(&json!({"minLength": -1})).unwrap_err();
        assert!(reason.contains("draft 2020-12"), "{reason}");
        // No reference is fetched from the network.
        assert!(compile_schema(&json!({"$ref": "https://example.com/s.json"})).is_err());
        let reason = compile_schema_text("{not json").unwrap_err();
        assert!(reason.starts_with("not JSON"), "{reason}");
    }

    #[test]
    fn header_schemas_name_headers_in_lower_case() {
        let good = json!({"properties": {"x-tenant": {}}, "required": ["x-request-id"]});
        assert!(check_header_schema(&good).is_ok());
        assert_eq!(header_names(&good), ["x-tenant", "x-request-id"]);
        let upper = json!({"required": ["X-Tenant"]});
        assert!(
            check_header_schema(&upper)
                .unwrap_err()
                .contains("X-Tenant")
        );
        let invalid = json!({"properties": {"a b": {}}});
        assert!(check_header_schema(&invalid).unwrap_err().contains("a b"));
    }
}
