//! Builds a [`Snapshot`] from the mesh state: validates documents (keeping
//! the last good version of each), adds the default route of every service
//! without a route document, turns catalog endpoints into assignments, and
//! merges policy documents and Consul's intentions into inbound policies,
//! and serves each gateway document as a `Gateway` with its certificate
//! documents inlined.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use weft_certs::TrustDomain;
use weft_proto::config::v1::{self as config, ClusterLoadAssignment, endpoint};
use weft_proto::type_url;

use super::{Assembly, Changes, Resource, Snapshot, policy};
use crate::documents::{
    self, ANY_SERVICE, CertificateStatus, Document, DocumentKey, DocumentKind, FieldError,
    PolicyDocument,
};
use crate::identity::ServiceIdentities;
use crate::model::{Endpoint, Health, MeshState};

/// A document whose latest version was rejected, with every reason.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RejectedDocument {
    pub key: String,
    pub origin: String,
    pub errors: Vec<FieldError>,
    /// What is served instead: "last good version" or "none".
    pub serving: &'static str,
}

/// A document as last evaluated: the bytes seen and the verdict.
struct Evaluated {
    value: Bytes,
    verdict: Result<(), RejectedDocument>,
    /// The certificate documents it names (a gateway's `kv`), each with the
    /// bytes of its good version when this one was judged (None: missing or
    /// refused). A change of any is a reason to judge it again.
    certificates: Vec<(String, Option<Bytes>)>,
}

/// Keeps what must outlive one build: the last good version of every
/// document, and which versions were already judged (so an unchanged document
/// is not parsed again and a rejection is counted once).
#[derive(Default)]
pub struct SnapshotBuilder {
    last_good: BTreeMap<String, (Bytes, Document)>,
    evaluated: BTreeMap<String, Evaluated>,
    /// The last good version of each gateway document, by gateway name,
    /// with its certificate documents inlined as they were when it was
    /// judged: a certificate document deleted or refused later refuses
    /// the gateway's document, and this keeps serving.
    gateways: BTreeMap<String, config::Gateway>,
    /// How service identities are named when the mesh has mTLS: every
    /// Cluster then names the SPIFFE ID its destination must present.
    identities: Option<ServiceIdentities>,
    /// The previous build's resources: a message that encodes to the same
    /// bytes keeps its `Arc<Resource>` (no hash, no copy), and the names
    /// that did not are the build's changes.
    previous: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    /// The previous build's generation (0 before the first build).
    generation: u64,
    /// The changes of the last builds, shared by the snapshots.
    history: VecDeque<Arc<Changes>>,
    /// Each service's endpoints as of the last build: an assignment whose
    /// endpoints are the same is kept as it was, not built and encoded
    /// again (they are most of a large mesh's bytes).
    assignment_inputs: BTreeMap<String, Vec<Endpoint>>,
    /// Catalog services whose names cannot be hosts, as of the last build
    /// (each is warned about once).
    unroutable: BTreeSet<String>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder whose Clusters carry `identity =
    /// spiffe://<trust_domain>/ns/default/svc/<cluster name>`.
    pub fn with_trust_domain(trust_domain: TrustDomain) -> Self {
        Self::with_identities(ServiceIdentities::Weft(trust_domain))
    }

    /// A builder whose Clusters carry the identities `identities` names
    /// (the agent's CA or Consul's).
    pub fn with_identities(identities: ServiceIdentities) -> Self {
        Self {
            identities: Some(identities),
            ..Self::default()
        }
    }

