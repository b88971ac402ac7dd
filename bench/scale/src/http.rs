//! A small HTTP/1.1 client for Consul's API and the agent's admin port.
//! Every call is bounded by a timeout: a wedged Consul fails the benchmark
//! with the URL in the error instead of hanging it.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one API call may take. Consul answers a catalog write of one
/// transaction in milliseconds; a minute only trips on a wedged server.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    /// A client whose connections leave from `source` (None: the kernel's
    /// choice). Consul counts `http_max_conns_per_client` per source
    /// address, so the benchmark talks to Consul from 127.0.0.2 and leaves
    /// the agent's 127.0.0.1 budget whole.
    pub fn new(source: Option<IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(source);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client }
    }

    pub async fn send(&self, method: Method, url: &str, body: Bytes) -> anyhow::Result<Reply> {
        let request = Request::builder()
            .method(method.clone())
            .uri(url)
            .body(Full::new(body))
            .with_context(|| format!("building {method} {url}"))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Reply { status, body })
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {url}: no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {url}"))
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, Bytes::new()).await
    }

    /// `PUT url` with a JSON body; an error naming the URL and Consul's
    /// answer unless 2xx.
    pub async fn put_json(&self, url: &str, body: &serde_json::Value) -> anyhow::Result<Reply> {
        let reply = self
            .send(Method::PUT, url, Bytes::from(body.to_string()))
            .await?;
        if !reply.status.is_success() {
            anyhow::bail!("PUT {url}: {} {}", reply.status, reply.text());
        }
        Ok(reply)
    }
}
