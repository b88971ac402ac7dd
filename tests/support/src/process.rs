//! Child processes of a test: spawned with their output in a log file, killed
//! when dropped, restartable with the same command line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::oneshot;

/// How many log lines an error message quotes from a process that died.
const TAIL_LINES: usize = 40;

/// One child process. Its stdout and stderr go to `<log dir>/<name>.log`
/// (appended across restarts); the first stdout line starting with `READY `
/// is also handed to [`Process::ready_line`].
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    ready: Option<oneshot::Receiver<String>>,
}

impl Process {
    /// Starts `program args...`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log_dir)
    }

    /// Like [`Process::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            ready: None,
        };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening the log file {}", self.log.display()))?;
        writeln!(
            log,
            "=== {} {}",
            self.program.display(),
            self.args.join(" ")
        )
        .with_context(|| format!("writing {}", self.log.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", self.log.display()))?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        if let Some(stdout) = child.stdout.take() {
            // A plain thread: reading a pipe is blocking, and it must keep
            // draining stdout for the whole life of the child.
            std::thread::spawn(move || copy_stdout(stdout, log, ready_tx));
        }
        self.child = Some(child);
        self.ready = Some(ready_rx);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The OS process id (of the current incarnation).
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("{} is not running", self.name))
    }

    /// How many established TCP connections this process holds to
    /// `127.0.0.1:<port>` right now (see [`tcp_connections`]).
    pub fn tcp_connections_to(&self, port: u16) -> anyhow::Result<usize> {
        tcp_connections(self.pid()?, port)
    }

    /// Waits for the `READY <addr>` line and returns what follows `READY `.
    pub async fn ready_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let receiver = self
            .ready
            .take()
            .with_context(|| format!("{}: READY line already consumed", self.name))?;
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(_closed)) => {
                self.check_running()?;
                bail!(
                    "{} closed stdout without printing READY\n{}",
                    self.name,
                    self.tail()
                )
            }
            Err(_elapsed) => {
                self.check_running()?;
                bail!(
                    "{} printed no READY line within {timeout:?}\n{}",
                    self.name,
                    self.tail()
                )
            }
        }
    }

    /// An error (with the end of the log) if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped by the test", self.name);
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail()
            ),
            Err(error) => bail!("{}: checking whether it runs: {error}", self.name),
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) with the `kill` command:
    /// the crate forbids `unsafe`, and std only offers SIGKILL.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid()?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .with_context(|| format!("running `kill -{signal} {pid}` for {}", self.name))?;
        if !status.success() {
            bail!("`kill -{signal} {pid}` for {} failed: {status}", self.name);
        }
        Ok(())
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after that).
    /// Returns the exit status if it exited by itself.
    pub async fn terminate(
        &mut self,
        grace: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.signal("TERM")?;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        Ok(None)
    }

    /// Its command line's arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Kills the process and starts it again with these arguments.
    pub fn restart_with(&mut self, args: Vec<String>) -> anyhow::Result<()> {
        self.kill();
        self.args = args;
        self.start()
    }

    /// Kills the process and starts it again with the same command line.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }

    /// The last lines of the log.
    pub fn tail(&self) -> String {
        tail_of(&self.log, TAIL_LINES)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn copy_stdout(stdout: std::process::ChildStdout, mut log: File, ready: oneshot::Sender<String>) {
    let mut ready = Some(ready);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("READY ")
            && let Some(ready) = ready.take()
        {
            let _ = ready.send(rest.trim().to_owned());
        }
        let _ = writeln!(log, "{line}");
    }
}

/// The last `lines` lines of a file (or a note saying it could not be read).
pub fn tail_of(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// How many established TCP connections process `pid` holds to
/// `127.0.0.1:<port>` right now: its socket inodes (`/proc/<pid>/fd`)
/// matched against `/proc/net/tcp` rows in state ESTABLISHED whose
/// remote end is that port. Linux only, like the rest of the harness.
pub fn tcp_connections(pid: u32, port: u16) -> anyhow::Result<usize> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(&fd_dir).with_context(|| format!("reading {fd_dir}"))? {
        // An fd closed between the listing and the readlink is skipped.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    // Columns: sl local_address rem_address st ... inode (10th). Counted
    // by inode: the kernel writes the table in chunks while it changes, so
    // one read can list a socket twice.
    let remote = format!(":{port:04X}");
    let matched: std::collections::HashSet<&str> = table
        .lines()
        .skip(1)
        // Most rows are other sockets: skip them before splitting.
        .filter(|line| line.contains(&remote))
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let established = columns.len() > 9
                && columns[2].ends_with(&remote)
                && columns[3] == "01"
                && inodes.contains(columns[9]);
            established.then(|| columns[9])
        })
        .collect();
    Ok(matched.len())
}
