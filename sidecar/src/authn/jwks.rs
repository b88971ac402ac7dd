//! A provider's key set fetched from a URL: fetched at start, refreshed in
//! the background before its cache time runs out, refetched (at most once
//! per `min_refetch_interval`) when a token names a key the set lacks, and
//! kept as it is when a fetch fails.
//!
//! An `https://` URL is fetched over TLS with the provider's `JwksTls`
//! (built when the policy was compiled); a certificate the client does not
//! accept fails the fetch like any other error, and nothing falls back to
//! plain http.
//!
//! One task per URL does every fetch, so fetches never overlap. Requests
//! read the current set with one atomic load (`ArcSwapOption`); a request
//! that needs a refetch waits for the task's next completed fetch through a
//! `watch` channel, holding no lock. The task holds only a weak reference:
//! dropping the last `Authenticator` using the set stops it.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, HOST, HeaderMap, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::jwks_tls::JwksTls;
use super::keys::KeySet;
use crate::backoff::Backoff;
use crate::upstream::EndpointAddr;
use crate::upstream::{Connector, Dns};

/// A JWKS is a few kilobytes; anything this big is not one.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Bounds on a server's `Cache-Control: max-age`: not so short that every
/// sidecar hammers the IdP, not so long that a revoked key lives on.
const MIN_CACHE: Duration = Duration::from_secs(30);
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
/// Without `max-age` (and without a configured duration).
const DEFAULT_CACHE: Duration = Duration::from_secs(300);
/// Retries of a failed fetch: soon at first, then at most once a minute.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// Full-jitter backoff can draw 0: never retry in a tight loop.
const RETRY_FLOOR: Duration = Duration::from_millis(250);

/// Where and how to fetch (compiled from a `JwksConfig` with a `uri`).
#[derive(Clone, Debug)]
pub(crate) struct RemoteSettings {
    pub uri: Uri,
    pub addr: EndpointAddr,
    /// For an `https://` URI; `None` for `http://`.
    pub tls: Option<Arc<JwksTls>>,
    pub cache_duration: Option<Duration>,
    pub fetch_timeout: Duration,
    pub min_refetch_interval: Duration,
}

impl PartialEq for RemoteSettings {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
            && self.tls == other.tls
            && self.cache_duration == other.cache_duration
            && self.fetch_timeout == other.fetch_timeout
            && self.min_refetch_interval == other.min_refetch_interval
    }
}

/// Progress of the fetch task, for requests waiting on a refetch.
#[derive(Clone, Copy, Debug, Default)]
struct FetchStatus {
    /// Fetches finished (successful or not).
    completed: u64,
    in_flight: bool,
}

pub(crate) struct RemoteJwks {
    settings: RemoteSettings,
    /// `None` until the first successful fetch.
    keys: ArcSwapOption<KeySet>,
    status: watch::Sender<FetchStatus>,
    /// Asks the task to fetch now.
    wake: Arc<Notify>,
    /// When a request last triggered a refetch (the rate limit).
    last_on_demand: Mutex<Option<Instant>>,
    /// Dropped with this struct, which tells the task to stop.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

impl RemoteJwks {
    /// The state, without fetching anything yet (see [`RemoteJwks::start`]).
    pub fn new(settings: RemoteSettings) -> Arc<Self> {
        let (alive_tx, alive_rx) = watch::channel(());
        Arc::new(Self {
            settings,
            keys: ArcSwapOption::empty(),
            status: watch::Sender::new(FetchStatus::default()),
            wake: Arc::new(Notify::new()),
            last_on_demand: Mutex::new(None),
            _alive: alive_tx,
            alive: alive_rx,
        })
    }

    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// Spawns the fetch task on the current tokio runtime.
    pub fn start(self: &Arc<Self>, dns: Dns) {
        let task = FetchTask {
            jwks: Arc::downgrade(self),
            wake: self.wake.clone(),
            alive: self.alive.clone(),
            connector: Connector::new(self.settings.addr.clone(), self.settings.fetch_timeout, dns),
            tls: self.settings.tls.clone(),
            uri: self.settings.uri.clone(),
            timeout: self.settings.fetch_timeout,
        };
        tokio::spawn(task.run());
    }

