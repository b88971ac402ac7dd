//! The benchmark's results: one JSON record and one Markdown section per
//! run, appended to `<out>/scale-<date>.json` (an array) and
//! `<out>/scale-<date>.md`, so a day's runs sit side by side.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub label: String,
    pub started_utc: String,
    pub setup: Setup,
    /// Set when the run stopped early (agent never ready, streams never
    /// complete); the other fields hold what was measured until then.
    pub outcome: String,
    pub first_sync: FirstSync,
    pub changes: Changes,
    pub agent: AgentUse,
    pub consul_connections: ConsulConnections,
    pub simulator: Simulator,
}

#[derive(Debug, Default, Serialize)]
pub struct Setup {
    pub services: usize,
    pub instances: usize,
    pub streams: usize,
    pub subscribe: String,
    pub routes: String,
    pub incremental: bool,
    pub consul_max_conns_per_client: u32,
    pub consul_version: String,
    pub agent: String,
    pub agent_args: Vec<String>,
    /// Time to register S×E instances (apps, proxies, checks).
    pub fill_seconds: f64,
    pub host: String,
}

#[derive(Debug, Default, Serialize)]
pub struct FirstSync {
    /// Agent process start -> /readyz 200.
    pub ready_seconds: Option<f64>,
    /// Agent process start -> every stream holds a complete first config
    /// (streams connect once the agent is ready).
    pub all_streams_seconds: Option<f64>,
    /// Streams start -> every stream complete.
    pub streams_after_start_seconds: Option<f64>,
    /// Streams start -> p50 / p99 stream complete.
    pub stream_p50_seconds: Option<f64>,
    pub stream_p99_seconds: Option<f64>,
    pub streams_complete: usize,
    /// Endpoints (and healthy ones) stream 0 held when every stream was
    /// complete (`--subscribe all` only), against S×E registered.
    pub stream0_endpoints: Option<u64>,
    pub stream0_healthy: Option<u64>,
    pub expected_endpoints: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Changes {
    pub made: usize,
    /// Consul write returned -> last stream that should get it has ACKed
    /// it, over the changes every expected stream got.
    pub last_stream_p50_ms: Option<f64>,
    pub last_stream_p99_ms: Option<f64>,
    pub last_stream_max_ms: Option<f64>,
    /// The same, for the median stream of each change (p50 over changes).
    pub median_stream_p50_ms: Option<f64>,
    /// Changes that some expected stream never got within --change-timeout.
    pub incomplete: usize,
    /// Agent CPU seconds from the write to the end of the settle window.
    pub agent_cpu_seconds_per_change: Option<f64>,
    /// Encoded DiscoveryResponse bytes all streams received per change,
    /// divided by every stream / by the streams that received the change.
    pub bytes_per_stream: Option<f64>,
    pub bytes_per_receiving_stream: Option<f64>,
    pub responses_per_change: Option<f64>,
    pub each: Vec<OneChange>,
}

#[derive(Debug, Default, Serialize)]
pub struct OneChange {
    pub cluster: String,
    pub instance: String,
    pub healthy: bool,
    pub expected_streams: usize,
    pub received_streams: usize,
    pub last_stream_ms: Option<f64>,
    pub median_stream_ms: Option<f64>,
    pub bytes: u64,
    pub responses: u64,
    pub agent_cpu_seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct AgentUse {
    pub rss_idle_mib: Option<f64>,
    pub rss_connected_mib: Option<f64>,
    pub rss_after_close_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    /// Cores used over the quiet window with every stream connected.
    pub steady_cores: Option<f64>,
    pub quiet_window_seconds: f64,
    /// CPU seconds from agent start until every stream was complete.
    pub sync_cpu_seconds: Option<f64>,
    /// WARN and ERROR lines in the agent's log over the run (failed Consul
    /// watches, refused streams).
    pub log_warnings: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct ConsulConnections {
    /// Established agent -> Consul HTTP connections, sampled every 250 ms.
    /// Includes connections Consul accepts and closes at once when over
    /// its limit, so it can exceed `http_max_conns_per_client`.
    pub max_during_sync: usize,
    /// At /readyz 200, or at --ready-timeout when it never came.
    pub at_ready: Option<usize>,
    pub at_end: Option<usize>,
}

#[derive(Debug, Default, Serialize)]
pub struct Simulator {
    /// This process's CPU seconds per change (same window as the
    /// agent's): when it nears the wall time of a change, the simulator
    /// and not the agent may be what the change waits for.
    pub cpu_seconds_per_change: Option<f64>,
    /// This process's peak RSS (VmHWM): what N streams cost to simulate.
    pub rss_peak_mib: Option<f64>,
    pub responses: u64,
    pub bytes: u64,
    pub max_response_bytes: u64,
    pub nacks: u64,
    pub stream_errors: u64,
    pub versions_checked: u64,
    pub version_mismatches: u64,
    pub first_errors: Vec<String>,
}

fn mib(kib: Option<f64>) -> String {
    kib.map_or("–".into(), |v| format!("{v:.0} MiB"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2} s"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0} ms"))
}

fn bytes(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 1024.0 * 1024.0 => format!("{:.1} MiB", v / 1024.0 / 1024.0),
        Some(v) if v >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        Some(v) => format!("{v:.0} B"),
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let s = &self.setup;
        let f = &self.first_sync;
        let c = &self.changes;
        let a = &self.agent;
        let k = &self.consul_connections;
        let m = &self.simulator;
        let mut out = format!(
            "## {label}\n\n\
             {started} · {services} services × {instances} instances · {streams} streams · \
             subscribe {subscribe} · routes {routes} · {mode} · {consul} with \
             http_max_conns_per_client = {limit} · filled in {fill:.1} s · agent `{agent}`\n\n\
             **Outcome:** {outcome}\n\n\
             | measure | value |\n|---|---|\n",
            label = self.label,
            started = self.started_utc,
            services = s.services,
            instances = s.instances,
            streams = s.streams,
            subscribe = s.subscribe,
            routes = s.routes,
            mode = if s.incremental {
                "incremental"
            } else {
                "state of the world"
            },
            consul = s.consul_version,
            limit = s.consul_max_conns_per_client,
            fill = s.fill_seconds,
            agent = s.agent,
            outcome = self.outcome,
        );
        let rows: Vec<(&str, String)> = vec![
            ("agent start → /readyz 200", secs(f.ready_seconds)),
            (
                "agent start → all streams complete",
                secs(f.all_streams_seconds),
            ),
            (
                "streams start → p50 / p99 / all complete",
                format!(
                    "{} / {} / {}",
                    secs(f.stream_p50_seconds),
                    secs(f.stream_p99_seconds),
                    secs(f.streams_after_start_seconds)
                ),
            ),
            (
                "streams complete",
                format!("{} of {}", f.streams_complete, s.streams),
            ),
            (
                "stream 0's endpoints (healthy) at sync",
                match (f.stream0_endpoints, f.stream0_healthy) {
                    (Some(t), Some(h)) => format!("{t} ({h}) of {}", f.expected_endpoints),
                    _ => "–".into(),
                },
            ),
            (
                "change → last stream ACK: p50 / p99 / max",
                format!(
                    "{} / {} / {} over {} changes ({} incomplete)",
                    ms(c.last_stream_p50_ms),
                    ms(c.last_stream_p99_ms),
                    ms(c.last_stream_max_ms),
                    c.made,
                    c.incomplete
                ),
            ),
            (
                "change → median stream ACK (p50)",
                ms(c.median_stream_p50_ms),
            ),
            (
                "streams that received each change",
                c.each
                    .iter()
                    .map(|x| format!("{}/{}", x.received_streams, x.expected_streams))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            (
                "bytes per change per stream (per receiving stream)",
                format!(
                    "{} ({})",
                    bytes(c.bytes_per_stream),
                    bytes(c.bytes_per_receiving_stream)
                ),
            ),
            (
                "responses per change",
                c.responses_per_change
                    .map_or("–".into(), |v| format!("{v:.0}")),
            ),
            (
                "agent CPU per change",
                c.agent_cpu_seconds_per_change
                    .map_or("–".into(), |v| format!("{v:.3} CPU-s")),
            ),
            (
                "simulator CPU per change (all N streams)",
                m.cpu_seconds_per_change
                    .map_or("–".into(), |v| format!("{v:.3} CPU-s")),
            ),
            ("simulator peak RSS", mib(m.rss_peak_mib)),
            (
                "agent CPU, start → all streams complete (or ready timeout)",
                a.sync_cpu_seconds
                    .map_or("–".into(), |v| format!("{v:.2} CPU-s")),
            ),
            (
                "agent CPU, quiet window",
                a.steady_cores.map_or("–".into(), |v| {
                    format!("{v:.3} cores over {:.0} s", a.quiet_window_seconds)
                }),
            ),
            (
                "agent RSS: idle / N connected / after close / peak",
                format!(
                    "{} / {} / {} / {}",
                    mib(a.rss_idle_mib),
                    mib(a.rss_connected_mib),
                    mib(a.rss_after_close_mib),
                    mib(a.rss_peak_mib)
                ),
            ),
            ("agent log WARN/ERROR lines", a.log_warnings.to_string()),
            (
                "agent → Consul connections: max in sync / at ready (or timeout) / at end",
                format!(
                    "{} / {} / {}",
                    k.max_during_sync,
                    k.at_ready.map_or("–".into(), |v| v.to_string()),
                    k.at_end.map_or("–".into(), |v| v.to_string())
                ),
            ),
            ("largest response", bytes(Some(m.max_response_bytes as f64))),
            (
                "simulator: responses, NACKs, stream errors, version mismatches",
                format!(
                    "{}, {}, {}, {} of {} checked",
                    m.responses, m.nacks, m.stream_errors, m.version_mismatches, m.versions_checked
                ),
            ),
        ];
        for (name, value) in rows {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        if !m.first_errors.is_empty() {
            out.push_str("\nFirst errors:\n\n");
            for e in &m.first_errors {
                out.push_str(&format!("- `{e}`\n"));
            }
        }
        out.push('\n');
        out
    }

    /// Appends this run to `<dir>/scale-<date>.md` and `.json`; returns
    /// their paths.
    pub fn append_to(&self, dir: &Path, date: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join(format!("scale-{date}.md"));
        let json = dir.join(format!("scale-{date}.json"));
        let mut text = std::fs::read_to_string(&md).unwrap_or_else(|_| {
            format!(
                "# Control-plane scale benchmark, {date}\n\n\
                 Written by `weft-bench-scale` (bench/scale/README.md explains each \
                 measure); one section per run, raw numbers in scale-{date}.json.\n\n"
            )
        });
        text.push_str(&self.markdown());
        std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
        let mut runs: Vec<serde_json::Value> = std::fs::read(&json)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        runs.push(serde_json::to_value(self)?);
        std::fs::write(&json, serde_json::to_vec_pretty(&runs)?)
            .with_context(|| format!("writing {}", json.display()))?;
        Ok((md, json))
    }
}

/// The p-th percentile (0..=100) of `values` (nearest rank).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
