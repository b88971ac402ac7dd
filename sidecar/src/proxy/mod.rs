//! The layers both stacks share, one tower layer per file. The stacks
//! themselves are assembled in `crate::outbound` and `crate::inbound`, which
//! read top to bottom:
//!
//! ```text
//! outbound: server -> error_response -> conformance -> request_id -> headers -> route -> split
//!           -> trace (CLIENT span) -> metrics -> rewrite -> ratelimit -> timeout -> retry -> breaker
//!           -> balance (outlier ejection) -> concurrency -> forward
//! inbound:  server (mTLS) -> error_response -> snapshot (the table and policy, once)
//!           -> conformance -> trace (SERVER span) -> metrics
//!           -> tunnel (CONNECT: tcp::inbound)
//!           -> upgrade (extended CONNECT: an HTTP/1.1 Upgrade) -> request_id -> headers
//!           -> jwt_authn -> authorize -> ratelimit -> static_target
//!           -> timeout -> balance -> concurrency -> forward
//! ```
//!
//! Every layer takes and passes on a `ProxyRequest<T>`
//! (`crate::table::request`): the HTTP request, its context, and its
//! target `T`, the type of what the layers above decided (the table and
//! route, then the cluster, then the endpoint). A layer here that works at
//! any stage is generic over `T`; one that needs a decision takes only
//! that stage (`balance` a `Concrete`, `forward` a `ToEndpoint`). The
//! layers here name the request; a feature's layer (authn, retry, breaker, ...)
//! reads it through a trait of its own, so the features never import the
//! table or the stacks. Layers below `error_response` fail with a
//! [`ProxyError`](crate::error::ProxyError); `error_response` is the one
//! place errors become responses. Every layer is always ready (limits fail
//! fast instead of applying backpressure), so the server calls a clone of
//! the stack without `poll_ready`.

pub mod balance;
pub mod conformance;
pub mod error_response;
pub mod forward;
pub mod headers;
pub mod request_id;
pub mod timeout;
pub mod upgrade;
