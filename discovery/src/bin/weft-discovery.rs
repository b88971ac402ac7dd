//! `weft-discovery`: the discovery agent. See `weft_discovery::agent`.

use clap::Parser;

/// jemalloc: memory freed when sidecar streams close goes back to the
/// system (glibc malloc kept most of it; docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    weft_discovery::telemetry::init_logging();
    // Before any listener or Consul connection: every one costs a descriptor.
    weft_runtime::raise_nofile_limit_logged();
    let settings = weft_discovery::agent::Settings::parse();
    match weft_discovery::agent::run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-discovery: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
