//! Upstream apps: `weft-testapp` processes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::binaries::binary;
use super::http::HttpClient;
use super::process::Process;

/// The app binds and prints READY in milliseconds; generous for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A misbehaviour the app can be switched to (its `/_weft/fault` endpoint).
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer with this status code.
    Status(u16),
    /// Answer after this long.
    Delay(Duration),
    /// Close the connection without an answer.
    Reset,
    /// Fail the echo service's gRPC calls with this status in a
    /// trailers-only answer (the status in the head, no message). Plain
    /// HTTP requests are left alone, as the other faults leave gRPC.
    GrpcStatus(i32),
    /// Fail them after one reply message, with the status in the trailers.
    GrpcStatusInTrailers(i32),
}

/// A running `weft-testapp` that answers as `service`/`instance`.
pub struct App {
    process: Process,
    pub service: String,
    pub instance: String,
    pub addr: SocketAddr,
}

impl App {
    /// Starts an app on a free port and waits for its READY line.
    pub async fn start(log_dir: &Path, service: &str, instance: &str) -> anyhow::Result<Self> {
        Self::start_with(log_dir, service, instance, &[]).await
    }

    /// Like [`App::start`], with more flags (`--outbound ADDR`: its
    /// sidecar's outbound listener, for `/call/<service>/...`).
    pub async fn start_with(
        log_dir: &Path,
        service: &str,
        instance: &str,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "--service".to_owned(),
            service.to_owned(),
            "--instance".to_owned(),
            instance.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        args.extend_from_slice(extra_args);
        let mut process = Process::spawn(
            &format!("app-{instance}"),
            &binary("weft-testapp")?,
            &args,
            log_dir,
        )?;
        let line = process.ready_line(READY_TIMEOUT).await?;
        let addr = line
            .parse()
            .with_context(|| format!("app {instance} printed READY {line:?}, not an address"))?;
        Ok(Self {
            process,
            service: service.to_owned(),
            instance: instance.to_owned(),
            addr,
        })
    }

    /// The app's log so far (it logs every WebSocket upgrade it is asked
    /// for, with the path).
    pub fn log(&self) -> anyhow::Result<String> {
        let path = self.process.log_path();
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Makes the app misbehave for its next `count` requests (`None`: until
    /// [`App::clear_fault`]). Sent to the app directly, not through a
    /// sidecar.
    pub async fn inject(
        &self,
        http: &HttpClient,
        fault: Fault,
        count: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut body = match fault {
            Fault::Status(code) => serde_json::json!({ "status": code }),
            Fault::Delay(delay) => serde_json::json!({ "delay_ms": delay.as_millis() as u64 }),
            Fault::Reset => serde_json::json!({ "reset": true }),
            Fault::GrpcStatus(code) => serde_json::json!({ "grpc_status": code }),
            Fault::GrpcStatusInTrailers(code) => {
                serde_json::json!({ "grpc_status": code, "grpc_trailers_only": false })
            }
        };
        if let Some(count) = count {
            body["count"] = count.into();
        }
        let reply = http
            .put(
                &format!("http://{}/_weft/fault", self.addr),
                body.to_string(),
            )
            .await?;
        anyhow::ensure!(
            reply.status.is_success(),
            "app {} refused the fault {fault:?}: {}",
            self.instance,
            reply.text()
        );
        Ok(())
    }

    /// Back to normal answers.
    pub async fn clear_fault(&self, http: &HttpClient) -> anyhow::Result<()> {
        let reply = http
            .delete(&format!("http://{}/_weft/fault", self.addr))
            .await?;
        anyhow::ensure!(reply.status.is_success(), "{}", reply.text());
        Ok(())
    }

    /// How many requests the app has seen (faulted ones included, its
    /// control endpoints not): what reached it through the mesh.
    pub async fn requests_seen(&self, http: &HttpClient) -> anyhow::Result<u64> {
        let reply = http
            .get(&format!("http://{}/_weft/stats", self.addr))
            .await?;
        reply.json()?["requests"]
            .as_u64()
            .with_context(|| format!("app {} stats: {}", self.instance, reply.text()))
    }

    /// How many gRPC calls the app has seen (faulted ones included).
    pub async fn grpc_requests_seen(&self, http: &HttpClient) -> anyhow::Result<u64> {
        let reply = http
            .get(&format!("http://{}/_weft/stats", self.addr))
            .await?;
        reply.json()?["grpc_requests"]
            .as_u64()
            .with_context(|| format!("app {} stats: {}", self.instance, reply.text()))
    }

    /// Connections open to the app now, and the most open at once since
    /// [`App::reset_peak_connections`]. Both count the connection this
    /// question travels on, if the client keeps one to the app.
    pub async fn connections(&self, http: &HttpClient) -> anyhow::Result<(u64, u64)> {
        let reply = http
            .get(&format!("http://{}/_weft/stats", self.addr))
            .await?;
        let stats = reply.json()?;
        let count = |field: &str| {
            stats[field]
                .as_u64()
                .with_context(|| format!("app {} stats: {}", self.instance, reply.text()))
        };
        Ok((count("connections")?, count("peak_connections")?))
    }

    /// Starts counting the peak of open connections afresh.
    pub async fn reset_peak_connections(&self, http: &HttpClient) -> anyhow::Result<()> {
        let reply = http
            .delete(&format!("http://{}/_weft/stats/peak", self.addr))
            .await?;
        anyhow::ensure!(reply.status.is_success(), "{}", reply.text());
        Ok(())
    }

    /// Kills the app (its instance stays registered: connections to it fail).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the app again (killing it first if it runs) on the address it
    /// had, as a container runtime restarts a crashed app in its pod, and
    /// waits for its READY line.
    pub async fn restart_on_same_address(&mut self) -> anyhow::Result<()> {
        let mut args = self.process.args().to_vec();
        let listen = args
            .iter()
            .position(|arg| arg == "--listen")
            .context("the app was started without --listen")?;
        args[listen + 1] = self.addr.to_string();
        self.process.restart_with(args)?;
        let line = self.process.ready_line(READY_TIMEOUT).await?;
        anyhow::ensure!(
            line == self.addr.to_string(),
            "app {} came back on {line}, not {}",
            self.instance,
            self.addr
        );
        Ok(())
    }
}

/// An app written in the test itself, when it must set headers or count
/// requests as no `weft-testapp` flag can: serves `handler` over HTTP/1.1
/// on a free loopback port until the test ends, and returns the port (to
/// register and mesh like any instance, e.g. `Mesh::sidecar_for`).
pub async fn serve_in_test<F, Fut>(handler: F) -> anyhow::Result<u16>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<
            Output = Result<
                http::Response<http_body_util::Full<bytes::Bytes>>,
                std::convert::Infallible,
            >,
        > + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, hyper::service::service_fn(handler))
                    .await;
            });
        }
    });
    Ok(port)
}
