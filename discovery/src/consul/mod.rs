//! A thin typed client for Consul's HTTP API.
