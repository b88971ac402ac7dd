//! weft-discovery: the agent that turns what Consul (or a config directory)
//! knows into routes, clusters and endpoints, and streams them to sidecars.
//!
//! Data flow: `source` (Consul watches, or files) -> `store::MeshStore` ->
//! `snapshot` (validate documents, build resources, debounce) -> `ads`
//! (per-sidecar streams). `identity` signs sidecars' certificates (mTLS);
//! `admin` serves health, status, metrics and the service map
//! (`servicemap`: the calls sidecars report); `agent` wires them together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ads;
pub mod agent;
pub mod consul;
pub mod documents;
pub mod fs_watch;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod servicemap;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod telemetry;
