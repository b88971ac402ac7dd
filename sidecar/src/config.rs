//! Start-up settings of the sidecar.
//!
//! Every setting comes from, in order of precedence: a command-line flag, an
//! environment variable (`WEFT_*`), a YAML file (`--config FILE`), or its
//! default. All values are read as text first and validated together, so a bad
//! start-up names *every* missing or invalid setting at once (flag, env name
//! and reason) instead of failing on the first.
//!
//! Without `--discovery` the sidecar runs in *static mode*: only the inbound
//! path (`--inbound` -> `--app`), no agent, no xDS. Benchmarks use it as a
//! plain reverse proxy.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use crate::tcp::TcpUpstream;

/// Validated settings. Built by [`Settings::load`] (binary) or directly by
/// tests and embedders.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The service this sidecar fronts (`--service`, `WEFT_SERVICE`).
    /// Required with `--discovery`; in static mode it defaults to `static`.
    pub service: String,
    /// Instance id reported to the agent (`--instance`, `WEFT_INSTANCE`).
    /// Default: `<service>-<random hex>`, unique per process.
    pub instance: String,
    /// The agent's ADS endpoint, e.g. `http://127.0.0.1:15010`
    /// (`--discovery`, `WEFT_DISCOVERY`). `None` = static mode.
    pub discovery: Option<http::Uri>,
    /// Listener for traffic from other sidecars, forwarded to `app`
    /// (`--inbound`, `WEFT_INBOUND`). Required.
    pub inbound: SocketAddr,
    /// The local application (`--app`, `WEFT_APP`). Required.
    pub app: SocketAddr,
    /// Listener for the app's outgoing calls (`--outbound`, `WEFT_OUTBOUND`).
    /// Required with `--discovery`; unused in static mode.
    pub outbound: Option<SocketAddr>,
    /// Admin listener: /ready, /live, /config_dump, /clusters (`--admin`,
    /// `WEFT_ADMIN`). Required with `--discovery`, optional in static mode.
    pub admin: Option<SocketAddr>,
    /// How often the sidecar reports its outbound calls to the agent for
    /// the service map (`--call-report-interval`,
    /// `WEFT_CALL_REPORT_INTERVAL`). Default 5 s: the map's rates look
    /// back a minute, so a few seconds is live enough and costs the agent
    /// one small call per sidecar per interval. `0s` turns reports off.
    pub call_report_interval: Duration,
    /// How long SIGTERM waits for in-flight requests before exiting
    /// (`--drain-timeout`, `WEFT_DRAIN_TIMEOUT`). Default 10 s: longer than a
    /// typical request, shorter than Kubernetes' 30 s grace period.
    pub drain_timeout: Duration,
    /// Tokio worker threads (`--workers`, `WEFT_WORKERS`). Default: tokio's
    /// own choice (`TOKIO_WORKER_THREADS`, else one per core). 1 runs a
    /// single-threaded runtime, the fastest setup for a sidecar pinned to one core.
    pub workers: Option<usize>,
    /// Proof that this sidecar may act as `service` when asking the agent
    /// for its certificate: a Consul ACL token with service:write on the
    /// service, or its join token (`--identity-token`,
    /// `WEFT_IDENTITY_TOKEN`). With `--discovery`, setting it turns mesh
    /// mTLS on: the inbound listener then requires TLS and calls to meshed
    /// endpoints go over mTLS.
    pub identity_token: Option<Secret>,
    /// Local ports for opaque TCP destinations (`--tcp-upstream
    /// <service>=<IP:PORT>`, repeatable; `WEFT_TCP_UPSTREAM` or the file's
    /// `tcp_upstream` as a comma-separated list or a YAML list). The app
    /// connects to the port, the sidecar carries the bytes to `<service>`
    /// (marked `protocol: tcp`). Needs `--discovery`.
    pub tcp_upstreams: Vec<TcpUpstream>,
    /// Destinations to discover at start and hold for good (`--upstreams
    /// a,b,c`, `WEFT_UPSTREAMS`, or the file's `upstreams` as a list):
    /// the sidecar is ready only once they have arrived, and their first
    /// call waits for nothing. Every other destination is discovered on
    /// its first call (`--tcp-upstream` destinations and the `upstreams`
    /// of the service's Consul registrations are held from the start
    /// too). Needs `--discovery`. Default: none.
    pub upstreams: Vec<String>,
    /// Drop a destination discovered on demand once no request chose it
    /// for this long (`--discovery-idle-timeout`,
    /// `WEFT_DISCOVERY_IDLE_TIMEOUT`); `0s` = never. Last use is kept in
    /// whole seconds, so a drop comes up to two seconds after the
    /// timeout, never before. Default 10 min: a
    /// service that calls a destination at all usually does so more often
    /// than that (so its first-call wait is paid once), while a sidecar
    /// that stops calling one stops receiving its endpoint changes within
    /// minutes. The next call discovers it again.
    pub discovery_idle_timeout: Duration,
    /// How long a request waits for a destination's first discovery
    /// before a 503 `discovery-timeout` (`--discovery-timeout`,
    /// `WEFT_DISCOVERY_TIMEOUT`). Default 1 s, a cluster's default connect
    /// timeout: a first call waits no longer for its destination's
    /// addresses than for the connection to it; one round trip to the
    /// agent is enough on a healthy mesh.
    pub discovery_timeout: Duration,
    /// Who signs this sidecar's leaf (`--identity-source weft|consul`,
    /// `WEFT_IDENTITY_SOURCE`). Default `weft`: the agent, with
    /// `--identity-token`. `consul`: Consul's Connect CA, with `--consul`
    /// and `--consul-token`; this turns mesh mTLS on by itself.
    pub identity_source: IdentitySource,
    /// Timeouts and limits of the data path.
    pub proxy: ProxySettings,
    /// One JSON line per request (`--access-log stdout|PATH`,
    /// `WEFT_ACCESS_LOG`; sampled by `--access-log-sampling`,
    /// `WEFT_ACCESS_LOG_SAMPLING`, default 1). `None` (the default): off.
    pub access_log: Option<crate::access_log::AccessLogSettings>,
    /// Span export and sampling (`--otlp-endpoint`, `--otlp-protocol`,
    /// `--trace-sampling`, else the standard `OTEL_*` variables). Off
    /// without an endpoint; trace headers are propagated either way.
    pub tracing: crate::trace::TraceSettings,
}

