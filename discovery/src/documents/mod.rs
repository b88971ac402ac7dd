//! The KV configuration documents: keys, schema, typed parse, validation and
//! translation to the protocol's resources. Six kinds: route tables
//! (`routes/<host>`), traffic policies (`destinations/<service>`), inbound
//! policies (`policies/<service>`), the mesh-wide `defaults`, edge gateways
//! (`gateways/<name>`) and the TLS certificates they serve
//! (`certificates/<name>`).
//!
//! A document goes through three checks, and every error of every check is
//! reported at once (an operator fixes a document in one round trip):
//! 1. syntax (JSON, or YAML from the file backend);
//! 2. structure, against the published JSON Schema
//!    (`discovery/schema/weft-kv.schema.json`, see [`schema`]);
//! 3. meaning the schema cannot express: regexes compile, split weights do not
//!    all equal 0, header names and values are valid, durations are > 0, a
//!    policy names each source once.
//!
//! References to other services need the catalog, so they are checked apart,
//! by [`validate_references`], which the snapshot builder calls; so are a
//! gateway's references to certificate documents
//! ([`validate_certificate_references`]), which need the other documents.
//!
//! The field-by-field reference is `docs/KV-SCHEMA.md`.

mod breaker;
mod cache;
mod certificate;
mod compression;
mod cors;
mod destination;
mod duration;
mod error;
mod gateway;
pub mod jwt;
mod policy;
mod rate_limit;
mod retry;
mod route;
pub mod schema;
mod validation;

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::model::RawDocument;

pub use breaker::{Breaker, CircuitBreakers, Failure, OutlierDetection, Ratio};
pub use certificate::CertificateDocument;
pub use destination::{
    ConnectionPoolSettings, DestinationDocument, LoadBalancer, Protocol, default_cluster,
};
pub use error::FieldError;
pub use gateway::{
    CertificateFiles, CertificateSource, GatewayDocument, KvCertificate, Listener, ListenerProtocol,
};
pub use policy::{
    ANY_SERVICE, Action, DefaultsDocument, IntentionRule, MtlsMode, Permission, PolicyDocument,
    PolicyIntention,
};
pub use rate_limit::{KeyKind, RateLimitsSection, Unavailable};
pub use retry::{BackoffDocument, BudgetDocument, RetryDocument, RetryOn};
pub use route::{
    HeaderMatcher, HeaderMutation, PathMatch, Route, RouteDocument, RouteMatch, RouteTarget,
    StringMatch, WeightedDestination, default_route_configuration,
};
pub use weft_rules::duration::parse as parse_duration;
pub use weft_rules::name::is_valid_name;

/// The field name used for errors about a document as a whole (syntax).
pub const DOCUMENT_FIELD: &str = "(document)";
/// The field name used for errors about a document's key.
pub const KEY_FIELD: &str = "(key)";
/// The key of the mesh-wide defaults document (`weft/defaults` in Consul
/// KV, `defaults.json|yaml|yml` at the root of the config dir).
pub const DEFAULTS_KEY: &str = "defaults";

/// What a key (relative to the KV prefix or the config directory) names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocumentKey {
    /// `routes/<host>`: the route table for requests addressed to `<host>`.
    Route { host: String },
    /// `destinations/<service>`: the traffic policy for calls to `<service>`.
    Destination { service: String },
    /// `policies/<service>`: the inbound policy of `<service>`.
    Policy { service: String },
    /// `defaults`: the mesh-wide defaults.
    Defaults,
    /// `gateways/<name>`: the listeners of the edge gateway `<name>`.
    Gateway { name: String },
    /// `certificates/<name>`: a TLS certificate gateways may serve.
    Certificate { name: String },
}

/// The kinds of documents, by their key's folder (or, for the defaults,
/// their key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocumentKind {
    Route,
    Destination,
    Policy,
    Defaults,
    Gateway,
    Certificate,
}

