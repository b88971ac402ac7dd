//! The service map: sidecars report the calls they make
//! (`weft.telemetry.v1.CallReports`, beside ADS on `--listen`), the agent
//! keeps a sliding window of them per caller and destination ([`calls`]),
//! and the admin server draws services, instances, sidecars and the live
//! call graph at `/ui` ([`ui`]).

pub mod calls;
pub mod server;
pub mod ui;

pub use calls::{CallMap, Edge};
pub use server::CallReportsService;
