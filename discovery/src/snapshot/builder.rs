//! Builds a [`Snapshot`] from the mesh state: validates documents (keeping
//! the last good version of each), adds the default route of every service
//! without a route document, and turns catalog endpoints into assignments.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use weft_certs::{SpiffeId, TrustDomain};
use weft_proto::config::v1::{self as config, ClusterLoadAssignment, endpoint};
use weft_proto::type_url;

use super::{Resource, Snapshot};
use crate::documents::{self, Document, DocumentKey, FieldError};
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
}

/// Keeps what must outlive one build: the last good version of every
/// document, and which versions were already judged (so an unchanged document
/// is not parsed again and a rejection is counted once).
#[derive(Default)]
pub struct SnapshotBuilder {
    last_good: BTreeMap<String, (Bytes, Document)>,
    evaluated: BTreeMap<String, Evaluated>,
    /// The mesh's trust domain when the agent issues certificates: every
    /// Cluster then names the SPIFFE ID its destination must present.
    trust_domain: Option<TrustDomain>,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder whose Clusters carry `identity =
    /// spiffe://<trust_domain>/ns/default/svc/<cluster name>`.
    pub fn with_trust_domain(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain: Some(trust_domain),
            ..Self::default()
        }
    }

    /// Builds the snapshot for `state`. Returns it with the rejections that
    /// are new since the previous build (to be logged and counted once).
    pub fn build(&mut self, state: &MeshState) -> (Snapshot, Vec<RejectedDocument>) {
        let newly_rejected = self.evaluate_documents(state);

        let mut routes: BTreeMap<String, config::RouteConfiguration> = BTreeMap::new();
        let mut destinations: BTreeMap<String, config::Cluster> = BTreeMap::new();
        for service in state.services.keys() {
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
                // Inbound policies carry nothing the sidecar consumes yet.
                _ => {}
            }
        }

        let mut snapshot = Snapshot::default();
        for (host, route) in routes {
            snapshot.insert(type_url::ROUTE_CONFIGURATION, Resource::new(host, &route));
        }
        for (name, mut cluster) in destinations {
            cluster.identity = self.identity_of(&name);
            let endpoints = state
                .services
                .get(&name)
                .map(|endpoints| endpoints.iter().map(to_proto_endpoint).collect())
                .unwrap_or_default();
            let assignment = ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints,
            };
            snapshot.insert(
                type_url::CLUSTER_LOAD_ASSIGNMENT,
                Resource::new(name.clone(), &assignment),
            );
            snapshot.insert(type_url::CLUSTER, Resource::new(name, &cluster));
        }
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
        self.trust_domain
            .as_ref()
            .and_then(|trust_domain| {
                SpiffeId::service_identity(
                    trust_domain.as_str(),
                    crate::identity::NAMESPACE,
                    cluster,
                )
                .ok()
            })
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
        for (key, raw) in &state.documents {
            if let Some(evaluated) = self.evaluated.get(key) {
                // Judged already; a good document stays good when services
                // come and go (a vanished destination then answers 503).
                if evaluated.value == raw.value && evaluated.verdict.is_ok() {
                    continue;
                }
                // A rejected one is judged again: its destination may have appeared.
                if evaluated.value == raw.value && !depends_on_catalog(key) {
                    continue;
                }
            }
            let verdict = documents::parse_document(raw).and_then(|document| {
                let errors =
                    documents::validate_references(key, &document, &|name| known.contains(name));
                if errors.is_empty() {
                    Ok(document)
                } else {
                    Err(errors)
                }
            });
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
                },
            );
        }
        newly_rejected
    }
}

/// Whether judging a rejected document again could change its verdict: only
/// route documents depend on anything but their own bytes.
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
                    config::Cluster::decode(resource.any.value.as_slice()).unwrap_or_default();
                (name.clone(), cluster.identity)
            })
            .collect()
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
