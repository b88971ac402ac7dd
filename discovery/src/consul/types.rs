//! Consul's JSON bodies as typed structs, with the fields a Consul 1.8.7 agent
//! actually returns (checked against one). Consul omits or nulls many fields
//! depending on version and registration, so nearly everything is optional or
//! defaulted: a field we do not model is ignored, never an error.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What kind of service a catalog entry is. Consul sends `Kind` as a string,
/// absent or empty for an ordinary ("typical") service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// An application instance.
    #[default]
    Typical,
    /// A Connect sidecar (or standalone) proxy: `connect-proxy`.
    ConnectProxy,
    MeshGateway,
    TerminatingGateway,
    IngressGateway,
    /// A kind this client does not know (newer Consul).
    Other(String),
}

impl ServiceKind {
    pub fn as_str(&self) -> &str {
        match self {
            ServiceKind::Typical => "",
            ServiceKind::ConnectProxy => "connect-proxy",
            ServiceKind::MeshGateway => "mesh-gateway",
            ServiceKind::TerminatingGateway => "terminating-gateway",
            ServiceKind::IngressGateway => "ingress-gateway",
            ServiceKind::Other(kind) => kind,
        }
    }
}

impl From<String> for ServiceKind {
    fn from(kind: String) -> Self {
        match kind.as_str() {
            "" => ServiceKind::Typical,
            "connect-proxy" => ServiceKind::ConnectProxy,
            "mesh-gateway" => ServiceKind::MeshGateway,
            "terminating-gateway" => ServiceKind::TerminatingGateway,
            "ingress-gateway" => ServiceKind::IngressGateway,
            _ => ServiceKind::Other(kind),
        }
    }
}

impl<'de> Deserialize<'de> for ServiceKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?
            .map(ServiceKind::from)
            .unwrap_or_default())
    }
}

impl Serialize for ServiceKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One instance of a service with its node and checks
/// (`/v1/health/service/<s>`, `/v1/health/connect/<s>`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: Node,
    pub service: AgentService,
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The address to reach this instance at: the service's own address,
    /// or its node's when the service registered none (Consul's rule).
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }

    /// True when every check (node and service) is passing. An instance
    /// with no checks at all counts as passing, as in Consul.
    pub fn is_passing(&self) -> bool {
        self.checks
            .iter()
            .all(|check| check.status == CheckStatus::Passing)
    }
}

/// A catalog node.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    /// The node's name.
    pub node: String,
    pub address: String,
    pub datacenter: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service instance as the health and agent endpoints return it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    pub kind: ServiceKind,
    #[serde(rename = "ID")]
    pub id: String,
    /// The service's name.
    pub service: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Empty when the service uses its node's address.
    pub address: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub weights: Option<Weights>,
    pub enable_tag_override: bool,
    /// Set on `connect-proxy` services (Consul sends an empty object on others).
    pub proxy: Option<ProxyConfig>,
    pub connect: Option<ServiceConnect>,
    pub namespace: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One of a service's tagged addresses (`lan_ipv4`, `wan`...).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// DNS / load-balancing weights of an instance by health state.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

/// The proxy half of a `connect-proxy` service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProxyConfig {
    /// The service this proxy fronts (empty on non-proxies).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_service_name: String,
    #[serde(
        rename = "DestinationServiceID",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_service_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_service_address: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub local_service_port: u16,
    /// Opaque proxy configuration (Envoy's, or ours later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub upstreams: Vec<Upstream>,
}

/// An upstream a proxy is configured to reach.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Upstream {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_type: String,
    pub destination_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub datacenter: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_bind_address: String,
    pub local_bind_port: u16,
}

/// The `Connect` block of a service as Consul returns it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceConnect {
    /// A Connect-native service speaks mTLS itself, with no proxy.
    pub native: bool,
}

/// A check's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
    /// Node or service maintenance mode.
    Maintenance,
    Other(String),
}

impl<'de> Deserialize<'de> for CheckStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let status = String::deserialize(deserializer)?;
        Ok(match status.as_str() {
            "passing" => CheckStatus::Passing,
            "warning" => CheckStatus::Warning,
            "critical" => CheckStatus::Critical,
            "maintenance" => CheckStatus::Maintenance,
            _ => CheckStatus::Other(status),
        })
    }
}

/// One health check of a node or service instance.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub name: String,
    pub status: CheckStatus,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub output: String,
    /// Empty for node-level checks (e.g. `serfHealth`).
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    /// `ttl`, `http`, `tcp`, `alias`... (empty for `serfHealth`).
    #[serde(rename = "Type", default)]
    pub check_type: String,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// The part of a check that a datacenter-wide watch needs: whose it is and
