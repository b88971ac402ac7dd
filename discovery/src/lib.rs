//! weft-discovery: the agent that turns what Consul (or a config directory)
//! knows into routes, clusters and endpoints, and streams them to sidecars.
//!
//! Data flow: `source` (Consul watches, or files) -> `store::MeshStore` ->
//! `snapshot` (validate documents, build resources, debounce) -> `ads`
//! (per-sidecar streams). `admin` serves health and status.
#![forbid(unsafe_code)]

pub mod consul;
pub mod documents;
pub mod model;
pub mod source;
pub mod store;
