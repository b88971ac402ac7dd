//! Running out of file descriptors (issue 12). The agent and the sidecar
//! raise their soft open-file limit to the hard limit at start; when
//! descriptors run out anyway (here: soft = hard = 1,024 and 1,100 idle
//! connections), each listener pauses accepting and says so at most once a
//! second, the process stays up, and it serves again once the connections
//! close. Before, the agent's admin loop retried at once and wrote 75
//! million identical warnings in three minutes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weft_e2e::harness::agent::{Agent, Backend};
use weft_e2e::harness::app::App;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::harness::process::Process;
use weft_e2e::harness::sidecar::{Sidecar, SidecarSpec};
use weft_e2e::{Call, HttpClient, TestCtx, eventually, run, wait_for_route};

/// More connections than a process limited to 1,024 descriptors can accept.
const CONNECTIONS: usize = 1_100;

/// How long one dial may wait for the process to accept (see [`open`]).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the descriptors stay exhausted.
const HOLD: Duration = Duration::from_secs(3);

/// At most one accept-error line per second per listener: over the hold and
/// the wait for the first line, 5 leaves a second of slack for where the
/// one-second windows fall. A loop without a limit writes thousands.
const MAX_LINES_PER_LISTENER: usize = 5;

/// The CPU a process may use while out of descriptors for [`HOLD`]: a loop
/// that retries at once burns a core (about 3 s here, less on a loaded
/// machine); pausing costs a few tens of milliseconds.
const MAX_CPU: Duration = Duration::from_millis(500);

/// What the log says when an accept fails (weft-runtime's accept loop).
const ACCEPT_FAILED: &str = "accept failed";

fn prlimit(soft: u32, hard: u32) -> Vec<String> {
    vec!["prlimit".to_owned(), format!("--nofile={soft}:{hard}")]
}

#[test]
fn out_of_descriptors_the_agent_and_sidecar_pause_log_little_and_recover() {
    run(|ctx| async move {
        let http = HttpClient::new();
        let users = App::start(&ctx.log_dir, "users", "users-1").await?;
        let mut agent = start_agent(&ctx, &users, prlimit(1_024, 1_024)).await?;
        let client_app = App::start(&ctx.log_dir, "client", "client-1").await?;
        let mut sidecar = start_sidecar(&ctx, &agent, &client_app, prlimit(1_024, 1_024)).await?;
        wait_for_route(
            &http,
            sidecar.outbound,
            Call::get("users", "/"),
            "client reaches users",
            |echo| echo.service == "users",
        )
        .await?;

        // The agent: its admin listener, and its gRPC listener with a few
        // connections queued behind it (tonic's own loop would spin on them).
        let admin: SocketAddr = agent.admin_url().trim_start_matches("http://").parse()?;
        let grpc: SocketAddr = agent
            .discovery_url()
            .trim_start_matches("http://")
            .parse()?;
        let held = exhaust(&ctx, agent.process(), "agent admin", admin, Some(grpc)).await?;
        let closed = Instant::now();
        drop(held);
        let readyz = format!("{}/readyz", agent.admin_url());
        eventually(SETUP_TIMEOUT, "the agent answers /readyz again", || {
            let url = readyz.clone();
            async move {
                // A new client each time: no pooled connection to reuse, so
                // the listener must accept again.
                let reply = HttpClient::new().get(&url).await?;
                ensure!(
                    reply.status.is_success(),
                    "/readyz answered {}",
                    reply.status
                );
                Ok(())
            }
        })
        .await?;
        ctx.measured(
            "agent admin: answering again after the close",
            closed.elapsed(),
        );
        agent.process().check_running()?;

        // The sidecar: each of its proxy listeners in turn. Inbound serves
        // the client's own app, outbound proxies to users.
        for (name, listener, host) in [
            ("inbound", sidecar.inbound, "client"),
            ("outbound", sidecar.outbound, "users"),
        ] {
            let what = format!("sidecar {name}");
            let held = exhaust(&ctx, sidecar.process(), &what, listener, None).await?;
            let closed = Instant::now();
            drop(held);
            eventually(
                SETUP_TIMEOUT,
                &format!("{what} serves {host} again"),
                || async move {
                    let echo = HttpClient::new()
                        .call(listener, Call::get(host, "/"))
                        .await?
                        .echo()?;
                    ensure!(echo.service == host, "answered by {echo:?}");
                    Ok(())
                },
            )
            .await?;
            ctx.measured(
                &format!("{what}: answering again after the close"),
                closed.elapsed(),
            );
            sidecar.check_running()?;
        }
        Ok(())
    });
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    run(|ctx| async move {
        let users = App::start(&ctx.log_dir, "users", "users-1").await?;
        let mut agent = start_agent(&ctx, &users, prlimit(1_024, 4_096)).await?;
        let client_app = App::start(&ctx.log_dir, "client", "client-1").await?;
        let mut sidecar = start_sidecar(&ctx, &agent, &client_app, prlimit(1_024, 4_096)).await?;
        for process in [agent.process(), sidecar.process()] {
            let (soft, hard) = nofile_limits(process)?;
            ensure!(
                (soft, hard) == (4_096, 4_096),
                "{} started with 1024:4096 runs with {soft}:{hard}",
                process.name()
            );
            let log = std::fs::read_to_string(process.log_path())?;
            ensure!(
                log.lines().any(|l| l.contains("raised the open-file limit")
                    && l.contains("from=1024")
                    && l.contains("to=4096")),
                "{} logs the raise from 1024 to 4096",
                process.name()
            );
        }
        Ok(())
    });
}

