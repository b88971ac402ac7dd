//! The discovery stream as a sidecar sees it: state of the world per type,
//! ACK/NACK by nonce, content-hash versions, subscriptions by name, and no
//! push when nothing a sidecar subscribed to changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_discovery::ads::{AdsServer, SidecarRegistry};
use weft_discovery::metrics::Metrics;
use weft_discovery::model::{Endpoint, RawDocument};
use weft_discovery::snapshot::{self, DebounceConfig};
use weft_discovery::store::MeshStore;
use weft_proto::config::v1::{Cluster, ClusterLoadAssignment, Gateway, RouteConfiguration};
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use weft_proto::type_url;

struct Agent {
    store: Arc<MeshStore>,
    registry: Arc<SidecarRegistry>,
    metrics: Arc<Metrics>,
    address: String,
}

async fn start_agent() -> Agent {
    let store = Arc::new(MeshStore::new());
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(SidecarRegistry::default());
    let (publish, snapshots) = watch::channel(None);
    tokio::spawn(snapshot::run_builder(
        store.clone(),
        DebounceConfig::default(),
        publish,
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let service = AdsServer::new(snapshots, registry.clone(), metrics.clone()).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Agent {
        store,
        registry,
        metrics,
        address,
    }
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        meshed: true,
        ..Endpoint::healthy("127.0.0.1", port, &format!("i-{port}"))
    }
}

fn document(key: &str, json: &str) -> (String, RawDocument) {
    (
        key.to_string(),
        RawDocument {
            key: key.to_string(),
            value: Bytes::from(json.to_string()),
            origin: format!("test {key}"),
            yaml: false,
        },
    )
}

fn seed(store: &MeshStore) {
    store.set_service_names(&["users".to_string(), "orders".to_string()].into());
    store.set_endpoints("users", vec![endpoint(1001)]);
    store.set_endpoints("orders", vec![endpoint(2001), endpoint(2002)]);
    store.mark_synced();
}

/// A sidecar's end of the stream.
struct Sidecar {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    /// Lists `weft.incremental` in its Node.client_features.
    incremental: bool,
    /// What the agent said it sends (the `weft-agent-features` header).
    agent_features: String,
}

impl Sidecar {
    async fn connect(agent: &Agent) -> Self {
        Self::connect_with(agent, false).await
    }

    async fn connect_incremental(agent: &Agent) -> Self {
        Self::connect_with(agent, true).await
    }

    async fn connect_with(agent: &Agent, incremental: bool) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(agent.address.clone())
            .await
            .unwrap();
        let (requests, outbox) = mpsc::channel(16);
        let responses = client
            .stream_resources(ReceiverStream::new(outbox))
            .await
            .unwrap();
        let agent_features = responses
            .metadata()
            .get(weft_proto::client_features::AGENT_FEATURES_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Self {
            requests,
            responses: responses.into_inner(),
            incremental,
            agent_features,
        }
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(type_url, names, "", "", None).await;
    }

    async fn send(
        &self,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        let request = DiscoveryRequest {
            version_info: version.into(),
            node: Some(Node {
                id: "web-1".into(),
                service: "web".into(),
                instance: "web-1".into(),
                client_features: if self.incremental {
                    vec![weft_proto::client_features::INCREMENTAL.into()]
                } else {
                    Vec::new()
                },
                ..Node::default()
            }),
            resource_names: names.iter().map(|name| name.to_string()).collect(),
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|message| ErrorDetail {
                code: 3,
                message: message.into(),
            }),
        };
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("stream open")
    }

    /// Asserts that nothing arrives for a while (no needless push).
    async fn expect_silence(&mut self) {
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(400), self.responses.message()).await
        {
            panic!("expected no push, got {message:?}");
        }
    }

    async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(
            &response.type_url,
            names,
            &response.version_info,
            &response.nonce,
            None,
        )
        .await;
    }
}

