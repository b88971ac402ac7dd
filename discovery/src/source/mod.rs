//! Where the mesh state comes from: Consul or a config directory.
