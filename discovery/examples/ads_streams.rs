//! Measures the agent under many discovery streams: bytes per endpoint
//! change per stream, time to the last stream, and the agent's memory with
//! the streams connected and after they close.
//!
//! It writes a config dir of `--services` services with 10 endpoints each,
//! starts `--agent-bin` (a built weft-discovery) on it, opens `--streams`
//! streams (one connection each, like sidecars) subscribing to every route
//! table and to every service's Cluster and ClusterLoadAssignment by name
//! (the default route tables name them all), ACKs everything, changes one
//! endpoint, and closes the streams.
//!
//! ```text
//! cargo build --release -p weft-discovery --bin weft-discovery --example ads_streams
//! target/release/examples/ads_streams --agent-bin target/release/weft-discovery \
//!     --services 1000 --streams 2000 [--state-of-the-world]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::discovery::v1::{DiscoveryRequest, Node};
use weft_proto::type_url;

#[derive(Parser)]
struct Args {
    /// The weft-discovery binary to measure.
    #[arg(long)]
    agent_bin: PathBuf,
    /// Services in the mesh (10 endpoints each).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Discovery streams to open.
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Streams do not list weft.incremental (every push is whole).
    #[arg(long)]
    state_of_the_world: bool,
    /// Seconds to wait after the first sync and after the streams closed
    /// before reading the memory (allocator decay).
    #[arg(long, default_value_t = 15)]
    settle: u64,
}

/// Bytes received by every stream, and streams that saw the change.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    /// ClusterLoadAssignment responses received in the current phase.
    assignments: AtomicU64,
}

fn write_endpoints(dir: &Path, services: usize, changed_port: u16) -> anyhow::Result<()> {
    let mut yaml = String::from("services:\n");
    for service in 0..services {
        let _ = writeln!(yaml, "  svc-{service:04}:");
        for instance in 0..10u16 {
            let port = if service == 0 && instance == 0 {
                changed_port
            } else {
                20_000 + instance
            };
            let _ = writeln!(
                yaml,
                "    - {{ address: 10.{}.{}.{instance}, port: {port}, meshed: true }}",
                service / 250,
                service % 250
            );
        }
    }
    // Written beside and renamed: the agent never reads half a file.
    let temporary = dir.join(".endpoints.yaml.tmp");
    std::fs::write(&temporary, yaml)?;
    std::fs::rename(&temporary, dir.join("endpoints.yaml"))?;
    Ok(())
}

