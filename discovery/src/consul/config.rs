//! Where Consul is and how to authenticate to it.

use std::path::PathBuf;

use http::Uri;

use super::ConsulError;

/// Consul's own default HTTP address, used when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// How to reach Consul's HTTP API.
///
/// The TLS settings (`ca_cert`, `client_cert`, `client_key`,
/// `tls_server_name`) only matter for an `https://` address; with `http://`
/// they are ignored, as Consul's own CLI ignores them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Base URI of the agent's HTTP API, e.g. `http://127.0.0.1:8500` or
    /// `https://127.0.0.1:8501` (`CONSUL_HTTP_ADDR`; `CONSUL_HTTP_SSL=true`
    /// makes it `https`). A path on it is ignored.
    pub address: Uri,
    /// ACL token sent as `X-Consul-Token` on every request
    /// (`CONSUL_HTTP_TOKEN`); `None` uses the agent's default token.
    pub token: Option<String>,
    /// PEM file of the CA (or several CAs) that signed Consul's HTTPS
    /// certificate (`CONSUL_CACERT`). `None` trusts the operating system's
    /// bundle, [`SYSTEM_CA_BUNDLE`]; a Consul with certificates from its own
    /// CA (the usual setup, `consul tls ca create`) needs this set.
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate (chain) this client presents to Consul
    /// (`CONSUL_CLIENT_CERT`). Needed when Consul sets `verify_incoming` (or
    /// `verify_incoming_https`): its HTTPS port then refuses clients without
    /// a certificate signed by its `ca_file`. Always set with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (`CONSUL_CLIENT_KEY`): PKCS#8,
    /// PKCS#1 (RSA) or SEC1 (EC, what `consul tls cert create` writes).
    pub client_key: Option<PathBuf>,
    /// The name Consul's certificate is verified against and sent as SNI
    /// (`CONSUL_TLS_SERVER_NAME`), e.g. `server.dc1.consul` when Consul is
    /// reached by an IP its certificate does not list. `None` uses the host
    /// of `address` (a DNS name or an IP address).
    pub tls_server_name: Option<String>,
    /// Most TCP connections the client holds open to Consul at once
    /// (`--consul-max-connections`, default [`DEFAULT_MAX_CONNECTIONS`],
    /// at least [`MIN_MAX_CONNECTIONS`]). Every request holds one for its
    /// whole duration, and a blocking query holds it for up to its `wait`;
    /// a quarter of them (at least [`BLOCKING_RESERVE_MIN`]) is kept for
    /// blocking queries, the rest for short reads and writes, so neither
    /// starves the other. Consul refuses connections beyond
    /// `limits.http_max_conns_per_client` (200 by default) per client
    /// address, counting every process on that address.
    pub max_connections: usize,
}

/// Default of [`ConsulConfig::max_connections`]: the agent's five blocking
/// watches plus enough parallel reads to sync a 1,000-service catalog in
/// about a second, far below Consul's 200 per client address so other
/// processes on the host (a Consul agent's own CLI, sidecars with
/// `--identity-source consul`) keep their share.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;

/// Smallest [`ConsulConfig::max_connections`]: the agent's five blocking
/// watches plus two short reads.
pub const MIN_MAX_CONNECTIONS: usize = 7;

/// Fewest connections kept for blocking queries: the agent runs five
/// (catalog names, critical and warning checks, KV, intentions).
pub const BLOCKING_RESERVE_MIN: usize = 5;

