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
    let name_errors = check_name(key);
    let schema_errors = schema::validate(key, DocumentKind::Gateway, value);
    let typed = serde_path_to_error::deserialize::<_, GatewayDocument>(value);
    if !schema_errors.is_empty() {
        let rules = typed
            .map(|document| document.check(key))
            .unwrap_or_default();
        let mut errors = name_errors;
        errors.extend(with_rule_reasons(schema_errors, rules));
        return Err(errors);
    }
    let document = typed.map_err(|error| vec![from_serde(key, "", error)])?;
    let mut errors = name_errors;
    errors.extend(document.check(key));
    if errors.is_empty() {
        Ok(document)
    } else {
        Err(errors)
    }
}

/// The `<name>` of `gateways/<name>` is the gateway's service name: the
/// one it registers in the catalog and asks the agent's CA a certificate
/// for, so it must be one the CA signs (a key naming no gateway could
/// never serve).
fn check_name(key: &str) -> Vec<FieldError> {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    match crate::identity::service_name::check_service_name(name) {
        Ok(()) => Vec::new(),
        Err(reason) => vec![FieldError::new(
            key,
            super::KEY_FIELD,
            format!("a gateway's name is its service name and identity: {reason}"),
        )],
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEY: &str = "gateways/edge";

    /// A gateway of one listener: `listener`'s fields over a valid
    /// plaintext one on port 8080 for `api.example.com`.
    fn one_listener(listener: Value) -> Value {
        let mut base = json!({ "name": "public", "port": 8080, "hosts": ["api.example.com"] });
        for (name, value) in listener.as_object().into_iter().flatten() {
            base[name] = value.clone();
        }
        json!({ "listeners": [base] })
    }

    fn refusals(value: Value) -> Vec<(String, String)> {
        match parse(KEY, &value) {
            Ok(document) => panic!("accepted: {document:?}"),
            Err(errors) => errors
                .into_iter()
                .map(|error| (error.field, error.reason))
                .collect(),
        }
    }

    fn refusal(value: Value) -> (String, String) {
        let found = refusals(value);
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn a_listener_needs_only_a_name_a_port_and_its_hosts() {
        let document = parse(KEY, &one_listener(json!({}))).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(document.trusted_hops, 0, "no proxy in front is trusted");
        let listener = &document.listeners[0];
        assert_eq!(listener.protocol, ListenerProtocol::Http);
        assert_eq!(listener.address, None, "every address");
        assert!(listener.certificates.is_empty());
    }

    #[test]
    fn each_gateway_rule_refuses_its_field_with_the_gateways_reason() {
        use weft_rules::gateway as rules;
        let reason = |result: Result<(), String>| result.unwrap_err();
        let cases = [
            (
                one_listener(json!({ "port": 0 })),
                "listeners[0].port",
                rules::check_port(0).unwrap_err(),
            ),
            (
                one_listener(json!({ "port": 70000 })),
                "listeners[0].port",
                rules::check_port(70000).unwrap_err(),
            ),
            (
                one_listener(json!({ "address": "localhost" })),
                "listeners[0].address",
                rules::check_bind_address("localhost").unwrap_err(),
            ),
            (
                one_listener(json!({ "hosts": [] })),
                "listeners[0].hosts",
                reason(rules::check_hosts_listed(0)),
            ),
            (
                one_listener(json!({ "hosts": ["api.example.com", "API.example.com"] })),
                "listeners[0].hosts[1]",
                reason(rules::check_host("API.example.com")),
            ),
            (
                one_listener(json!({ "hosts": ["api.example.com:443"] })),
                "listeners[0].hosts[0]",
                reason(rules::check_host("api.example.com:443")),
            ),
            (
                one_listener(json!({ "protocol": "https" })),
                "listeners[0].certificates",
                reason(rules::check_certificates_for(true, 0)),
            ),
            (
                one_listener(json!({ "certificates": [ { "kv": "api" } ] })),
                "listeners[0].certificates",
                reason(rules::check_certificates_for(false, 1)),
            ),
            (
                one_listener(json!({ "protocol": "https", "certificates": [
                    { "chain_file": "/etc/weft/api.pem", "private_key_file": "api.key" } ] })),
                "listeners[0].certificates[0].private_key_file",
                reason(rules::check_file_path("api.key")),
            ),
            (
                one_listener(json!({ "name": "two words" })),
                "listeners[0].name",
                reason(rules::check_listener_name("two words")),
            ),
            (
                json!({ "listeners": [ { "name": "a", "port": 80, "hosts": ["a.test"] } ], "trusted_hops": 11 }),
                "trusted_hops",
                reason(rules::check_trusted_hops(11)),
            ),
        ];
        for (document, field, reason) in cases {
            assert_eq!(
                refusal(document.clone()),
                (field.to_string(), reason),
                "{document}"
            );
        }
    }

    #[test]
    fn the_gateways_name_must_be_one_it_can_get_a_certificate_for() {
        let long = format!("gateways/{}", "g".repeat(65));
        for key in ["gateways/..", long.as_str()] {
            let errors = parse(key, &one_listener(json!({}))).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, crate::documents::KEY_FIELD);
            assert!(
                errors[0]
                    .reason
                    .starts_with("a gateway's name is its service name and identity: "),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn listeners_are_unique_by_name_and_by_address_and_port() {
        use weft_rules::gateway as rules;
        let found = refusals(json!({ "listeners": [
            { "name": "public", "port": 80, "hosts": ["a.test"] },
            { "name": "public", "port": 81, "hosts": ["a.test"] },
            { "name": "other", "address": "0.0.0.0", "port": 80, "hosts": ["a.test"] },
        ] }));
        assert_eq!(
            found,
            [
                (
                    "listeners[1].name".to_string(),
                    rules::duplicate_listener_name("public")
                ),
                (
                    "listeners[2].port".to_string(),
                    rules::duplicate_listener("0.0.0.0", 80)
                ),
            ],
            "no address and 0.0.0.0 are the same address"
        );
        let distinct = json!({ "listeners": [
            { "name": "a", "address": "127.0.0.1", "port": 80, "hosts": ["a.test"] },
            { "name": "b", "address": "127.0.0.2", "port": 80, "hosts": ["a.test"] },
        ] });
        assert!(parse(KEY, &distinct).is_ok());
    }

    #[test]
    fn a_certificate_is_two_files_or_one_kv_name_never_both() {
        let https = |certificate: Value| {
            one_listener(json!({ "protocol": "https", "certificates": [certificate] }))
        };
        let both =
            https(json!({ "kv": "api", "chain_file": "/a.pem", "private_key_file": "/a.key" }));
        let mut found = refusals(both);
        found.sort();
        assert_eq!(
            found,
            [
                (
                    "listeners[0].certificates[0].chain_file".to_string(),
                    "not allowed together with `kv`".to_string()
                ),
                (
                    "listeners[0].certificates[0].private_key_file".to_string(),
                    "not allowed together with `kv`".to_string()
                ),
            ]
        );
        assert_eq!(
            refusal(https(json!({ "chain_file": "/a.pem" }))),
            (
                "listeners[0].certificates[0].private_key_file".to_string(),
                "required field is missing".to_string()
            )
        );
        assert_eq!(
            refusal(https(json!({}))),
            (
                "listeners[0].certificates[0]".to_string(),
                "needs one of `chain_file`, `kv`".to_string()
            )
        );
    }

    #[test]
    fn kv_certificates_are_referenced_by_field_valid_document_or_not() {
        let document = json!({ "listeners": [
            { "name": "a", "port": 0, "protocol": "https", "hosts": ["a.test"], "certificates": [
                { "chain_file": "/a.pem", "private_key_file": "/a.key" }, { "kv": "a" } ] },
            { "name": "b", "port": 443, "protocol": "https", "hosts": ["b.test"], "certificates": [ { "kv": "b" } ] },
        ] });
        assert_eq!(
            certificate_references(&document),
            [
                (
                    "listeners[0].certificates[1].kv".to_string(),
                    "a".to_string()
                ),
                (
                    "listeners[1].certificates[0].kv".to_string(),
                    "b".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_resource_inlines_kv_certificates_and_names_files_by_their_chain() {
        let document = parse(
            KEY,
            &json!({ "listeners": [
                { "name": "public", "address": "127.0.0.1", "port": 8443, "protocol": "https",
                  "hosts": ["api.example.com"], "certificates": [
                    { "kv": "api" },
                    { "chain_file": "/etc/weft/www.pem", "private_key_file": "/etc/weft/www.key" } ] }
            ], "trusted_hops": 1 }),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let api = CertificateDocument {
            chain_pem: "CHAIN".into(),
            private_key_pem: "KEY".into(),
        };
        let gateway = document.to_gateway("edge", &BTreeMap::from([("api", &api)]));
        use proto::tls_certificate::Source;
        assert_eq!(
            gateway,
            proto::Gateway {
                name: "edge".into(),
                listeners: vec![proto::GatewayListener {
                    name: "public".into(),
                    address: "127.0.0.1".into(),
                    port: 8443,
                    protocol: proto::gateway_listener::Protocol::Https as i32,
                    hosts: vec!["api.example.com".into()],
                    certificates: vec![
                        proto::TlsCertificate {
                            name: "certificates/api".into(),
                            source: Some(Source::Pem(proto::CertificatePem {
                                chain_pem: "CHAIN".into(),
                                private_key_pem: "KEY".into(),
                            })),
                        },
                        proto::TlsCertificate {
                            name: "/etc/weft/www.pem".into(),
                            source: Some(Source::Files(proto::CertificateFiles {
                                chain_path: "/etc/weft/www.pem".into(),
                                private_key_path: "/etc/weft/www.key".into(),
                            })),
                        },
                    ],
                }],
                trusted_hops: 1,
            }
        );
    }
}
