//! The response cache, as RFC 9111 describes a shared cache (nginx's
//! proxy_cache, Varnish): a route's policy (outbound) or the service's
//! default (inbound), each with its own in-memory store bounded by entries
//! and bytes (least recently used out first).
//! - Keyed by method, authority and path with query; an answer's `Vary`
//!   names request headers that must match too (`Vary: *` is never
//!   stored), one variant per key.
//! - Stored: 200, 203, 204, 300, 301, 404, 405, 410, 414 and 501 with
//!   freshness of their own (`s-maxage`, `max-age`, `Expires`) or the
//!   policy's `default_ttl`; never `no-store`, `private`, `no-cache` (no
//!   revalidation here), `Set-Cookie`. A request with `Authorization` gets
//!   only answers marked `public`, `s-maxage` or `must-revalidate`.
//! - A request's `no-cache`/`max-age=0` goes upstream and refreshes the
//!   store, `no-store` goes upstream and stores nothing.
//! - Hits carry `Age`; every answer carries `X-Cache: HIT|MISS|BYPASS`.
//!   `If-None-Match` and `If-Modified-Since` are answered 304 from a hit.
//! - A body is copied aside while it streams to the client, up to
//!   `max_body_bytes` (a longer one streams on, not stored).
//! - Concurrent misses for one key wait for the first fetch (at most 15s),
//!   then are served from what it stored.
//!
//! A route without a policy costs one `None` check.

mod body;
mod compile;
mod conditional;
mod freshness;
mod layer;
pub mod metrics;
mod policy;
mod store;

pub(crate) use compile::compile;
pub use layer::{CacheLayer, CacheService, CacheTarget, X_CACHE};
pub use policy::CachePolicy;

#[cfg(test)]
mod tests;
