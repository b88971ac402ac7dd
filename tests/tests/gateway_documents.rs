//! Gateway and certificate documents in Consul KV, as a gateway sees them
//! over the discovery stream: its `Gateway` carries the PEM of the
//! `certificates/<name>` document its listener names; a new version of
//! that document reaches it; deleting the document refuses the gateway's
//! (named in /status) while the last good certificate keeps serving; and
//! the agent's log never holds a private key.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Mesh, eventually, run};
use weft_proto::config::v1::{Gateway, tls_certificate};
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, Node};
use weft_proto::type_url;

/// A self-signed certificate document for `host`, and its chain.
fn certificate(host: &str) -> anyhow::Result<(Value, String)> {
    let certified = rcgen::generate_simple_self_signed(vec![host.into()])?;
    let chain = certified.cert.pem();
    let document = json!({
        "chain_pem": chain,
        "private_key_pem": certified.signing_key.serialize_pem(),
    });
    Ok((document, chain))
}

/// The gateway `edge`'s end of the discovery stream.
struct GatewayStream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl GatewayStream {
    async fn connect(url: String) -> anyhow::Result<Self> {
        let mut client = AggregatedDiscoveryServiceClient::connect(url).await?;
        let (requests, outbox) = mpsc::channel(4);
        let responses = client
            .stream_resources(ReceiverStream::new(outbox))
            .await?
            .into_inner();
        let stream = Self {
            requests,
            responses,
        };
        stream.send("", "").await?;
        Ok(stream)
    }

    async fn send(&self, version: &str, nonce: &str) -> anyhow::Result<()> {
        let request = DiscoveryRequest {
            version_info: version.into(),
            node: Some(Node {
                id: "edge-1".into(),
                service: "edge".into(),
                instance: "edge-1".into(),
                ..Node::default()
            }),
            resource_names: vec!["edge".into()],
            type_url: type_url::GATEWAY.into(),
            response_nonce: nonce.into(),
            error_detail: None,
        };
        self.requests
            .send(request)
            .await
            .context("the stream closed")
    }

    /// The chain of the first certificate of the next pushed Gateway that
    /// has one (each push acknowledged).
    async fn next_chain(&mut self) -> anyhow::Result<String> {
        loop {
            let response = tokio::time::timeout(SETUP_TIMEOUT, self.responses.message())
                .await
                .context("no push in time")??
                .context("the stream ended")?;
            self.send(&response.version_info, &response.nonce).await?;
            let Some(any) = response.resources.first() else {
                continue;
            };
            let gateway = Gateway::decode(any.value.as_ref())?;
            let source = gateway
                .listeners
                .first()
                .and_then(|listener| listener.certificates.first())
                .and_then(|certificate| certificate.source.clone());
            if let Some(tls_certificate::Source::Pem(pem)) = source {
                return Ok(pem.chain_pem);
            }
        }
    }

    /// The chain of the next push that differs from `old`.
    async fn next_chain_other_than(&mut self, old: &str) -> anyhow::Result<String> {
        loop {
            let chain = self.next_chain().await?;
            if chain != old {
                return Ok(chain);
            }
        }
    }
}

#[test]
fn a_gateway_gets_its_kv_certificate_and_every_new_version_of_it() {
    run(|ctx| async move {
        let mut mesh = Mesh::start(&ctx).await?;
        let (first, first_chain) = certificate("api.example.com")?;
        mesh.put_document("certificates/api", &first).await?;
        mesh.put_document(
            "gateways/edge",
            &json!({ "listeners": [ { "name": "public", "port": 8443, "protocol": "https",
                "hosts": ["api.example.com"], "certificates": [ { "kv": "api" } ] } ] }),
        )
        .await?;
        let mut gateway = GatewayStream::connect(mesh.agent.discovery_url()).await?;
        let served = gateway.next_chain().await?;
        ensure!(served == first_chain, "the gateway got another certificate");

        let (second, second_chain) = certificate("api.example.com")?;
        mesh.put_document("certificates/api", &second).await?;
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            gateway.next_chain_other_than(&first_chain),
        )
        .await
        .context("the new certificate was not pushed within 5 s")??;
        ensure!(
            served == second_chain,
            "the gateway got another certificate"
        );

        mesh.consul.kv_delete("weft/certificates/api").await?;
        eventually(
            SETUP_TIMEOUT,
            "/status names the gateway's missing certificate",
            || async {
                let status = mesh.agent.status().await?;
                let rejection = status["rejected_documents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|entry| entry["key"] == "gateways/edge")
                    .cloned()
                    .with_context(|| format!("not yet: {}", status["rejected_documents"]))?;
                ensure!(rejection["serving"] == "last good version", "{rejection}");
                ensure!(
                    rejection["errors"][0]["field"] == "listeners[0].certificates[0].kv",
                    "{rejection}"
                );
                Ok(())
            },
        )
        .await?;

        let log = std::fs::read_to_string(mesh.agent.process().log_path())?;
        ensure!(
            !log.contains("PRIVATE KEY"),
            "the agent's log holds a private key"
        );
        Ok(())
    });
}