/// A credential: printed as `<redacted>` by `Debug`, so settings can be
/// logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the sidecar's leaf and roots come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IdentitySource {
    /// The agent signs a CSR (`--identity-token`); mTLS is on when a token
    /// is set.
    #[default]
    Weft,
    /// Consul's Connect CA: leaf and roots from the local Consul agent,
    /// watched with blocking queries.
    Consul(ConsulSettings),
}

/// How the sidecar reaches Consul in `--identity-source consul`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulSettings {
    /// The local Consul agent's HTTP API (`--consul`, `WEFT_CONSUL`, else
    /// `CONSUL_HTTP_ADDR` like Consul's CLI). Default
    /// `http://127.0.0.1:8500`, Consul's own default. Plain HTTP only: the
    /// sidecar talks to the Consul agent on its own host.
    pub address: http::Uri,
    /// An ACL token with `service:write` on the service (`--consul-token`,
    /// `WEFT_CONSUL_TOKEN`, else `CONSUL_HTTP_TOKEN`); none for a Consul
    /// without ACLs.
    pub token: Option<Secret>,
}

/// Consul's CLI default address.
pub const DEFAULT_CONSUL_ADDRESS: &str = "http://127.0.0.1:8500";

/// Data-path tunables. Defaults are chosen for a sidecar on loopback or in
/// one data centre.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// A client must send a complete request head within this long
    /// (`--header-read-timeout`, `WEFT_HEADER_READ_TIMEOUT`). Default 10 s:
    /// bounds slow-loris connections without hurting slow mobile clients.
    pub header_read_timeout: Duration,
    /// Connect timeout to the local app (`--app-connect-timeout`,
    /// `WEFT_APP_CONNECT_TIMEOUT`). Default 1 s: the app is on loopback.
    pub app_connect_timeout: Duration,
    /// Time the local app has to answer with response headers
    /// (`--app-request-timeout`, `WEFT_APP_REQUEST_TIMEOUT`). Default 15 s,
    /// Envoy's route default; `0s` disables it (long polls).
    pub app_request_timeout: Option<Duration>,
    /// Most requests in flight to the local app; more get 503 `overflow`
    /// (`--app-max-requests`, `WEFT_APP_MAX_REQUESTS`). Default 10000.
    pub app_max_requests: usize,
    /// Most idle keep-alive connections kept to the app (and, unless a
    /// Cluster says otherwise, to each upstream endpoint). Default 64.
    pub max_idle_per_endpoint: usize,
    /// Idle pooled connections are closed after this long. Default 90 s.
    pub idle_timeout: Duration,
    /// An opaque TCP connection or an upgraded HTTP connection (WebSocket),
    /// either side, with no byte either way for this long is closed
    /// (`--tcp-idle-timeout`, `WEFT_TCP_IDLE_TIMEOUT`).
    /// Default 1 h, Envoy's TCP proxy default: long enough for a pooled
    /// database connection, short enough to reclaim abandoned ones.
    pub tcp_idle_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            app_connect_timeout: Duration::from_secs(1),
            app_request_timeout: Some(Duration::from_secs(15)),
            app_max_requests: 10_000,
            max_idle_per_endpoint: 64,
            idle_timeout: Duration::from_secs(90),
            tcp_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// What the process is: a sidecar beside an app, or an edge gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    /// `weft-gateway`: `--service` names the gateway; no `--inbound`,
    /// `--app` or `--outbound`.
    Gateway,
}

impl Settings {
    /// Static-mode settings (no agent) for tests and embedders.
    pub fn static_proxy(inbound: SocketAddr, app: SocketAddr) -> Self {
        Self {
            service: "static".into(),
            instance: default_instance("static"),
            discovery: None,
            inbound,
            app,
            outbound: None,
            admin: None,
            drain_timeout: Duration::from_secs(10),
            call_report_interval: DEFAULT_CALL_REPORT_INTERVAL,
            workers: None,
            identity_token: None,
            tcp_upstreams: Vec::new(),
            upstreams: Vec::new(),
            discovery_idle_timeout: crate::xds::on_demand::DEFAULT_IDLE_TIMEOUT,
            discovery_timeout: crate::xds::on_demand::DEFAULT_FETCH_TIMEOUT,
            identity_source: IdentitySource::Weft,
            proxy: ProxySettings::default(),
            access_log: None,
            tracing: crate::trace::TraceSettings::default(),
        }
    }

