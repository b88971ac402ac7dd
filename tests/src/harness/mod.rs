//! The end-to-end harness: real processes on loopback ports, readiness
//! endpoints instead of sleeps, logs under `target/e2e-logs/<test>/`.

pub mod agent;
pub mod app;
pub mod binaries;
pub mod browser;
pub mod consul;
pub mod consul_proxy;
pub mod eventually;
pub mod fixtures;
pub mod grpc;
pub mod h2_frames;
pub mod http;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod mutate;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod raw;
pub mod redis;
pub mod sidecar;
pub mod traffic;
