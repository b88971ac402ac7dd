//! A compiled validation policy: the schemas' validators, made once when
//! the policy arrives, never per request.

use jsonschema::Validator;

/// One route's (or one service's) validation policy.
pub struct ValidationPolicy {
    pub(super) body: Option<Validator>,
    pub(super) query: Option<Validator>,
    pub(super) headers: Option<Validator>,
    /// The header names the header schema reads, lower case.
    pub(super) header_names: Vec<http::HeaderName>,
    pub(super) max_body_bytes: usize,
}

impl std::fmt::Debug for ValidationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidationPolicy")
            .field("body", &self.body.is_some())
            .field("query", &self.query.is_some())
            .field("headers", &self.header_names)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}
