//! `weft-bench-scale`: the control plane at the size of a real Consul
//! datacenter. One tool starts Consul, fills it with S services × E
//! Connect instances, starts the real weft-discovery agent, runs N
//! simulated sidecar streams against it, flips endpoint health C times,
//! and reports time to first sync, change propagation, agent memory and
//! CPU, bytes per change and the agent's connections to Consul.
//! bench/scale/README.md says what each number means.
#![forbid(unsafe_code)]

mod consul;
mod http;
mod procfs;
mod report;
mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::sync::watch;

use consul::{Consul, Mesh};
use report::{Report, percentile};
use sim::{Change, Routes, Shared, SimConfig, Subscribe};

#[derive(Debug, Parser)]
#[command(
    name = "weft-bench-scale",
    about = "Control-plane scale benchmark (bench/scale/README.md)"
)]
struct Args {
    /// Services (S) registered in Consul, each with a Connect proxy per instance.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Instances (E) per service.
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Simulated sidecar streams (N), one connection each.
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Endpoint health flips to measure (C), alternately critical and
    /// passing on the same instance, so each is a real change.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Clusters per stream: `all` (every cluster the route tables name,
    /// as today's sidecar) or a count K (on demand, spread over services).
    #[arg(long, default_value = "all")]
    subscribe: Subscribe,
    /// Route tables per stream: `wildcard` (all, as today's sidecar) or
    /// `subscribed` (those of its K clusters only).
    #[arg(long, value_enum, default_value = "wildcard")]
    routes: Routes,
    /// List `weft.incremental` in Node.client_features and merge
    /// responses by name.
    #[arg(long)]
    incremental: bool,
    /// Consul's `limits.http_max_conns_per_client`; 200 is Consul's
    /// default (stock). The agent holds one connection per blocking query.
    #[arg(long, default_value_t = consul::STOCK_MAX_CONNS_PER_CLIENT)]
    consul_max_conns_per_client: u32,
    /// The agent binary (a release build: `cargo build --release -p weft-discovery`).
    #[arg(long, default_value = "target/release/weft-discovery")]
    agent: PathBuf,
    /// Extra arguments for the agent (repeat), e.g. a Consul connection
    /// budget once the agent has one.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// The Consul binary.
    #[arg(long, env = "WEFT_CONSUL_BIN", default_value = "consul")]
    consul_bin: PathBuf,
    /// Give up when the agent is not ready (/readyz 200) this long after start.
    #[arg(long, default_value = "60s", value_parser = weft_rules::duration::parse_setting)]
    ready_timeout: Duration,
    /// Give up when not every stream holds a complete config this long
    /// after the streams start.
    #[arg(long, default_value = "300s", value_parser = weft_rules::duration::parse_setting)]
    sync_timeout: Duration,
    /// How long one change may take to reach every expected stream.
    #[arg(long, default_value = "30s", value_parser = weft_rules::duration::parse_setting)]
    change_timeout: Duration,
    /// After the last expected stream has a change, how long to keep
    /// counting its bytes and the agent's CPU (stragglers, debounce).
    #[arg(long, default_value = "300ms", value_parser = weft_rules::duration::parse_setting)]
    settle: Duration,
    /// The window over which the agent's steady CPU is measured, with
    /// every stream connected and nothing changing.
    #[arg(long, default_value = "30s", value_parser = weft_rules::duration::parse_setting)]
    quiet: Duration,
    /// Streams connecting at once (the rest queue).
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// One stream in this many recomputes the version of what it holds
    /// after each response and counts disagreements (0: none).
    #[arg(long, default_value_t = 100)]
    verify_every: usize,
    /// Where the report is appended (scale-<date>.md and .json).
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Print the report only; write no file.
    #[arg(long)]
    no_write: bool,
    /// The run's heading in the report (default: from the settings).
    #[arg(long)]
    label: Option<String>,
    /// Where Consul's and the agent's logs go (default: a new directory
    /// under the system's temporary directory, kept after the run).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.services == 0 || args.instances == 0 || args.streams == 0 {
        bail!("--services, --instances and --streams must be at least 1");
    }
    // Streams (one socket each here and at the agent), the agent's Consul
    // connections (two per service), and room for files and logs.
    let needed = (args.streams + 2 * args.services + 1024) as u64;
    procfs::ensure_open_files(needed)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn mib_of(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples the agent's Consul connections every 250 ms while the
/// benchmark runs; `(now, max since the last reset)`.
struct ConnSampler {
    latest: watch::Receiver<(usize, usize)>,
    reset: tokio::sync::mpsc::Sender<()>,
}

fn sample_connections(pid: u32, consul_port: u16, ads_port: u16) -> ConnSampler {
    let (tx, latest) = watch::channel((0, 0));
    let (reset, mut resets) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut max = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if resets.try_recv().is_ok() {
                max = 0;
            }
            let Ok((consul, _)) = procfs::established(pid, consul_port, ads_port) else {
                return; // the agent is gone
            };
            max = max.max(consul);
            if tx.send((consul, max)).is_err() {
                return;
            }
        }
    });
    ConnSampler { latest, reset }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mesh = Mesh {
        services: args.services,
        instances: args.instances,
    };
    let started_utc = time::OffsetDateTime::now_utc();
    let date = started_utc.date().to_string();
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "S={} E={} N={} subscribe={} routes={:?}{} limit={}",
            args.services,
            args.instances,
            args.streams,
            args.subscribe,
            args.routes,
            if args.incremental { " incremental" } else { "" },
            args.consul_max_conns_per_client
        )
        .to_lowercase()
    });
    let work = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("weft-bench-scale-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if !args.agent.is_file() {
        bail!(
            "the agent {} is not a file: build it with `cargo build --release -p weft-discovery` or pass --agent",
            args.agent.display()
        );
    }
    let consul_bin = which(&args.consul_bin)?;
    let mut report = Report {
        label,
        started_utc: started_utc
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        outcome: "complete".into(),
        ..Report::default()
    };
    report.setup = report::Setup {
        services: args.services,
        instances: args.instances,
        streams: args.streams,
        subscribe: args.subscribe.to_string(),
        routes: format!("{:?}", args.routes).to_lowercase(),
        incremental: args.incremental,
        consul_max_conns_per_client: args.consul_max_conns_per_client,
        consul_version: version_of(&consul_bin, "version"),
        agent: args.agent.display().to_string(),
        agent_args: args.agent_args.clone(),
        host: format!(
            "{} cores, load {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        ..report::Setup::default()
    };
    eprintln!("logs in {}", work.display());

    let consul = Consul::start(&consul_bin, &work, args.consul_max_conns_per_client).await?;
    eprintln!(
        "consul up on {}; registering {} instances",
        consul.address,
        args.services * args.instances
    );
    let fill = consul.fill(&mesh).await?;
    report.setup.fill_seconds = fill.as_secs_f64();
    eprintln!("filled in {:.1} s", fill.as_secs_f64());

    let result = measure(&args, &mesh, &consul, &work, &mut report).await;
    report.agent.log_warnings = std::fs::read_to_string(work.join("agent.log"))
        .map(|log| {
            log.lines()
                .filter(|l| l.contains(" WARN") || l.contains(" ERROR"))
                .count()
        })
        .unwrap_or(0);
    if let Err(error) = &result {
        report.outcome = format!("failed: {error:#}");
    }
    drop(consul);
    print!("{}", report.markdown());
    if !args.no_write {
        let (md, json) = report.append_to(&args.out, &date)?;
        eprintln!("report appended to {} and {}", md.display(), json.display());
    }
    result
}

