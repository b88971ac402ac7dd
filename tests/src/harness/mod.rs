//! The end-to-end harness: real processes on loopback ports, readiness
//! endpoints instead of sleeps, logs under `target/e2e-logs/<test>/`.
//!
//! What other crates' tests share too (waiting, ports, processes, Redis,
//! Consul's launcher, certificates, the fake agent) lives in the
//! `weft-test-support` crate and is re-exported here under the same paths;
//! the modules below are the end-to-end ones (Weft's own processes, the
//! mesh, traffic).

pub mod agent;
pub mod app;
pub mod binaries;
pub mod browser;
pub mod consul;
pub mod consul_proxy;
pub mod deploy;
pub mod fixtures;
pub mod gateway;
pub mod grpc;
pub mod h2_frames;
pub mod http;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod mutate;
pub mod otlp;
pub mod raw;
pub mod sidecar;
pub mod traffic;

pub use weft_test_support::{certs, eventually, fake_ads, ports, process, redis};
