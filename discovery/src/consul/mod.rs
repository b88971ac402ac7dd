//! A thin typed client for Consul's HTTP API, over hyper-util (HTTP/1.1).
//!
//! It covers what Weft needs and nothing more: the catalog, health (service
//! and Connect), KV (get, put, check-and-set, delete, recurse), agent service
//! registration and TTL checks, Connect CA roots and leaf certificates,
//! intentions and config entries. Every read takes [`QueryOptions`] (blocking
//! `index` + `wait`, `filter`, `dc`) and returns the value with its
//! [`QueryMeta`]; feed the index back through [`next_index`], which holds
//! Consul's index-reset rules for every watch. Request timeouts are always
//! longer than the wait ([`QueryOptions::request_timeout`]). Errors are a
//! [`ConsulError`] naming the request, the status and Consul's own message,
//! and saying whether a retry can help. A host name in the address resolves
//! through hickory-resolver (TTL-cached, no blocking `getaddrinfo`).
//!
//! # Why our own client
//!
//! Both Rust Consul crates were tried against a real Consul 1.8.7 agent here
//! (evidence in `../shared/DEPENDENCIES.md`):
//!
//! - **consulrs 0.1.0** brings a second HTTP stack beside ours (reqwest 0.11,
//!   hyper 0.14, rustls 0.21, openssl), has no health or Connect endpoints,
//!   failed to deserialize a real 1.8.7 service listing (`TaggedAddresses`),
//!   and holds 66 `unwrap`s: it panics on input it does not expect.
//! - **rs-consul 0.15** has no agent or Connect API, times out any `wait`
//!   over 5 s by default, rejects binary KV values, and drops the index that
//!   Consul sends with a 404 on an empty KV prefix, so a watch on a prefix
//!   that is still empty cannot start.
//!
//! Raw hyper calls to 1.8.7 worked for everything (blocking queries woke 2-14
//! ms after a change), and the client is a few hundred lines on the HTTP stack
//! the workspace already has (hyper 1, one rustls), so we own it.
//!
//! # TLS
//!
//! An `https://` address (or `CONSUL_HTTP_SSL=true` with a bare
//! `host:port`, as in Consul's CLI) speaks HTTPS through rustls with ring as
//! the only provider. Consul's certificate is verified against
//! `CONSUL_CACERT` (a PEM file, one or more CAs), else the system bundle
//! [`SYSTEM_CA_BUNDLE`]; with neither, [`ConsulClient::new`] fails naming
//! `CONSUL_CACERT`. The name checked (and sent as SNI) is the address's host
//! or `CONSUL_TLS_SERVER_NAME`. `CONSUL_CLIENT_CERT` + `CONSUL_CLIENT_KEY`
//! present a client certificate, which a Consul with `verify_incoming`
//! requires. The TLS session sits in the one connector the client has,
//! after hickory DNS and the TCP connect (`tls.rs`); plain HTTP is
//! unchanged. A failed handshake, or a TLS alert after it (TLS 1.3 servers
//! refuse a missing client certificate then), is a [`ConsulError::Tls`]
//! with the address and a hint naming the setting to check.

mod client;
mod config;
mod dns;
mod error;
mod query;
mod tls;
mod types;

pub use client::ConsulClient;
pub use config::{
    BLOCKING_RESERVE_MIN, ConsulConfig, DEFAULT_ADDRESS, DEFAULT_MAX_CONNECTIONS,
    MIN_MAX_CONNECTIONS, SYSTEM_CA_BUNDLE, parse_address, parse_bool,
};
pub use error::ConsulError;
pub use query::{
    CONSUL_DEFAULT_WAIT, CONSUL_MAX_WAIT, NON_BLOCKING_TIMEOUT, QueryMeta, QueryOptions,
    TIMEOUT_MARGIN, next_index,
};
pub use types::{
    AgentService, CaRoot, CaRoots, CheckRegistration, CheckStatus, CheckSummary, ConfigEntry,
    ConnectRegistration, HealthCheck, Intention, KvPair, LeafCert, Node, ProxyConfig,
    ServiceAddress, ServiceConnect, ServiceEntry, ServiceKind, ServiceRegistration, Upstream,
    Weights,
};