    /// Builds the snapshot for `state`. Returns it with the rejections that
    /// are new since the previous build (to be logged and counted once).
    pub fn build(&mut self, state: &MeshState) -> (Snapshot, Vec<RejectedDocument>) {
        let newly_rejected = self.evaluate_documents(state);

        let mut routes: BTreeMap<String, config::RouteConfiguration> = BTreeMap::new();
        let mut destinations: BTreeMap<String, config::Cluster> = BTreeMap::new();
        let mut policy_documents: BTreeMap<String, &PolicyDocument> = BTreeMap::new();
        let mut defaults = None;
        let mut unroutable = BTreeSet::new();
        for service in state.services.keys() {
            if !documents::is_valid_name(service) {
                unroutable.insert(service.clone());
                continue;
            }
            routes.insert(
                service.clone(),
                documents::default_route_configuration(service),
            );
            destinations.insert(service.clone(), documents::default_cluster(service));
        }
        for (key, (_, document)) in &self.last_good {
            match (DocumentKey::parse(key), document) {
                (Ok(DocumentKey::Route { host }), Document::Route(route)) => {
                    for destination in route.destinations() {
                        destinations
                            .entry(destination.clone())
                            .or_insert_with(|| documents::default_cluster(&destination));
                    }
                    routes.insert(host.clone(), route.to_route_configuration(&host));
                }
                (Ok(DocumentKey::Destination { service }), Document::Destination(policy)) => {
                    destinations.insert(service.clone(), policy.to_cluster(&service));
                }
                (Ok(DocumentKey::Policy { service }), Document::Policy(policy)) => {
                    policy_documents.insert(service, policy);
                }
                (Ok(DocumentKey::Defaults), Document::Defaults(mesh_defaults)) => {
                    defaults = Some(mesh_defaults);
                }
                _ => {}
            }
        }

        // Services whose destination document says `protocol: tcp`: their
        // sidecars accept CONNECT tunnels (InboundPolicy.opaque_tcp).
        let opaque_tcp: BTreeSet<String> = destinations
            .values()
            .filter(|cluster| cluster.protocol() == config::cluster::Protocol::Tcp)
            .map(|cluster| cluster.name.clone())
            .collect();
        // What each service's own sidecars speak to their app
        // (InboundPolicy.app_protocol): its destination document's protocol.
        let app_protocols: BTreeMap<String, i32> = destinations
            .values()
            .map(|cluster| (cluster.name.clone(), cluster.protocol))
            .collect();
        for service in unroutable.difference(&self.unroutable) {
            tracing::warn!(
                service = %service.escape_debug(),
                "a catalog service's name is not a host name (letters, digits, `.`, `_`, `-`); it gets no route table, so no sidecar routes to it"
            );
        }
        self.unroutable = unroutable;
        let previous = std::mem::take(&mut self.previous);
        let mut snapshot = Assembly::new(&previous);
        for (host, route) in routes {
            snapshot.insert(type_url::ROUTE_CONFIGURATION, host, &route);
        }
        for (name, mut cluster) in destinations {
            cluster.identity = self.identity_of(&name);
            let input = state.services.get(&name);
            let unchanged = self.assignment_inputs.get(&name).map(Vec::as_slice)
                == Some(input.map(Vec::as_slice).unwrap_or_default());
            if !(unchanged && snapshot.keep(type_url::CLUSTER_LOAD_ASSIGNMENT, &name)) {
                let assignment = ClusterLoadAssignment {
                    cluster_name: name.clone(),
                    endpoints: input
                        .map(|endpoints| endpoints.iter().map(to_proto_endpoint).collect())
                        .unwrap_or_default(),
                };
                snapshot.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, name.clone(), &assignment);
                self.assignment_inputs
                    .insert(name.clone(), input.cloned().unwrap_or_default());
            }
            snapshot.insert(type_url::CLUSTER, name, &cluster);
        }
        // A policy for every service that is known, has a policy document,
        // or is the exact destination of an intention (its sidecar may
        // start before it registers); any other name gets the policy of a
        // service without a document, built once here.
        let protected: BTreeSet<&str> = state
            .services
            .keys()
            .map(String::as_str)
            .chain(policy_documents.keys().map(String::as_str))
            .chain(opaque_tcp.iter().map(String::as_str))
            .chain(state.upstreams.keys().map(String::as_str))
            .chain(
                state
                    .intentions
                    .iter()
                    .map(|intention| intention.destination.as_str())
                    .filter(|destination| *destination != ANY_SERVICE),
            )
            .collect();
        for service in protected {
            let document = policy_documents.get(service).copied();
            let mut inbound =
                policy::inbound_policy(service, document, defaults, &state.intentions);
            inbound.opaque_tcp = opaque_tcp.contains(service);
            inbound.app_protocol = app_protocols.get(service).copied().unwrap_or_default();
            // Its sidecars hold these from the start instead of on their
            // first call (a BTreeSet: sorted, so the version is stable).
            inbound.upstreams = state
                .upstreams
                .get(service)
                .map(|names| names.iter().cloned().collect())
                .unwrap_or_default();
            snapshot.insert(type_url::INBOUND_POLICY, service.to_string(), &inbound);
        }
        for (name, gateway) in &self.gateways {
            snapshot.insert(type_url::GATEWAY, name.clone(), gateway);
        }
        if let Some(roots) = &state.trust_roots {
            let bundle = config::TrustBundle {
                trust_domain: roots.trust_domain.clone(),
                roots_pem: roots.roots_pem.clone(),
            };
            snapshot.insert(type_url::TRUST_BUNDLE, roots.trust_domain.clone(), &bundle);
        }
        // Forget the inputs of assignments no longer built.
        self.assignment_inputs
            .retain(|name, _| snapshot.has(type_url::CLUSTER_LOAD_ASSIGNMENT, name));
        self.generation += 1;
        let (mut snapshot, resources) = snapshot.finish(self.generation, &mut self.history);
        self.previous = resources;
        snapshot.unknown_service_policy = Some(policy::inbound_policy(
            "",
            None,
            defaults,
            &state.intentions,
        ));
        snapshot.rejected = self
            .evaluated
            .values()
            .filter_map(|evaluated| evaluated.verdict.clone().err())
            .collect();
        (snapshot, newly_rejected)
    }

    /// The SPIFFE ID a destination's sidecars must present; empty (plaintext)
    /// without a trust domain. A name that is no valid SPIFFE path segment
    /// stays empty too: no sidecar can get a certificate for it either.
    fn identity_of(&self, cluster: &str) -> String {
        self.identities
            .as_ref()
            .and_then(|identities| identities.of(cluster))
            .map(|identity| identity.to_string())
            .unwrap_or_default()
    }

    /// Judges every document that changed since the last build.
    fn evaluate_documents(&mut self, state: &MeshState) -> Vec<RejectedDocument> {
        // A deleted document stops serving: its last good version goes too.
        self.last_good
            .retain(|key, _| state.documents.contains_key(key));
        self.evaluated
            .retain(|key, _| state.documents.contains_key(key));
        self.gateways.retain(|name, _| {
            state
                .documents
                .contains_key(&format!("{}/{name}", DocumentKind::Gateway.folder()))
        });

        // Destinations a route may name: catalog services and destination
        // documents (a route may be written before its service registers, if
        // the operator also writes its destination policy).
        let known: BTreeSet<&str> = state
            .services
            .keys()
            .map(String::as_str)
            .chain(
                state
                    .documents
                    .keys()
                    .filter_map(|key| key.strip_prefix("destinations/")),
            )
            .collect();

        let mut newly_rejected = Vec::new();
        // Gateways last: their verdict depends on this build's verdicts of
        // the certificate documents they name.
        let is_gateway = |key: &str| {
            key.split_once('/').is_some_and(|(folder, _)| {
                DocumentKind::from_folder(folder) == Some(DocumentKind::Gateway)
            })
        };
        let in_order = state
            .documents
            .iter()
            .filter(|(key, _)| !is_gateway(key))
            .chain(state.documents.iter().filter(|(key, _)| is_gateway(key)));
        for (key, raw) in in_order {
            if let Some(evaluated) = self.evaluated.get(key) {
                let same = evaluated.value == raw.value
                    && evaluated
                        .certificates
                        .iter()
                        .all(|(name, seen)| self.good_certificate(name) == seen.as_ref());
                // Judged already; a good document stays good when services
                // come and go (a vanished destination then answers 503).
                if same && evaluated.verdict.is_ok() {
                    continue;
                }
                // A rejected one is judged again: its destination may have appeared.
                if same && !depends_on_catalog(key) {
                    continue;
                }
            }
            let references = documents::certificate_references(raw);
            let status = |name: &str| match self.good_certificate(name) {
                Some(_) => CertificateStatus::Good,
                None if state.documents.contains_key(&certificate_key(name)) => {
                    CertificateStatus::Refused
                }
                None => CertificateStatus::Missing,
            };
            let certificate_errors =
                documents::validate_certificate_references(key, &references, &status);
            let verdict = match documents::parse_document(raw) {
                Ok(document) => {
                    let mut errors = documents::validate_references(key, &document, &|name| {
                        known.contains(name)
                    });
                    errors.extend(certificate_errors);
                    if errors.is_empty() {
                        Ok(document)
                    } else {
                        Err(errors)
                    }
                }
                Err(mut errors) => {
                    errors.extend(certificate_errors);
                    Err(errors)
                }
            };
            let certificates: Vec<(String, Option<Bytes>)> = references
                .into_iter()
                .map(|(_, name)| {
                    let seen = self.good_certificate(&name).cloned();
                    (name, seen)
                })
                .collect();
            // The errors this same version got last time, if any: a
            // rejection is logged and counted once per version, not per build.
            let previous_errors = self
                .evaluated
                .get(key)
                .filter(|evaluated| evaluated.value == raw.value)
                .and_then(|evaluated| evaluated.verdict.as_ref().err())
                .map(|rejected| rejected.errors.clone());
            let verdict = match verdict {
                Ok(document) => {
                    if let (Ok(DocumentKey::Gateway { name }), Document::Gateway(gateway)) =
                        (DocumentKey::parse(key), &document)
                    {
                        let resolved = self.resolve_gateway(&name, gateway);
                        self.gateways.insert(name, resolved);
                    }
                    self.last_good
                        .insert(key.clone(), (raw.value.clone(), document));
                    Ok(())
                }
                Err(errors) => {
                    let rejected = RejectedDocument {
                        key: key.clone(),
                        origin: raw.origin.clone(),
                        errors,
                        serving: if self.last_good.contains_key(key) {
                            "last good version"
                        } else {
                            "none"
                        },
                    };
                    if previous_errors.as_ref() != Some(&rejected.errors) {
                        newly_rejected.push(rejected.clone());
                    }
                    Err(rejected)
                }
            };
            self.evaluated.insert(
                key.clone(),
                Evaluated {
                    value: raw.value.clone(),
                    verdict,
                    certificates,
                },
            );
        }
        newly_rejected
    }

    /// The bytes of the certificate document `name` if its latest version
    /// is good (as judged in this build: certificates are judged before the
    /// gateways that name them).
    fn good_certificate(&self, name: &str) -> Option<&Bytes> {
        self.evaluated
            .get(&certificate_key(name))
            .filter(|evaluated| evaluated.verdict.is_ok())
            .map(|evaluated| &evaluated.value)
    }

    /// The `Gateway` of a good gateway document, with the good certificate
    /// documents it names inlined.
    fn resolve_gateway(&self, name: &str, gateway: &documents::GatewayDocument) -> config::Gateway {
        let certificates = gateway
            .certificate_names()
            .into_iter()
            .filter_map(
                |certificate| match self.last_good.get(&certificate_key(certificate)) {
                    Some((_, Document::Certificate(document))) => Some((certificate, document)),
                    _ => None,
                },
            )
            .collect();
        gateway.to_gateway(name, &certificates)
    }
}

