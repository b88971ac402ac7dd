//! weft-test-support: what the tests of every Weft crate share, so each
//! piece exists once.
//!
//! - [`eventually`]: waiting for a condition instead of sleeping (polling,
//!   or on a watch signal), failing with what was awaited, for how long,
//!   how many attempts and the last error.
//! - [`consul`]: a real `consul agent -dev` per test (binary lookup with an
//!   install hint, readiness from its HTTP API) and its API as JSON.
//! - [`redis`]: a real `redis-server` per test, ready when it answers PING,
//!   and a minimal RESP client.
//! - [`fake_ads`]: a fake of Weft's agent speaking the ADS protocol, with
//!   builders for the resources it serves.
//! - [`certs`]: private CAs and leaves minted per test, and the PEM files of
//!   a Consul serving HTTPS.
//! - [`mesh_identity`]: a service's mesh identity (root CA, SPIFFE leaf and
//!   the identity store a sidecar serves mTLS from), minted by `weft-certs`.
//! - [`process`] and [`ports`]: child processes logging to a file, killed on
//!   drop; loopback ports free for TCP and UDP, never handed out twice.
//! - [`temp_dir`]: a fresh directory removed on drop, for tests without a
//!   log directory of their own.
//!
//! Used by `sidecar/tests`, `discovery/tests` and the end-to-end crate
//! (`tests/`, whose harness re-exports these modules under
//! `weft_e2e::harness`). It depends on neither `weft-sidecar` nor
//! `weft-discovery` (`weft-certs`, below both, is fine): they dev-depend on it, so a test that needs their typed
//! clients wraps what is here (the e2e harness's `Consul`, the agent tests'
//! `DevConsul`).
//!
//! Its own tests (`cargo test -p weft-test-support`) pin the failure message
//! of `eventually` (CI excerpts are searched for it) and run the launchers
//! against the real Consul and Redis.
#![forbid(unsafe_code)]

pub mod certs;
pub mod consul;
pub mod eventually;
pub mod fake_ads;
pub mod mesh_identity;
pub mod ports;
pub mod process;
pub mod redis;
pub mod temp_dir;
