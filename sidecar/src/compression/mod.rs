//! Compression, as Envoy's compressor filter and nginx's gzip module do it:
//! a route's policy (outbound) or the service's default (inbound).
//! - The encoding (zstd, br, gzip) is chosen from the request's
//!   `Accept-Encoding` q-values (RFC 9110 §12.5.3), ties broken by the
//!   policy's order ([`negotiate`]).
//! - The response body is compressed as it streams, never buffered whole;
//!   the encoder flushes whenever the upstream's body waits, so a slow
//!   stream reaches the client as it is made ([`body`]).
//! - A response is sent as it is when it is not a 2xx with a body (HEAD,
//!   1xx, 204, 206, 304), already has a `Content-Encoding`, says
//!   `Cache-Control: no-transform`, has a content type the policy does not
//!   list, or a `Content-Length` below the minimum.
//! - A compressed response loses its `Content-Length`, gets its
//!   `Content-Encoding`, `Vary: Accept-Encoding` (which an eligible response
//!   gets even when the client accepts no encoding, so a cache keeps both
//!   forms apart), and its strong `ETag` becomes weak.
//! - With `decompress_requests`, a request body sent with
//!   `Content-Encoding: gzip|br|zstd` is decoded as it streams.
//!
//! A route without a policy costs one `None` check.

mod body;
mod compile;
mod layer;
pub mod metrics;
mod negotiate;
mod policy;

pub(crate) use compile::compile;
pub use layer::{CompressionLayer, CompressionService, CompressionTarget};
pub use policy::CompressionPolicy;

#[cfg(test)]
mod tests;
