//! The config rules both ends of the protocol enforce, written once.
//!
//! The agent (and `weftctl validate`, which runs the agent's document
//! validation) checks documents before it builds resources; a sidecar checks
//! every resource it receives before it swaps it in, and NACKs on failure.
//! Both call these functions, so a document the agent accepts is never
//! refused by a sidecar for a rule written here, and both give the same
//! reason. Each function returns the reason only: the caller knows where
//! the value sits (a document field, or a resource field) and names it.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod cache;
pub mod compression;
pub mod cors;
pub mod duration;
pub mod ejection;
pub mod gateway;
pub mod grpc;
pub mod header;
pub mod jwt;
pub mod limits;
pub mod method;
pub mod name;
pub mod path;
pub mod pem;
pub mod rate_limit;
pub mod regex;
pub mod retry;
pub mod split;
pub mod validation;