/// The agent on the file backend (no Consul: the limits are the agent's
/// own), knowing `users`, started under `launcher`.
async fn start_agent(ctx: &TestCtx, users: &App, launcher: Vec<String>) -> anyhow::Result<Agent> {
    let config_dir = ctx.log_dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    let endpoints = json!({ "services": { "users": [
        { "address": "127.0.0.1", "port": users.port(), "meshed": false, "weight": 1 }
    ] } });
    std::fs::write(config_dir.join("endpoints.yaml"), endpoints.to_string())?;
    Agent::start_under(
        &ctx.log_dir,
        &Backend::ConfigDir(config_dir),
        &[],
        &launcher,
    )
    .await
}

async fn start_sidecar(
    ctx: &TestCtx,
    agent: &Agent,
    app: &App,
    launcher: Vec<String>,
) -> anyhow::Result<Sidecar> {
    let spec = SidecarSpec {
        service: app.service.clone(),
        instance: app.instance.clone(),
        discovery: agent.discovery_url(),
        app_port: app.port(),
        inbound_port: None,
        extra_args: Vec::new(),
    };
    Sidecar::start_under(&ctx.log_dir, spec, &launcher).await
}

/// Opens [`CONNECTIONS`] idle connections to `listener` (and 20 to `also`),
/// waits until `process` logs a failed accept, holds them for [`HOLD`], and
/// checks what a user would see meanwhile: the process is up, and each of
/// its listeners wrote at most [`MAX_LINES_PER_LISTENER`] accept-error
/// lines. Returns the connections; dropping them closes them.
async fn exhaust(
    ctx: &TestCtx,
    process: &mut Process,
    what: &str,
    listener: SocketAddr,
    also: Option<SocketAddr>,
) -> anyhow::Result<Vec<TcpStream>> {
    let log = process.log_path().to_owned();
    let lines_before = read_lines(&log)?.len();
    let cpu_before = cpu_time(process)?;
    let mut held = open(listener, CONNECTIONS).await;
    if let Some(also) = also {
        held.extend(open(also, 20).await);
    }
    let opened = held.len();
    eventually(
        SETUP_TIMEOUT,
        &format!("{what}: the process runs out of descriptors"),
        || {
            let log = log.clone();
            async move {
                let new = read_lines(&log)?.split_off(lines_before);
                if new.iter().any(|l| l.contains(ACCEPT_FAILED)) {
                    Ok(())
                } else {
                    bail!("{opened} connections open, no `{ACCEPT_FAILED}` line yet")
                }
            }
        },
    )
    .await?;
    // The fault itself lasts HOLD; this is not waiting for a state.
    let held_from = Instant::now();
    tokio::time::sleep(HOLD).await;
    process.check_running()?;
    let cpu = cpu_time(process)?.saturating_sub(cpu_before);
    let new = read_lines(&log)?.split_off(lines_before);
    let mut per_listener = std::collections::BTreeMap::<String, usize>::new();
    for line in new.iter().filter(|l| l.contains(ACCEPT_FAILED)) {
        let listener = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("listener="))
            .unwrap_or("?");
        *per_listener.entry(listener.to_owned()).or_default() += 1;
    }
    ctx.record(
        &format!(
            "{what}: accept-error lines per listener, first failure + {:?}",
            held_from.elapsed()
        ),
        &format!("{per_listener:?}"),
    );
    ctx.record(
        &format!("{what}: CPU while out of descriptors"),
        &format!("{cpu:?}"),
    );
    ensure!(
        cpu < MAX_CPU,
        "{what}: the process used {cpu:?} of CPU in {HOLD:?} out of descriptors: it spins"
    );
    ensure!(
        per_listener.values().all(|&n| n <= MAX_LINES_PER_LISTENER),
        "{what}: more than {MAX_LINES_PER_LISTENER} accept-error lines for a listener: \
         {per_listener:?}\n{}",
        new.iter()
            .filter(|l| l.contains(ACCEPT_FAILED))
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(held)
}

/// Up to `count` connections to `addr`, 64 dials at a time. A dial waits
/// while the listener's accept queue is full (the kernel drops the SYN and
/// the client sends it again); on a loaded machine a debug build can take
/// seconds to drain the queue, hence the generous [`DIAL_TIMEOUT`].
async fn open(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    futures_util::stream::iter(0..count)
        .map(|_| async move {
            tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
                .await
                .ok()
                .and_then(Result::ok)
        })
        .buffer_unordered(64)
        .filter_map(|stream| async move { stream })
        .collect()
        .await
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The soft and hard `Max open files` of `process`, from /proc.
fn nofile_limits(process: &Process) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{}/limits", process.pid()?);
    let limits = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no `Max open files` in {path}"))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard] => Ok((soft, hard)),
        _ => bail!("cannot read the limits in `{line}`"),
    }
}

/// User plus system CPU time of `process` so far, from /proc (in clock
/// ticks of 10 ms, as the kernel counts them).
fn cpu_time(process: &Process) -> anyhow::Result<Duration> {
    let path = format!("/proc/{}/stat", process.pid()?);
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces, in parentheses):
    // utime and stime are the 14th and 15th fields of the line.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path}: too few fields"))?
            .parse()
            .with_context(|| format!("{path}: field {i}"))
    };
    // `after_name` starts at field 3 (state): utime is field 14, so index 11.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}
