//! The process's own CPU time, memory and open descriptors, read from
//! `/proc/self` at scrape time, under the standard `process_*` names.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// What `/proc/self` says now; `None` where it cannot be read (not Linux).
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub open_fds: Option<i64>,
}

impl ProcessStats {
    pub fn read() -> Self {
        Self {
            cpu_seconds: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|stat| cpu_seconds(&stat)),
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| resident_bytes(&status)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|fds| i64::try_from(fds.count()).unwrap_or(i64::MAX)),
        }
    }
}

/// utime + stime (fields 14 and 15 of `/proc/self/stat`, after the
/// parenthesised command name, which may itself contain spaces).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux the sidecar runs on (the kernel ABI
    // fixes it for /proc, whatever CONFIG_HZ is).
    Some(ticks as f64 / 100.0)
}

fn resident_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn encode(encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let stats = ProcessStats::read();
    if let Some(cpu) = stats.cpu_seconds {
        let metric = encoder.encode_descriptor(
            "process_cpu",
            "CPU time the process used, user and system.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(cpu).encode(metric)?;
    }
    if let Some(bytes) = stats.resident_bytes {
        let metric = encoder.encode_descriptor(
            "process_resident_memory",
            "Resident memory of the process.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(bytes).encode(metric)?;
    }
    if let Some(fds) = stats.open_fds {
        let metric = encoder.encode_descriptor(
            "process_open_fds",
            "Open file descriptors.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(fds).encode(metric)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "4242 (weft sidecar) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 31 0 0 20 0 3 0";
        assert_eq!(cpu_seconds(stat), Some(2.81));
        let status = "Name:\tweft-sidecar\nVmPeak:\t  20000 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(resident_bytes(status), Some(12 * 1024 * 1024));
        let live = ProcessStats::read();
        assert!(live.open_fds.is_some_and(|n| n >= 3), "{live:?}");
    }
}
