//! Where Consul is and how to authenticate to it.

use std::path::PathBuf;

use http::Uri;

use super::ConsulError;

/// Consul's own default HTTP address, used when `CONSUL_HTTP_ADDR` is unset.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// How to reach Consul's HTTP API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Base URI of the agent's HTTP API, e.g. `http://127.0.0.1:8500`
    /// (`CONSUL_HTTP_ADDR`). A path on it is ignored.
    pub address: Uri,
    /// ACL token sent as `X-Consul-Token` on every request
    /// (`CONSUL_HTTP_TOKEN`); `None` uses the agent's default token.
    pub token: Option<String>,
    /// PEM file of the CA that signed Consul's HTTPS certificate
    /// (`CONSUL_CACERT`). Accepted now; used once HTTPS support lands
    /// (see [`ConsulClient::new`](super::ConsulClient::new)).
    pub ca_cert: Option<PathBuf>,
}

impl ConsulConfig {
    /// Settings from their textual form (CLI flags): `address` as Consul's
    /// CLI accepts it (see [`parse_address`]), an optional token (empty
    /// means none) and an optional CA file.
    pub fn new(
        address: &str,
        token: Option<String>,
        ca_cert: Option<PathBuf>,
    ) -> Result<Self, ConsulError> {
        Ok(Self {
            address: parse_address(address)?,
            token: token.filter(|token| !token.trim().is_empty()),
            ca_cert,
        })
    }

    /// Reads `CONSUL_HTTP_ADDR` (default [`DEFAULT_ADDRESS`]; a bare
    /// `host:port` means `http://host:port`, as in Consul's CLI),
    /// `CONSUL_HTTP_TOKEN` and `CONSUL_CACERT`. Empty variables count as unset.
    pub fn from_env() -> Result<Self, ConsulError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable source (tests, CLI flags).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConsulError> {
        let var = |name| var(name).filter(|value: &String| !value.trim().is_empty());
        Self::new(
            var("CONSUL_HTTP_ADDR")
                .as_deref()
                .unwrap_or(DEFAULT_ADDRESS),
            var("CONSUL_HTTP_TOKEN"),
            var("CONSUL_CACERT").map(PathBuf::from),
        )
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
