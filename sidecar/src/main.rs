//! `weft-sidecar`: reads settings, starts the sidecar, drains on
//! SIGTERM/SIGINT and exits 0.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// jemalloc: fewer CPU cycles than glibc malloc for the data path's many
/// small per-request allocations, and it returns freed memory steadily.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    weft_sidecar::process::main(weft_sidecar::Role::Sidecar)
}