    /// The keys as last fetched, if any fetch ever succeeded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Waits for a fetch that a token naming an unknown key asked for:
    /// joins the one in flight, or starts one unless the last request-driven
    /// fetch was less than `min_refetch_interval` ago. Returns whether a
    /// fetch completed (the caller then looks again). Bounded by the fetch
    /// timeout.
    pub async fn refetch(&self) -> bool {
        let mut status = self.status.subscribe();
        let seen = *status.borrow_and_update();
        if !seen.in_flight {
            let now = Instant::now();
            {
                let mut last = self
                    .last_on_demand
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.is_some_and(|t| now < t + self.settings.min_refetch_interval) {
                    return false;
                }
                *last = Some(now);
            }
            self.wake.notify_one();
        }
        // The task answers within its own timeout; the margin covers the
        // scheduling between its end and our wake-up.
        let limit = self.settings.fetch_timeout + Duration::from_millis(500);
        tokio::time::timeout(limit, status.wait_for(|s| s.completed > seen.completed))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

struct FetchTask {
    jwks: Weak<RemoteJwks>,
    wake: Arc<Notify>,
    alive: watch::Receiver<()>,
    connector: Connector,
    tls: Option<Arc<JwksTls>>,
    uri: Uri,
    timeout: Duration,
}

impl FetchTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        loop {
            let Some(jwks) = self.jwks.upgrade() else {
                return;
            };
            jwks.status.send_modify(|s| s.in_flight = true);
            let result = tokio::time::timeout(self.timeout, self.fetch())
                .await
                .unwrap_or_else(|_| Err(format!("no complete answer within {:?}", self.timeout)));
            let next = match result.and_then(|(body, max_age)| {
                KeySet::from_json(&body).map(|(set, skipped)| (set, skipped, max_age))
            }) {
                Ok((set, skipped, max_age)) => {
                    for reason in &skipped {
                        tracing::debug!(uri = %self.uri, key = %reason, "JWKS key skipped");
                    }
                    tracing::debug!(uri = %self.uri, keys = set.len(), "JWKS fetched");
                    jwks.keys.store(Some(Arc::new(set)));
                    backoff.reset();
                    let ttl = jwks.settings.cache_duration.unwrap_or_else(|| {
                        max_age.map_or(DEFAULT_CACHE, |a| a.clamp(MIN_CACHE, MAX_CACHE))
                    });
                    // Refresh before the cache time is up, so a rotation
                    // announced with it is picked up in time.
                    ttl.mul_f64(0.9)
                }
                Err(error) => {
                    let keeping = jwks.current().map_or(0, |k| k.len());
                    tracing::warn!(
                        uri = %self.uri,
                        %error,
                        keeping_keys = keeping,
                        "JWKS fetch failed; the last good keys stay in use"
                    );
                    backoff.next_delay().max(RETRY_FLOOR)
                }
            };
            jwks.status.send_modify(|s| {
                s.in_flight = false;
                s.completed += 1;
            });
            drop(jwks);
            tokio::select! {
                _ = self.alive.changed() => return,
                _ = tokio::time::sleep(next) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One GET on a fresh connection (fetches are minutes apart: nothing to
    /// pool), over TLS for an `https://` URI. Returns the body and the
    /// response's `max-age`.
    async fn fetch(&self) -> Result<(Bytes, Option<Duration>), String> {
        let tcp = self.connector.connect().await.map_err(|e| e.to_string())?;
        match &self.tls {
            None => self.get(tcp).await,
            Some(tls) => self.get(tls.handshake(tcp).await?).await,
        }
    }

    async fn get<S>(&self, stream: S) -> Result<(Bytes, Option<Duration>), String>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(HOST, authority)
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(
                USER_AGENT,
                concat!("weft-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("answered {}", response.status()));
            }
            if content_length(response.headers()).is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                return Err(format!("the body is larger than {MAX_JWKS_BYTES} bytes"));
            }
            let max_age = max_age(response.headers());
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the body (at most {MAX_JWKS_BYTES} bytes): {e}"))?
                .to_bytes();
            Ok((body, max_age))
        };
        tokio::pin!(conn, exchange);
        // Drive the connection while the exchange runs; it may finish first
        // (`Connection: close`), with the body already buffered.
        tokio::select! {
            biased;
            r = &mut exchange => r,
            c = &mut conn => match c {
                Ok(()) => exchange.await,
                Err(e) => Err(format!("connection failed: {e}")),
            },
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `max-age` from `Cache-Control`; `no-cache`/`no-store` count as 0 (then
/// bounded up to the minimum).
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for directive in headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v: &HeaderValue| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=")
            && let Ok(secs) = secs.trim_matches('"').parse::<u64>()
        {
            found = Some(Duration::from_secs(secs));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::jwks_tls::test_ca::TestCa;
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age(&headers(&["public, max-age=600"])),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            max_age(&headers(&["public", "Max-Age=\"60\""])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(&headers(&["no-store"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["public"])), None);
        assert_eq!(max_age(&HeaderMap::new()), None);
    }

    fn remote(interval: Duration) -> Arc<RemoteJwks> {
        RemoteJwks::new(RemoteSettings {
            uri: Uri::from_static("http://127.0.0.1:9/jwks"),
            addr: EndpointAddr::Ip(([127, 0, 0, 1], 9).into()),
            tls: None,
            cache_duration: None,
            fetch_timeout: Duration::from_secs(2),
            min_refetch_interval: interval,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn request_driven_refetches_are_rate_limited() {
        // No task runs: a permitted refetch waits out its timeout, a
        // rate-limited one returns at once.
        let jwks = remote(Duration::from_secs(30));
        let start = Instant::now();
        assert!(!jwks.refetch().await, "nobody answers");
        assert!(start.elapsed() >= Duration::from_secs(2));
        let again = Instant::now();
        assert!(!jwks.refetch().await);
        assert_eq!(again.elapsed(), Duration::ZERO, "rate-limited: no wait");
        tokio::time::advance(Duration::from_secs(31)).await;
        let later = Instant::now();
        jwks.refetch().await;
        assert!(later.elapsed() >= Duration::from_secs(2), "allowed again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refetch_joins_the_fetch_in_flight() {
        let jwks = remote(Duration::from_secs(30));
        jwks.status.send_modify(|s| s.in_flight = true);
        let waiter = {
            let jwks = jwks.clone();
            tokio::spawn(async move { jwks.refetch().await })
        };
        tokio::task::yield_now().await;
        jwks.status.send_modify(|s| {
            s.in_flight = false;
            s.completed += 1;
        });
        assert!(waiter.await.unwrap());
        // Joining did not use up the rate limit.
        assert!(jwks.last_on_demand.lock().unwrap().is_none());
    }

    /// A JWKS endpoint over TLS on loopback, with the certificate of
    /// `server`; counts the requests it answers (none when no handshake
    /// succeeds).
    async fn https_jwks(
        server: Arc<rustls::ServerConfig>,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let counter = counter.clone();
                let service = hyper::service::service_fn(move |_| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body =
                        r#"{ "keys": [ { "kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB" } ] }"#;
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(body.as_bytes())),
                        ))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service),
                );
            }
        });
        (addr, answered)
    }

    fn over_https(addr: std::net::SocketAddr, tls: JwksTls) -> RemoteSettings {
        RemoteSettings {
            uri: format!("https://127.0.0.1:{}/jwks", addr.port())
                .parse()
                .unwrap(),
            addr: EndpointAddr::Ip(addr),
            tls: Some(Arc::new(tls)),
            cache_duration: None,
            fetch_timeout: Duration::from_secs(2),
            min_refetch_interval: Duration::from_secs(30),
        }
    }

    /// One fetch as the task makes it, for its error.
    async fn fetch_once(settings: RemoteSettings) -> Result<(Bytes, Option<Duration>), String> {
        let task = FetchTask {
            jwks: Weak::new(),
            wake: Arc::new(Notify::new()),
            alive: watch::channel(()).1,
            connector: Connector::new(
                settings.addr.clone(),
                settings.fetch_timeout,
                Dns::default(),
            ),
            tls: settings.tls.clone(),
            uri: settings.uri.clone(),
            timeout: settings.fetch_timeout,
        };
        task.fetch().await
    }

    #[tokio::test]
    async fn keys_are_fetched_over_https_from_a_server_the_providers_ca_vouches_for() {
        let ca = TestCa::new("idp");
        let (addr, answered) = https_jwks(ca.server(&["127.0.0.1"])).await;
        let tls = JwksTls::new("127.0.0.1", ca.trusted()).unwrap();
        let jwks = RemoteJwks::new(over_https(addr, tls));
        jwks.start(Dns::default());
        assert!(jwks.refetch().await, "a fetch completed");
        assert_eq!(jwks.current().map(|k| k.len()), Some(1));
        assert!(answered.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn a_server_the_client_does_not_trust_gets_no_request() {
        let ca = TestCa::new("idp");
        let stranger = TestCa::new("stranger");
        let (addr, answered) = https_jwks(stranger.server(&["127.0.0.1"])).await;
        let untrusted = over_https(addr, JwksTls::new("127.0.0.1", ca.trusted()).unwrap());
        let reason = fetch_once(untrusted.clone())
            .await
            .err()
            .unwrap_or_default();
        assert!(reason.contains("certificate is not trusted"), "{reason}");

        let (addr, misnamed_answered) = https_jwks(ca.server(&["idp.example.com"])).await;
        let misnamed = over_https(addr, JwksTls::new("127.0.0.1", ca.trusted()).unwrap());
        let reason = fetch_once(misnamed).await.err().unwrap_or_default();
        assert!(reason.contains("not valid for `127.0.0.1`"), "{reason}");

        // Through the task: the fetch completes as a failure, no keys.
        let jwks = RemoteJwks::new(untrusted);
        jwks.start(Dns::default());
        assert!(jwks.refetch().await);
        assert!(jwks.current().is_none());
        assert_eq!(
            answered.load(Ordering::SeqCst),
            0,
            "nothing sent unverified"
        );
        assert_eq!(misnamed_answered.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_task_stops_when_the_key_set_is_dropped() {
        let jwks = remote(Duration::from_secs(30));
        let alive = jwks.alive.clone();
        jwks.start(Dns::default());
        let mut gone = alive.clone();
        drop(jwks);
        // The sender lives in the dropped struct: `changed` now fails.
        assert!(gone.changed().await.is_err());
    }
}
