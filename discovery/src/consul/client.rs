//! The HTTP side: one hyper-util client, typed calls per endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;

use tokio::sync::Semaphore;

use super::config::{BLOCKING_RESERVE_MIN, MIN_MAX_CONNECTIONS};
use super::dns::HickoryResolver;
use super::error::error_body_text;
use super::query::NON_BLOCKING_TIMEOUT;
use super::tls::{self, ConsulConnector, Tls};
use super::types::RawKvPair;
use super::{
    CaRoots, CheckSummary, ConfigEntry, ConsulConfig, ConsulError, Intention, KvPair, LeafCert,
    QueryMeta, QueryOptions, ServiceEntry, ServiceRegistration,
};

/// Characters left as they are in a path segment or query value: RFC 3986's
/// unreserved set. Everything else (including `/` inside a service name) is
/// percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Largest body read from Consul. A big catalog answer is a few MB; this
/// only stops a misbehaving server from exhausting memory.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How long to wait for a TCP connection to the agent: it is normally local,
/// so a slow connect means it is down. (The TLS handshake after it is bounded
/// by the request timeout.)
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A typed client for Consul's HTTP API. Cheap to clone (shares one
/// connection pool); every blocking query holds one pooled connection.
///
/// # Connection limit
///
/// At most [`ConsulConfig::max_connections`] TCP connections are ever open,
/// whatever the callers do: each connection holds a slot from the connector
/// until it closes, and the pool keeps no more idle ones than that. Every
/// request waits (within its own timeout) for a place in one of two lanes
/// and keeps it until its answer is read: blocking queries in theirs (a
/// quarter of the limit, at least [`BLOCKING_RESERVE_MIN`]), everything else
/// in the rest. A long poll therefore never takes the place a short read
/// needs, and a burst of reads never delays a watch.
#[derive(Clone)]
pub struct ConsulClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Client<ConsulConnector, Full<Bytes>>,
    /// Places for blocking queries (requests Consul holds up to `wait`).
    blocking_lane: Semaphore,
    /// Places for every other request.
    short_lane: Semaphore,
    /// One permit per open connection (shared with the connector).
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// `scheme://authority`, no trailing slash.
    base: String,
    token: Option<HeaderValue>,
    /// The TLS setup for `https://` (shared with the connector), to explain
    /// TLS failures; `None` for plain HTTP.
    tls: Option<Arc<Tls>>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ConsulClient")
            .field("address", &self.inner.base)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One HTTP answer, before decoding.
struct Answer {
    status: StatusCode,
    meta: QueryMeta,
    body: Bytes,
}