/// its status. Decoding skips the rest of Consul's answer (name, notes,
/// output, definition, tags), which is most of its bytes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckSummary {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub status: CheckStatus,
    /// Empty for node-level checks (e.g. `serfHealth`).
    #[serde(default)]
    pub service_name: String,
}

/// One KV entry, its value already decoded from Consul's base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    /// Empty for a folder key (`a/b/`) or a key stored with no value.
    pub value: Bytes,
    pub flags: u64,
    pub create_index: u64,
    /// Pass to [`ConsulClient::kv_cas`](super::ConsulClient::kv_cas) to update
    /// only if nobody wrote since.
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

/// A KV entry as Consul sends it (value in base64, or null).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKvPair {
    pub key: String,
    pub value: Option<String>,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub lock_index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

/// A service registration for `/v1/agent/service/register`. Empty fields are
/// left out so Consul applies its own defaults.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    #[serde(skip_serializing_if = "is_typical")]
    pub kind: ServiceKind,
    /// Instance id; Consul uses `name` when empty.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Service name (may be empty for a `sidecar_service`: Consul names it
    /// `<name>-sidecar-proxy`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub port: u16,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Checks to register with the service. `None` and an empty list both
    /// mean Consul's defaults: none for an app, and for a `sidecar_service`
    /// a TCP "listening" check plus an alias of its app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckRegistration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRegistration>,
}

/// The `Connect` block of a registration: `connect.sidecar_service` in
/// Consul's config-file syntax.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectRegistration {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub native: bool,
    /// Registers a `connect-proxy` service beside the app. Consul fills its
    /// name (`<name>-sidecar-proxy`), id, proxy destination and default
    /// checks; an empty registration (`Default`) is enough, plus a port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar_service: Option<Box<ServiceRegistration>>,
}

/// A check to register with a service.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRegistration {
    #[serde(rename = "CheckID", skip_serializing_if = "String::is_empty")]
    pub check_id: String,
    pub name: String,
    /// A TTL check: critical unless passed (`agent_check_pass`) within this.
    #[serde(
        rename = "TTL",
        with = "go_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// An HTTP check URL.
    #[serde(rename = "HTTP", skip_serializing_if = "String::is_empty")]
    pub http: String,
    /// A TCP check `host:port`.
    #[serde(rename = "TCP", skip_serializing_if = "String::is_empty")]
    pub tcp: String,
    /// Service id this check aliases.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alias_service: String,
    #[serde(with = "go_duration", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(with = "go_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Initial status (`passing`, `warning`, `critical`); Consul's default is critical.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(with = "go_duration", skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<Duration>,
}

/// The Connect CA's roots (`/v1/agent/connect/ca/roots`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoots {
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// `<cluster-uuid>.consul`: the SPIFFE trust domain.
    pub trust_domain: String,
    #[serde(deserialize_with = "null_as_default")]
    pub roots: Vec<CaRoot>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoot {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub serial_number: u64,
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    pub external_trust_domain: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    /// PEM.
    pub root_cert: String,
    #[serde(deserialize_with = "null_as_default")]
    pub intermediate_certs: Vec<String>,
    pub active: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service's leaf certificate (`/v1/agent/connect/ca/leaf/<s>`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeafCert {
    pub serial_number: String,
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: String,
    pub service: String,
    /// The SPIFFE id in the certificate's URI SAN.
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    /// RFC 3339.
    pub valid_after: String,
    pub valid_before: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// An intention (Consul 1.8's ID-based API, `/v1/connect/intentions`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Intention {
    /// Assigned by Consul on create; leave empty when creating.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub source_name: String,
    pub destination_name: String,
    /// The namespaces (Consul Enterprise); OSS sends `default`. Empty on
    /// create means the default namespace.
    #[serde(rename = "SourceNS", skip_serializing_if = "String::is_empty")]
    pub source_ns: String,
    #[serde(rename = "DestinationNS", skip_serializing_if = "String::is_empty")]
    pub destination_ns: String,
    /// `consul` for service sources.
    pub source_type: String,
    /// `allow` or `deny`.
    pub action: String,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing)]
    pub precedence: u32,
    #[serde(skip_serializing)]
    pub create_index: u64,
    #[serde(skip_serializing)]
    pub modify_index: u64,
}