    /// Reads flags, environment and the optional YAML file.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_for(Role::Sidecar)
    }

    /// [`Settings::load`] for a sidecar or a gateway.
    pub fn load_for(role: Role) -> Result<Self, ConfigError> {
        let flags = Flags::parse();
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("WEFT_")
                    || k.starts_with("OTEL_")
                    || FIELDS.iter().any(|f| f.fallback_env == Some(k.as_str()))
            })
            .collect();
        Self::from_sources_for(role, flags, &env)
    }

    /// Merges the three sources (flag > env > file) and validates the result.
    pub fn from_sources(flags: Flags, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_sources_for(Role::Sidecar, flags, env)
    }

    /// [`Settings::from_sources`] for a sidecar or a gateway.
    pub fn from_sources_for(
        role: Role,
        flags: Flags,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        // The config file's own path can come from a flag or the env only.
        let config_path = flags
            .config
            .clone()
            .or_else(|| env.get("WEFT_CONFIG").cloned());
        let file = match config_path {
            Some(path) => match read_file(&PathBuf::from(&path)) {
                Ok(map) => map,
                Err(e) => {
                    errors.push(format!("--config / WEFT_CONFIG: {path}: {e}"));
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        // A removed setting is an error that says where it went, never
        // silently ignored: a sidecar meant to take plaintext would not.
        if env.contains_key("WEFT_INBOUND_TLS") || file.contains_key("inbound_tls") {
            errors.push(INBOUND_TLS_REMOVED.to_owned());
        }
        for key in file.keys() {
            if key != "inbound_tls" && !FIELDS.iter().any(|f| f.key == *key) {
                errors.push(format!(
                    "config file: unknown key `{key}` (known: {})",
                    FIELDS.iter().map(|f| f.key).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let mut r = Reader {
            flags: flags.values(),
            env,
            file: &file,
            errors,
        };

        let discovery = r.get("discovery", parse_discovery_uri);
        let static_mode = discovery.is_none() && r.raw("discovery").is_none();
        let service = r.get("service", parse_service);
        let instance = r.get("instance", parse_nonempty);
        let inbound = r.get("inbound", parse_addr);
        let app = r.get("app", parse_addr);
        let outbound = r.get("outbound", parse_addr);
        let admin = r.get("admin", parse_addr);
        let drain_timeout = r.get("drain_timeout", parse_duration);
        let call_report_interval = r.get("call_report_interval", parse_duration);
        let workers = r.get("workers", parse_workers);
        let header_read_timeout = r.get("header_read_timeout", parse_duration);
        let app_connect_timeout = r.get("app_connect_timeout", parse_duration);
        let app_request_timeout = r.get("app_request_timeout", parse_duration);
        let app_max_requests = r.get("app_max_requests", parse_positive);
        let identity_token = r.get("identity_token", |s| parse_nonempty(s).map(Secret));
        let tcp_upstreams = r.get("tcp_upstream", parse_tcp_upstreams);
        let upstreams = r.get("upstreams", parse_upstreams);
        let discovery_idle_timeout = r.get("discovery_idle_timeout", parse_duration);
        let discovery_timeout = r.get("discovery_timeout", |s| match parse_duration(s)? {
            d if d.is_zero() => Err("must be greater than 0".into()),
            d => Ok(d),
        });
        let tcp_idle_timeout = r.get("tcp_idle_timeout", |s| match parse_duration(s)? {
            d if d.is_zero() => Err("must be greater than 0".into()),
            d => Ok(d),
        });
        let access_log_target = r.get("access_log", parse_access_log_target);
        let access_log_sampling = r.get("access_log_sampling", crate::trace::sampler::parse_ratio);
        let otlp_endpoint = r.get("otlp_endpoint", crate::trace::settings::parse_endpoint);
        let otlp_protocol = r.get("otlp_protocol", crate::trace::settings::parse_protocol);
        let trace_sampling = r.get("trace_sampling", crate::trace::sampler::parse_ratio);
        let tracing = crate::trace::TraceSettings::resolve(
            otlp_endpoint,
            otlp_protocol,
            trace_sampling,
            env,
            &mut r.errors,
        );
        let consul_mode = r.get("identity_source", parse_identity_source);
        let consul_address = r.get("consul", parse_consul_address);
        let consul_token = r.get("consul_token", |s| parse_nonempty(s).map(Secret));
        let identity_source = match consul_mode {
            Some(true) => {
                if static_mode {
                    r.errors.push(
                        "--identity-source consul needs --discovery: the agent says which identity each destination presents"
                            .into(),
                    );
                }
                if identity_token.is_some() {
                    r.errors.push(
                        "--identity-token / WEFT_IDENTITY_TOKEN is for --identity-source weft (a credential for the agent); with consul the sidecar sends --consul-token / WEFT_CONSUL_TOKEN (or CONSUL_HTTP_TOKEN) to Consul"
                            .into(),
                    );
                }
                let address = match consul_address {
                    Some(address) => address,
                    None => http::Uri::from_static(DEFAULT_CONSUL_ADDRESS),
                };
                IdentitySource::Consul(ConsulSettings {
                    address,
                    token: consul_token,
                })
            }
            _ => IdentitySource::Weft,
        };

        if role == Role::Gateway {
            // A gateway has no app: its listeners come from the agent.
            for key in ["inbound", "app", "outbound", "tcp_upstream"] {
                if r.raw(key).is_some() {
                    let f = field_of(key);
                    r.errors.push(format!(
                        "{} / {}: a gateway has no app; its listeners come from the KV document `gateways/<service>`",
                        f.flag, f.env
                    ));
                }
            }
            r.require("discovery", discovery.is_some());
            r.require("service", service.is_some());
            r.require("admin", admin.is_some());
        } else {
            r.require("inbound", inbound.is_some());
            r.require("app", app.is_some());
        }
        if role == Role::Gateway {
            // Checked above.
        } else if !static_mode {
            r.require("service", service.is_some());
            r.require("outbound", outbound.is_some());
            r.require("admin", admin.is_some());
        } else {
            for (key, set) in [
                (
                    "tcp_upstream",
                    tcp_upstreams.as_ref().is_some_and(|u| !u.is_empty()),
                ),
                (
                    "upstreams",
                    upstreams.as_ref().is_some_and(|u| !u.is_empty()),
                ),
            ] {
                if set {
                    let f = field_of(key);
                    r.errors.push(format!(
                        "{} / {}: needs --discovery (the destination's endpoints come from the agent)",
                        f.flag, f.env
                    ));
                }
            }
        }
        if access_log_sampling.is_some() && r.raw("access_log").is_none() {
            r.errors.push(
                "--access-log-sampling / WEFT_ACCESS_LOG_SAMPLING: needs --access-log (stdout or a file path)"
                    .into(),
            );
        }
        if !r.errors.is_empty() {
            return Err(ConfigError { errors: r.errors });
        }
        // A gateway binds neither.
        let unused = SocketAddr::from(([127, 0, 0, 1], 0));
        let (inbound, app) = match role {
            Role::Gateway => (Some(unused), Some(unused)),
            Role::Sidecar => (inbound, app),
        };
        let (Some(inbound), Some(app)) = (inbound, app) else {
            // Both were required just above; unreachable in practice.
            return Err(ConfigError {
                errors: vec!["--inbound and --app are required".into()],
            });
        };
        let service = service.unwrap_or_else(|| "static".into());
        let defaults = ProxySettings::default();
        Ok(Self {
            instance: instance.unwrap_or_else(|| default_instance(&service)),
            service,
            discovery,
            inbound,
            app,
            outbound,
            admin,
            drain_timeout: drain_timeout.unwrap_or(Duration::from_secs(10)),
            call_report_interval: call_report_interval.unwrap_or(DEFAULT_CALL_REPORT_INTERVAL),
            workers,
            identity_token,
            tcp_upstreams: tcp_upstreams.unwrap_or_default(),
            upstreams: upstreams.unwrap_or_default(),
            discovery_idle_timeout: discovery_idle_timeout
                .unwrap_or(crate::xds::on_demand::DEFAULT_IDLE_TIMEOUT),
            discovery_timeout: discovery_timeout
                .unwrap_or(crate::xds::on_demand::DEFAULT_FETCH_TIMEOUT),
            identity_source,
            proxy: ProxySettings {
                header_read_timeout: header_read_timeout.unwrap_or(defaults.header_read_timeout),
                app_connect_timeout: app_connect_timeout.unwrap_or(defaults.app_connect_timeout),
                app_request_timeout: match app_request_timeout {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => defaults.app_request_timeout,
                },
                app_max_requests: app_max_requests.unwrap_or(defaults.app_max_requests),
                tcp_idle_timeout: tcp_idle_timeout.unwrap_or(defaults.tcp_idle_timeout),
                ..defaults
            },
            access_log: access_log_target.map(|target| crate::access_log::AccessLogSettings {
                target,
                // Every request unless told otherwise: a log asked for is
                // a log of everything, sampling is an explicit trade.
                sampling: access_log_sampling.unwrap_or(1.0),
            }),
            tracing,
        })
    }
}

/// See [`Settings::call_report_interval`].
pub const DEFAULT_CALL_REPORT_INTERVAL: Duration = Duration::from_secs(5);

fn default_instance(service: &str) -> String {
    format!("{service}-{:08x}", rand::random::<u32>())
}

/// Command-line flags, all read as text and validated in
/// [`Settings::from_sources`] so that every error is reported together.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "weft-sidecar",
    version,
    about = "Weft's sidecar proxy. Without --discovery it runs as a static reverse proxy (--inbound -> --app).",
    after_help = "Every flag can also be set with its WEFT_* environment variable or in the --config YAML file \
                  (same names in snake_case: service, discovery, inbound, ...). Precedence: flag > env > file > default."
)]
pub struct Flags {
    /// Service this sidecar fronts [env: WEFT_SERVICE] (required with --discovery).
    #[arg(long)]
    pub service: Option<String>,
    /// Agent ADS endpoint, e.g. http://127.0.0.1:15010 [env: WEFT_DISCOVERY]. Absent = static mode.
    #[arg(long)]
    pub discovery: Option<String>,
    /// Inbound listener IP:PORT [env: WEFT_INBOUND] (required).
    #[arg(long)]
    pub inbound: Option<String>,
    /// Local app IP:PORT [env: WEFT_APP] (required).
    #[arg(long)]
    pub app: Option<String>,
    /// Outbound listener IP:PORT [env: WEFT_OUTBOUND] (required with --discovery).
    #[arg(long)]
    pub outbound: Option<String>,
    /// Admin listener IP:PORT [env: WEFT_ADMIN] (required with --discovery).
    #[arg(long)]
    pub admin: Option<String>,
    /// Instance id reported to the agent [env: WEFT_INSTANCE] [default: <service>-<random>].
    #[arg(long)]
    pub instance: Option<String>,
    /// Drain time on SIGTERM, e.g. 10s, 500ms [env: WEFT_DRAIN_TIMEOUT] [default: 10s].
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// How often outbound calls are reported to the agent's service map, 0s = never [env: WEFT_CALL_REPORT_INTERVAL] [default: 5s].
    #[arg(long)]
    pub call_report_interval: Option<String>,
    /// YAML settings file [env: WEFT_CONFIG].
    #[arg(long)]
    pub config: Option<String>,
    /// Runtime worker threads [env: WEFT_WORKERS] [default: TOKIO_WORKER_THREADS, else one per core].
    #[arg(long)]
    pub workers: Option<String>,
    /// Deadline for a request head [env: WEFT_HEADER_READ_TIMEOUT] [default: 10s].
    #[arg(long)]
    pub header_read_timeout: Option<String>,
    /// Connect timeout to the app [env: WEFT_APP_CONNECT_TIMEOUT] [default: 1s].
    #[arg(long)]
    pub app_connect_timeout: Option<String>,
    /// Response-header deadline for the app, 0s = none [env: WEFT_APP_REQUEST_TIMEOUT] [default: 15s].
    #[arg(long)]
    pub app_request_timeout: Option<String>,
    /// Most requests in flight to the app [env: WEFT_APP_MAX_REQUESTS] [default: 10000].
    #[arg(long)]
    pub app_max_requests: Option<String>,
    /// Consul ACL token or join token for this service's certificate; turns mTLS on [env: WEFT_IDENTITY_TOKEN].
    #[arg(long)]
    pub identity_token: Option<String>,
    /// A local port for an opaque TCP destination, SERVICE=IP:PORT; repeatable [env: WEFT_TCP_UPSTREAM, comma-separated].
    #[arg(long)]
    pub tcp_upstream: Vec<String>,
    /// Close an opaque TCP or upgraded (WebSocket) connection idle this long [env: WEFT_TCP_IDLE_TIMEOUT] [default: 1h].
    #[arg(long)]
    pub tcp_idle_timeout: Option<String>,
    /// Destinations discovered at start and held for good, comma-separated; others are discovered on their first call [env: WEFT_UPSTREAMS] [default: none].
    #[arg(long)]
    pub upstreams: Option<String>,
    /// Drop a destination discovered on demand after no call for this long, 0s = never [env: WEFT_DISCOVERY_IDLE_TIMEOUT] [default: 10m].
    #[arg(long)]
    pub discovery_idle_timeout: Option<String>,
    /// How long a first call waits for its destination's discovery before 503 discovery-timeout [env: WEFT_DISCOVERY_TIMEOUT] [default: 1s].
    #[arg(long)]
    pub discovery_timeout: Option<String>,
    /// weft (the agent signs, with --identity-token) or consul (Consul's Connect CA; turns mTLS on) [env: WEFT_IDENTITY_SOURCE] [default: weft].
    #[arg(long)]
    pub identity_source: Option<String>,
    /// Consul's HTTP address for --identity-source consul [env: WEFT_CONSUL, else CONSUL_HTTP_ADDR] [default: http://127.0.0.1:8500].
    #[arg(long)]
    pub consul: Option<String>,
    /// Consul ACL token with service:write on the service, for --identity-source consul [env: WEFT_CONSUL_TOKEN, else CONSUL_HTTP_TOKEN].
    #[arg(long)]
    pub consul_token: Option<String>,
    /// JSON access log, one line per request: stdout or a file path [env: WEFT_ACCESS_LOG] [default: off].
    #[arg(long)]
    pub access_log: Option<String>,
    /// Share of successful requests the access log keeps, 0 to 1; failures are always logged [env: WEFT_ACCESS_LOG_SAMPLING] [default: 1].
    #[arg(long)]
    pub access_log_sampling: Option<String>,
    /// Send spans here by OTLP, http://HOST:PORT; turns tracing on [env: WEFT_OTLP_ENDPOINT, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// grpc or http/protobuf [env: WEFT_OTLP_PROTOCOL, else OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL] [default: http/protobuf].
    #[arg(long)]
    pub otlp_protocol: Option<String>,
    /// Share of new traces recorded, 0 to 1 (parent-based: a caller's decision is followed) [env: WEFT_TRACE_SAMPLING, else OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG] [default: 1].
    #[arg(long)]
    pub trace_sampling: Option<String>,
}

impl Flags {
    fn values(&self) -> BTreeMap<&'static str, String> {
        // Repeated flags are one comma-separated list, as in the env.
        let tcp_upstream = (!self.tcp_upstream.is_empty()).then(|| self.tcp_upstream.join(","));
        let pairs: [(&'static str, &Option<String>); 28] = [
            ("service", &self.service),
            ("discovery", &self.discovery),
            ("inbound", &self.inbound),
            ("app", &self.app),
            ("outbound", &self.outbound),
            ("admin", &self.admin),
            ("instance", &self.instance),
            ("drain_timeout", &self.drain_timeout),
            ("call_report_interval", &self.call_report_interval),
            ("workers", &self.workers),
            ("header_read_timeout", &self.header_read_timeout),
            ("app_connect_timeout", &self.app_connect_timeout),
            ("app_request_timeout", &self.app_request_timeout),
            ("app_max_requests", &self.app_max_requests),
            ("identity_token", &self.identity_token),
            ("tcp_upstream", &tcp_upstream),
            ("tcp_idle_timeout", &self.tcp_idle_timeout),
            ("upstreams", &self.upstreams),
            ("discovery_idle_timeout", &self.discovery_idle_timeout),
            ("discovery_timeout", &self.discovery_timeout),
            ("identity_source", &self.identity_source),
            ("consul", &self.consul),
            ("consul_token", &self.consul_token),
            ("access_log", &self.access_log),
            ("access_log_sampling", &self.access_log_sampling),
            ("otlp_endpoint", &self.otlp_endpoint),
            ("otlp_protocol", &self.otlp_protocol),
            ("trace_sampling", &self.trace_sampling),
        ];
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect()
    }
}

/// `--inbound-tls` / `WEFT_INBOUND_TLS` / `inbound_tls` until the mode
/// moved into the service's policy.
const INBOUND_TLS_REMOVED: &str = "WEFT_INBOUND_TLS / inbound_tls: removed: the inbound mTLS mode \
     comes from the service's policy now: `\"mtls\": \"permissive\"` in weft/policies/<service> \
     (or weft/defaults for the whole mesh); the default is strict";

/// One setting's names in the three sources.
struct Field {
    /// Key in the YAML file.
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    /// Another variable read when `env` is unset (Consul's CLI variables).
    fallback_env: Option<&'static str>,
}

const FIELDS: &[Field] = &[
    field("service", "--service", "WEFT_SERVICE"),
    field("discovery", "--discovery", "WEFT_DISCOVERY"),
    field("inbound", "--inbound", "WEFT_INBOUND"),
    field("app", "--app", "WEFT_APP"),
    field("outbound", "--outbound", "WEFT_OUTBOUND"),
    field("admin", "--admin", "WEFT_ADMIN"),
    field("instance", "--instance", "WEFT_INSTANCE"),
    field("drain_timeout", "--drain-timeout", "WEFT_DRAIN_TIMEOUT"),
    field(
        "call_report_interval",
        "--call-report-interval",
        "WEFT_CALL_REPORT_INTERVAL",
    ),
    field("workers", "--workers", "WEFT_WORKERS"),
    field(
        "header_read_timeout",
        "--header-read-timeout",
        "WEFT_HEADER_READ_TIMEOUT",
    ),
    field(
        "app_connect_timeout",
        "--app-connect-timeout",
        "WEFT_APP_CONNECT_TIMEOUT",
    ),
    field(
        "app_request_timeout",
        "--app-request-timeout",
        "WEFT_APP_REQUEST_TIMEOUT",
    ),
    field(
        "app_max_requests",
        "--app-max-requests",
        "WEFT_APP_MAX_REQUESTS",
    ),
    field("identity_token", "--identity-token", "WEFT_IDENTITY_TOKEN"),
    field("tcp_upstream", "--tcp-upstream", "WEFT_TCP_UPSTREAM"),
    field(
        "tcp_idle_timeout",
        "--tcp-idle-timeout",
        "WEFT_TCP_IDLE_TIMEOUT",
    ),
    field("upstreams", "--upstreams", "WEFT_UPSTREAMS"),
    field(
        "discovery_idle_timeout",
        "--discovery-idle-timeout",
        "WEFT_DISCOVERY_IDLE_TIMEOUT",
    ),
    field(
        "discovery_timeout",
        "--discovery-timeout",
        "WEFT_DISCOVERY_TIMEOUT",
    ),
    field(
        "identity_source",
        "--identity-source",
        "WEFT_IDENTITY_SOURCE",
    ),
    Field {
        fallback_env: Some("CONSUL_HTTP_ADDR"),
        ..field("consul", "--consul", "WEFT_CONSUL")
    },
    Field {
        fallback_env: Some("CONSUL_HTTP_TOKEN"),
        ..field("consul_token", "--consul-token", "WEFT_CONSUL_TOKEN")
    },
    field("access_log", "--access-log", "WEFT_ACCESS_LOG"),
    field(
        "access_log_sampling",
        "--access-log-sampling",
        "WEFT_ACCESS_LOG_SAMPLING",
    ),
    // Their OTEL_* fallbacks (several, with the spec's rules) are read by
    // `crate::trace::TraceSettings::resolve`.
    field("otlp_endpoint", "--otlp-endpoint", "WEFT_OTLP_ENDPOINT"),
    field("otlp_protocol", "--otlp-protocol", "WEFT_OTLP_PROTOCOL"),
    field("trace_sampling", "--trace-sampling", "WEFT_TRACE_SAMPLING"),
];

const fn field(key: &'static str, flag: &'static str, env: &'static str) -> Field {
    Field {
        key,
        flag,
        env,
        fallback_env: None,
    }
}

fn field_of(key: &str) -> &'static Field {
    // Every key passed here is one of FIELDS (callers use literals).
    FIELDS.iter().find(|f| f.key == key).unwrap_or(&FIELDS[0])
}

struct Reader<'a> {
    flags: BTreeMap<&'static str, String>,
    env: &'a BTreeMap<String, String>,
    file: &'a BTreeMap<String, String>,
    errors: Vec<String>,
}

impl Reader<'_> {
    /// The raw text of a setting and where it came from.
    fn raw(&self, key: &str) -> Option<(String, &'static str)> {
        let f = field_of(key);
        if let Some(v) = self.flags.get(key) {
            return Some((v.clone(), "flag"));
        }
        if let Some(v) = self.env.get(f.env) {
            return Some((v.clone(), "env"));
        }
        if let Some(v) = f.fallback_env.and_then(|name| self.env.get(name)) {
            return Some((v.clone(), "env"));
        }
        self.file.get(key).map(|v| (v.clone(), "config file"))
    }

    fn get<T>(&mut self, key: &str, parse: fn(&str) -> Result<T, String>) -> Option<T> {
        let (value, source) = self.raw(key)?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(why) => {
                let f = field_of(key);
                self.errors.push(format!(
                    "{} / {}: invalid value {value:?} (from {source}): {why}",
                    f.flag, f.env
                ));
                None
            }
        }
    }

    fn require(&mut self, key: &str, present: bool) {
        if !present && self.raw(key).is_none() {
            let f = field_of(key);
            self.errors.push(format!(
                "{} / {}: missing (set the flag, the env variable, or `{}` in the config file)",
                f.flag, f.env, f.key
            ));
        }
    }
}

