//! Request validation: a route's policy (outbound) or the service's
//! default (inbound) judges a request against JSON Schemas (draft 2020-12)
//! before it goes on, as an API gateway's request validator does.
//! - The body is buffered up to `max_body_bytes` (more: 413), parsed as
//!   JSON (not JSON: 400; sent as another type than `application/json` or
//!   `+json`: 415) and validated; a valid request goes on with its
//!   buffered body.
//! - The query parameters are validated as an object of strings (a
//!   repeated parameter: its first value), the headers the schema names as
//!   an object of strings with lower-case names.
//! - A failing request is answered 400 `application/problem+json`
//!   (RFC 9457) listing every failing field, through the proxy's one
//!   error-to-response place (`ErrorKind::ValidationFailed`); it never
//!   reaches the app.
//!
//! The schemas are compiled once per config ([`compile`]). A route
//! without a policy costs one `None` check.

mod compile;
mod layer;
pub mod metrics;
mod policy;

pub(crate) use compile::compile;
pub use layer::{ValidationLayer, ValidationService, ValidationTarget};
pub use policy::ValidationPolicy;

#[cfg(test)]
mod tests;
