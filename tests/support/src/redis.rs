//! A real Redis for the opaque TCP tests: `redis-server` on a free loopback
//! port (no persistence), and a minimal RESP client to talk to it directly
//! or through a sidecar's `--tcp-upstream` port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::eventually::eventually;
use crate::ports::free_port;
use crate::process::Process;

/// Redis starts in milliseconds; generous for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Every read and write of the client.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
const INSTALL_HINT: &str = "install with: sudo apt-get install -y redis-server \
     (deploy/local/test.sh installs it), or set WEFT_REDIS_BIN";

/// The `redis-server` binary: `$WEFT_REDIS_BIN`, else the one on PATH.
pub fn redis_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_REDIS_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "WEFT_REDIS_BIN={} is not a file; {INSTALL_HINT}",
            path.display()
        );
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("redis-server is not on PATH; {INSTALL_HINT}"))
}

/// A running `redis-server`, killed when dropped.
pub struct Redis {
    process: Process,
    pub addr: SocketAddr,
}

impl Redis {
    /// Starts Redis on a free port and waits until it answers PING.
    pub async fn start(log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(log_dir, &[]).await
    }

    /// Like [`Redis::start`] with more `redis-server` arguments (a
    /// password, a TLS port); a password-protected Redis is ready when it
    /// asks for the password.
    pub async fn start_with(log_dir: &Path, extra_args: &[String]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend_from_slice(extra_args);
        let process = Process::spawn("redis", &redis_binary()?, &args, log_dir)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let redis = Self { process, addr };
        redis.wait_ready("redis-server answers PING").await?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:<port>`, for documents that name this Redis.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills Redis (SIGKILL: clients see their connections reset and new
    /// ones refused), keeping its port for [`Redis::restart`].
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts Redis again on the same port (empty: no persistence) and
    /// waits until it answers PING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart()?;
        self.wait_ready("the restarted redis-server answers PING")
            .await
    }

    async fn wait_ready(&self, what: &str) -> anyhow::Result<()> {
        let addr = self.addr;
        eventually(READY_TIMEOUT, what, || async move {
            let mut conn = RespConn::connect(addr).await?;
            match conn.command(&[b"PING"]).await? {
                Reply::Simple(pong) if pong == "PONG" => Ok(()),
                Reply::Error(e) if e.starts_with("NOAUTH") => Ok(()),
                other => bail!("PING answered {other:?}"),
            }
        })
        .await
    }

    /// A direct connection, bypassing the mesh.
    pub async fn direct(&self) -> anyhow::Result<RespConn> {
        RespConn::connect(self.addr).await
    }
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// One Redis connection speaking RESP.
pub struct RespConn {
    stream: BufReader<TcpStream>,
}

impl RespConn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends a command without reading the reply.
    pub async fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        tokio::time::timeout(IO_TIMEOUT, self.stream.get_mut().write_all(&out))
            .await
            .context("writing a command timed out")?
            .context("writing a command")
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.send(args).await?;
        tokio::time::timeout(IO_TIMEOUT, self.read_reply())
            .await
            .context("no reply in time")?
    }

    /// A command whose reply must be the simple string `want`.
    pub async fn expect_simple(&mut self, args: &[&[u8]], want: &str) -> anyhow::Result<()> {
        match self.command(args).await? {
            Reply::Simple(got) if got == want => Ok(()),
            other => bail!("{}: expected +{want}, got {other:?}", show(args)),
        }
    }

    /// A command whose reply must be a bulk string (`None`: null).
    pub async fn bulk(&mut self, args: &[&[u8]]) -> anyhow::Result<Option<Vec<u8>>> {
        match self.command(args).await? {
            Reply::Bulk(value) => Ok(value),
            other => bail!("{}: expected a bulk string, got {other:?}", show(args)),
        }
    }

    /// A command whose reply must be an integer.
    pub async fn integer(&mut self, args: &[&[u8]]) -> anyhow::Result<i64> {
        match self.command(args).await? {
            Reply::Integer(n) => Ok(n),
            other => bail!("{}: expected an integer, got {other:?}", show(args)),
        }
    }

    /// The keys matching `pattern` (`KEYS`: for tests, never production),
    /// sorted.
    pub async fn keys(&mut self, pattern: &str) -> anyhow::Result<Vec<String>> {
        match self.command(&[b"KEYS", pattern.as_bytes()]).await? {
            Reply::Array(items) => {
                let mut keys = items
                    .into_iter()
                    .map(|item| match item {
                        Reply::Bulk(Some(key)) => Ok(String::from_utf8_lossy(&key).into_owned()),
                        other => bail!("KEYS {pattern}: an item {other:?}"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                keys.sort();
                Ok(keys)
            }
            other => bail!("KEYS {pattern}: expected an array, got {other:?}"),
        }
    }

    /// One `field:value` of `INFO <section>`.
    pub async fn info(&mut self, section: &str, field: &str) -> anyhow::Result<String> {
        let text = self
            .bulk(&[b"INFO", section.as_bytes()])
            .await?
            .context("INFO answered null")?;
        let text = String::from_utf8_lossy(&text);
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {field} in INFO {section}:\n{text}"))
    }

    /// The `addr=` of every client Redis has now (`CLIENT LIST`).
    pub async fn client_addrs(&mut self) -> anyhow::Result<Vec<String>> {
        let text = self
            .bulk(&[b"CLIENT", b"LIST"])
            .await?
            .context("CLIENT LIST answered null")?;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|line| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix("addr="))
                    .map(str::to_owned)
            })
            .collect())
    }

    /// Waits for the far side to close: `Ok` on EOF or a reset, an error
    /// naming what arrived instead.
    pub async fn closed_by_peer(&mut self) -> anyhow::Result<()> {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut buf)).await {
            Err(_) => bail!("the connection was neither answered nor closed"),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
            Ok(Ok(n)) => bail!(
                "the connection was answered: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }

    fn read_reply(
        &mut self,
    ) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            let mut line = Vec::new();
            let n = self.stream.read_until(b'\n', &mut line).await?;
            if n == 0 {
                bail!("the connection closed before a reply");
            }
            let line =
                String::from_utf8_lossy(line.strip_suffix(b"\r\n").unwrap_or(&line)).into_owned();
            let (kind, rest) = line.split_at(line.len().min(1));
            Ok(match kind {
                "+" => Reply::Simple(rest.to_owned()),
                "-" => Reply::Error(rest.to_owned()),
                ":" => Reply::Integer(rest.parse().with_context(|| format!("integer {rest:?}"))?),
                "$" => {
                    let len: i64 = rest
                        .parse()
                        .with_context(|| format!("bulk length {rest:?}"))?;
                    if len < 0 {
                        Reply::Bulk(None)
                    } else {
                        let mut data = vec![0u8; len as usize + 2];
                        self.stream.read_exact(&mut data).await?;
                        data.truncate(len as usize);
                        Reply::Bulk(Some(data))
                    }
                }
                "*" => {
                    let count: i64 = rest
                        .parse()
                        .with_context(|| format!("array length {rest:?}"))?;
                    let mut items = Vec::new();
                    for _ in 0..count.max(0) {
                        items.push(self.read_reply().await?);
                    }
                    Reply::Array(items)
                }
                _ => bail!("not a RESP reply: {line:?}"),
            })
        })
    }
}

/// A command for messages, values longer than 40 bytes shortened.
fn show(args: &[&[u8]]) -> String {
    args.iter()
        .map(|a| {
            if a.len() > 40 {
                format!("<{} bytes>", a.len())
            } else {
                String::from_utf8_lossy(a).into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