impl DocumentKind {
    /// The key folder: `routes`, `destinations`, `policies`, `gateways`,
    /// `certificates`; for the one
    /// defaults document, its whole key `defaults` (a file at the root of
    /// the config dir, not a folder).
    pub fn folder(self) -> &'static str {
        match self {
            DocumentKind::Route => "routes",
            DocumentKind::Destination => "destinations",
            DocumentKind::Policy => "policies",
            DocumentKind::Defaults => DEFAULTS_KEY,
            DocumentKind::Gateway => "gateways",
            DocumentKind::Certificate => "certificates",
        }
    }

    /// The kind whose key folder is `folder` (never [`DocumentKind::Defaults`]:
    /// it has no folder).
    pub fn from_folder(folder: &str) -> Option<Self> {
        match folder {
            "routes" => Some(DocumentKind::Route),
            "destinations" => Some(DocumentKind::Destination),
            "policies" => Some(DocumentKind::Policy),
            "gateways" => Some(DocumentKind::Gateway),
            "certificates" => Some(DocumentKind::Certificate),
            _ => None,
        }
    }
}

impl DocumentKey {
    /// Parses `routes/<host>`, `destinations/<service>`, `policies/<service>`,
    /// `gateways/<name>`, `certificates/<name>` or `defaults`. The name is one path segment of letters, digits, `.`,
    /// `_` and `-` (a service or host name); anything else is an error naming
    /// the key.
    pub fn parse(key: &str) -> Result<Self, FieldError> {
        let error = |reason: String| FieldError::new(key, KEY_FIELD, reason);
        if key == DEFAULTS_KEY {
            return Ok(DocumentKey::Defaults);
        }
        let Some((folder, name)) = key.split_once('/') else {
            return Err(error(
                "not a document key: expected routes/<host>, destinations/<service>, policies/<service>, gateways/<name>, certificates/<name> or defaults".into(),
            ));
        };
        let Some(kind) = DocumentKind::from_folder(folder) else {
            return Err(error(format!(
                "unknown document folder `{folder}`: expected routes, destinations, policies, gateways or certificates"
            )));
        };
        if name.is_empty() {
            return Err(error(format!("`{folder}/` needs a name after the slash")));
        }
        if let Some(bad) = name.chars().find(|&c| !weft_rules::name::is_name_char(c)) {
            return Err(error(format!(
                "`{name}` is not a valid {} name: `{bad}` is not allowed (use letters, digits, `.`, `_`, `-`)",
                match kind {
                    DocumentKind::Route => "host",
                    DocumentKind::Certificate => "certificate",
                    _ => "service",
                }
            )));
        }
        let name = name.to_string();
        Ok(match kind {
            DocumentKind::Route => DocumentKey::Route { host: name },
            DocumentKind::Destination => DocumentKey::Destination { service: name },
            DocumentKind::Policy => DocumentKey::Policy { service: name },
            DocumentKind::Defaults => DocumentKey::Defaults,
            DocumentKind::Gateway => DocumentKey::Gateway { name },
            DocumentKind::Certificate => DocumentKey::Certificate { name },
        })
    }

    pub fn kind(&self) -> DocumentKind {
        match self {
            DocumentKey::Route { .. } => DocumentKind::Route,
            DocumentKey::Destination { .. } => DocumentKind::Destination,
            DocumentKey::Policy { .. } => DocumentKind::Policy,
            DocumentKey::Defaults => DocumentKind::Defaults,
            DocumentKey::Gateway { .. } => DocumentKind::Gateway,
            DocumentKey::Certificate { .. } => DocumentKind::Certificate,
        }
    }

    /// The host, service, gateway or certificate the key names (empty for
    /// `defaults`, which names the whole mesh).
    pub fn name(&self) -> &str {
        match self {
            DocumentKey::Route { host } => host,
            DocumentKey::Destination { service } | DocumentKey::Policy { service } => service,
            DocumentKey::Gateway { name } | DocumentKey::Certificate { name } => name,
            DocumentKey::Defaults => "",
        }
    }
}

impl fmt::Display for DocumentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocumentKey::Defaults => f.write_str(DEFAULTS_KEY),
            _ => write!(f, "{}/{}", self.kind().folder(), self.name()),
        }
    }
}

/// A validated document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Route(RouteDocument),
    /// Boxed: with every resilience section it is several times the size
    /// of the others.
    Destination(Box<DestinationDocument>),
    Policy(PolicyDocument),
    Defaults(DefaultsDocument),
    Gateway(GatewayDocument),
    Certificate(CertificateDocument),
}

/// Parses and validates one document: key, syntax, schema and semantic
/// checks. Needs no catalog: references are checked by [`validate_references`].
/// On failure returns every error found, each naming key, field and reason.
pub fn parse_document(raw: &RawDocument) -> Result<Document, Vec<FieldError>> {
    let key = DocumentKey::parse(&raw.key).map_err(|error| vec![error])?;
    let value = decode(&raw.key, &raw.value, raw.yaml).map_err(|error| vec![error])?;
    parse_value(&raw.key, key.kind(), &value)
}