fn certificate_key(name: &str) -> String {
    format!("{}/{name}", DocumentKind::Certificate.folder())
}

/// Whether judging a rejected document again could change its verdict when
/// the catalog changes: only route documents depend on it. (A gateway
/// depends on certificate documents, which `Evaluated::certificates` tracks.)
fn depends_on_catalog(key: &str) -> bool {
    key.starts_with("routes/")
}

fn to_proto_endpoint(endpoint: &Endpoint) -> config::Endpoint {
    config::Endpoint {
        address: endpoint.address.clone(),
        port: u32::from(endpoint.port),
        health: match endpoint.health {
            Health::Healthy => endpoint::Health::Healthy,
            Health::Unhealthy => endpoint::Health::Unhealthy,
        } as i32,
        weight: endpoint.weight.max(1),
        locality: (!endpoint.region.is_empty() || !endpoint.zone.is_empty()).then(|| {
            config::Locality {
                region: endpoint.region.clone(),
                zone: endpoint.zone.clone(),
            }
        }),
        meshed: endpoint.meshed,
        instance_id: endpoint.instance_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::model::{Intention, IntentionAction};
    use crate::snapshot::Subscription;

    fn cluster_identities(builder: &mut SnapshotBuilder) -> Vec<(String, String)> {
        let mut state = MeshState::default();
        state.services.insert("users".into(), Vec::new());
        state.services.insert("orders".into(), Vec::new());
        let (snapshot, _) = builder.build(&state);
        snapshot
            .resources(type_url::CLUSTER)
            .into_iter()
            .flatten()
            .map(|(name, resource)| {
                let cluster =
                    config::Cluster::decode(resource.any.value.as_ref()).unwrap_or_default();
                (name.clone(), cluster.identity)
            })
            .collect()
    }

    #[test]
    fn a_catalog_service_whose_name_is_not_a_host_gets_no_route_table_and_the_others_keep_theirs() {
        let mut state = MeshState::default();
        for name in ["c", "<b id=\"injected\">", "two words", "a/b", "users"] {
            state.services.insert(name.into(), Vec::new());
        }
        let (snapshot, _) = SnapshotBuilder::new().build(&state);
        let hosts: Vec<&String> = snapshot
            .resources(type_url::ROUTE_CONFIGURATION)
            .into_iter()
            .flatten()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(hosts, ["c", "users"]);
    }

    #[test]
    fn with_a_trust_domain_every_cluster_names_its_destinations_spiffe_id() {
        let trust_domain = "mesh.test"
            .parse()
            .unwrap_or_else(|error| panic!("{error}"));
        let mut builder = SnapshotBuilder::with_trust_domain(trust_domain);
        assert_eq!(
            cluster_identities(&mut builder),
            [
                (
                    "orders".into(),
                    "spiffe://mesh.test/ns/default/svc/orders".into()
                ),
                (
                    "users".into(),
                    "spiffe://mesh.test/ns/default/svc/users".into()
                ),
            ]
        );
    }

    fn raw(key: &str, json: &str) -> crate::model::RawDocument {
        crate::model::RawDocument {
            key: key.into(),
            value: Bytes::from(json.to_string()),
            origin: format!("test {key}"),
            yaml: false,
        }
    }

    fn intention(id: &str, source: &str, destination: &str, allow: bool) -> Intention {
        Intention {
            id: id.into(),
            source: source.into(),
            destination: destination.into(),
            action: if allow {
                IntentionAction::Allow
            } else {
                IntentionAction::Deny
            },
        }
    }

    /// Every served InboundPolicy by name, plus the answer for `ghost`,
    /// a name the agent knows nothing about.
    fn policies(snapshot: &Snapshot) -> BTreeMap<String, config::InboundPolicy> {
        let names = Subscription::names(
            snapshot
                .resources(type_url::INBOUND_POLICY)
                .into_iter()
                .flatten()
                .map(|(name, _)| name.clone())
                .chain(["ghost".to_string()]),
        );
        snapshot
            .select(type_url::INBOUND_POLICY, &names)
            .resources
            .iter()
            .map(|any| {
                let policy = config::InboundPolicy::decode(any.value.as_ref())
                    .unwrap_or_else(|error| panic!("{error}"));
                (policy.service.clone(), policy)
            })
            .collect()
    }

    fn sources(policy: &config::InboundPolicy) -> Vec<(&str, &str)> {
        policy
            .intentions
            .iter()
            .map(|i| (i.source.as_str(), i.origin.as_str()))
            .collect()
    }

    #[test]
    fn every_service_document_and_intention_destination_has_a_policy_and_others_get_the_default() {
        let mut state = MeshState::default();
        state.services.insert("users".into(), Vec::new());
        state.documents.insert(
            "policies/billing".into(),
            raw(
                "policies/billing",
                r#"{ "default": "deny", "intentions": [ { "source": "web", "action": "allow" } ] }"#,
            ),
        );
        state.documents.insert(
            "defaults".into(),
            raw("defaults", r#"{ "default": "deny" }"#),
        );
        state.intentions = vec![
            intention("c1", "web", "db", false),
            intention("c2", "monitor", "*", true),
        ];
        let (snapshot, rejected) = SnapshotBuilder::new().build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        let policies = policies(&snapshot);
        assert_eq!(
            policies.keys().map(String::as_str).collect::<Vec<_>>(),
            ["billing", "db", "ghost", "users"]
        );
        assert_eq!(
            sources(&policies["billing"]),
            [
                ("web", "kv:weft/policies/billing"),
                ("monitor", "consul:c2")
            ]
        );
        assert_eq!(
            sources(&policies["db"]),
            [("web", "consul:c1"), ("monitor", "consul:c2")]
        );
        for (name, policy) in &policies {
            assert_eq!(
                policy.default_action(),
                config::Action::Deny,
                "{name}: the mesh-wide default"
            );
        }
        let ghost = &policies["ghost"];
        assert_eq!(
            sources(ghost),
            [("monitor", "consul:c2")],
            "an unknown service still gets the intentions for every destination"
        );
        assert_eq!(ghost.service, "ghost");
    }

    #[test]
    fn a_tcp_destination_document_makes_its_policy_accept_tunnels() {
        let mut state = MeshState::default();
        state.services.insert("users".into(), Vec::new());
        // redis is not registered yet: its sidecar may start first.
        state.documents.insert(
            "destinations/redis".into(),
            raw("destinations/redis", r#"{ "protocol": "tcp" }"#),
        );
        let (snapshot, rejected) = SnapshotBuilder::new().build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        let policies = policies(&snapshot);
        assert!(policies["redis"].opaque_tcp);
        assert!(
            !policies["users"].opaque_tcp,
            "an HTTP service refuses tunnels"
        );
        assert!(!policies["ghost"].opaque_tcp);
    }

    #[test]
    fn a_services_own_destination_protocol_is_the_protocol_its_sidecars_speak_to_it() {
        let mut state = MeshState::default();
        state.services.insert("users".into(), Vec::new());
        state.services.insert("grpc".into(), Vec::new());
        state.documents.insert(
            "destinations/grpc".into(),
            raw("destinations/grpc", r#"{ "protocol": "http2" }"#),
        );
        let (snapshot, rejected) = SnapshotBuilder::new().build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        let policies = policies(&snapshot);
        assert_eq!(
            policies["grpc"].app_protocol(),
            config::cluster::Protocol::Http2
        );
        assert_eq!(
            policies["users"].app_protocol(),
            config::cluster::Protocol::Auto,
            "no document: auto"
        );
    }

    #[test]
    fn a_services_declared_upstreams_are_served_in_its_policy_sorted() {
        let mut state = MeshState::default();
        state.services.insert("web".into(), Vec::new());
        state.services.insert("users".into(), Vec::new());
        state.upstreams.insert(
            "web".into(),
            ["users", "orders", "billing"].map(String::from).into(),
        );
        // A sidecar registration can come before its service's instances.
        state
            .upstreams
            .insert("batch".into(), ["users".to_string()].into());
        let (snapshot, rejected) = SnapshotBuilder::new().build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        let policies = policies(&snapshot);
        assert_eq!(policies["web"].upstreams, ["billing", "orders", "users"]);
        assert_eq!(policies["batch"].upstreams, ["users"]);
        assert!(policies["users"].upstreams.is_empty());
        assert!(
            policies["ghost"].upstreams.is_empty(),
            "an unknown service preloads nothing"
        );
        // A change of upstreams is a new version of that policy only.
        let version = |snapshot: &Snapshot, name: &str| {
            snapshot
                .select(
                    type_url::INBOUND_POLICY,
                    &Subscription::names([name.to_string()]),
                )
                .version
        };
        let mut changed = state.clone();
        changed
            .upstreams
            .get_mut("web")
            .unwrap()
            .insert("audit".into());
        let (after, _) = SnapshotBuilder::new().build(&changed);
        assert_ne!(version(&snapshot, "web"), version(&after, "web"));
        assert_eq!(version(&snapshot, "users"), version(&after, "users"));
    }

    #[test]
    fn a_mesh_without_policies_allows_every_caller() {
        let mut state = MeshState::default();
        state.services.insert("users".into(), Vec::new());
        let (snapshot, _) = SnapshotBuilder::new().build(&state);
        for policy in policies(&snapshot).values() {
            assert_eq!(policy.default_action(), config::Action::Allow);
            assert!(policy.intentions.is_empty());
        }
        // Even a snapshot that was never built answers unknown names.
        let empty = Snapshot::default();
        assert_eq!(
            policies(&empty)["ghost"].default_action(),
            config::Action::Allow
        );
    }

    #[test]
    fn a_rejected_policy_or_defaults_document_keeps_its_last_good_version_serving() {
        let mut builder = SnapshotBuilder::new();
        let mut state = MeshState::default();
        state.services.insert("users".into(), Vec::new());
        let good = r#"{ "intentions": [ { "source": "web", "action": "deny" } ] }"#;
        state
            .documents
            .insert("policies/users".into(), raw("policies/users", good));
        state.documents.insert(
            "defaults".into(),
            raw("defaults", r#"{ "default": "deny" }"#),
        );
        let (first, _) = builder.build(&state);
        let version = |snapshot: &Snapshot| {
            snapshot
                .select(
                    type_url::INBOUND_POLICY,
                    &Subscription::names(["users".to_string()]),
                )
                .version
        };

        let bad = r#"{ "intentions": [ { "source": "web", "action": "deny" }, { "source": "web", "action": "allow" } ] }"#;
        state
            .documents
            .insert("policies/users".into(), raw("policies/users", bad));
        state.documents.insert(
            "defaults".into(),
            raw("defaults", r#"{ "default": "open" }"#),
        );
        let (second, rejected) = builder.build(&state);
        let rejected: Vec<_> = rejected
            .iter()
            .map(|r| (r.key.as_str(), r.errors[0].field.as_str(), r.serving))
            .collect();
        assert_eq!(
            rejected,
            [
                ("defaults", "default", "last good version"),
                (
                    "policies/users",
                    "intentions[1].source",
                    "last good version"
                ),
            ]
        );
        assert_eq!(
            version(&second),
            version(&first),
            "the same policy keeps serving, with the same version"
        );
        let users = &policies(&second)["users"];
        assert_eq!(users.default_action(), config::Action::Deny);
        assert_eq!(sources(users), [("web", "kv:weft/policies/users")]);
    }

    /// A self-signed certificate document for `host`, and its chain.
    fn certificate_document(host: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec![host.into()])
            .unwrap_or_else(|error| panic!("{error}"));
        let chain = certified.cert.pem();
        let document = serde_json::json!({
            "chain_pem": chain,
            "private_key_pem": certified.signing_key.serialize_pem(),
        });
        (document.to_string(), chain)
    }

    /// `gateways/edge`: one https listener serving `certificates/api`.
    const EDGE: &str = r#"{ "listeners": [ { "name": "public", "port": 8443, "protocol": "https",
        "hosts": ["api.example.com"], "certificates": [ { "kv": "api" } ] } ] }"#;

    /// What a gateway subscribing to `name` gets.
    fn gateways(snapshot: &Snapshot, name: &str) -> Vec<config::Gateway> {
        snapshot
            .select(type_url::GATEWAY, &Subscription::names([name.to_string()]))
            .resources
            .iter()
            .map(|any| config::Gateway::decode(any.value.as_ref()).unwrap_or_default())
            .collect()
    }

    /// The chain `gateways/edge` serves on its first listener, first certificate.
    fn served_chain(snapshot: &Snapshot) -> Option<String> {
        let gateway = gateways(snapshot, "edge").pop()?;
        match gateway.listeners[0].certificates[0].source.clone()? {
            config::tls_certificate::Source::Pem(pem) => Some(pem.chain_pem),
            config::tls_certificate::Source::Files(_) => None,
        }
    }

    fn rejections(rejected: &[RejectedDocument]) -> Vec<(&str, &str, &str)> {
        rejected
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .map(|e| (r.key.as_str(), e.field.as_str(), r.serving))
            })
            .collect()
    }

    #[test]
    fn a_gateway_document_is_served_to_its_gateway_with_its_kv_certificate_inlined() {
        let mut state = MeshState::default();
        let (api, chain) = certificate_document("api.example.com");
        state
            .documents
            .insert("certificates/api".into(), raw("certificates/api", &api));
        state
            .documents
            .insert("gateways/edge".into(), raw("gateways/edge", EDGE));
        let (snapshot, rejected) = SnapshotBuilder::new().build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        let served = gateways(&snapshot, "edge");
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].name, "edge");
        assert_eq!(served[0].listeners[0].port, 8443);
        assert_eq!(
            served[0].listeners[0].certificates[0].name,
            "certificates/api"
        );
        assert_eq!(served_chain(&snapshot), Some(chain));
        assert!(
            gateways(&snapshot, "other").is_empty(),
            "a gateway without a document gets an empty answer, not an error"
        );
        assert_eq!(
            snapshot
                .resources(type_url::GATEWAY)
                .map(|known| known.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["edge".to_string()]),
            "a certificate document is no resource of its own"
        );

        state.documents.remove("gateways/edge");
        let (snapshot, _) = SnapshotBuilder::new().build(&state);
        assert!(
            gateways(&snapshot, "edge").is_empty(),
            "deleted: not served"
        );
    }

    #[test]
    fn a_missing_kv_certificate_refuses_the_gateway_and_its_last_good_version_keeps_serving() {
        let mut builder = SnapshotBuilder::new();
        let mut state = MeshState::default();
        state
            .documents
            .insert("gateways/edge".into(), raw("gateways/edge", EDGE));
        let (snapshot, rejected) = builder.build(&state);
        assert_eq!(
            rejections(&rejected),
            [("gateways/edge", "listeners[0].certificates[0].kv", "none")]
        );
        assert!(
            rejected[0].errors[0]
                .reason
                .starts_with("no certificates/api document"),
            "{rejected:?}"
        );
        assert!(gateways(&snapshot, "edge").is_empty());

        // The certificate appears: the unchanged gateway document is judged again.
        let (api, chain) = certificate_document("api.example.com");
        state
            .documents
            .insert("certificates/api".into(), raw("certificates/api", &api));
        let (snapshot, rejected) = builder.build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(snapshot.rejected.is_empty(), "{:?}", snapshot.rejected);
        assert_eq!(served_chain(&snapshot), Some(chain.clone()));

        // It disappears: the gateway is refused, and keeps serving it.
        state.documents.remove("certificates/api");
        let (snapshot, rejected) = builder.build(&state);
        assert_eq!(
            rejections(&rejected),
            [(
                "gateways/edge",
                "listeners[0].certificates[0].kv",
                "last good version"
            )]
        );
        assert_eq!(served_chain(&snapshot), Some(chain));
        let (_, rejected) = builder.build(&state);
        assert!(rejected.is_empty(), "a rejection is reported once");
    }

    #[test]
    fn a_changed_certificate_document_rebuilds_the_gateways_naming_it() {
        let mut builder = SnapshotBuilder::new();
        let mut state = MeshState::default();
        let (first, first_chain) = certificate_document("api.example.com");
        state
            .documents
            .insert("certificates/api".into(), raw("certificates/api", &first));
        state
            .documents
            .insert("gateways/edge".into(), raw("gateways/edge", EDGE));
        let (before, _) = builder.build(&state);
        assert_eq!(served_chain(&before), Some(first_chain.clone()));

        let (second, second_chain) = certificate_document("api.example.com");
        state
            .documents
            .insert("certificates/api".into(), raw("certificates/api", &second));
        let (after, rejected) = builder.build(&state);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(served_chain(&after), Some(second_chain.clone()));
        assert_eq!(
            after
                .touched_since(type_url::GATEWAY, before.generation())
                .map(|names| names.into_iter().collect::<Vec<_>>()),
            Some(vec!["edge"]),
            "the gateway's subscribers get the new version"
        );

        // A refused version of the certificate refuses the gateway too: the
        // certificate served stays the last good one.
        state.documents.insert(
            "certificates/api".into(),
            raw(
                "certificates/api",
                r#"{ "chain_pem": "junk", "private_key_pem": "junk" }"#,
            ),
        );
        let (refused, rejected) = builder.build(&state);
        assert_eq!(
            rejections(&rejected),
            [
                ("certificates/api", "chain_pem", "last good version"),
                (
                    "gateways/edge",
                    "listeners[0].certificates[0].kv",
                    "last good version"
                ),
            ]
        );
        assert_eq!(served_chain(&refused), Some(second_chain));
    }

    #[test]
    fn the_cas_roots_are_served_as_the_trust_bundle_named_by_its_trust_domain() {
        let mut builder = SnapshotBuilder::with_trust_domain(
            "mesh.test"
                .parse()
                .unwrap_or_else(|error| panic!("{error}")),
        );
        let mut state = MeshState::default();
        let (snapshot, _) = builder.build(&state);
        assert!(
            snapshot.resources(type_url::TRUST_BUNDLE).is_none(),
            "no roots yet"
        );

        state.trust_roots = Some(crate::model::TrustRoots {
            trust_domain: "mesh.test".into(),
            roots_pem: "ROOTS".into(),
        });
        let (snapshot, _) = builder.build(&state);
        let wanted = crate::snapshot::Subscription::from_names(&["mesh.test".to_string()]);
        let selection = snapshot.select(type_url::TRUST_BUNDLE, &wanted);
        let bundles: Vec<config::TrustBundle> = selection
            .resources
            .iter()
            .map(|any| config::TrustBundle::decode(any.value.as_ref()).unwrap_or_default())
            .collect();
        assert_eq!(
            bundles,
            [config::TrustBundle {
                trust_domain: "mesh.test".into(),
                roots_pem: "ROOTS".into()
            }]
        );
    }

    #[test]
    fn with_consul_identities_clusters_name_consuls_form() {
        let mut builder = SnapshotBuilder::with_identities(ServiceIdentities::Consul {
            trust_domain: "abc.consul"
                .parse()
                .unwrap_or_else(|error| panic!("{error}")),
            datacenter: "dc1".into(),
        });
        assert_eq!(
            cluster_identities(&mut builder)[1],
            (
                "users".into(),
                "spiffe://abc.consul/ns/default/dc/dc1/svc/users".into()
            )
        );
    }

    #[test]
    fn without_a_trust_domain_clusters_carry_no_identity() {
        let mut builder = SnapshotBuilder::new();
        assert!(
            cluster_identities(&mut builder)
                .iter()
                .all(|(_, identity)| identity.is_empty())
        );
    }
}
