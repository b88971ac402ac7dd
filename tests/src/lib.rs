//! weft-e2e: Weft's end-to-end tests over real processes.
//!
//! A test is a function run by [`run`]: it gets a [`TestCtx`] (its name and a
//! fresh log directory, `target/e2e-logs/<binary>/<test>/`), starts what it
//! needs with the [`harness`] (a real Consul dev agent, `weft-discovery`,
//! sidecars, `weft-testapp` upstreams), and returns `Ok(())`. When it fails
//! (an error or a panic) every process has already been killed, and the tail of
//! each process log is printed before the failure.
#![forbid(unsafe_code)]

pub mod harness;

/// The gRPC echo service of `weft-testapp` (tests/proto/echo.proto).
pub mod echo {
    tonic::include_proto!("weft.test.echo");
}

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

pub use harness::eventually::eventually;
pub use harness::http::{Call, Echo, HttpClient, Reply};
pub use harness::mesh::{
    FileMesh, Mesh, MeshedInstance, plain_users_behind_client, tally, wait_for_instances,
    wait_for_route,
};
pub use harness::traffic::{Traffic, TrafficReport, TrafficSpec};

/// How many lines of each process log a failed test prints.
const FAILURE_LOG_LINES: usize = 60;

/// What a test knows about itself.
#[derive(Clone, Debug)]
pub struct TestCtx {
    /// `<test binary>/<test function>`.
    pub name: String,
    /// Where its processes log (emptied at the start of the test).
    pub log_dir: PathBuf,
    /// The run's measurement file, shared by all tests.
    pub measurements: PathBuf,
}

/// Runs one end-to-end test on a multi-threaded runtime (the steady-traffic
/// driver must not share a thread with the test's own waits), and reports
/// the process logs when it fails.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce(TestCtx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let ctx = match test_ctx() {
        Ok(ctx) => ctx,
        Err(error) => panic!("setting up the test: {error:#}"),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("building the tokio runtime: {error}"),
    };
    let future = test(ctx.clone());
    // The future owns every process of the test: when it returns or unwinds,
    // they are killed, so the logs are complete when printed below.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(future)));
    drop(runtime);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            // The cause first: a CI excerpt that keeps the head and tail of
            // a long output would otherwise lose it among the logs.
            eprintln!("\n===== {} failed: {error:#}", ctx.name);
            print_logs(&ctx);
            panic!("{} failed: {error:?}", ctx.name);
        }
        Err(panic) => {
            print_logs(&ctx);
            std::panic::resume_unwind(panic);
        }
    }
}

fn test_ctx() -> anyhow::Result<TestCtx> {
    let thread = std::thread::current();
    let function = thread.name().unwrap_or("unnamed").replace("::", "-");
    // The test binary is `<name>-<hash>`: keep the name.
    let binary = std::env::current_exe()?
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let binary = binary
        .rsplit_once('-')
        .map_or(binary.as_str(), |(name, _)| name)
        .to_owned();
    let name = format!("{binary}/{function}");
    let profile = harness::binaries::profile_dir()?;
    let target = profile.parent().unwrap_or(&profile);
    let measurements = target.join("e2e-logs").join("measurements.tsv");
    let log_dir = target.join("e2e-logs").join(&binary).join(&function);
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)?;
    }
    std::fs::create_dir_all(&log_dir)?;
    Ok(TestCtx {
        name,
        log_dir,
        measurements,
    })
}

fn print_logs(ctx: &TestCtx) {
    let Ok(entries) = std::fs::read_dir(&ctx.log_dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    eprintln!(
        "\n===== {} failed; process logs in {}",
        ctx.name,
        ctx.log_dir.display()
    );
    for log in logs {
        eprintln!(
            "----- {} (last {FAILURE_LOG_LINES} lines)\n{}",
            log.display(),
            harness::process::tail_of(&log, FAILURE_LOG_LINES)
        );
    }
}

impl TestCtx {
    /// Records a measured latency: printed as `MEASURED <what>: <ms> ms` and
    /// appended to `target/e2e-logs/measurements.tsv` (test, what, value),
    /// which deploy/local/test.sh prints at the end of a run.
    pub fn measured(&self, what: &str, latency: std::time::Duration) {
        self.record(what, &format!("{:.1} ms", latency.as_secs_f64() * 1_000.0));
    }

    /// Records any measured figure (see [`TestCtx::measured`]).
    pub fn record(&self, what: &str, value: &str) {
        println!("MEASURED {what}: {value}");
        let line = format!("{}\t{what}\t{value}\n", self.name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.measurements);
        // One write per line with O_APPEND: parallel tests never interleave
        // within a line. Losing a figure must not fail a test, so errors are
        // only reported.
        if let Err(error) =
            file.and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()))
        {
            eprintln!(
                "cannot record a measurement in {}: {error}",
                self.measurements.display()
            );
        }
    }
}
