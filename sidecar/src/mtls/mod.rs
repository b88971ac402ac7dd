//! Mutual TLS between sidecars, both sides of the handshake in one folder:
//!
//! * [`mode`] — the inbound listener's STRICT or PERMISSIVE mode, from the
//!   service's policy.
//! * [`server`] — the inbound handshake: the acceptor, PERMISSIVE's
//!   first-byte sniffing, the caller's verified SPIFFE ID. `crate::server`
//!   keeps accepting connections and hands each to it.
//! * [`client`] — the outbound handshake: [`MeshTls`] (the identity a peer
//!   must present), [`TlsConnector`] (dial, then handshake, over any plain
//!   connector, [`Dial`]), what a peer selected by ALPN ([`Negotiated`],
//!   [`PeerProtocol`]).
//! * [`failures`] — failed handshakes of either side, counted for
//!   `/metrics`.
//!
//! Where the certificates come from is `crate::identity`'s work: it makes
//! the key, obtains and renews the leaf and the trust bundle (from the
//! agent or Consul's CA) and keeps them in a [`weft_certs::IdentityStore`].
//! This folder only reads that store, at every handshake, through the
//! rustls configs of `weft_certs::tls`; so rotation never touches it.
//!
//! Shared plumbing, below `upstream` (which builds its mesh clients on
//! [`TlsConnector`] over its own TCP connector) and so below `model` too
//! (whose bodies come from `upstream`): it imports only `weft_certs`, and
//! hands the caller's identity up as a bare SPIFFE ID.

pub mod client;
pub mod failures;
pub mod mode;
pub mod server;

pub use client::{Dial, MeshStream, MeshTls, Negotiated, PeerProtocol, TlsConnector};
pub use mode::MtlsMode;
pub use server::{Accepted, MtlsAcceptor};

#[cfg(test)]
mod tests;