fn read_file(path: &PathBuf) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("not valid YAML: {e}"))?;
    let serde_yaml::Value::Mapping(map) = value else {
        if value.is_null() {
            return Ok(BTreeMap::new());
        }
        return Err("expected a mapping of setting names to values".into());
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let key = k
            .as_str()
            .ok_or_else(|| format!("key {k:?} is not a string"))?
            .to_owned();
        let value = match v {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            // A list (`tcp_upstream`) is read like the env's comma list.
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .map(|item| match item {
                    serde_yaml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "`{key}`: expected a list of strings, got {other:?}"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(format!("`{key}`: expected a scalar, got {other:?}")),
        };
        out.insert(key, value);
    }
    Ok(out)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:15001".to_owned())
}

fn parse_service(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("use letters, digits, '-', '_' or '.'".into());
    }
    Ok(s.to_owned())
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

fn parse_discovery_uri(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT"))?;
    if uri.scheme_str() != Some("http") {
        return Err("expected an http:// URL, e.g. http://127.0.0.1:15010".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host, e.g. http://127.0.0.1:15010".into());
    }
    Ok(uri)
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err("expected a whole number from 1 to 1024".into()),
    }
}

/// `redis=127.0.0.1:16379,db=127.0.0.1:15432`: service names and listen
/// addresses, each used once.
fn parse_tcp_upstreams(s: &str) -> Result<Vec<TcpUpstream>, String> {
    let mut out: Vec<TcpUpstream> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (service, listen) = item.split_once('=').ok_or_else(|| {
            format!("{item:?}: expected SERVICE=IP:PORT, e.g. redis=127.0.0.1:16379")
        })?;
        let service =
            parse_service(service.trim()).map_err(|e| format!("{item:?}: service {e}"))?;
        let listen = parse_addr(listen.trim()).map_err(|e| format!("{item:?}: {e}"))?;
        if out.iter().any(|u| u.service == service) {
            return Err(format!("{service} is given twice"));
        }
        if out.iter().any(|u| u.listen == listen) {
            return Err(format!("{listen} is given twice"));
        }
        out.push(TcpUpstream { service, listen });
    }
    Ok(out)
}