/// The operating system's CA bundle (Debian/Ubuntu layout, PEM), trusted for
/// Consul's certificate when `CONSUL_CACERT` is not set.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl ConsulConfig {
    /// Settings from their textual form (CLI flags): `address` as Consul's
    /// CLI accepts it (see [`parse_address`]), an optional token (empty
    /// means none) and an optional CA file. No client certificate and no
    /// server-name override: add them with [`with_client_cert`](Self::with_client_cert)
    /// and [`with_tls_server_name`](Self::with_tls_server_name).
    pub fn new(
        address: &str,
        token: Option<String>,
        ca_cert: Option<PathBuf>,
    ) -> Result<Self, ConsulError> {
        Ok(Self {
            address: parse_address(address)?,
            token: token.filter(|token| !token.trim().is_empty()),
            ca_cert,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        })
    }

    /// `--consul-max-connections`: at most `max` connections to Consul at
    /// once. Fails below [`MIN_MAX_CONNECTIONS`], naming the flag.
    pub fn with_max_connections(mut self, max: usize) -> Result<Self, ConsulError> {
        if max < MIN_MAX_CONNECTIONS {
            return Err(ConsulError::Config {
                field: "--consul-max-connections",
                reason: format!(
                    "{max} is below {MIN_MAX_CONNECTIONS}: the agent keeps five blocking queries open and needs room for reads beside them"
                ),
            });
        }
        self.max_connections = max;
        Ok(self)
    }

    /// `CONSUL_HTTP_SSL`: with `true` the address is reached over HTTPS,
    /// whatever its scheme says (Consul's CLI never falls back to plain HTTP
    /// once TLS is asked for); `false` changes nothing.
    pub fn with_http_ssl(mut self, ssl: bool) -> Result<Self, ConsulError> {
        if ssl && self.address.scheme_str() != Some("https") {
            let mut parts = self.address.clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            self.address = Uri::from_parts(parts).map_err(|error| ConsulError::Config {
                field: "CONSUL_HTTP_SSL",
                reason: format!("cannot make {} an https address: {error}", self.address),
            })?;
        }
        Ok(self)
    }

    /// `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`: both or neither (a
    /// certificate without its key, or the reverse, is a mistake to report
    /// now rather than a handshake failure later).
    pub fn with_client_cert(
        mut self,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Self, ConsulError> {
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(ConsulError::Config {
                    field: "CONSUL_CLIENT_KEY",
                    reason: "CONSUL_CLIENT_CERT is set but its private key is not; set both \
                             (--consul-client-cert and --consul-client-key) or neither"
                        .into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConsulError::Config {
                    field: "CONSUL_CLIENT_CERT",
                    reason: "CONSUL_CLIENT_KEY is set but the certificate is not; set both \
                             (--consul-client-cert and --consul-client-key) or neither"
                        .into(),
                });
            }
            _ => {}
        }
        self.client_cert = cert;
        self.client_key = key;
        Ok(self)
    }

    /// `CONSUL_TLS_SERVER_NAME` (empty means none).
    pub fn with_tls_server_name(mut self, name: Option<String>) -> Self {
        self.tls_server_name = name
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty());
        self
    }

    /// Reads `CONSUL_HTTP_ADDR` (default [`DEFAULT_ADDRESS`]; a bare
    /// `host:port` means `http://host:port`, as in Consul's CLI),
    /// `CONSUL_HTTP_SSL`, `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`,
    /// `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY` and `CONSUL_TLS_SERVER_NAME`.
    /// Empty variables count as unset.
    pub fn from_env() -> Result<Self, ConsulError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable source (tests, CLI flags).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConsulError> {
        let var = |name| var(name).filter(|value: &String| !value.trim().is_empty());
        let ssl = match var("CONSUL_HTTP_SSL") {
            Some(value) => parse_bool(&value).ok_or_else(|| ConsulError::Config {
                field: "CONSUL_HTTP_SSL",
                reason: format!("{value:?} is not a boolean; use true or false"),
            })?,
            None => false,
        };
        Ok(Self::new(
            var("CONSUL_HTTP_ADDR")
                .as_deref()
                .unwrap_or(DEFAULT_ADDRESS),
            var("CONSUL_HTTP_TOKEN"),
            var("CONSUL_CACERT").map(PathBuf::from),
        )?
        .with_http_ssl(ssl)?
        .with_client_cert(
            var("CONSUL_CLIENT_CERT").map(PathBuf::from),
            var("CONSUL_CLIENT_KEY").map(PathBuf::from),
        )?
        .with_tls_server_name(var("CONSUL_TLS_SERVER_NAME")))
    }

    /// Whether requests go over HTTPS.
    pub fn is_https(&self) -> bool {
        self.address.scheme_str() == Some("https")
    }
}