async fn measure(
    args: &Args,
    mesh: &Mesh,
    consul: &Consul,
    work: &std::path::Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let ticks = procfs::clock_ticks();
    let ads_port = consul::free_port()?;
    let admin_port = consul::free_port()?;
    let log_path = work.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let agent_started = Instant::now();
    let mut agent = tokio::process::Command::new(&args.agent)
        .arg("--consul")
        .arg(&consul.address)
        .arg("--listen")
        .arg(format!("127.0.0.1:{ads_port}"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin_port}"))
        .args(&args.agent_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.agent.display()))?;
    let pid = agent.id().context("the agent exited at once")?;
    let conns = sample_connections(pid, consul.http_port, ads_port);

    // Ready: /readyz polled every 50 ms (the agent offers no push for it).
    let admin = http::HttpClient::new(None);
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = loop {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited with {status}; see {}", log_path.display());
        }
        if agent_started.elapsed() > args.ready_timeout {
            break None;
        }
        if let Ok(reply) = admin.get(&readyz).await
            && reply.status.is_success()
        {
            break Some(agent_started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = &mut report.first_sync;
    first.expected_endpoints = mesh.services * mesh.instances;
    first.ready_seconds = ready.map(|d| d.as_secs_f64());
    report.consul_connections.at_ready = Some(conns.latest.borrow().0);
    report.consul_connections.max_during_sync = conns.latest.borrow().1;
    let Some(_) = ready else {
        report.outcome = format!(
            "the agent was not ready within {:?} (its /readyz never answered 200); no stream was started",
            args.ready_timeout
        );
        report.consul_connections.at_end = Some(conns.latest.borrow().0);
        report.agent.rss_peak_mib = procfs::memory(pid).ok().map(|m| mib_of(m.peak_kib));
        report.agent.sync_cpu_seconds = procfs::cpu_seconds(pid, ticks).ok();
        return Ok(());
    };
    eprintln!(
        "agent ready after {:.2} s",
        ready.unwrap_or_default().as_secs_f64()
    );
    // Streams start at once, so "agent start -> all streams" is the time
    // a fleet of sidecars waits for an agent (re)start.
    report.agent.rss_idle_mib = Some(mib_of(procfs::memory(pid)?.rss_kib));

    let shared = Shared::new(SimConfig {
        agent: format!("http://127.0.0.1:{ads_port}"),
        streams: args.streams,
        subscribe: args.subscribe,
        routes: args.routes,
        incremental: args.incremental,
        verify_every: args.verify_every,
        connect_concurrency: args.connect_concurrency.max(1),
        mesh: mesh.clone(),
    });
    let (stop_tx, stop) = watch::channel(false);
    let streams_started = Instant::now();
    let mut tasks = sim::start(&shared, stop);
    let all_done = shared.all_complete.notified();
    let synced = shared.complete.load(Ordering::Acquire) == args.streams
        || tokio::time::timeout(args.sync_timeout, all_done)
            .await
            .is_ok();
    let sync_end = Instant::now();
    let sync_cpu = procfs::cpu_seconds(pid, ticks)?;
    let first = &mut report.first_sync;
    let completed: Vec<f64> = shared
        .completed_at()
        .into_iter()
        .flatten()
        .map(|ns| Duration::from_nanos(ns).as_secs_f64() - shared_offset(&shared, streams_started))
        .collect();
    first.streams_complete = completed.len();
    first.stream_p50_seconds = percentile(&completed, 50.0);
    first.stream_p99_seconds = percentile(&completed, 99.0);
    if synced {
        first.streams_after_start_seconds = Some((sync_end - streams_started).as_secs_f64());
        first.all_streams_seconds = Some((sync_end - agent_started).as_secs_f64());
    }
    if args.subscribe == Subscribe::All {
        first.stream0_endpoints = Some(shared.stream0_endpoints.load(Ordering::Relaxed));
        first.stream0_healthy = Some(shared.stream0_healthy.load(Ordering::Relaxed));
    }
    report.agent.sync_cpu_seconds = Some(sync_cpu);
    report.consul_connections.max_during_sync = conns.latest.borrow().1;
    let _ = conns.reset.try_send(());

    if synced {
        eprintln!(
            "{} streams complete after {:.2} s",
            args.streams,
            (sync_end - streams_started).as_secs_f64()
        );
        quiet_window(args, pid, ticks, report).await?;
        make_changes(args, mesh, consul, &shared, pid, ticks, report).await?;
    } else {
        report.outcome = format!(
            "only {} of {} streams held a complete config {:?} after they started",
            first.streams_complete, args.streams, args.sync_timeout
        );
    }
    report.agent.rss_connected_mib = Some(mib_of(procfs::memory(pid)?.rss_kib));

    // Close every stream; wait (bounded) until the agent holds none.
    stop_tx.send_replace(true);
    while tasks.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(30);
    while procfs::established(pid, consul.http_port, ads_port)?.1 > 0 {
        if Instant::now() > deadline {
            report
                .outcome
                .push_str("; the agent still held streams 30 s after they closed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the stream tasks' memory a moment to go back to the allocator.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = procfs::memory(pid)?;
    report.agent.rss_after_close_mib = Some(mib_of(memory.rss_kib));
    report.agent.rss_peak_mib = Some(mib_of(memory.peak_kib));
    report.consul_connections.at_end = Some(conns.latest.borrow().0);
    let counters = &shared.counters;
    let simulator_cpu = report.simulator.cpu_seconds_per_change;
    report.simulator = report::Simulator {
        cpu_seconds_per_change: simulator_cpu,
        rss_peak_mib: procfs::memory(std::process::id())
            .ok()
            .map(|m| mib_of(m.peak_kib)),
        responses: counters.responses.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        max_response_bytes: counters.max_response_bytes.load(Ordering::Relaxed),
        nacks: counters.nacks.load(Ordering::Relaxed),
        stream_errors: counters.stream_errors.load(Ordering::Relaxed),
        versions_checked: counters.versions_checked.load(Ordering::Relaxed),
        version_mismatches: counters.version_mismatches.load(Ordering::Relaxed),
        first_errors: shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
    };
    drop(conns);
    agent.start_kill()?;
    Ok(())
}

/// Seconds from the simulator's epoch to `at`.
fn shared_offset(shared: &Shared, at: Instant) -> f64 {
    Duration::from_nanos(shared.ns_of(at)).as_secs_f64()
}

/// The agent's CPU over `--quiet` with every stream connected and
/// nothing changing: its steady cost (keep-alives, timers, Consul's
/// blocking queries timing out and re-arming).
async fn quiet_window(
    args: &Args,
    pid: u32,
    ticks: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Let the first sync's last ACKs drain first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = procfs::cpu_seconds(pid, ticks)?;
    let started = Instant::now();
    tokio::time::sleep(args.quiet).await;
    let used = procfs::cpu_seconds(pid, ticks)? - before;
    let window = started.elapsed().as_secs_f64();
    report.agent.steady_cores = Some(used / window);
    report.agent.quiet_window_seconds = window;
    report.agent.rss_connected_mib = Some(mib_of(procfs::memory(pid)?.rss_kib));
    Ok(())
}

/// Flips instance health C times, one change at a time, timing each from
/// the Consul write returning to the last expected stream's ACK.
async fn make_changes(
    args: &Args,
    mesh: &Mesh,
    consul: &Consul,
    shared: &Arc<Shared>,
    pid: u32,
    ticks: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut last_ms = Vec::new();
    let mut median_ms = Vec::new();
    let (mut bytes_total, mut responses_total, mut receivers_total) = (0u64, 0u64, 0usize);
    // CPU seconds of the agent and of this process over the change windows.
    let (mut cpu_total, mut own_total) = (0.0, 0.0);
    for k in 0..args.changes {
        // Pairs on one instance: critical, then passing again.
        let pair = k / 2;
        let s = (pair * 7919 + 1) % mesh.services;
        let e = pair % mesh.instances;
        let healthy = k % 2 == 1;
        let cluster = mesh.service(s);
        let expected = shared.subscribers(&cluster);
        let change = Arc::new(Change::new(
            k as u64,
            cluster.clone(),
            mesh.proxy_id(s, e),
            healthy,
            expected,
        ));
        shared.change.store(Some(change.clone()));
        let all = change.all_received.notified();
        let bytes_before = shared.counters.bytes.load(Ordering::Relaxed);
        let responses_before = shared.counters.responses.load(Ordering::Relaxed);
        let cpu_before = procfs::cpu_seconds(pid, ticks)?;
        let own_before = procfs::cpu_seconds(std::process::id(), ticks)?;
        consul.set_health(mesh, s, e, healthy).await?;
        let written = shared.now_ns();
        if change.received().len() < expected {
            let _ = tokio::time::timeout(args.change_timeout, all).await;
        }
        tokio::time::sleep(args.settle).await;
        let received = change.received();
        let bytes = shared.counters.bytes.load(Ordering::Relaxed) - bytes_before;
        let responses = shared.counters.responses.load(Ordering::Relaxed) - responses_before;
        let cpu = procfs::cpu_seconds(pid, ticks)? - cpu_before;
        own_total += procfs::cpu_seconds(std::process::id(), ticks)? - own_before;
        let lags: Vec<f64> = received
            .iter()
            .map(|at| at.saturating_sub(written) as f64 / 1e6)
            .collect();
        let complete = received.len() >= expected;
        let last = lags
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let median = percentile(&lags, 50.0);
        if complete {
            last_ms.extend(last);
        } else {
            report.changes.incomplete += 1;
        }
        median_ms.extend(median);
        bytes_total += bytes;
        responses_total += responses;
        cpu_total += cpu;
        receivers_total += received.len();
        eprintln!(
            "change {k}: {cluster} {} -> {}; {}/{expected} streams, last {:.0} ms, {bytes} bytes",
            mesh.proxy_id(s, e),
            if healthy { "passing" } else { "critical" },
            received.len(),
            last.unwrap_or(f64::NAN)
        );
        report.changes.each.push(report::OneChange {
            cluster,
            instance: mesh.proxy_id(s, e),
            healthy,
            expected_streams: expected,
            received_streams: received.len(),
            last_stream_ms: last,
            median_stream_ms: median,
            bytes,
            responses,
            agent_cpu_seconds: cpu,
        });
    }
    shared.change.store(None);
    let c = &mut report.changes;
    let made = args.changes;
    c.made = made;
    c.last_stream_p50_ms = percentile(&last_ms, 50.0);
    c.last_stream_p99_ms = percentile(&last_ms, 99.0);
    c.last_stream_max_ms = percentile(&last_ms, 100.0);
    c.median_stream_p50_ms = percentile(&median_ms, 50.0);
    if made > 0 {
        c.agent_cpu_seconds_per_change = Some(cpu_total / made as f64);
        c.bytes_per_stream = Some(bytes_total as f64 / made as f64 / args.streams as f64);
        c.bytes_per_receiving_stream =
            (receivers_total > 0).then(|| bytes_total as f64 / receivers_total as f64);
        c.responses_per_change = Some(responses_total as f64 / made as f64);
        report.simulator.cpu_seconds_per_change = Some(own_total / made as f64);
    }
    if c.incomplete > 0 {
        report.outcome = format!(
            "{} of {made} changes did not reach every expected stream within {:?}",
            c.incomplete, args.change_timeout
        );
    }
    Ok(())
}

/// `binary` as given if it is a path, else found on PATH.
fn which(binary: &std::path::Path) -> anyhow::Result<PathBuf> {
    if binary.components().count() > 1 || binary.is_file() {
        return Ok(binary.to_owned());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "CONSUL IS MISSING: no {} on PATH; install it with `bash deploy/local/install-consul.sh` and pass --consul-bin or set WEFT_CONSUL_BIN",
                binary.display()
            )
        })
}

/// The first line of `<binary> <arg>` ("Consul v1.8.7").
fn version_of(binary: &std::path::Path, arg: &str) -> String {
    std::process::Command::new(binary)
        .arg(arg)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}