fn decode<M: Message + Default>(response: &DiscoveryResponse) -> Vec<M> {
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(
                any.type_url, response.type_url,
                "each resource names its type"
            );
            M::decode(any.value.as_ref()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn wildcard_routes_then_named_clusters_and_endpoints() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect(&agent).await;

    sidecar.subscribe(type_url::ROUTE_CONFIGURATION, &[]).await;
    let routes = sidecar.next().await;
    assert_eq!(routes.type_url, type_url::ROUTE_CONFIGURATION);
    let tables: Vec<RouteConfiguration> = decode(&routes);
    let names: Vec<_> = tables.iter().map(|table| table.name.as_str()).collect();
    assert_eq!(
        names,
        ["orders", "users"],
        "one default route table per service"
    );
    assert_eq!(tables[1].virtual_hosts[0].domains, ["users", "users.weft"]);
    sidecar.ack(&routes, &[]).await;

    sidecar.subscribe(type_url::CLUSTER, &["users"]).await;
    let clusters = sidecar.next().await;
    let clusters: Vec<Cluster> = decode(&clusters);
    assert_eq!(clusters.len(), 1, "only the subscribed cluster");
    assert_eq!(clusters[0].name, "users");

    sidecar
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &["orders", "ghost"])
        .await;
    let assignments = sidecar.next().await;
    let assignments: Vec<ClusterLoadAssignment> = decode(&assignments);
    assert_eq!(assignments.len(), 2);
    assert_eq!(assignments[1].cluster_name, "orders");
    assert_eq!(assignments[1].endpoints.len(), 2);
    assert_eq!(assignments[0].cluster_name, "ghost");
    assert!(
        assignments[0].endpoints.is_empty(),
        "an unknown name is answered with no endpoints, so the sidecar can complete its config"
    );
}

#[tokio::test]
async fn only_a_gateway_subscribing_by_its_name_gets_its_gateway_and_an_unknown_name_gets_none() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar.subscribe(type_url::ROUTE_CONFIGURATION, &[]).await;
    let routes = sidecar.next().await;
    sidecar.ack(&routes, &[]).await;

    agent.store.set_documents(BTreeMap::from([document(
        "gateways/edge",
        r#"{ "listeners": [ { "name": "public", "port": 8080, "hosts": ["api.example.com"] } ] }"#,
    )]));
    sidecar.expect_silence().await;

    let mut gateway = Sidecar::connect(&agent).await;
    gateway.subscribe(type_url::GATEWAY, &["edge"]).await;
    let served = gateway.next().await;
    assert_eq!(served.type_url, type_url::GATEWAY);
    let gateways: Vec<Gateway> = decode(&served);
    assert_eq!(gateways.len(), 1);
    assert_eq!(gateways[0].name, "edge");
    assert_eq!(gateways[0].listeners[0].hosts, ["api.example.com"]);

    let mut unknown = Sidecar::connect(&agent).await;
    unknown.subscribe(type_url::GATEWAY, &["other"]).await;
    let nothing = unknown.next().await;
    assert_eq!(nothing.type_url, type_url::GATEWAY);
    assert!(
        nothing.resources.is_empty(),
        "a gateway without a document is answered, with nothing to serve"
    );

    let mut everything = Sidecar::connect(&agent).await;
    everything.subscribe(type_url::GATEWAY, &[]).await;
    let nothing = everything.next().await;
    assert!(
        nothing.resources.is_empty(),
        "gateways (and their certificates' keys) are served by name only, never to a wildcard"
    );
}

