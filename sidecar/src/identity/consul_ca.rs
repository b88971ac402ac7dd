//! `--identity-source consul`: the leaf and the roots come from Consul's
//! Connect CA, through the local Consul agent, so Weft sidecars and
//! Consul's own proxies share one mesh identity.
//!
//! - `GET /v1/agent/connect/ca/roots`: every root's `RootCert`, plus its
//!   `IntermediateCerts` (after a rotation, the new root cross-signed by
//!   the old one), make the trust bundle.
//! - `GET /v1/agent/connect/ca/leaf/<service>`: `CertPEM` (the leaf, then
//!   any intermediates) and `PrivateKeyPEM`. Consul signs it only for a
//!   token with `service:write` on the service; its 403 stops the start
//!   with Consul's reason.
//!
//! Both are then watched with blocking queries (`?index=N&wait=`): Consul
//! renews the leaf before it expires and answers with new roots on a
//! rotation (and, a jittered moment later, with a leaf from the new root);
//! each answer is swapped into the [`IdentityStore`], so new handshakes use
//! it and open connections are never touched.
//!
//! The HTTP client is deliberately small: one HTTP/1.1 connection per
//! request (two long polls per sidecar), hyper's client connection, a
//! timeout on every wait, bodies capped at [`MAX_BODY`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use weft_certs::{IdentityStore, LeafInfo, TrustBundle};

use super::IdentityError;
use crate::backoff::Backoff;
use crate::config::ConsulSettings;
use crate::upstream::Dns;

/// How long each blocking query may wait for a change. Consul adds up to
/// `wait/16` of jitter; a minute keeps a dead connection from going
/// unnoticed for long while costing one request per minute when idle.
const WAIT: Duration = Duration::from_secs(60);
/// On top of `WAIT` and Consul's jitter: network and a busy agent.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// The first (non-blocking) reads, and the TCP connect.
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: a leaf and a few roots are a few KiB.
const MAX_BODY: usize = 1024 * 1024;

/// The Consul side of one sidecar: where, as whom, for which service.
#[derive(Clone)]
pub struct ConsulCa {
    /// `host:port` of the Consul agent's HTTP API.
    authority: String,
    host: String,
    port: u16,
    token: Option<String>,
    service: String,
    dns: Dns,
}

