//! The claims of a verified token, and turning claims into header values.

use std::sync::Arc;

use http::HeaderValue;
use serde_json::{Map, Value};

/// The payload of a token whose signature, issuer, audience, times and
/// required claims all checked out. Later layers (authorization, logging)
/// find it in the request's extensions as `Arc<VerifiedClaims>`.
#[derive(Debug)]
pub struct VerifiedClaims {
    provider: Arc<str>,
    claims: Map<String, Value>,
}

impl VerifiedClaims {
    pub(crate) fn new(provider: Arc<str>, claims: Map<String, Value>) -> Self {
        Self { provider, claims }
    }

    /// The name of the provider that issued it.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// A claim by name; a name with dots that is not a claim itself walks
    /// into objects (`realm_access.roles`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        lookup(&self.claims, name)
    }

    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.claims
    }
}

/// `name` as a top-level claim, else as a dotted path into objects. The
/// exact name wins so that namespaced claims such as
/// `https://example.com/roles` keep working.
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A claim as a header value: strings as they are, numbers and booleans
/// printed, arrays of strings joined with `,`, other values as compact
/// JSON. `None` for null or a value a header cannot carry (control
/// characters).
pub(crate) fn header_value(value: &Value) -> Option<HeaderValue> {
    match value {
        Value::Null => None,
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            HeaderValue::from_str(&joined.join(",")).ok()
        }
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_prefers_the_exact_name_then_walks_dots() {
        let claims = json!({ "https://x.io/roles": ["a"], "realm_access": { "roles": ["b"] } });
        let claims = claims.as_object().unwrap();
        assert_eq!(lookup(claims, "https://x.io/roles"), Some(&json!(["a"])));
        assert_eq!(lookup(claims, "realm_access.roles"), Some(&json!(["b"])));
        assert_eq!(lookup(claims, "realm_access.nope"), None);
        assert_eq!(lookup(claims, "nope"), None);
    }

    #[test]
    fn claims_become_header_values() {
        assert_eq!(header_value(&json!("alice")).unwrap(), "alice");
        assert_eq!(header_value(&json!(42)).unwrap(), "42");
        assert_eq!(header_value(&json!(true)).unwrap(), "true");
        assert_eq!(header_value(&json!(["a", "b"])).unwrap(), "a,b");
        assert_eq!(header_value(&json!({"k": 1})).unwrap(), "{\"k\":1}");
        assert_eq!(header_value(&json!(null)), None);
        assert_eq!(header_value(&json!("line\nbreak")), None);
    }
}