#[tokio::test]
async fn pushes_only_the_types_whose_subscribed_resources_changed() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &["users"])
        .await;
    let first = sidecar.next().await;
    sidecar.ack(&first, &["users"]).await;

    // A change to a service this sidecar does not subscribe to: no push.
    agent
        .store
        .set_endpoints("orders", vec![endpoint(2001), endpoint(2003)]);
    sidecar.expect_silence().await;

    // A change to a subscribed one: pushed, with a new version and nonce.
    agent
        .store
        .set_endpoints("users", vec![endpoint(1001), endpoint(1002)]);
    let second = sidecar.next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(
        decode::<ClusterLoadAssignment>(&second)[0].endpoints.len(),
        2
    );

    // Back to the first content: the version is the first one again (content hash).
    sidecar.ack(&second, &["users"]).await;
    agent.store.set_endpoints("users", vec![endpoint(1001)]);
    let third = sidecar.next().await;
    assert_eq!(third.version_info, first.version_info);
}

#[tokio::test]
async fn a_nack_is_recorded_and_the_rejected_version_is_not_resent() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar.subscribe(type_url::CLUSTER, &["users"]).await;
    let response = sidecar.next().await;
    sidecar
        .send(
            type_url::CLUSTER,
            &["users"],
            "",
            &response.nonce,
            Some("users: connect_timeout must be > 0"),
        )
        .await;
    sidecar.expect_silence().await;

    let status = agent.registry.list();
    let cluster = &status[0].types["Cluster"];
    let nack = cluster.last_nack.as_ref().expect("the NACK is in /status");
    assert_eq!(nack.version, response.version_info);
    assert!(nack.message.contains("connect_timeout"));
    assert_eq!(status[0].service, "web");
}

#[tokio::test]
async fn changing_the_subscription_answers_with_the_new_subset() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar.subscribe(type_url::CLUSTER, &["users"]).await;
    let first = sidecar.next().await;
    // The ACK also carries the new names: the agent answers with both clusters.
    sidecar.ack(&first, &["users", "orders"]).await;
    let second = sidecar.next().await;
    let names: Vec<String> = decode::<Cluster>(&second)
        .into_iter()
        .map(|cluster| cluster.name)
        .collect();
    assert_eq!(names, ["orders", "users"]);
}

#[tokio::test]
async fn an_empty_list_after_names_unsubscribes_from_all_but_opens_a_wildcard() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar.subscribe(type_url::CLUSTER, &["users"]).await;
    let first = sidecar.next().await;
    // The sidecar dropped its last on-demand cluster: none, not all.
    sidecar.ack(&first, &[]).await;
    let second = sidecar.next().await;
    assert!(
        second.resources.is_empty(),
        "after names, an empty list means none: {:?}",
        decode::<Cluster>(&second)
    );
    let status = agent.registry.list();
    assert!(
        status[0].types["Cluster"]
            .subscribed
            .0
            .as_ref()
            .is_some_and(|names| names.is_empty()),
        "subscribed to no name, not to all"
    );
    // A type's first request with an empty list is still the wildcard.
    sidecar
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &[])
        .await;
    let all = sidecar.next().await;
    assert_eq!(decode::<ClusterLoadAssignment>(&all).len(), 2);
}

