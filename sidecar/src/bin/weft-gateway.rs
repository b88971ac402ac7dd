//! `weft-gateway`: the mesh's edge (see `weft_sidecar::gateway`). Reads
//! settings, starts the gateway, drains on SIGTERM/SIGINT and exits 0.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// jemalloc, as the sidecar: fewer cycles for the data path's many small
/// per-request allocations.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    weft_sidecar::process::main(weft_sidecar::Role::Gateway)
}
