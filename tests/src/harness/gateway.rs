//! Edge gateways (`weft-gateway`) as child processes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::agent::wait_for_200;
use super::binaries::binary;
use super::http::HttpClient;
use super::ports::free_port;
use super::process::Process;

/// Time for a gateway to start, get its identity and its first complete
/// config (its listeners bound).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running gateway. Its listeners are where its `gateways/<name>`
/// document says.
pub struct Gateway {
    process: Process,
    pub name: String,
    pub admin: SocketAddr,
    http: HttpClient,
}

impl Gateway {
    /// Starts gateway `name` against the agent at `discovery`, with more
    /// flags (`--identity-token ...`), and waits for its `/ready`.
    pub async fn start(
        log_dir: &Path,
        name: &str,
        discovery: &str,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let args = [
            vec![
                "--service".to_owned(),
                name.to_owned(),
                "--discovery".to_owned(),
                discovery.to_owned(),
                "--admin".to_owned(),
                admin.to_string(),
            ],
            extra_args.to_vec(),
        ]
        .concat();
        let mut process = Process::spawn_with_env(
            &format!("gateway-{name}"),
            &binary("weft-gateway")?,
            &args,
            &[("RUST_LOG", "info,weft_sidecar=debug"), ("NO_COLOR", "1")],
            log_dir,
        )?;
        let http = HttpClient::new();
        wait_for_200(
            &mut process,
            &http,
            &format!("http://{admin}/ready"),
            READY_TIMEOUT,
        )
        .await?;
        Ok(Self {
            process,
            name: name.to_owned(),
            admin,
            http,
        })
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let reply = self
            .http
            .get(&format!("http://{}/metrics", self.admin))
            .await?;
        Ok(reply.text())
    }

    /// The gateway's log so far.
    pub fn log(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.process.log_path())?)
    }
}

/// Gateway `edge` with one plaintext listener for `api.example.com`,
/// whose routes send everything to `users` (no mesh CA: the gateway calls
/// plaintext), with a CORS policy for the origin `https://app.example.com`. Returns it with its listener's address; send requests
/// there with `Host: api.example.com`.
pub async fn plain_edge(mesh: &super::mesh::Mesh) -> anyhow::Result<(Gateway, SocketAddr)> {
    let listener = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    mesh.put_document(
        "routes/api.example.com",
        &serde_json::json!({ "routes": [ { "match": { "path_prefix": "/" }, "destination": "users",
            "cors": { "allow_origins": ["https://app.example.com"] } } ] }),
    )
    .await?;
    mesh.put_document(
        "gateways/edge",
        &serde_json::json!({ "listeners": [ { "name": "plain", "address": "127.0.0.1",
            "port": listener.port(), "hosts": ["api.example.com"] } ] }),
    )
    .await?;
    let gateway = Gateway::start(&mesh.log_dir, "edge", &mesh.agent.discovery_url(), &[]).await?;
    Ok((gateway, listener))
}