#[tokio::test]
async fn an_invalid_document_keeps_the_last_good_version_serving() {
    let agent = start_agent().await;
    seed(&agent.store);
    let good = r#"{ "routes": [ { "match": { "path_prefix": "/" }, "destination": "orders" } ] }"#;
    agent
        .store
        .set_documents(BTreeMap::from([document("routes/users", good)]));
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar.subscribe(type_url::ROUTE_CONFIGURATION, &[]).await;
    let first = sidecar.next().await;
    sidecar.ack(&first, &[]).await;
    let users_route = |response: &DiscoveryResponse| {
        decode::<RouteConfiguration>(response)
            .into_iter()
            .find(|table| table.name == "users")
            .unwrap()
    };
    let before = users_route(&first);

    let bad = r#"{ "routes": [ { "match": { "path_regex": "([" }, "destination": "orders" } ] }"#;
    agent
        .store
        .set_documents(BTreeMap::from([document("routes/users", bad)]));
    sidecar.expect_silence().await;

    // Nothing was pushed; the builder's verdict names key and field.
    let mut builder = weft_discovery::snapshot::SnapshotBuilder::new();
    let mut state = agent.store.state();
    state
        .documents
        .insert("routes/users".into(), document("routes/users", good).1);
    builder.build(&state);
    state
        .documents
        .insert("routes/users".into(), document("routes/users", bad).1);
    let (snapshot, newly_rejected) = builder.build(&state);
    assert_eq!(newly_rejected.len(), 1);
    assert_eq!(newly_rejected[0].key, "routes/users");
    assert_eq!(newly_rejected[0].serving, "last good version");
    assert!(
        newly_rejected[0]
            .errors
            .iter()
            .any(|error| error.field.contains("path_regex")),
        "{:?}",
        newly_rejected[0].errors
    );
    let served = snapshot
        .select(
            type_url::ROUTE_CONFIGURATION,
            &weft_discovery::snapshot::Subscription::Wildcard,
        )
        .resources;
    let served_users = served
        .iter()
        .map(|any| RouteConfiguration::decode(any.value.as_ref()).unwrap())
        .find(|table| table.name == "users")
        .unwrap();
    assert_eq!(
        served_users, before,
        "the last good route table keeps serving"
    );
}

#[tokio::test]
async fn nothing_is_served_before_the_first_full_sync() {
    let agent = start_agent().await;
    agent.store.set_service_names(&["users".to_string()].into());
    let mut sidecar = Sidecar::connect(&agent).await;
    sidecar
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &["users"])
        .await;
    // Endpoints not loaded yet: an empty set now would drain every caller.
    sidecar.expect_silence().await;
    agent.store.set_endpoints("users", vec![endpoint(1001)]);
    agent.store.mark_synced();
    let response = sidecar.next().await;
    assert_eq!(
        decode::<ClusterLoadAssignment>(&response)[0]
            .endpoints
            .len(),
        1
    );
}

// ---- incremental responses (proto/README.md, "Incremental responses")

/// A mesh of `count` services, `svc-000`..., one endpoint each.
fn seed_many(store: &MeshStore, count: u16) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("svc-{i:03}")).collect();
    store.set_service_names(&names.iter().cloned().collect());
    for (i, name) in names.iter().enumerate() {
        store.set_endpoints(name, vec![endpoint(10_000 + i as u16)]);
    }
    store.mark_synced();
    names
}

fn names_of(response: &DiscoveryResponse) -> Vec<String> {
    decode::<ClusterLoadAssignment>(response)
        .into_iter()
        .map(|assignment| assignment.cluster_name)
        .collect()
}

#[tokio::test]
async fn one_endpoint_change_sends_one_assignment_to_an_incremental_sidecar_holding_many() {
    let agent = start_agent().await;
    let names = seed_many(&agent.store, 200);
    let subscribed: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sidecar = Sidecar::connect_incremental(&agent).await;
    assert_eq!(sidecar.agent_features, "weft.incremental");
    sidecar
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &subscribed)
        .await;
    let first = sidecar.next().await;
    assert_eq!(first.resources.len(), 200, "the first response is whole");
    assert_eq!(
        first.removed_resources,
        ["*"],
        "and replaces whatever the sidecar held"
    );
    sidecar.ack(&first, &subscribed).await;

    agent
        .store
        .set_endpoints("svc-042", vec![endpoint(10_042), endpoint(20_042)]);
    let second = sidecar.next().await;
    assert_eq!(names_of(&second), ["svc-042"], "only what changed");
    assert!(second.removed_resources.is_empty());
    assert_eq!(
        decode::<ClusterLoadAssignment>(&second)[0].endpoints.len(),
        2
    );
    // The version is still the hash of the whole set the sidecar now holds:
    // the same a state-of-the-world sidecar gets for the same names.
    let mut whole = Sidecar::connect(&agent).await;
    whole
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &subscribed)
        .await;
    let whole_response = whole.next().await;
    assert_eq!(whole_response.resources.len(), 200);
    assert_eq!(whole_response.version_info, second.version_info);
    assert!(
        second.encoded_len() * 50 < whole_response.encoded_len(),
        "{} bytes incremental, {} whole",
        second.encoded_len(),
        whole_response.encoded_len()
    );
}