/// `weft_discovery_snapshot_build_seconds` (sum, count) from `/metrics`.
async fn build_seconds(admin: u16) -> anyhow::Result<(f64, f64)> {
    let page = tokio::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/metrics")])
        .output()
        .await?;
    let page = String::from_utf8_lossy(&page.stdout).to_string();
    let value = |name: &str| {
        page.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse::<f64>().ok())
            .unwrap_or_default()
    };
    Ok((
        value("weft_discovery_snapshot_build_seconds_sum "),
        value("weft_discovery_snapshot_build_seconds_count "),
    ))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("odd /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

async fn wait_for(what: &str, within: Duration, check: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn stream(
    agent: String,
    index: usize,
    names: Arc<Vec<String>>,
    incremental: bool,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(agent).await?;
    client = client.max_decoding_message_size(64 << 20);
    let (requests, outbox) = mpsc::channel(16);
    let node = Node {
        id: format!("load-{index}"),
        service: "load".into(),
        instance: format!("load-{index}"),
        client_features: if incremental {
            vec![weft_proto::client_features::INCREMENTAL.into()]
        } else {
            Vec::new()
        },
        ..Node::default()
    };
    let request = |t: &str, version: String, nonce: String| DiscoveryRequest {
        version_info: version,
        node: None,
        resource_names: if t == type_url::ROUTE_CONFIGURATION {
            Vec::new()
        } else {
            names.to_vec()
        },
        type_url: t.into(),
        response_nonce: nonce,
        error_detail: None,
    };
    for (i, t) in [
        type_url::ROUTE_CONFIGURATION,
        type_url::CLUSTER,
        type_url::CLUSTER_LOAD_ASSIGNMENT,
    ]
    .into_iter()
    .enumerate()
    {
        let mut first = request(t, String::new(), String::new());
        if i == 0 {
            first.node = Some(node.clone());
        }
        requests.send(first).await?;
    }
    let mut responses = client
        .stream_resources(ReceiverStream::new(outbox))
        .await?
        .into_inner();
    loop {
        tokio::select! {
            response = responses.message() => {
                let Some(response) = response? else { return Ok(()) };
                counters.bytes.fetch_add(response.encoded_len() as u64, Ordering::Relaxed);
                if response.type_url == type_url::CLUSTER_LOAD_ASSIGNMENT {
                    counters.assignments.fetch_add(1, Ordering::Relaxed);
                }
                requests
                    .send(request(&response.type_url, response.version_info, response.nonce))
                    .await?;
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("weft-ads-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_endpoints(&dir, args.services, 20_000)?;
    let port = |offset: u16| 20_000 + (std::process::id() % 20_000) as u16 + offset;
    let (listen, admin) = (port(0), port(1));
    let mut agent = tokio::process::Command::new(&args.agent_bin)
        .arg("--config-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.agent_bin.display()))?;
    let pid = agent.id().context("agent pid")?;
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::process::Command::new("curl")
        .args(["-sf", &ready])
        .output()
        .await
        .map(|output| !output.status.success())
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            bail!("the agent did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (first_build, builds) = build_seconds(admin).await?;
    println!(
        "agent ready: {} services x 10 endpoints; RSS {} KiB with no stream; \
         {builds} build(s) took {:.1} ms",
        args.services,
        rss_kib(pid)?,
        first_build * 1000.0
    );

    let names: Arc<Vec<String>> = Arc::new(
        (0..args.services)
            .map(|service| format!("svc-{service:04}"))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..args.streams {
        tasks.push(tokio::spawn(stream(
            format!("http://127.0.0.1:{listen}"),
            index,
            names.clone(),
            !args.state_of_the_world,
            counters.clone(),
            stopped.clone(),
        )));
    }
    let streams = args.streams as u64;
    wait_for(
        "every stream's first endpoints",
        Duration::from_secs(300),
        || counters.assignments.load(Ordering::Relaxed) >= streams,
    )
    .await?;
    let initial_bytes = counters.bytes.swap(0, Ordering::Relaxed);
    println!(
        "{} streams synced in {:.2} s, {} bytes each",
        args.streams,
        started.elapsed().as_secs_f64(),
        initial_bytes / streams
    );
    // Let the ACKs land and the allocator return the sync's transient
    // buffers (jemalloc decays freed pages over about 10 s).
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    counters.bytes.store(0, Ordering::Relaxed);
    counters.assignments.store(0, Ordering::Relaxed);
    let connected_rss = rss_kib(pid)?;
    println!(
        "RSS {connected_rss} KiB with {} streams connected",
        args.streams
    );

    let builds_before = build_seconds(admin).await?;
    let cpu_before = cpu_seconds(pid)?;
    let changed = Instant::now();
    write_endpoints(&dir, args.services, 30_000)?;
    wait_for("every stream's change", Duration::from_secs(120), || {
        counters.assignments.load(Ordering::Relaxed) >= streams
    })
    .await?;
    let last = changed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "one endpoint change: {} bytes per stream, last stream after {:.3} s (file write -> receipt, \
         incl. the 50 ms file debounce), agent CPU {:.2} s",
        counters.bytes.load(Ordering::Relaxed) / streams,
        last.as_secs_f64(),
        cpu_seconds(pid)? - cpu_before
    );
    let builds_after = build_seconds(admin).await?;
    println!(
        "builds for the change: {} taking {:.2} ms in all",
        builds_after.1 - builds_before.1,
        (builds_after.0 - builds_before.0) * 1000.0
    );
    let status = tokio::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/status")])
        .output()
        .await?;
    if let Ok(status) = serde_json::from_slice::<serde_json::Value>(&status.stdout) {
        println!("agent's convergence: {}", status["convergence"]);
    }

    stop.send_replace(true);
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("RSS {} KiB 1 s after every stream closed", rss_kib(pid)?);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    println!(
        "RSS {} KiB {} s after every stream closed",
        rss_kib(pid)?,
        args.settle + 1
    );
    agent.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
