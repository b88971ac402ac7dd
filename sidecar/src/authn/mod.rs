//! JWT authentication of inbound requests.
//!
//! A service's policy ([`AuthnConfig`]) names the identity providers whose
//! tokens it accepts (issuer, audiences, keys from an inline JWKS, a JWKS
//! URL or a shared HMAC secret, allowed algorithms, where the token is,
//! required claims, which claims become headers) and per-path rules (public
//! paths, required roles). [`Authenticator::new`] validates and compiles it;
//! [`Authenticator::authenticate`] decides on a request from its method, URI
//! and headers alone; [`JwtAuthnLayer`] puts that in the inbound stack.
//!
//! * `config` — the policy as documents write it (serde, snake_case).
//! * `compile` — validation (every problem, with field and reason) and
//!   compilation.
//! * `authenticator` — the verification core and header rewriting.
//! * `provider` — verifying one token against one provider.
//! * `token` — finding the token (header, cookie, query parameter).
//! * `keys` — a parsed JWKS; `jwks` — fetching, caching and refreshing one;
//!   `jwks_tls` — the verified TLS client of an `https://` JWKS URL.
//! * `rules` — per-path requirements and roles.
//! * `claims` — verified claims and claim headers.
//! * `error` — config errors, denials, and the denial response.
//! * `layer` — the tower layer.

mod authenticator;
mod claims;
mod compile;
pub mod config;
mod error;
mod jwks;
mod jwks_tls;
mod keys;
mod layer;
mod provider;
mod rules;
mod token;
mod wire;

pub use authenticator::{Admission, Authenticator, RequestHead};
pub use claims::VerifiedClaims;
pub use config::AuthnConfig;
pub use error::{AuthnError, AuthnErrorKind, ConfigError, ConfigErrors};
pub use layer::{AuthnTarget, JwtAuthn, JwtAuthnLayer};
