//! weft-certs: workload identity for the Weft mesh.
//!
//! - [`spiffe`]: SPIFFE IDs (`spiffe://<td>/ns/<ns>/svc/<svc>`, and Consul's
//!   form with `/dc/<dc>`), parsed and validated.
//! - [`ca`]: a small CA (self-signed root or operator intermediate) that
//!   signs leaves for an identity its caller chooses.
//! - [`bundle`]: the trusted roots, several at once for root rotation.
//! - [`leaf`]: a sidecar's local key, its CSR, and facts of the signed leaf.
//! - [`tls`]: rustls configs for mutual TLS between sidecars, with leaf and
//!   bundle swappable at runtime.
//!
//! Crypto is ring only (no aws-lc-rs): every config is built with
//! `builder_with_provider`, so no process-wide provider is needed.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
mod error;
pub mod leaf;
pub mod spiffe;
pub mod tls;
mod x509;

pub use bundle::{RootFacts, TrustBundle};
pub use ca::{Ca, DEFAULT_LEAF_TTL, DEFAULT_ROOT_TTL};
pub use error::Error;
pub use leaf::{LeafInfo, LeafKey};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{IdentityStore, PeerRejection};