/// Validates an already decoded document of a known kind (`key` only names
/// it in errors).
pub fn parse_value(
    key: &str,
    kind: DocumentKind,
    value: &Value,
) -> Result<Document, Vec<FieldError>> {
    match kind {
        DocumentKind::Route => route::parse(key, value).map(Document::Route),
        DocumentKind::Destination => {
            destination::parse(key, value).map(|document| Document::Destination(Box::new(document)))
        }
        DocumentKind::Policy => policy::parse(key, value).map(Document::Policy),
        DocumentKind::Defaults => policy::parse_defaults(key, value).map(Document::Defaults),
        DocumentKind::Gateway => gateway::parse(key, value).map(Document::Gateway),
        DocumentKind::Certificate => certificate::parse(key, value).map(Document::Certificate),
    }
}

/// The typed parse alone: no schema and none of the checks of meaning.
/// This is what the agent's translation would make of a document it had not
/// validated, so that a test can hold the agent's verdict against a
/// sidecar's on the same input (`tests/tests/config_agreement.rs`). The
/// agent itself never translates a document that [`parse_value`] refused.
pub fn parse_unchecked(kind: DocumentKind, value: &Value) -> Result<Document, String> {
    let typed = |error: serde_json::Error| error.to_string();
    Ok(match kind {
        DocumentKind::Route => Document::Route(RouteDocument::deserialize(value).map_err(typed)?),
        DocumentKind::Destination => Document::Destination(Box::new(
            DestinationDocument::deserialize(value).map_err(typed)?,
        )),
        DocumentKind::Policy => {
            Document::Policy(PolicyDocument::deserialize(value).map_err(typed)?)
        }
        DocumentKind::Defaults => {
            Document::Defaults(DefaultsDocument::deserialize(value).map_err(typed)?)
        }
        DocumentKind::Gateway => {
            Document::Gateway(GatewayDocument::deserialize(value).map_err(typed)?)
        }
        DocumentKind::Certificate => {
            Document::Certificate(CertificateDocument::deserialize(value).map_err(typed)?)
        }
    })
}

/// Decodes the bytes of a document (JSON, or YAML when `yaml`) into a JSON value.
fn decode(key: &str, bytes: &[u8], yaml: bool) -> Result<Value, FieldError> {
    let error = |reason: String| FieldError::new(key, DOCUMENT_FIELD, reason);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // An empty Consul key (or a folder marker) is not a document.
        return Err(error("empty document: expected an object".into()));
    }
    if yaml {
        serde_yaml::from_slice(bytes).map_err(|e| error(format!("not valid YAML: {e}")))
    } else {
        serde_json::from_slice(bytes).map_err(|e| error(format!("not valid JSON: {e}")))
    }
}

/// Checks that every service a document sends traffic to is known: `known`
/// answers for a name that is in the catalog or has a `destinations/` document.
/// Returns one error per unknown reference, with its field path.
pub fn validate_references(
    key: &str,
    doc: &Document,
    known: &dyn Fn(&str) -> bool,
) -> Vec<FieldError> {
    match doc {
        Document::Route(routes) => routes
            .destination_fields()
            .into_iter()
            .filter(|(_, service)| !known(service))
            .map(|(field, service)| {
                FieldError::new(
                    key,
                    field,
                    format!(
                        "unknown destination `{service}` (not in the catalog and no destinations/{service} document)"
                    ),
                )
            })
            .collect(),
        // A destination or policy document names only its own service, which
        // may legitimately come before the service is registered; a policy's
        // sources may name callers that do not exist yet (as in Consul).
        // A gateway names no service (its hosts' route tables do); its
        // certificate documents are checked by
        // [`validate_certificate_references`].
        Document::Destination(_)
        | Document::Policy(_)
        | Document::Defaults(_)
        | Document::Gateway(_)
        | Document::Certificate(_) => Vec::new(),
    }
}

/// What a `certificates/<name>` document a gateway names is, for
/// [`validate_certificate_references`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Its latest version is good: the gateway serves it.
    Good,
    /// Its latest version was refused: the gateway is refused too, rather
    /// than serve an older certificate than the operator wrote.
    Refused,
    /// No such document.
    Missing,
}