impl std::fmt::Debug for ConsulCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulCa")
            .field("consul", &self.authority)
            .field("service", &self.service)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `/v1/agent/connect/ca/roots`, the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Roots {
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    roots: Option<Vec<Root>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Root {
    root_cert: String,
    #[serde(default)]
    intermediate_certs: Option<Vec<String>>,
}

/// `/v1/agent/connect/ca/leaf/<service>`, the fields used.
#[derive(Deserialize)]
struct Leaf {
    #[serde(rename = "CertPEM")]
    cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    private_key_pem: String,
}

/// One answer and the `X-Consul-Index` to block on next.
struct Indexed<T> {
    value: T,
    index: u64,
}

/// The trust bundle and leaf as first read, with the indexes their
/// watches start from.
pub struct Initial {
    pub store: Arc<IdentityStore>,
    roots_index: u64,
    leaf_index: u64,
}

impl ConsulCa {
    pub fn new(settings: &ConsulSettings, service: &str, dns: Dns) -> Self {
        let host = settings.address.host().unwrap_or("127.0.0.1").to_owned();
        let port = settings.address.port_u16().unwrap_or(80);
        Self {
            authority: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            token: settings.token.as_ref().map(|token| token.0.clone()),
            service: service.to_owned(),
            dns,
        }
    }

    fn leaf_path(&self) -> String {
        format!("/v1/agent/connect/ca/leaf/{}", self.service)
    }

    /// Reads roots and leaf once and builds the store, retrying while
    /// Consul cannot answer (it may start after the sidecar). A refusal
    /// (403 for a token without `service:write`) ends the wait with
    /// Consul's reason.
    pub async fn obtain(&self) -> Result<Initial, IdentityError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.read_both().await {
                Ok(initial) => return Ok(initial),
                Err(e @ IdentityError::Unavailable(_)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "no certificate from Consul yet");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_both(&self) -> Result<Initial, IdentityError> {
        let roots = self.roots(0).await?;
        let leaf = self.leaf(0).await?;
        let store = IdentityStore::new(
            &leaf.value.cert_pem,
            &leaf.value.private_key_pem,
            roots.value,
        )
        .map_err(|e| IdentityError::Invalid(format!("Consul's leaf for {}: {e}", self.service)))?;
        let info = store.leaf();
        self.check_leaf(&info)?;
        tracing::info!(
            identity = %info.identity(),
            serial = %info.serial(),
            not_after = ?info.not_after(),
            roots = store.bundle().len(),
            consul = %self.authority,
            "certificate obtained from Consul's Connect CA"
        );
        Ok(Initial {
            store,
            roots_index: roots.index,
            leaf_index: leaf.index,
        })
    }

    /// Consul signs what the token may write; still, a leaf for another
    /// service would make every peer refuse us, so say so at once.
    fn check_leaf(&self, leaf: &LeafInfo) -> Result<(), IdentityError> {
        if leaf.identity().service() != self.service {
            return Err(IdentityError::Invalid(format!(
                "Consul's leaf names {} but this sidecar is {}",
                leaf.identity(),
                self.service
            )));
        }
        Ok(())
    }

    /// The roots (blocking on `index` when not 0) as a trust bundle.
    async fn roots(&self, index: u64) -> Result<Indexed<TrustBundle>, IdentityError> {
        let path = "/v1/agent/connect/ca/roots";
        let answer: Indexed<Roots> = self.get(path, index).await?;
        let roots = answer.value.roots.unwrap_or_default();
        let mut bundle = TrustBundle::new();
        for root in &roots {
            let intermediates = root.intermediate_certs.iter().flatten();
            for pem in std::iter::once(&root.root_cert).chain(intermediates) {
                bundle.add_pem(pem).map_err(|e| {
                    IdentityError::Invalid(format!(
                        "{path}: a root of {}: {e}",
                        answer.value.trust_domain
                    ))
                })?;
            }
        }
        if bundle.is_empty() {
            // Consul's CA initializes a moment after its leader election.
            return Err(IdentityError::Unavailable(format!(
                "{path}: Consul's Connect CA has no root yet"
            )));
        }
        Ok(Indexed {
            value: bundle,
            index: answer.index,
        })
    }

    async fn leaf(&self, index: u64) -> Result<Indexed<Leaf>, IdentityError> {
        self.get(&self.leaf_path(), index).await
    }

    /// One GET, blocking on `index` when it is not 0, bounded by a timeout
    /// longer than the wait.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        index: u64,
    ) -> Result<Indexed<T>, IdentityError> {
        let (path_and_query, timeout) = if index == 0 {
            (path.to_owned(), QUICK_TIMEOUT)
        } else {
            (
                format!("{path}?index={index}&wait={}s", WAIT.as_secs()),
                WAIT + WAIT / 16 + TIMEOUT_MARGIN,
            )
        };
        let unavailable = |reason: String| {
            IdentityError::Unavailable(format!("Consul at {} ({path}): {reason}", self.authority))
        };
        let (status, index_header, body) =
            tokio::time::timeout(timeout, self.exchange(&path_and_query))
                .await
                .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
                .map_err(unavailable)?;
        let text = || String::from_utf8_lossy(&body).trim().to_owned();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(format!("HTTP {status}: {}", text())));
        }
        if !status.is_success() {
            // 403 "Permission denied" for a token without service:write,
            // "ACL not found" for an unknown token...: an operator must act.
            return Err(IdentityError::ConsulRefused {
                service: self.service.clone(),
                message: format!(
                    "Consul at {} answered {path} with HTTP {status}: {}",
                    self.authority,
                    text()
                ),
            });
        }
        let value = serde_json::from_slice(&body).map_err(|e| {
            IdentityError::Invalid(format!(
                "Consul's answer to {path} is not the expected JSON: {e}"
            ))
        })?;
        if index_header == 0 {
            // Without it there is nothing to block on: asking again at once
            // would spin. Consul's agent endpoints always send it.
            return Err(unavailable("no X-Consul-Index in the answer".into()));
        }
        Ok(Indexed {
            value,
            index: index_header,
        })
    }

    /// Connects, sends one request, reads the whole (capped) answer.
    async fn exchange(&self, path_and_query: &str) -> Result<(StatusCode, u64, Bytes), String> {
        let addrs = self
            .dns
            .resolve(&self.host, self.port)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        let addr = addrs
            .first()
            .ok_or_else(|| format!("{} has no address", self.host))?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}; is the Consul agent running?"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // The connection task ends with the request (or this future's drop).
        let driver = tokio::spawn(connection);
        let mut request = Request::get(Uri::try_from(path_and_query).map_err(|e| e.to_string())?)
            .header(http::header::HOST, &self.authority);
        if let Some(token) = &self.token {
            let mut value = http::HeaderValue::from_str(token).map_err(|_| {
                "the Consul token has characters not allowed in a header".to_owned()
            })?;
            value.set_sensitive(true);
            request = request.header("x-consul-token", value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, index, body))
        }
        .await;
        driver.abort();
        result
    }

    /// Watches roots and leaf until `shutdown`, swapping each change into
    /// the store. Errors are retried with capped backoff; the store keeps
    /// what it has meanwhile.
    pub async fn watch(self, initial: Initial, shutdown: watch::Receiver<bool>) {
        let store = &initial.store;
        let roots = self.follow(
            "roots",
            initial.roots_index,
            |index| self.roots(index),
            |bundle: TrustBundle| {
                if bundle == store.bundle() {
                    return;
                }
                let count = bundle.len();
                match store.set_bundle(bundle) {
                    Ok(()) => tracing::info!(
                        roots = count,
                        "trust bundle updated from Consul's Connect CA; new handshakes verify peers against it"
                    ),
                    Err(e) => tracing::warn!(error = %e, "Consul's roots were not applied; keeping the current bundle"),
                }
            },
            shutdown.clone(),
        );
        let leaf = self.follow(
            "leaf",
            initial.leaf_index,
            |index| self.leaf(index),
            |leaf: Leaf| {
                let checked = LeafInfo::from_pem(&leaf.cert_pem)
                    .map_err(|e| IdentityError::Invalid(e.to_string()))
                    .and_then(|info| self.check_leaf(&info));
                let applied = checked.and_then(|()| {
                    store
                        .set_leaf(&leaf.cert_pem, &leaf.private_key_pem)
                        .map_err(|e| IdentityError::Invalid(e.to_string()))
                });
                match applied {
                    Ok(info) => tracing::info!(
                        identity = %info.identity(),
                        serial = %info.serial(),
                        not_after = ?info.not_after(),
                        "certificate renewed by Consul's Connect CA"
                    ),
                    Err(e) => tracing::warn!(error = %e, "Consul's new leaf was not applied; keeping the current one"),
                }
            },
            shutdown,
        );
        tokio::join!(roots, leaf);
    }

    /// One blocking-query loop: fetch after `index`, apply what changed,
    /// back off after errors, stop on shutdown.
    async fn follow<T, Fetch, Answer>(
        &self,
        what: &str,
        mut index: u64,
        fetch: Fetch,
        mut apply: impl FnMut(T),
        mut shutdown: watch::Receiver<bool>,
    ) where
        Fetch: Fn(u64) -> Answer,
        Answer: std::future::Future<Output = Result<Indexed<T>, IdentityError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let answer = tokio::select! {
                answer = fetch(index) => answer,
                _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
            };
            match answer {
                // The wait ended without a change.
                Ok(answer) if answer.index == index => backoff.reset(),
                Ok(answer) => {
                    backoff.reset();
                    // A lower index means Consul's state was reset: start over.
                    index = answer.index;
                    apply(answer.value);
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "watching Consul's {what} failed; keeping the current one");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Secret;

    /// A one-shot fake Consul: answers every request with `status`, `body`
    /// and `X-Consul-Index: 7`, and hands back the request heads it saw.
    async fn fake_consul(
        status: &'static str,
        body: String,
    ) -> (ConsulSettings, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let mut heads = Vec::new();
            while let Ok(Ok((mut stream, _))) =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
            {
                let mut head = vec![0u8; 4096];
                let read = stream.read(&mut head).await.unwrap_or(0);
                heads.push(String::from_utf8_lossy(&head[..read]).into_owned());
                let answer = format!(
                    "HTTP/1.1 {status}\r\nX-Consul-Index: 7\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
            heads
        });
        let settings = ConsulSettings {
            address: format!("http://{address}").parse().unwrap(),
            token: Some(Secret("sidecar-token".into())),
        };
        (settings, seen)
    }

    #[tokio::test]
    async fn consuls_refusal_stops_the_start_with_consuls_words_and_sends_the_token() {
        let (settings, seen) = fake_consul("403 Forbidden", "Permission denied".into()).await;
        let source = ConsulCa::new(&settings, "users", Dns::default());
        let error = match source.obtain().await {
            Err(error) => error,
            Ok(_) => panic!("a 403 was taken for a certificate"),
        };
        let text = error.to_string();
        assert!(
            matches!(error, IdentityError::ConsulRefused { .. }),
            "{text}"
        );
        assert!(
            text.contains("HTTP 403 Forbidden: Permission denied"),
            "{text}"
        );
        assert!(!text.contains("sidecar-token"), "never the token: {text}");
        let heads = seen.await.unwrap();
        assert!(
            heads[0].starts_with("GET /v1/agent/connect/ca/roots "),
            "{heads:?}"
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains("x-consul-token: sidecar-token"),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn every_root_and_its_intermediates_make_the_bundle_and_blocking_reads_carry_the_index() {
        let ca = |name: &str| {
            weft_certs::Ca::generate_root(&name.parse().unwrap(), Duration::from_secs(3600))
                .unwrap()
                .bundle()
                .to_pem()
        };
        let (old, new, intermediate) = (ca("a.consul"), ca("b.consul"), ca("c.consul"));
        let body = serde_json::json!({
            "TrustDomain": "a.consul",
            "Roots": [
                { "RootCert": old, "IntermediateCerts": null, "Active": false },
                { "RootCert": new, "IntermediateCerts": [intermediate], "Active": true },
            ]
        });
        let (settings, seen) = fake_consul("200 OK", body.to_string()).await;
        let source = ConsulCa::new(&settings, "users", Dns::default());
        let roots = source.roots(3).await.unwrap();
        assert_eq!(roots.index, 7);
        assert_eq!(roots.value.len(), 3, "two roots and an intermediate");
        let heads = seen.await.unwrap();
        assert!(
            heads[0].starts_with("GET /v1/agent/connect/ca/roots?index=3&wait=60s "),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_consul_is_worth_retrying() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let settings = ConsulSettings {
            address: format!("http://{address}").parse().unwrap(),
            token: None,
        };
        let source = ConsulCa::new(&settings, "users", Dns::default());
        let error = source.roots(0).await.err();
        assert!(
            matches!(&error, Some(IdentityError::Unavailable(reason)) if reason.contains("is the Consul agent running?")),
            "{error:?}"
        );
    }
}