impl ConsulClient {
    /// A client for `config`.
    ///
    /// For an `https://` address this reads the CA file (or the system
    /// bundle) and the client certificate and key now, so a bad path or PEM
    /// fails here with the setting named, not at the first request. The TLS
    /// settings are ignored for `http://`.
    pub fn new(config: ConsulConfig) -> Result<Self, ConsulError> {
        let address = config.address.to_string();
        let (scheme, tls) = match config.address.scheme_str() {
            Some("http") => ("http", None),
            Some("https") => ("https", Some(Arc::new(Tls::new(&config)?))),
            _ => {
                return Err(ConsulError::Config {
                    field: "CONSUL_HTTP_ADDR",
                    reason: format!("{address} must start with http:// or https://"),
                });
            }
        };
        let Some(authority) = config.address.authority() else {
            return Err(ConsulError::Config {
                field: "CONSUL_HTTP_ADDR",
                reason: format!("{address} has no host"),
            });
        };
        let token = match config.token {
            Some(token) => {
                Some(
                    HeaderValue::from_str(&token).map_err(|_| ConsulError::Config {
                        field: "CONSUL_HTTP_TOKEN",
                        reason: "the token contains characters not allowed in an HTTP header"
                            .into(),
                    })?,
                )
            }
            None => None,
        };
        let token = token.map(|mut token| {
            token.set_sensitive(true);
            token
        });

        // Host names resolve through hickory (see `dns`), never getaddrinfo.
        let mut connector = HttpConnector::new_with_resolver(HickoryResolver::default());
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let max = config.max_connections.max(MIN_MAX_CONNECTIONS);
        let slots = Arc::new(Semaphore::new(max));
        let blocking = blocking_lane_size(max);
        let http = Client::builder(TokioExecutor::new())
            // Idle connections are reused by the next blocking query at once;
            // one minute keeps a pool warm across quiet watches (and, over
            // HTTPS, saves a handshake per request).
            .pool_idle_timeout(Duration::from_secs(60))
            // Never more idle than may be open: the connector's slots are
            // the real bound, this keeps the pool from holding them all.
            .pool_max_idle_per_host(max)
            .build(ConsulConnector::new(connector, tls.clone(), slots.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                blocking_lane: Semaphore::new(blocking),
                short_lane: Semaphore::new(max - blocking),
                slots,
                max_connections: max,
                base: format!("{scheme}://{authority}"),
                token,
                tls,
            }),
        })
    }

    /// The agent's address, for log messages (`http://127.0.0.1:8500`,
    /// `https://consul.service:8501`).
    pub fn address(&self) -> &str {
        &self.inner.base
    }

    /// The most connections this client opens ([`ConsulConfig::max_connections`]).
    pub fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    /// How many requests other than blocking queries run at once at most:
    /// the width of their lane. A caller fanning out reads gains nothing
    /// from more parallelism than this.
    pub fn short_request_capacity(&self) -> usize {
        self.inner.max_connections - self.inner.blocking_lane_size()
    }

    /// Connections to Consul open right now (in use or idle in the pool).
    pub fn connections_open(&self) -> usize {
        self.inner.max_connections - self.inner.slots.available_permits()
    }

    // ---------------------------------------------------------------- status

    /// `/v1/status/leader`: the Raft leader's address, empty while there is none.
    pub async fn status_leader(&self) -> Result<String, ConsulError> {
        let (leader, _) = self
            .read::<String>("/v1/status/leader".into(), &QueryOptions::default())
            .await?;
        Ok(leader)
    }

    // --------------------------------------------------------------- catalog

    /// `/v1/catalog/services`: every service name with the union of its
    /// instances' tags. Connect proxies are listed too, under their own
    /// names; tell them apart by the `Kind` of their health entries
    /// (Consul 1.8 ignores `filter` on this endpoint).
    pub async fn catalog_services(
        &self,
        options: &QueryOptions,
    ) -> Result<(BTreeMap<String, Vec<String>>, QueryMeta), ConsulError> {
        self.read("/v1/catalog/services".into(), options).await
    }

    // ---------------------------------------------------------------- health

    /// `/v1/health/service/<service>`: every instance with its node and
    /// checks, healthy or not (no `passing` filter).
    pub async fn health_service(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), ConsulError> {
        let path = format!("/v1/health/service/{}", segment(service));
        self.read(path, options).await
    }

    /// `/v1/health/state/<state>` (`any`, `passing`, `warning`,
    /// `critical`): the checks in that state across the datacenter
    /// (node-level ones with an empty `ServiceName`) as [`CheckSummary`]s.
    /// Its index moves with Consul's checks table: any check change or
    /// registration that writes checks wakes a blocking read of it.
    pub async fn health_state(
        &self,
        state: &str,
        options: &QueryOptions,
    ) -> Result<(Vec<CheckSummary>, QueryMeta), ConsulError> {
        let path = format!("/v1/health/state/{}", segment(state));
        self.read(path, options).await
    }

    /// `/v1/health/connect/<service>`: the Connect proxies (and Connect-native
    /// instances) that serve `service`, healthy or not.
    pub async fn health_connect(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), ConsulError> {
        let path = format!("/v1/health/connect/{}", segment(service));
        self.read(path, options).await
    }

    // -------------------------------------------------------------------- KV

    /// One key, or `None` if it does not exist.
    pub async fn kv_get(
        &self,
        key: &str,
        options: &QueryOptions,
    ) -> Result<(Option<KvPair>, QueryMeta), ConsulError> {
        let path = format!("/v1/kv/{}", kv_path(key));
        let (pairs, meta) = self.read_kv(path, options).await?;
        Ok((pairs.into_iter().next(), meta))
    }

    /// Every key under `prefix` (`?recurse`), folder keys included. An empty
    /// prefix answers 404 with an index; that is an empty list here, and its
    /// index blocks for the first key to appear.
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: &QueryOptions,
    ) -> Result<(Vec<KvPair>, QueryMeta), ConsulError> {
        let path = format!("/v1/kv/{}?recurse=true", kv_path(prefix));
        self.read_kv(path, options).await
    }

    /// Writes `value` at `key`.
    pub async fn kv_put(&self, key: &str, value: impl Into<Bytes>) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}", kv_path(key));
        self.write(Method::PUT, path, Some(value.into())).await
    }

    /// Writes `value` at `key` only if its `ModifyIndex` is still
    /// `modify_index` (0: only if the key does not exist). `false` means
    /// someone else wrote first.
    pub async fn kv_cas(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        modify_index: u64,
    ) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}?cas={modify_index}", kv_path(key));
        self.write(Method::PUT, path, Some(value.into())).await
    }

    /// Deletes one key (no error if it does not exist).
    pub async fn kv_delete(&self, key: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}", kv_path(key));
        self.write(Method::DELETE, path, None).await
    }

    /// Deletes every key under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}?recurse=true", kv_path(prefix));
        self.write(Method::DELETE, path, None).await
    }

    // ----------------------------------------------------------------- agent

    /// Registers a service (and its `connect.sidecar_service`, and checks)
    /// with the local agent.
    pub async fn agent_service_register(
        &self,
        registration: &ServiceRegistration,
    ) -> Result<(), ConsulError> {
        let path = "/v1/agent/service/register".to_owned();
        let body = json_body(&Method::PUT, &path, registration)?;
        self.write_unit(Method::PUT, path, Some(body)).await
    }

    /// Deregisters the service instance `service_id` (and its sidecar).
    pub async fn agent_service_deregister(&self, service_id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/agent/service/deregister/{}", segment(service_id));
        self.write_unit(Method::PUT, path, None).await
    }

    /// Sets TTL check `check_id` passing.
    pub async fn agent_check_pass(&self, check_id: &str, note: &str) -> Result<(), ConsulError> {
        self.agent_check("pass", check_id, note).await
    }

    /// Sets TTL check `check_id` critical.
    pub async fn agent_check_fail(&self, check_id: &str, note: &str) -> Result<(), ConsulError> {
        self.agent_check("fail", check_id, note).await
    }

    async fn agent_check(&self, verb: &str, check_id: &str, note: &str) -> Result<(), ConsulError> {
        let mut path = format!("/v1/agent/check/{verb}/{}", segment(check_id));
        if !note.is_empty() {
            path.push_str("?note=");
            path.push_str(&segment(note));
        }
        self.write_unit(Method::PUT, path, None).await
    }

    // ----------------------------------------------------------------- agent

    /// `/v1/agent/self`: the local agent's datacenter (`Config.Datacenter`).
    /// Needs `agent:read` with ACLs on.
    pub async fn agent_datacenter(&self) -> Result<String, ConsulError> {
        #[derive(serde::Deserialize)]
        struct AgentSelf {
            #[serde(rename = "Config")]
            config: AgentConfig,
        }
        #[derive(serde::Deserialize)]
        struct AgentConfig {
            #[serde(rename = "Datacenter")]
            datacenter: String,
        }
        let (agent, _) = self
            .read::<AgentSelf>("/v1/agent/self".into(), &QueryOptions::default())
            .await?;
        Ok(agent.config.datacenter)
    }

    // --------------------------------------------------------------- Connect

    /// The Connect CA's root certificates (blocking: wakes on rotation).
    pub async fn connect_ca_roots(
        &self,
        options: &QueryOptions,
    ) -> Result<(CaRoots, QueryMeta), ConsulError> {
        self.read("/v1/agent/connect/ca/roots".into(), options)
            .await
    }

    /// A leaf certificate for `service` (blocking: wakes before expiry or on
    /// rotation). Signed by the local agent, cached by it.
    pub async fn connect_ca_leaf(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<(LeafCert, QueryMeta), ConsulError> {
        let path = format!("/v1/agent/connect/ca/leaf/{}", segment(service));
        self.read(path, options).await
    }

    /// [`connect_ca_leaf`](Self::connect_ca_leaf) asked with `token` (not
    /// the client's own token), answered within `timeout`. Consul signs a
    /// leaf only for a token that grants `service:write` on `service`, so
    /// this asks Consul whether the holder of `token` may act as `service`:
    /// a [`ConsulError::Status`] 403 means it may not.
    pub async fn connect_ca_leaf_with_token(
        &self,
        service: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<LeafCert, ConsulError> {
        let mut token = HeaderValue::from_str(token).map_err(|_| ConsulError::Config {
            field: "X-Consul-Token",
            reason: "the token contains characters not allowed in an HTTP header".into(),
        })?;
        token.set_sensitive(true);
        let path = format!("/v1/agent/connect/ca/leaf/{}", segment(service));
        let answer = self
            .call_as(
                Method::GET,
                path.clone(),
                None,
                timeout,
                Some(&token),
                false,
            )
            .await?;
        let answer = expect_success(Method::GET, &path, answer)?;
        decode(&Method::GET, &path, &answer.body)
    }

    /// All intentions.
    pub async fn intentions(
        &self,
        options: &QueryOptions,
    ) -> Result<(Vec<Intention>, QueryMeta), ConsulError> {
        self.read("/v1/connect/intentions".into(), options).await
    }

    /// Creates an intention and returns the ID Consul gave it.
    pub async fn intention_create(&self, intention: &Intention) -> Result<String, ConsulError> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let path = "/v1/connect/intentions".to_owned();
        let body = json_body(&Method::POST, &path, intention)?;
        let answer = self
            .call(Method::POST, path.clone(), Some(body), NON_BLOCKING_TIMEOUT)
            .await?;
        let answer = expect_success(Method::POST, &path, answer)?;
        let created: Created = decode(&Method::POST, &path, &answer.body)?;
        Ok(created.id)
    }

    /// Deletes the intention `id`.
    pub async fn intention_delete(&self, id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/connect/intentions/{}", segment(id));
        self.write_unit(Method::DELETE, path, None).await
    }

    // --------------------------------------------------------- config entries

    /// The config entry `kind`/`name`, or `None` if there is none.
    pub async fn config_entry(
        &self,
        kind: &str,
        name: &str,
        options: &QueryOptions,
    ) -> Result<(Option<ConfigEntry>, QueryMeta), ConsulError> {
        let path = format!("/v1/config/{}/{}", segment(kind), segment(name));
        let path = with_query(path, options);
        let answer = self
            .call_lane(
                Method::GET,
                path.clone(),
                None,
                options.request_timeout(),
                options.is_blocking(),
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok((None, answer.meta));
        }
        let answer = expect_success(Method::GET, &path, answer)?;
        Ok((
            Some(decode(&Method::GET, &path, &answer.body)?),
            answer.meta,
        ))
    }

    /// Every config entry of `kind`.
    pub async fn config_entries(
        &self,
        kind: &str,
        options: &QueryOptions,
    ) -> Result<(Vec<ConfigEntry>, QueryMeta), ConsulError> {
        let path = format!("/v1/config/{}", segment(kind));
        self.read(path, options).await
    }

    /// Creates or replaces a config entry.
    pub async fn config_entry_put(&self, entry: &ConfigEntry) -> Result<bool, ConsulError> {
        let path = "/v1/config".to_owned();
        let body = json_body(&Method::PUT, &path, entry)?;
        self.write(Method::PUT, path, Some(body)).await
    }

    /// Deletes the config entry `kind`/`name`.
    pub async fn config_entry_delete(&self, kind: &str, name: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/config/{}/{}", segment(kind), segment(name));
        self.write_unit(Method::DELETE, path, None).await
    }

    // -------------------------------------------------------------- plumbing

    /// A JSON read with blocking-query options.
    async fn read<T: DeserializeOwned>(
        &self,
        path: String,
        options: &QueryOptions,
    ) -> Result<(T, QueryMeta), ConsulError> {
        let path = with_query(path, options);
        let answer = self
            .call_lane(
                Method::GET,
                path.clone(),
                None,
                options.request_timeout(),
                options.is_blocking(),
            )
            .await?;
        let answer = expect_success(Method::GET, &path, answer)?;
        Ok((decode(&Method::GET, &path, &answer.body)?, answer.meta))
    }

    /// A KV read: 404 is "no keys", and its index is kept so a watch on an
    /// empty prefix can block for the first key.
    async fn read_kv(
        &self,
        path: String,
        options: &QueryOptions,
    ) -> Result<(Vec<KvPair>, QueryMeta), ConsulError> {
        let path = with_query(path, options);
        let answer = self
            .call_lane(
                Method::GET,
                path.clone(),
                None,
                options.request_timeout(),
                options.is_blocking(),
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), answer.meta));
        }
        let answer = expect_success(Method::GET, &path, answer)?;
        let raw: Vec<RawKvPair> = decode(&Method::GET, &path, &answer.body)?;
        let pairs = raw
            .into_iter()
            .map(|raw| {
                let value = match raw.value {
                    Some(encoded) => base64::engine::general_purpose::STANDARD
                        .decode(encoded.as_bytes())
                        .map(Bytes::from)
                        .map_err(|error| ConsulError::Decode {
                            method: Method::GET,
                            path: path.clone(),
                            reason: format!("value of key {:?} is not base64: {error}", raw.key),
                        })?,
                    None => Bytes::new(),
                };
                Ok(KvPair {
                    key: raw.key,
                    value,
                    flags: raw.flags,
                    create_index: raw.create_index,
                    modify_index: raw.modify_index,
                    lock_index: raw.lock_index,
                    session: raw.session.filter(|session| !session.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, ConsulError>>()?;
        Ok((pairs, answer.meta))
    }

    /// A write answering `true`/`false` (KV, config entries).
    async fn write(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
    ) -> Result<bool, ConsulError> {
        let answer = self
            .call(method.clone(), path.clone(), body, NON_BLOCKING_TIMEOUT)
            .await?;
        let answer = expect_success(method.clone(), &path, answer)?;
        decode(&method, &path, &answer.body)
    }

    /// A write whose answer body carries nothing (agent endpoints).
    async fn write_unit(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
    ) -> Result<(), ConsulError> {
        let answer = self
            .call(method.clone(), path.clone(), body, NON_BLOCKING_TIMEOUT)
            .await?;
        expect_success(method, &path, answer).map(drop)
    }

    /// One short request, with the client's token, within `timeout`
    /// (headers and body).
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        self.call_lane(method, path, body, timeout, false).await
    }

    /// One request with the client's token, in the blocking lane if Consul
    /// may hold it.
    async fn call_lane(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
        timeout: Duration,
        blocking: bool,
    ) -> Result<Answer, ConsulError> {
        let token = self.inner.token.clone();
        self.call_as(method, path, body, timeout, token.as_ref(), blocking)
            .await
    }

    /// One request sent with `token` (none: Consul's anonymous token),
    /// holding a place in its lane (blocking or short) from before it is
    /// sent until its body is read; the wait for the place counts against
    /// `timeout`.
    async fn call_as(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
        timeout: Duration,
        token: Option<&HeaderValue>,
        blocking: bool,
    ) -> Result<Answer, ConsulError> {
        let uri = format!("{}{}", self.inner.base, path);
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        if let Some(token) = token {
            request = request.header("X-Consul-Token", token.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|error| ConsulError::Config {
                field: "CONSUL_HTTP_ADDR",
                reason: format!("cannot build a request for {uri}: {error}"),
            })?;

        let lane = if blocking {
            &self.inner.blocking_lane
        } else {
            &self.inner.short_lane
        };
        let exchange = async {
            // Never closed, so acquiring only waits.
            let _place = lane.acquire().await.ok();
            let response = self
                .inner
                .http
                .request(request)
                .await
                .map_err(|error| self.transport_error(&method, &path, Box::new(error)))?;
            let status = response.status();
            let meta = query_meta(response.headers());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<http_body_util::LengthLimitError>() {
                        ConsulError::Decode {
                            method: method.clone(),
                            path: path.clone(),
                            reason: format!("answer larger than {MAX_BODY} bytes"),
                        }
                    } else {
                        self.transport_error(&method, &path, error)
                    }
                })?
                .to_bytes();
            Ok(Answer { status, meta, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(ConsulError::Timeout {
                method,
                path,
                address: self.inner.base.clone(),
                timeout,
            }),
        }
    }
}

impl ConsulClient {
    /// A request that got no (complete) answer: a TLS failure, explained
    /// with a hint, or else a connection failure.
    fn transport_error(
        &self,
        method: &Method,
        path: &str,
        error: Box<dyn std::error::Error + Send + Sync>,
    ) -> ConsulError {
        if let Some(tls) = &self.inner.tls
            && let Some((reason, retryable)) = tls::explain(error.as_ref(), &tls.context)
        {
            return ConsulError::Tls {
                method: method.clone(),
                path: path.to_owned(),
                address: self.inner.base.clone(),
                reason,
                retryable,
                source: error,
            };
        }
        if closed_without_answer(error.as_ref()) {
            return ConsulError::Closed {
                method: method.clone(),
                path: path.to_owned(),
                address: self.inner.base.clone(),
                source: error,
            };
        }
        ConsulError::Connect {
            method: method.clone(),
            path: path.to_owned(),
            address: self.inner.base.clone(),
            source: error,
        }
    }
}

impl Inner {
    fn blocking_lane_size(&self) -> usize {
        blocking_lane_size(self.max_connections)
    }
}

/// The blocking lane's width for a limit of `max` connections.
fn blocking_lane_size(max: usize) -> usize {
    (max / 4).max(BLOCKING_RESERVE_MIN)
}

/// Whether a failed request had a connection that Consul closed or reset
/// before answering (rather than no connection at all: refused, timed out,
/// DNS). Decided on the error types of the chain, never on message text.
fn closed_without_answer(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(client) = error.downcast_ref::<hyper_util::client::legacy::Error>()
        && client.is_connect()
    {
        return false;
    }
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_closed())
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// `X-Consul-Index`, `X-Consul-LastContact` (ms), `X-Consul-KnownLeader`.
fn query_meta(headers: &HeaderMap) -> QueryMeta {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    QueryMeta {
        index: text("x-consul-index")
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0),
        last_contact: Duration::from_millis(
            text("x-consul-lastcontact")
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0),
        ),
        known_leader: text("x-consul-knownleader") == Some("true"),
    }
}

fn expect_success(method: Method, path: &str, answer: Answer) -> Result<Answer, ConsulError> {
    if answer.status.is_success() {
        Ok(answer)
    } else {
        Err(ConsulError::Status {
            method,
            path: path.to_owned(),
            status: answer.status,
            body: error_body_text(&answer.body),
        })
    }
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, body: &[u8]) -> Result<T, ConsulError> {
    serde_json::from_slice(body).map_err(|error| ConsulError::Decode {
        method: method.clone(),
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

fn json_body<T: serde::Serialize>(
    method: &Method,
    path: &str,
    value: &T,
) -> Result<Bytes, ConsulError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| ConsulError::Decode {
            method: method.clone(),
            path: path.to_owned(),
            reason: format!("cannot encode the request body: {error}"),
        })
}

/// Appends `options` to `path` (which may already carry a query).
fn with_query(mut path: String, options: &QueryOptions) -> String {
    for (name, value) in options.pairs() {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(name);
        path.push('=');
        path.push_str(&segment(&value));
    }
    path
}

/// One percent-encoded path segment or query value.
fn segment(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A KV key as a path: each segment encoded, the `/`s kept.
fn kv_path(key: &str) -> String {
    key.split('/').map(segment).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_keep_slashes_and_encode_the_rest() {
        assert_eq!(kv_path("weft/routes/users"), "weft/routes/users");
        assert_eq!(kv_path("weft/"), "weft/");
        assert_eq!(kv_path("weft/a b?c"), "weft/a%20b%3Fc");
    }

    #[test]
    fn filter_expressions_are_url_encoded() {
        let options = QueryOptions {
            filter: Some(r#"Service.Kind == "connect-proxy""#.into()),
            ..QueryOptions::default()
        };
        assert_eq!(
            with_query("/v1/health/service/web".into(), &options),
            "/v1/health/service/web?filter=Service.Kind%20%3D%3D%20%22connect-proxy%22"
        );
        let options = QueryOptions::blocking(3, Duration::from_secs(1));
        assert_eq!(
            with_query("/v1/kv/weft/?recurse=true".into(), &options),
            "/v1/kv/weft/?recurse=true&index=3&wait=1000ms"
        );
    }

    #[test]
    fn https_with_a_missing_ca_file_fails_at_construction_naming_it() {
        let config = ConsulConfig::new(
            "https://127.0.0.1:8501",
            None,
            Some("/nonexistent/ca.pem".into()),
        );
        let error = config
            .and_then(ConsulClient::new)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_CACERT"), "{error}");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn plain_http_ignores_tls_settings() {
        let config = ConsulConfig::new("127.0.0.1:8500", None, Some("/nonexistent/ca.pem".into()));
        let client = config.and_then(ConsulClient::new);
        assert_eq!(
            client.map(|client| client.address().to_owned()).ok(),
            Some("http://127.0.0.1:8500".to_owned())
        );
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let config = ConsulConfig::new("127.0.0.1:8500", Some("very-secret".into()), None);
        let client = config.and_then(ConsulClient::new).ok();
        let debug = format!("{client:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("127.0.0.1:8500"), "{debug}");
    }
}