#[tokio::test]
async fn a_route_table_whose_service_left_is_removed_by_name() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect_incremental(&agent).await;
    sidecar.subscribe(type_url::ROUTE_CONFIGURATION, &[]).await;
    let first = sidecar.next().await;
    assert_eq!(decode::<RouteConfiguration>(&first).len(), 2);
    sidecar.ack(&first, &[]).await;

    agent.store.set_service_names(&["users".to_string()].into());
    let second = sidecar.next().await;
    assert!(second.resources.is_empty(), "users did not change");
    assert_eq!(second.removed_resources, ["orders"]);
    assert_ne!(second.version_info, first.version_info);
}

#[tokio::test]
async fn dropping_a_name_from_the_subscription_removes_it_and_adding_one_sends_only_it() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect_incremental(&agent).await;
    sidecar.subscribe(type_url::CLUSTER, &["users"]).await;
    let first = sidecar.next().await;
    sidecar.ack(&first, &["users", "orders"]).await;
    let second = sidecar.next().await;
    let clusters: Vec<String> = decode::<Cluster>(&second)
        .into_iter()
        .map(|cluster| cluster.name)
        .collect();
    assert_eq!(clusters, ["orders"], "users is held already");
    sidecar.ack(&second, &["orders"]).await;
    let third = sidecar.next().await;
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, ["users"]);
}

#[tokio::test]
async fn after_a_nack_the_next_change_is_sent_relative_to_what_the_sidecar_kept() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut sidecar = Sidecar::connect_incremental(&agent).await;
    let both = ["orders", "users"];
    sidecar
        .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &both)
        .await;
    let first = sidecar.next().await;
    sidecar.ack(&first, &both).await;

    agent
        .store
        .set_endpoints("users", vec![endpoint(1001), endpoint(1002)]);
    let rejected = sidecar.next().await;
    assert_eq!(names_of(&rejected), ["users"]);
    sidecar
        .send(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &both,
            &first.version_info,
            &rejected.nonce,
            Some("ClusterLoadAssignment users: no"),
        )
        .await;
    sidecar.expect_silence().await;

    // A newer change, to orders: the sidecar still holds the old users, so
    // the new users comes again with the new orders.
    agent.store.set_endpoints("orders", vec![endpoint(2001)]);
    let third = sidecar.next().await;
    assert_eq!(names_of(&third), ["orders", "users"]);
    assert_ne!(third.version_info, rejected.version_info);
}

#[tokio::test]
async fn a_reconnect_with_the_held_version_gets_nothing_until_something_changes() {
    let agent = start_agent().await;
    seed(&agent.store);
    let both = ["orders", "users"];
    let held = {
        let mut sidecar = Sidecar::connect_incremental(&agent).await;
        sidecar
            .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &both)
            .await;
        let first = sidecar.next().await;
        sidecar.ack(&first, &both).await;
        first
    };

    let mut sidecar = Sidecar::connect_incremental(&agent).await;
    sidecar
        .send(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &both,
            &held.version_info,
            "",
            None,
        )
        .await;
    sidecar.expect_silence().await;

    agent
        .store
        .set_endpoints("users", vec![endpoint(1001), endpoint(1003)]);
    let change = sidecar.next().await;
    assert_eq!(names_of(&change), ["users"], "relative to the held version");
    assert!(change.removed_resources.is_empty());

    // A version the agent cannot vouch for: everything, replacing.
    let mut stale = Sidecar::connect_incremental(&agent).await;
    stale
        .send(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            &both,
            "0123456789abcdef",
            "",
            None,
        )
        .await;
    let whole = stale.next().await;
    assert_eq!(names_of(&whole), ["orders", "users"]);
    assert_eq!(whole.removed_resources, ["*"]);
}

