//! CORS, the Fetch standard's cross-origin protocol, as Envoy's cors
//! filter does it: a route's policy (outbound) or the service's default
//! (inbound). Where a policy applies, the proxy owns the CORS headers:
//! - a preflight (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) is answered here and never reaches
//!   the app: 204 with the policy's lists for an allowed origin, 403
//!   `cors-origin-refused` without any CORS header otherwise;
//! - an allowed origin's response gets `Access-Control-Allow-Origin` (and
//!   credentials, exposed headers); a refused origin's gets none, the
//!   app's own removed, so the browser blocks the page from reading it;
//! - every response to an `Origin` gets `Vary: Origin`, so a cache never
//!   serves one origin's answer to another.
//!
//! A request without `Origin` is not a CORS request and passes untouched;
//! a route without a policy costs one `None` check.

mod compile;
mod layer;
pub mod metrics;
mod policy;

pub(crate) use compile::compile;
pub use layer::{CorsLayer, CorsService, CorsTarget};
pub use policy::{CorsPolicy, OriginMatch};

#[cfg(test)]
mod tests;
