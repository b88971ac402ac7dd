//! Where the mesh state comes from: Consul or a config directory.
pub mod consul;
pub mod file;