/// The `certificates/<name>` documents a document names, each with the
/// field naming it (`listeners[0].certificates[1].kv`): none but for a
/// gateway document. Read from the document as it is, valid or not, so
/// that a refusal lists a missing certificate with its other errors.
pub fn certificate_references(raw: &RawDocument) -> Vec<(String, String)> {
    if !matches!(
        DocumentKey::parse(&raw.key),
        Ok(DocumentKey::Gateway { .. })
    ) {
        return Vec::new();
    }
    match decode(&raw.key, &raw.value, raw.yaml) {
        Ok(value) => gateway::certificate_references(&value),
        Err(_) => Vec::new(),
    }
}

/// Checks that every certificate document a gateway names (`references`,
/// from [`certificate_references`]) exists and is good: `status` answers
/// for a name. Returns one error per other reference, with its field.
pub fn validate_certificate_references(
    key: &str,
    references: &[(String, String)],
    status: &dyn Fn(&str) -> CertificateStatus,
) -> Vec<FieldError> {
    let folder = DocumentKind::Certificate.folder();
    references
        .iter()
        .filter_map(|(field, name)| {
            let reason = match status(name) {
                CertificateStatus::Good => return None,
                CertificateStatus::Refused => format!(
                    "{folder}/{name} was refused (see its own errors): fix it, or name another certificate"
                ),
                CertificateStatus::Missing => format!(
                    "no {folder}/{name} document: write it (`chain_pem`, `private_key_pem`), or name another certificate"
                ),
            };
            Some(FieldError::new(key, field.clone(), reason))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn raw(key: &str, value: &str) -> RawDocument {
        RawDocument {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            origin: format!("test {key}"),
            yaml: false,
        }
    }

    #[test]
    fn keys_name_their_kind_and_name() {
        assert_eq!(
            DocumentKey::parse("routes/users").unwrap(),
            DocumentKey::Route {
                host: "users".into()
            }
        );
        assert_eq!(
            DocumentKey::parse("destinations/orders-v2").unwrap(),
            DocumentKey::Destination {
                service: "orders-v2".into()
            }
        );
        assert_eq!(
            DocumentKey::parse("policies/web").unwrap().to_string(),
            "policies/web"
        );
    }

    #[test]
    fn bad_keys_are_rejected_with_the_reason() {
        for (key, needle) in [
            ("users", "not a document key"),
            ("route/users", "unknown document folder `route`"),
            ("routes/", "needs a name"),
            ("routes/a/b", "`/` is not allowed"),
            ("routes/a b", "` ` is not allowed"),
        ] {
            let error = DocumentKey::parse(key).unwrap_err();
            assert_eq!(error.key, key);
            assert_eq!(error.field, KEY_FIELD);
            assert!(error.reason.contains(needle), "{key}: {error}");
        }
    }

    #[test]
    fn bad_json_is_one_document_error_with_line_and_column() {
        let errors = parse_document(&raw("routes/users", "{ \"routes\": [ }")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, DOCUMENT_FIELD);
        assert!(errors[0].reason.contains("not valid JSON"), "{}", errors[0]);
        assert!(errors[0].reason.contains("line 1 column"), "{}", errors[0]);
        assert!(
            errors[0]
                .to_string()
                .starts_with("routes/users: (document): not valid JSON")
        );
    }

    #[test]
    fn bad_yaml_is_one_document_error() {
        let mut doc = raw("destinations/users", "load_balancer: [unclosed");
        doc.yaml = true;
        let errors = parse_document(&doc).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("not valid YAML"), "{}", errors[0]);
    }

    #[test]
    fn an_empty_value_is_not_a_document() {
        let errors = parse_document(&raw("routes/users", "  ")).unwrap_err();
        assert_eq!(errors[0].field, DOCUMENT_FIELD);
        assert!(errors[0].reason.contains("empty document"));
    }

    #[test]
    fn yaml_documents_parse_like_json() {
        let mut doc = raw(
            "routes/users",
            "routes:\n  - match: { path_prefix: /api/ }\n    destination: users\n    timeout: 2s\n",
        );
        doc.yaml = true;
        let Document::Route(routes) = parse_document(&doc).unwrap() else {
            panic!("a routes/ key parses as a route document");
        };
        assert_eq!(routes.routes.len(), 1);
    }

    #[test]
    fn unknown_destinations_are_reported_with_their_field() {
        let doc = parse_document(&raw(
            "routes/users",
            r#"{ "routes": [
                { "match": { "path_exact": "/health" }, "destination": "users" },
                { "split": [ { "destination": "orders", "weight": 1 }, { "destination": "ghost", "weight": 1 } ] },
                { "destination": "phantom" } ] }"#,
        ))
        .unwrap();
        let known = |service: &str| matches!(service, "users" | "orders");
        let errors = validate_references("routes/users", &doc, &known);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["routes[1].split[1].destination", "routes[2].destination"]
        );
        assert_eq!(
            errors[0].reason,
            "unknown destination `ghost` (not in the catalog and no destinations/ghost document)"
        );
        assert!(validate_references("routes/users", &doc, &|_| true).is_empty());
    }

    #[test]
    fn destination_and_policy_documents_reference_nothing() {
        let doc = parse_document(&raw("destinations/ghost", "{}")).unwrap();
        assert!(validate_references("destinations/ghost", &doc, &|_| false).is_empty());
    }

    #[test]
    fn an_empty_policy_document_sets_nothing_and_unknown_fields_are_rejected() {
        assert_eq!(
            parse_document(&raw("policies/users", "{}")).unwrap(),
            Document::Policy(PolicyDocument::default())
        );
        let errors = parse_document(&raw("policies/users", r#"{ "allow": ["web"] }"#)).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "allow");
        assert!(errors[0].reason.contains("unknown field"), "{}", errors[0]);
    }

    #[test]
    fn gateways_and_certificates_are_keyed_by_name() {
        assert_eq!(
            DocumentKey::parse("gateways/edge").unwrap(),
            DocumentKey::Gateway {
                name: "edge".into()
            }
        );
        assert_eq!(
            DocumentKey::parse("certificates/api-example-com")
                .unwrap()
                .to_string(),
            "certificates/api-example-com"
        );
        let error = DocumentKey::parse("gateways/edge gateway").unwrap_err();
        assert!(error.reason.contains("not a valid service name"), "{error}");
    }

    #[test]
    fn a_gateway_naming_a_missing_or_refused_certificate_document_is_refused_on_that_field() {
        let gateway = raw(
            "gateways/edge",
            r#"{ "listeners": [ { "name": "public", "port": 8443, "protocol": "https",
                "hosts": ["api.example.com"], "certificates": [ { "kv": "api" }, { "kv": "old" }, { "kv": "ghost" } ] } ] }"#,
        );
        let references = certificate_references(&gateway);
        let status = |name: &str| match name {
            "api" => CertificateStatus::Good,
            "old" => CertificateStatus::Refused,
            _ => CertificateStatus::Missing,
        };
        let errors: Vec<String> =
            validate_certificate_references("gateways/edge", &references, &status)
                .iter()
                .map(ToString::to_string)
                .collect();
        assert_eq!(
            errors,
            [
                "gateways/edge: listeners[0].certificates[1].kv: certificates/old was refused (see its own errors): fix it, or name another certificate",
                "gateways/edge: listeners[0].certificates[2].kv: no certificates/ghost document: write it (`chain_pem`, `private_key_pem`), or name another certificate",
            ]
        );
        assert!(
            certificate_references(&raw("routes/edge", r#"{ "routes": [] }"#)).is_empty(),
            "only gateways name certificates"
        );
    }

    #[test]
    fn defaults_is_a_key_of_its_own() {
        assert_eq!(
            DocumentKey::parse("defaults").unwrap(),
            DocumentKey::Defaults
        );
        assert_eq!(DocumentKey::Defaults.to_string(), "defaults");
        assert_eq!(DocumentKind::from_folder("defaults"), None);
        let error = DocumentKey::parse("defaults/users").unwrap_err();
        assert!(error.reason.contains("unknown document folder"), "{error}");
        assert_eq!(
            parse_document(&raw("defaults", r#"{ "default": "deny" }"#)).unwrap(),
            Document::Defaults(DefaultsDocument {
                default_action: Some(Action::Deny),
                mtls: None,
            })
        );
        let errors = parse_document(&raw("defaults", r#"{ "default": "block" }"#)).unwrap_err();
        assert_eq!(
            (errors[0].key.as_str(), errors[0].field.as_str()),
            ("defaults", "default")
        );
    }
}