/// `users,orders`: service names, each once.
fn parse_upstreams(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let service = parse_service(item).map_err(|e| format!("{item:?}: service {e}"))?;
        if out.contains(&service) {
            return Err(format!("{service} is given twice"));
        }
        out.push(service);
    }
    Ok(out)
}

/// `stdout`, or the path of a file to append to.
fn parse_access_log_target(s: &str) -> Result<crate::access_log::Target, String> {
    match s {
        "" => Err("expected stdout or a file path".into()),
        "stdout" | "-" => Ok(crate::access_log::Target::Stdout),
        path => Ok(crate::access_log::Target::File(PathBuf::from(path))),
    }
}

/// `weft` or `consul`; true for consul.
fn parse_identity_source(s: &str) -> Result<bool, String> {
    match s {
        "weft" => Ok(false),
        "consul" => Ok(true),
        _ => Err("expected weft or consul".into()),
    }
}

/// `http://HOST:PORT`, or a bare `HOST:PORT` as CONSUL_HTTP_ADDR allows.
fn parse_consul_address(s: &str) -> Result<http::Uri, String> {
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "HTTPS to Consul is not supported by the sidecar: use the local Consul agent's HTTP port, e.g. http://127.0.0.1:8500"
                    .into(),
            );
        }
        _ => return Err("expected an http:// URL, e.g. http://127.0.0.1:8500".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host, e.g. http://127.0.0.1:8500".into());
    }
    Ok(uri)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".into()),
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds
/// (`weft_rules::duration::parse_setting`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    weft_rules::duration::parse_setting(s)
}

