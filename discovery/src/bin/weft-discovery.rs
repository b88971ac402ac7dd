//! `weft-discovery`: the discovery agent. See `weft_discovery::agent`.

use clap::Parser;

/// jemalloc: memory freed when sidecar streams close goes back to the
/// system (glibc malloc kept most of it; docs/PERFORMANCE.md, section 5).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (the form tikv-jemallocator
/// documents: a NUL-terminated string whose address jemalloc reads). A
/// background thread returns freed pages after 1 s even while the agent
/// is idle: without it, jemalloc purges only on later allocations, and an
/// agent whose 2,000 streams closed kept 440 MB it no longer used.
/// `_RJEM_MALLOC_CONF` in the environment still overrides these.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