/// A config entry (`service-defaults`, `proxy-defaults`, `service-router`...).
/// Their shapes differ by kind, so only `Kind` and `Name` are typed; the rest
/// is kept as JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ConfigEntry {
    #[serde(rename = "Kind")]
    pub kind: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// Every other field, e.g. `Protocol` of a `service-defaults`.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Consul sends `null` for empty lists and maps in many places.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

fn is_typical(kind: &ServiceKind) -> bool {
    *kind == ServiceKind::Typical
}

/// Durations in Consul's (Go's) syntax, sent as whole milliseconds (`1500ms`).
mod go_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => serializer.serialize_str(&format!("{}ms", duration.as_millis())),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of `/v1/health/connect/web` from a real Consul 1.8.7 dev agent.
    const CONNECT_ENTRY: &str = r#"{
        "Node": {"ID": "cac44798", "Node": "vm", "Address": "127.0.0.1", "Datacenter": "dc1",
                 "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                 "Meta": {"consul-network-segment": ""}, "CreateIndex": 10, "ModifyIndex": 12},
        "Service": {"Kind": "connect-proxy", "ID": "web-1-sidecar-proxy", "Service": "web-sidecar-proxy",
                 "Tags": [], "Address": "10.0.0.5",
                 "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.5", "Port": 21000}},
                 "Meta": {"v": "1"}, "Port": 21000, "Weights": {"Passing": 1, "Warning": 1},
                 "EnableTagOverride": false,
                 "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web-1",
                           "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080,
                           "MeshGateway": {}, "Expose": {}},
                 "Connect": {}, "CreateIndex": 14, "ModifyIndex": 14},
        "Checks": [
            {"Node": "vm", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
             "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "",
             "ServiceTags": [], "Type": "", "Definition": {}, "CreateIndex": 10, "ModifyIndex": 10},
            {"Node": "vm", "CheckID": "service:web-1-sidecar-proxy:1", "Name": "Connect Sidecar Listening",
             "Status": "critical", "Notes": "", "Output": "", "ServiceID": "web-1-sidecar-proxy",
             "ServiceName": "web-sidecar-proxy", "ServiceTags": [], "Type": "tcp", "Definition": {},
             "CreateIndex": 14, "ModifyIndex": 14}]
    }"#;

    #[test]
    fn a_real_connect_entry_decodes() {
        let entry: ServiceEntry = match serde_json::from_str(CONNECT_ENTRY) {
            Ok(entry) => entry,
            Err(error) => panic!("a 1.8.7 answer must decode: {error}"),
        };
        assert_eq!(entry.service.kind, ServiceKind::ConnectProxy);
        assert_eq!(entry.address(), "10.0.0.5");
        assert_eq!(entry.service.port, 21000);
        let proxy = entry.service.proxy.clone().unwrap_or_default();
        assert_eq!(proxy.destination_service_name, "web");
        assert_eq!(proxy.destination_service_id, "web-1");
        assert_eq!(entry.checks[1].status, CheckStatus::Critical);
        assert!(!entry.is_passing());
    }

    #[test]
    fn nulls_and_missing_fields_take_defaults() {
        let entry: Result<ServiceEntry, _> = serde_json::from_str(
            r#"{"Node": {"Node": "n", "Address": "10.1.1.1", "TaggedAddresses": null},
                "Service": {"ID": "a", "Service": "a", "Meta": null, "Tags": null, "Port": 80},
                "Checks": null}"#,
        );
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => panic!("nulls must decode: {error}"),
        };
        assert_eq!(entry.service.kind, ServiceKind::Typical);
        assert_eq!(entry.address(), "10.1.1.1");
        assert!(entry.is_passing(), "no checks counts as passing");
    }

    #[test]
    fn a_sidecar_registration_serializes_in_consuls_shape() {
        let registration = ServiceRegistration {
            id: "web-1".into(),
            name: "web".into(),
            port: 8080,
            checks: Some(vec![CheckRegistration {
                name: "ttl".into(),
                ttl: Some(Duration::from_secs(30)),
                ..CheckRegistration::default()
            }]),
            connect: Some(ConnectRegistration {
                sidecar_service: Some(Box::new(ServiceRegistration {
                    port: 21000,
                    ..ServiceRegistration::default()
                })),
                ..ConnectRegistration::default()
            }),
            ..ServiceRegistration::default()
        };
        let json = serde_json::to_value(&registration).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "ID": "web-1", "Name": "web", "Port": 8080,
                "Checks": [{"Name": "ttl", "TTL": "30000ms"}],
                "Connect": {"SidecarService": {"Port": 21000}}
            })
        );
    }
}
