//! What the benchmark reads about a process from /proc: memory, CPU time,
//! and its TCP connections to a port. Linux only, like the rest of the
//! benchmark's measurements.

use std::collections::HashSet;

use anyhow::Context as _;

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .with_context(|| format!("{path} has no {name}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`; 100 on
/// every Linux the project runs on, the fallback).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds the process has used.
pub fn cpu_seconds(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: fields start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After ')': state is field 3, utime field 14, stime field 15.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{path}: no field {}", i + 3))
    };
    Ok((tick(11)? + tick(12)?) as f64 / ticks)
}

/// The process's established TCP connections whose remote port is
/// `remote_port` (its connections to Consul's HTTP port) and whose local
/// port is `local_port` (sidecar streams it accepted), as (remote, local).
pub fn established(pid: u32, remote_port: u16, local_port: u16) -> anyhow::Result<(usize, usize)> {
    let mut inodes = HashSet::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // An fd closed between the listing and the readlink is just gone.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    // Counted by inode: /proc/net/tcp is read a page at a time while
    // connections open and close, so one socket can be listed twice.
    let (mut to_remote, mut on_local) = (HashSet::new(), HashSet::new());
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "01" {
                continue; // not ESTABLISHED
            }
            let Ok(inode) = cols[9].parse::<u64>() else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port(cols[2]) == Some(remote_port) {
                to_remote.insert(inode);
            }
            if port(cols[1]) == Some(local_port) {
                on_local.insert(inode);
            }
        }
    }
    Ok((to_remote.len(), on_local.len()))
}

/// Makes sure this process (and so every child it starts) may open
/// `needed` files: raises the soft limit to the hard one with `prlimit`
/// when it is too low, and fails naming the fix when even the hard limit
/// is too low.
pub fn ensure_open_files(needed: u64) -> anyhow::Result<u64> {
    let (soft, hard) = open_file_limits()?;
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed {
        anyhow::bail!(
            "the open-file limit is {soft} (hard {hard}) but this run needs about {needed}: raise it (`ulimit -Hn {needed}` as root, or LimitNOFILE) and retry"
        );
    }
    let pid = std::process::id();
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status()
        .context("running prlimit to raise the open-file limit (util-linux)")?;
    let (soft, _) = open_file_limits()?;
    if !status.success() || soft < needed {
        anyhow::bail!(
            "could not raise the open-file limit to {needed} (now {soft}); run `ulimit -n {hard}` first"
        );
    }
    Ok(soft)
}

fn open_file_limits() -> anyhow::Result<(u64, u64)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("/proc/self/limits has no 'Max open files'")?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| match w {
            "unlimited" => Some(u64::MAX),
            _ => w.parse().ok(),
        })
        .collect();
    match nums[..] {
        [soft, hard, ..] => Ok((soft, hard)),
        _ => anyhow::bail!("cannot read the open-file limit from {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let memory = memory(pid).unwrap();
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
        assert!(cpu_seconds(pid, clock_ticks()).unwrap() >= 0.0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        // One socket reaches the port, one was accepted on it.
        assert_eq!(established(pid, port, port).unwrap(), (1, 1));
    }
}