/// A boolean as Consul's CLI reads one (Go's `strconv.ParseBool`): `1`, `t`,
/// `T`, `true`, `True`, `TRUE` or `0`, `f`, `F`, `false`, `False`, `FALSE`;
/// anything else is `None`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses a Consul address the way Consul's CLI accepts it: a URI with an
/// `http` or `https` scheme, or a bare `host:port` meaning plain HTTP.
pub fn parse_address(address: &str) -> Result<Uri, ConsulError> {
    let address = address.trim();
    let with_scheme = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let uri: Uri = with_scheme.parse().map_err(|error| ConsulError::Config {
        field: "CONSUL_HTTP_ADDR",
        reason: format!("{address:?} is not a URI ({error}); expected e.g. http://127.0.0.1:8500"),
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        other => {
            return Err(ConsulError::Config {
                field: "CONSUL_HTTP_ADDR",
                reason: format!(
                    "scheme {:?} of {address:?} is not supported; use http:// or https://",
                    other.unwrap_or("")
                ),
            });
        }
    }
    if uri.authority().is_none() {
        return Err(ConsulError::Config {
            field: "CONSUL_HTTP_ADDR",
            reason: format!("{address:?} has no host"),
        });
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn env_defaults_to_the_local_agent() {
        let config = ConsulConfig::from_vars(vars(&[])).ok();
        assert_eq!(
            config.map(|c| c.address.to_string()),
            Some("http://127.0.0.1:8500/".to_owned())
        );
    }

    #[test]
    fn env_reads_address_token_and_ca() {
        let config = ConsulConfig::from_vars(vars(&[
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
            ("CONSUL_HTTP_TOKEN", "secret"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
        ]));
        let config = match config {
            Ok(config) => config,
            Err(error) => panic!("valid env rejected: {error}"),
        };
        assert_eq!(config.address.to_string(), "http://10.0.0.1:8501/");
        assert_eq!(config.token.as_deref(), Some("secret"));
        assert_eq!(config.ca_cert, Some(PathBuf::from("/etc/consul/ca.pem")));
    }

    #[test]
    fn consul_http_ssl_turns_a_bare_host_port_into_https() {
        let config = ConsulConfig::from_vars(vars(&[
            ("CONSUL_HTTP_ADDR", "127.0.0.1:8501"),
            ("CONSUL_HTTP_SSL", "true"),
        ]));
        let config = match config {
            Ok(config) => config,
            Err(error) => panic!("valid env rejected: {error}"),
        };
        assert_eq!(config.address.to_string(), "https://127.0.0.1:8501/");
        assert!(config.is_https());
        // As in Consul's CLI, asking for TLS never falls back to plain HTTP.
        let forced = ConsulConfig::new("http://consul:8501", None, None)
            .and_then(|config| config.with_http_ssl(true))
            .map(|config| config.address.to_string());
        assert_eq!(forced.ok().as_deref(), Some("https://consul:8501/"));
        let off = ConsulConfig::from_vars(vars(&[("CONSUL_HTTP_SSL", "0")]));
        assert_eq!(
            off.map(|config| config.address.to_string()).ok().as_deref(),
            Some("http://127.0.0.1:8500/")
        );
    }

    #[test]
    fn a_consul_http_ssl_that_is_not_a_boolean_is_named() {
        let error = ConsulConfig::from_vars(vars(&[("CONSUL_HTTP_SSL", "yes please")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_HTTP_SSL"), "{error}");
    }

    #[test]
    fn env_reads_the_tls_settings() {
        let config = ConsulConfig::from_vars(vars(&[
            ("CONSUL_HTTP_ADDR", "https://10.0.0.1:8501"),
            ("CONSUL_CLIENT_CERT", "/etc/consul/client.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/client-key.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ]));
        let config = match config {
            Ok(config) => config,
            Err(error) => panic!("valid env rejected: {error}"),
        };
        assert_eq!(
            config.client_cert,
            Some(PathBuf::from("/etc/consul/client.pem"))
        );
        assert_eq!(
            config.client_key,
            Some(PathBuf::from("/etc/consul/client-key.pem"))
        );
        assert_eq!(config.tls_server_name.as_deref(), Some("server.dc1.consul"));
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused_naming_the_missing_one() {
        let error = ConsulConfig::from_vars(vars(&[("CONSUL_CLIENT_CERT", "/c.pem")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_CLIENT_KEY"), "{error}");
        let error = ConsulConfig::from_vars(vars(&[("CONSUL_CLIENT_KEY", "/k.pem")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_CLIENT_CERT"), "{error}");
    }

    #[test]
    fn empty_token_means_no_token() {
        let config = ConsulConfig::from_vars(vars(&[("CONSUL_HTTP_TOKEN", " ")])).ok();
        assert_eq!(config.and_then(|c| c.token), None);
    }

    #[test]
    fn unsupported_scheme_is_named_in_the_error() {
        let error = parse_address("unix:///var/run/consul.sock")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_HTTP_ADDR"), "{error}");
        assert!(error.contains("unix"), "{error}");
    }
}
