//! Gateway documents (`gateways/<name>`): an edge gateway's listeners, its
//! rules (`weft_rules::gateway`, the ones the gateway itself applies, with
//! the same reasons), and the translation into the protocol's `Gateway`.
//!
//! A listener's certificate is either two PEM files the gateway reads, or
//! `{"kv": "<name>"}`: the document `certificates/<name>`, which the agent
//! inlines. Whether that document exists (and is good) is a reference, so it
//! is checked apart, by [`super::validate_certificate_references`], as a
//! route's destinations are by [`super::validate_references`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::certificate::CertificateDocument;
use super::error::{FieldError, from_serde, join, with_rule_reasons};
use super::{DocumentKind, schema};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayDocument {
    pub listeners: Vec<Listener>,
    /// Default: 0 (the connection's peer is the client: what a request
    /// says of earlier hops is not believed).
    #[serde(default)]
    pub trusted_hops: u32,
}

/// Name, port and hosts are required by the schema; here they default to
/// empty (0), so that the rules give the reason a gateway would give for
/// the same listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    /// Default: every address.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: u32,
    /// Default: http.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<CertificateSource>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    #[default]
    Http,
    Https,
}

/// Where a listener's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CertificateSource {
    Files(CertificateFiles),
    Kv(KvCertificate),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub chain_file: String,
    pub private_key_file: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCertificate {
    /// The `<name>` of a `certificates/<name>` document.
    pub kv: String,
}

/// Schema, then typed parse, then the gateway rules; every error at once.
pub(super) fn parse(key: &str, value: &Value) -> Result<GatewayDocument, Vec<FieldError>> {
    let schema_errors = schema::validate(key, DocumentKind::Gateway, value);
    let typed = serde_path_to_error::deserialize::<_, GatewayDocument>(value);
    if !schema_errors.is_empty() {
        let rules = typed
            .map(|document| document.check(key))
            .unwrap_or_default();
        return Err(with_rule_reasons(schema_errors, rules));
    }
    let document = typed.map_err(|error| vec![from_serde(key, "", error)])?;
    let errors = document.check(key);
    if errors.is_empty() {
        Ok(document)
    } else {
        Err(errors)
    }
}

/// The `kv` certificates a gateway document names, read from the document
/// as it is (valid or not, so that a refusal lists a missing certificate
/// with the other errors): `(field, name)`, the field being
/// `listeners[i].certificates[j].kv`.
pub(super) fn certificate_references(value: &Value) -> Vec<(String, String)> {
    let listeners = value.get("listeners").and_then(Value::as_array);
    listeners
        .into_iter()
        .flatten()
        .enumerate()
        .flat_map(|(i, listener)| {
            let certificates = listener.get("certificates").and_then(Value::as_array);
            certificates
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(move |(j, certificate)| {
                    let name = certificate.get("kv")?.as_str()?;
                    Some((
                        format!("listeners[{i}].certificates[{j}].kv"),
                        name.to_string(),
                    ))
                })
        })
        .collect()
}

impl GatewayDocument {
    fn check(&self, key: &str) -> Vec<FieldError> {
        use weft_rules::gateway as rules;
        let mut errors = Vec::new();
        let mut error =
            |field: String, reason: String| errors.push(FieldError::new(key, field, reason));
        if let Err(reason) = rules::check_trusted_hops(self.trusted_hops) {
            error("trusted_hops".into(), reason);
        }
        let mut names = BTreeSet::new();
        let mut bound = BTreeSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if let Err(reason) = rules::check_listener_name(&listener.name) {
                error(join(&at, "name"), reason);
            } else if !names.insert(listener.name.as_str()) {
                error(
                    join(&at, "name"),
                    rules::duplicate_listener_name(&listener.name),
                );
            }
            let address = listener.address.as_deref().unwrap_or_default();
            let ip = rules::check_bind_address(address)
                .map_err(|reason| error(join(&at, "address"), reason))
                .ok();
            let port = rules::check_port(listener.port)
                .map_err(|reason| error(join(&at, "port"), reason))
                .ok();
            // "" and "0.0.0.0" are the same address: compared as parsed.
            if let (Some(ip), Some(port)) = (ip, port)
                && !bound.insert((ip, port))
            {
                error(join(&at, "port"), rules::duplicate_listener(address, port));
            }
            if let Err(reason) = rules::check_hosts_listed(listener.hosts.len()) {
                error(join(&at, "hosts"), reason);
            }
            for (j, host) in listener.hosts.iter().enumerate() {
                if let Err(reason) = rules::check_host(host) {
                    error(format!("{at}.hosts[{j}]"), reason);
                }
            }
            let https = listener.protocol == ListenerProtocol::Https;
            if let Err(reason) = rules::check_certificates_for(https, listener.certificates.len()) {
                error(join(&at, "certificates"), reason);
            }
            for (j, certificate) in listener.certificates.iter().enumerate() {
                let CertificateSource::Files(files) = certificate else {
                    continue;
                };
                for (name, path) in [
                    ("chain_file", &files.chain_file),
                    ("private_key_file", &files.private_key_file),
                ] {
                    if let Err(reason) = rules::check_file_path(path) {
                        error(format!("{at}.certificates[{j}].{name}"), reason);
                    }
                }
            }
        }
        errors
    }

    /// The names of the `certificates/<name>` documents it serves.
    pub fn certificate_names(&self) -> BTreeSet<&str> {
        self.listeners
            .iter()
            .flat_map(|listener| &listener.certificates)
            .filter_map(|certificate| match certificate {
                CertificateSource::Kv(kv) => Some(kv.kv.as_str()),
                CertificateSource::Files(_) => None,
            })
            .collect()
    }

    /// The resource for the gateway `name`, with each `kv` certificate
    /// inlined from `certificates` (by name). One the map lacks (never,
    /// once the references were checked) is sent without a source, which
    /// the gateway refuses rather than serving a listener short of it.
    pub fn to_gateway(
        &self,
        name: &str,
        certificates: &BTreeMap<&str, &CertificateDocument>,
    ) -> proto::Gateway {
        use proto::tls_certificate::Source;
        let certificate = |source: &CertificateSource| match source {
            CertificateSource::Files(files) => proto::TlsCertificate {
                name: files.chain_file.clone(),
                source: Some(Source::Files(proto::CertificateFiles {
                    chain_path: files.chain_file.clone(),
                    private_key_path: files.private_key_file.clone(),
                })),
            },
            CertificateSource::Kv(kv) => proto::TlsCertificate {
                name: format!("{}/{}", DocumentKind::Certificate.folder(), kv.kv),
                source: certificates
                    .get(kv.kv.as_str())
                    .map(|document| Source::Pem(document.to_pem())),
            },
        };
        proto::Gateway {
            name: name.to_string(),
            listeners: self
                .listeners
                .iter()
                .map(|listener| proto::GatewayListener {
                    name: listener.name.clone(),
                    address: listener.address.clone().unwrap_or_default(),
                    port: listener.port,
                    protocol: match listener.protocol {
                        ListenerProtocol::Http => proto::gateway_listener::Protocol::Http,
                        ListenerProtocol::Https => proto::gateway_listener::Protocol::Https,
                    } as i32,
                    hosts: listener.hosts.clone(),
                    certificates: listener.certificates.iter().map(certificate).collect(),
                })
                .collect(),
            trusted_hops: self.trusted_hops,
        }
    }
}
