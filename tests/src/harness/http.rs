//! A small HTTP client for tests (hyper-util's pooled client, keep-alive),
//! and the answer of `weft-testapp` decoded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The header a sidecar puts on the errors it produces.
pub const WEFT_ERROR: &str = "x-weft-error";

/// Every request of a test gets at most this long: far above any latency a
/// healthy local mesh has, short enough that a hang fails the test quickly.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled HTTP/1.1 client. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { inner }
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let what = format!("{} {}", request.method(), request.uri());
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.inner.request(request))
            .await
            .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{what}: request failed"))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
            .await
            .with_context(|| format!("{what}: body not complete within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{what}: reading the body"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        let request = Request::get(url)
            .body(Full::default())
            .with_context(|| format!("building GET {url}"))?;
        self.send(request).await
    }

    /// `PUT url` with a body.
    pub async fn put(&self, url: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
        let request = Request::put(url)
            .body(Full::new(body.into()))
            .with_context(|| format!("building PUT {url}"))?;
        self.send(request).await
    }

    /// `DELETE url`.
    pub async fn delete(&self, url: &str) -> anyhow::Result<Reply> {
        let request = Request::delete(url)
            .body(Full::default())
            .with_context(|| format!("building DELETE {url}"))?;
        self.send(request).await
    }

    /// A request to `host` sent through a sidecar's outbound listener at
    /// `outbound` (origin-form URI, `Host: host`), the way an app calls a
    /// service by name.
    pub async fn call(&self, outbound: SocketAddr, call: Call<'_>) -> anyhow::Result<Reply> {
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(format!("http://{outbound}{}", call.path))
            .header(http::header::HOST, call.host);
        for (name, value) in call.headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(call.body.as_bytes())))
            .with_context(|| format!("building a request to {}{}", call.host, call.path))?;
        self.send(request).await.with_context(|| {
            format!(
                "calling {}{} through the outbound listener {outbound}",
                call.host, call.path
            )
        })
    }

    /// `GET http://host/path` through a sidecar's outbound listener.
    pub async fn call_get(
        &self,
        outbound: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Reply> {
        self.call(outbound, Call::get(host, path)).await
    }
}

/// One request an app makes to a service by name.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub method: Method,
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a str,
}

impl<'a> Call<'a> {
    pub fn get(host: &'a str, path: &'a str) -> Self {
        Self {
            method: Method::GET,
            host,
            path,
            headers: &[],
            body: "",
        }
    }

    pub fn headers(mut self, headers: &'a [(&'a str, &'a str)]) -> Self {
        self.headers = headers;
        self
    }

    pub fn post(mut self, body: &'a str) -> Self {
        self.method = Method::POST;
        self.body = body;
        self
    }
}

/// A complete answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header of the answer, as text (`None`: absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The cause a sidecar names on an error it produced.
    pub fn weft_error(&self) -> Option<&str> {
        self.headers
            .get(WEFT_ERROR)
            .and_then(|value| value.to_str().ok())
    }

    /// Whether this is the sidecar's fail-fast 503 for the concurrency
    /// threshold `which` (`x-weft-overflow`).
    pub fn is_overflow(&self, which: &str) -> bool {
        self.status == 503
            && self.weft_error() == Some("overflow")
            && self
                .headers
                .get("x-weft-overflow")
                .is_some_and(|v| v == which)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, whatever the status.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("answer {} is not JSON: {}", self.status, self.text()))
    }

    /// The echo of a `weft-testapp` that answered 2xx; anything else (an
    /// error of the sidecar, say) is an error naming status and cause.
    pub fn echo(&self) -> anyhow::Result<Echo> {
        if !self.status.is_success() {
            bail!(
                "expected an app's echo, got {} (x-weft-error: {}): {}",
                self.status,
                self.weft_error().unwrap_or("-"),
                self.text()
            );
        }
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "answer {} is not a testapp echo: {}",
                self.status,
                self.text()
            )
        })
    }
}

/// What `weft-testapp` saw of a request.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Echo {
    pub service: String,
    pub instance: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub version: String,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}