#[tokio::test]
async fn after_a_reconnect_with_the_held_version_an_empty_list_is_none_and_a_name_asked_again_arrives()
 {
    let agent = start_agent().await;
    seed(&agent.store);
    let held = {
        let mut sidecar = Sidecar::connect_incremental(&agent).await;
        sidecar.subscribe(type_url::CLUSTER, &["users"]).await;
        let first = sidecar.next().await;
        sidecar.ack(&first, &["users"]).await;
        first
    };

    // The agent adopts the held version: nothing sent on this stream yet.
    let mut sidecar = Sidecar::connect_incremental(&agent).await;
    sidecar
        .send(type_url::CLUSTER, &["users"], &held.version_info, "", None)
        .await;
    sidecar.expect_silence().await;
    // Its routes no longer name users: it asks for none...
    sidecar
        .send(
            type_url::CLUSTER,
            &[],
            &held.version_info,
            &held.nonce,
            None,
        )
        .await;
    let none = sidecar.next().await;
    assert!(
        none.resources.is_empty(),
        "none, not every cluster of the mesh: {:?}",
        names_of(&none)
    );
    assert_eq!(none.removed_resources, ["users"]);
    // ...then its app calls orders: it arrives.
    sidecar.ack(&none, &["orders"]).await;
    let orders = sidecar.next().await;
    assert_eq!(names_of(&orders), ["orders"]);
}

#[tokio::test]
async fn a_state_of_the_world_sidecar_beside_an_incremental_one_still_gets_everything() {
    let agent = start_agent().await;
    seed(&agent.store);
    let both = ["orders", "users"];
    let mut old = Sidecar::connect(&agent).await;
    let mut new = Sidecar::connect_incremental(&agent).await;
    for sidecar in [&old, &new] {
        sidecar
            .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &both)
            .await;
    }
    let (old_first, new_first) = (old.next().await, new.next().await);
    assert!(old_first.removed_resources.is_empty());
    old.ack(&old_first, &both).await;
    new.ack(&new_first, &both).await;

    agent
        .store
        .set_endpoints("users", vec![endpoint(1001), endpoint(1004)]);
    let (old_second, new_second) = (old.next().await, new.next().await);
    assert_eq!(names_of(&old_second), ["orders", "users"]);
    assert!(old_second.removed_resources.is_empty());
    assert_eq!(names_of(&new_second), ["users"]);
    assert_eq!(old_second.version_info, new_second.version_info);
}

#[tokio::test]
async fn convergence_is_observed_once_every_stream_acked_the_change() {
    let agent = start_agent().await;
    seed(&agent.store);
    let mut a = Sidecar::connect_incremental(&agent).await;
    let mut b = Sidecar::connect(&agent).await;
    for sidecar in [&mut a, &mut b] {
        sidecar
            .subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &["users"])
            .await;
        let first = sidecar.next().await;
        sidecar.ack(&first, &["users"]).await;
    }
    assert!(agent.metrics.convergence.quantiles().is_none());

    agent
        .store
        .set_endpoints("users", vec![endpoint(1001), endpoint(1005)]);
    let pushed = a.next().await;
    a.ack(&pushed, &["users"]).await;
    let pushed = b.next().await;
    // Until the last stream ACKs, the change has not converged.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(agent.metrics.convergence.quantiles().is_none());
    b.ack(&pushed, &["users"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let quantiles = loop {
        if let Some(quantiles) = agent.metrics.convergence.quantiles() {
            break quantiles;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence observed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(quantiles.count, 1);
    assert!(
        quantiles.p99_seconds > 0.1,
        "b acked after 100 ms: {quantiles:?}"
    );
    assert!(
        agent
            .metrics
            .encode()
            .contains("weft_discovery_convergence_seconds_count 1"),
        "the histogram is exported"
    );
}