/// Every invalid or missing setting, one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid settings ({} problem{}):",
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        write!(
            f,
            "run `weft-sidecar --help` for every setting and its default"
        )
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(std::iter::once("weft-sidecar").chain(args.iter().copied()))
    }

    #[test]
    fn static_mode_needs_only_inbound_and_app() {
        let s = Settings::from_sources(
            flags(&["--inbound", "127.0.0.1:1000", "--app", "127.0.0.1:2000"]),
            &env(&[]),
        )
        .unwrap();
        assert!(s.discovery.is_none());
        assert_eq!(s.app, "127.0.0.1:2000".parse().unwrap());
        assert_eq!(s.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let err = Settings::from_sources(
            flags(&["--discovery", "http://127.0.0.1:15010", "--inbound", "nope"]),
            &env(&[("WEFT_DRAIN_TIMEOUT", "soon")]),
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "--inbound / WEFT_INBOUND: invalid value \"nope\"",
            "--drain-timeout / WEFT_DRAIN_TIMEOUT: invalid value \"soon\" (from env)",
            "--app / WEFT_APP: missing",
            "--service / WEFT_SERVICE: missing",
            "--outbound / WEFT_OUTBOUND: missing",
            "--admin / WEFT_ADMIN: missing",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        assert_eq!(err.errors.len(), 6, "{text}");
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = std::env::temp_dir().join(format!("weft-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.yaml");
        std::fs::write(
            &path,
            "inbound: 127.0.0.1:1\napp: 127.0.0.1:2\nworkers: 3\ndrain_timeout: 1s\n",
        )
        .unwrap();
        let s = Settings::from_sources(
            flags(&["--config", path.to_str().unwrap(), "--app", "127.0.0.1:9"]),
            &env(&[("WEFT_APP", "127.0.0.1:8"), ("WEFT_INBOUND", "127.0.0.1:7")]),
        )
        .unwrap();
        assert_eq!(s.app.port(), 9, "flag wins over env and file");
        assert_eq!(s.inbound.port(), 7, "env wins over file");
        assert_eq!(
            s.workers,
            Some(3),
            "file value used when nothing else sets it"
        );
        assert_eq!(s.drain_timeout, Duration::from_secs(1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("weft-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.yaml");
        std::fs::write(&path, "inbound: 127.0.0.1:1\napp: 127.0.0.1:2\ninbund: x\n").unwrap();
        let err = Settings::from_sources(flags(&["--config", path.to_str().unwrap()]), &env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("unknown key `inbund`"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_removed_inbound_tls_setting_says_where_the_mode_went() {
        let err = Settings::from_sources(
            flags(&["--inbound", "127.0.0.1:1", "--app", "127.0.0.1:2"]),
            &env(&[("WEFT_INBOUND_TLS", "permissive")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("weft/policies/<service>"), "{err}");
    }

    #[test]
    fn on_demand_discovery_settings_have_documented_defaults_and_are_checked() {
        let with = |extra: &[&str], env_pairs: &[(&str, &str)]| {
            Settings::from_sources(xds_flags(extra), &env(env_pairs))
        };
        let s = with(&[], &[]).unwrap();
        assert!(s.upstreams.is_empty());
        assert_eq!(s.discovery_idle_timeout, Duration::from_secs(600));
        assert_eq!(s.discovery_timeout, Duration::from_secs(1));
        let s = with(
            &[
                "--upstreams",
                "orders, billing",
                "--discovery-idle-timeout",
                "0s",
            ],
            &[("WEFT_DISCOVERY_TIMEOUT", "250ms")],
        )
        .unwrap();
        assert_eq!(s.upstreams, ["orders", "billing"]);
        assert_eq!(s.discovery_idle_timeout, Duration::ZERO, "0s: never drop");
        assert_eq!(s.discovery_timeout, Duration::from_millis(250));
        let err = with(
            &["--upstreams", "orders,orders", "--discovery-timeout", "0s"],
            &[("WEFT_DISCOVERY_IDLE_TIMEOUT", "soon")],
        )
        .unwrap_err()
        .to_string();
        for part in [
            "--upstreams / WEFT_UPSTREAMS: invalid value \"orders,orders\" (from flag): orders is given twice",
            "--discovery-timeout / WEFT_DISCOVERY_TIMEOUT: invalid value \"0s\" (from flag): must be greater than 0",
            "--discovery-idle-timeout / WEFT_DISCOVERY_IDLE_TIMEOUT: invalid value \"soon\" (from env)",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        let err = Settings::from_sources(
            flags(&[
                "--inbound",
                "127.0.0.1:1",
                "--app",
                "127.0.0.1:2",
                "--upstreams",
                "a",
            ]),
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("--upstreams / WEFT_UPSTREAMS: needs --discovery"),
            "{err}"
        );
    }

    #[test]
    fn tcp_upstreams_come_from_repeated_flags_the_env_list_or_a_yaml_list() {
        let upstream = |service: &str, port: u16| TcpUpstream {
            service: service.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let with = |extra: &[&str], env_pairs: &[(&str, &str)]| {
            Settings::from_sources(xds_flags(extra), &env(env_pairs))
        };
        let s = with(
            &[
                "--tcp-upstream",
                "redis=127.0.0.1:6380",
                "--tcp-upstream",
                "db=127.0.0.1:5433",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.tcp_upstreams,
            [upstream("redis", 6380), upstream("db", 5433)]
        );
        let s = with(
            &[],
            &[(
                "WEFT_TCP_UPSTREAM",
                "redis=127.0.0.1:6380, db=127.0.0.1:5433",
            )],
        )
        .unwrap();
        assert_eq!(s.tcp_upstreams.len(), 2);
        assert_eq!(s.proxy.tcp_idle_timeout, Duration::from_secs(3600));

        let dir = std::env::temp_dir().join(format!("weft-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.yaml");
        std::fs::write(
            &path,
            "tcp_upstream:\n  - redis=127.0.0.1:6380\ntcp_idle_timeout: 5m\n",
        )
        .unwrap();
        let s = with(&["--config", path.to_str().unwrap()], &[]).unwrap();
        assert_eq!(s.tcp_upstreams, [upstream("redis", 6380)]);
        assert_eq!(s.proxy.tcp_idle_timeout, Duration::from_secs(300));
        std::fs::remove_dir_all(dir).unwrap();

        for (bad, why) in [
            ("redis", "expected SERVICE=IP:PORT"),
            ("redis=6380", "expected IP:PORT"),
            ("re dis=127.0.0.1:1", "service use letters"),
            ("a=127.0.0.1:1,a=127.0.0.1:2", "a is given twice"),
            ("a=127.0.0.1:1,b=127.0.0.1:1", "127.0.0.1:1 is given twice"),
        ] {
            let text = with(&["--tcp-upstream", bad], &[]).unwrap_err().to_string();
            assert!(
                text.contains("--tcp-upstream / WEFT_TCP_UPSTREAM") && text.contains(why),
                "{bad}: {text}"
            );
        }
        let text = Settings::from_sources(
            flags(&[
                "--inbound",
                "127.0.0.1:1",
                "--app",
                "127.0.0.1:2",
                "--tcp-upstream",
                "redis=127.0.0.1:3",
            ]),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("needs --discovery"), "{text}");
        let text = with(&["--tcp-idle-timeout", "0s"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("--tcp-idle-timeout / WEFT_TCP_IDLE_TIMEOUT")
                && text.contains("greater than 0"),
            "{text}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
        assert_eq!(parse_duration("0.1s").unwrap(), Duration::from_millis(100));
        assert!(parse_duration("366d").is_err());
        assert!(
            parse_duration("9000h")
                .unwrap_err()
                .contains("longer than a year")
        );
    }

    fn xds_flags(more: &[&str]) -> Flags {
        let base = [
            "--service",
            "users",
            "--discovery",
            "http://127.0.0.1:15010",
            "--inbound",
            "127.0.0.1:1",
            "--app",
            "127.0.0.1:2",
            "--outbound",
            "127.0.0.1:3",
            "--admin",
            "127.0.0.1:4",
        ];
        flags(&[&base[..], more].concat())
    }

    #[test]
    fn the_consul_identity_source_reads_consuls_cli_variables() {
        let s = Settings::from_sources(
            xds_flags(&["--identity-source", "consul"]),
            &env(&[
                ("CONSUL_HTTP_ADDR", "127.0.0.1:8501"),
                ("CONSUL_HTTP_TOKEN", "secret-token"),
            ]),
        )
        .unwrap();
        let IdentitySource::Consul(consul) = &s.identity_source else {
            panic!("{:?}", s.identity_source);
        };
        assert_eq!(consul.address.to_string(), "http://127.0.0.1:8501/");
        assert_eq!(consul.token, Some(Secret("secret-token".into())));
        assert!(
            !format!("{s:?}").contains("secret-token"),
            "the token is never printed"
        );

        // WEFT_* wins over Consul's variables; the default is Consul's.
        let s = Settings::from_sources(
            xds_flags(&[]),
            &env(&[
                ("WEFT_IDENTITY_SOURCE", "consul"),
                ("WEFT_CONSUL_TOKEN", "weft"),
                ("CONSUL_HTTP_TOKEN", "cli"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.identity_source,
            IdentitySource::Consul(ConsulSettings {
                address: http::Uri::from_static(DEFAULT_CONSUL_ADDRESS),
                token: Some(Secret("weft".into())),
            })
        );

        // Consul's variables alone do not switch the source.
        let s =
            Settings::from_sources(xds_flags(&[]), &env(&[("CONSUL_HTTP_TOKEN", "t")])).unwrap();
        assert_eq!(s.identity_source, IdentitySource::Weft);
    }

    #[test]
    fn the_consul_identity_source_refuses_what_belongs_to_the_agents_ca() {
        let err = Settings::from_sources(
            xds_flags(&[
                "--identity-source",
                "consul",
                "--identity-token",
                "join",
                "--consul",
                "https://consul:8501",
            ]),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--identity-token / WEFT_IDENTITY_TOKEN is for --identity-source weft"),
            "{err}"
        );
        assert!(err.contains("HTTPS to Consul is not supported"), "{err}");
        let err = Settings::from_sources(
            flags(&[
                "--inbound",
                "127.0.0.1:1",
                "--app",
                "127.0.0.1:2",
                "--identity-source",
                "vault",
            ]),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected weft or consul"), "{err}");
    }

    #[test]
    fn zero_app_timeout_disables_it() {
        let s = Settings::from_sources(
            flags(&[
                "--inbound",
                "127.0.0.1:1",
                "--app",
                "127.0.0.1:2",
                "--app-request-timeout",
                "0s",
            ]),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(s.proxy.app_request_timeout, None);
    }
}
