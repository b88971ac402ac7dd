//! The process around a sidecar or a gateway: settings, logging, the
//! runtime (one thread or many), and a drain on SIGTERM/SIGINT. Each binary
//! is this plus its allocator.

use std::process::ExitCode;

use crate::{Drained, Role, Settings};

/// Runs a sidecar or a gateway until SIGTERM/SIGINT, then drains: the
/// whole process, for both binaries.
pub fn main(role: Role) -> ExitCode {
    let name = match role {
        Role::Sidecar => "weft-sidecar",
        Role::Gateway => "weft-gateway",
    };
    let settings = match Settings::load_for(role) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any listener: every connection costs a descriptor, two when
    // proxied.
    weft_runtime::raise_nofile_limit_logged();

    // One worker: a current-thread runtime, the cheapest setup for a
    // sidecar pinned to one core. Otherwise the multi-thread runtime, sized
    // by --workers or tokio's TOKIO_WORKER_THREADS / core count.
    let workers = settings.workers.or_else(|| {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    let runtime = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let started = match role {
            Role::Sidecar => crate::start(settings).await,
            Role::Gateway => crate::gateway::start(settings).await,
        };
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e:#}");
                return ExitCode::FAILURE;
            }
        };
        let handle = running.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
            handle.shutdown();
        });
        match running.wait().await {
            Drained::Clean => tracing::info!("drained; bye"),
            Drained::TimedOut => {
                tracing::warn!("drain timeout reached with requests in flight; exiting")
            }
        }
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Signal handlers unavailable: fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
