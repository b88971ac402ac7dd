//! Specs of the xDS protocol state machine (no network).

use std::sync::Arc;

use arc_swap::ArcSwap;
use prost::Message;
use weft_proto::config::v1 as pb;
use weft_proto::discovery::v1::{DiscoveryResponse, Node};
use weft_proto::type_url::{
    CLUSTER, CLUSTER_LOAD_ASSIGNMENT as CLA, INBOUND_POLICY as POLICY,
    ROUTE_CONFIGURATION as ROUTES,
};

use std::time::Duration;

use super::{Core, OnDemand};
use crate::error::ErrorKind;
use crate::table::RoutingTable;
use crate::upstream::Dns;

fn core() -> (Core, Arc<ArcSwap<RoutingTable>>) {
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let node = Node {
        id: "web-1-abc".into(),
        service: "web".into(),
        instance: "web-1".into(),
        ..Default::default()
    };
    (Core::new(node, table.clone(), Dns::default()), table)
}

fn response<M: Message>(t: &str, version: &str, nonce: &str, msgs: &[M]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources: msgs
            .iter()
            .map(|m| weft_proto::Any {
                type_url: t.into(),
                value: m.encode_to_vec().into(),
            })
            .collect(),
        type_url: t.into(),
        nonce: nonce.into(),
        removed_resources: Vec::new(),
    }
}

/// web's inbound policy: allow by default, one intention.
fn policy(intention_source: &str, action: pb::Action) -> pb::InboundPolicy {
    pb::InboundPolicy {
        service: "web".into(),
        default_action: pb::Action::Allow as i32,
        intentions: vec![pb::Intention {
            source: intention_source.into(),
            action: action as i32,
            permissions: vec![],
            origin: "kv:weft/policies/web".into(),
        }],
        jwt: None,
        mtls_mode: pb::MtlsMode::Strict.into(),
        opaque_tcp: false,
        rate_limits: None,
        upstreams: Vec::new(),
        app_protocol: 0,
        cors: None,
        compression: None,
        cache: None,
        validation: None,
    }
}

fn routes(cluster: &str, regex: Option<&str>) -> pb::RouteConfiguration {
    pb::RouteConfiguration {
        name: "users".into(),
        virtual_hosts: vec![pb::VirtualHost {
            name: "users".into(),
            domains: vec!["users".into(), "users.weft".into()],
            routes: vec![pb::Route {
                r#match: Some(pb::RouteMatch {
                    path: Some(match regex {
                        Some(r) => pb::route_match::Path::Regex(r.into()),
                        None => pb::route_match::Path::Prefix("/".into()),
                    }),
                    ..Default::default()
                }),
                action: Some(pb::RouteAction {
                    destination: Some(pb::route_action::Destination::Cluster(cluster.into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }],
    }
}

fn cluster(name: &str) -> pb::Cluster {
    pb::Cluster {
        name: name.into(),
        ..Default::default()
    }
}

fn cla(name: &str, port: u32) -> pb::ClusterLoadAssignment {
    pb::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![pb::Endpoint {
            address: "127.0.0.1".into(),
            port,
            health: pb::endpoint::Health::Healthy as i32,
            ..Default::default()
        }],
    }
}

#[test]
fn a_new_stream_opens_with_routes_only_as_cluster_names_are_not_known_yet() {
    let (mut core, _) = core();
    let reqs = core.initial_requests();
    let types: Vec<_> = reqs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        types,
        [ROUTES, POLICY],
        "an empty Cluster name list would mean every cluster in the mesh"
    );
    assert_eq!(reqs[1].resource_names, ["web"], "our own policy only");
    assert_eq!(
        reqs[0].node.as_ref().unwrap().service,
        "web",
        "node on the first request"
    );
    assert!(reqs[0].version_info.is_empty() && reqs[0].response_nonce.is_empty());
    assert!(
        reqs[0].resource_names.is_empty(),
        "routes are a wildcard subscription"
    );
}

#[test]
fn the_inbound_policy_is_swapped_in_for_the_data_path_and_an_invalid_one_nacked() {
    let (mut core, table) = core();
    let req = http::Request::get("/").body(()).unwrap();
    assert!(
        table
            .load()
            .inbound
            .authz
            .decide(Some("billing"), &req)
            .is_ok(),
        "allow before any policy"
    );

    let out = core.handle(response(
        POLICY,
        "p1",
        "1",
        &[policy("billing", pb::Action::Deny)],
    ));
    assert!(out[0].error_detail.is_none());
    let denial = table
        .load()
        .inbound
        .authz
        .decide(Some("billing"), &req)
        .unwrap_err();
    assert_eq!(&*denial.origin, "kv:weft/policies/web");

    let mut bad = policy("billing", pb::Action::Allow);
    bad.intentions[0].source = String::new();
    let out = core.handle(response(POLICY, "p2", "2", &[bad]));
    let detail = &out[0].error_detail.as_ref().unwrap().message;
    assert!(
        detail.contains("InboundPolicy web: intentions[0].source: must not be empty"),
        "{detail}"
    );
    assert!(
        table
            .load()
            .inbound
            .authz
            .decide(Some("billing"), &req)
            .is_err(),
        "the last good policy keeps deciding"
    );
}

/// A JWT section with one inline Ed25519 key (RFC 8037's example key).
const JWT_JSON: &str = r#"{ "providers": [ { "name": "idp", "issuer": "https://idp",
    "audiences": ["web"], "jwks": { "inline": { "keys": [ { "kty": "OKP", "crv": "Ed25519",
    "kid": "k1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" } ] } } } ] }"#;

/// The `JwtPolicy` the agent sends for a document's `jwt` section.
fn jwt_policy(section: &str) -> pb::JwtPolicy {
    serde_json::from_str::<crate::authn::AuthnConfig>(section)
        .expect("a jwt section")
        .to_proto()
}

#[test]
fn intentions_jwt_and_mtls_mode_are_swapped_in_together_or_not_at_all() {
    let (mut core, table) = core();
    let req = http::Request::get("/").body(()).unwrap();
    assert_eq!(
        table.load().inbound.mtls,
        crate::mtls::MtlsMode::Strict,
        "strict before any policy"
    );
    assert!(
        table.load().inbound.authn.clone().is_none(),
        "no JWT checks before any policy"
    );

    let mut good = policy("billing", pb::Action::Deny);
    good.jwt = Some(jwt_policy(JWT_JSON));
    good.mtls_mode = pb::MtlsMode::Permissive.into();
    let out = core.handle(response(POLICY, "p1", "1", &[good]));
    assert!(out[0].error_detail.is_none(), "{:?}", out[0].error_detail);
    assert_eq!(table.load().inbound.mtls, crate::mtls::MtlsMode::Permissive);
    assert_eq!(
        table
            .load()
            .inbound
            .authn
            .clone()
            .map(|a| a.service().to_owned())
            .as_deref(),
        Some("web")
    );
    assert!(
        table
            .load()
            .inbound
            .authz
            .decide(Some("billing"), &req)
            .is_err()
    );

    // A bad JWT section: nothing of this policy applies, not even its
    // good intentions and mode; every problem is named with its field.
    let mut bad = policy("billing", pb::Action::Allow);
    bad.jwt = Some(jwt_policy(
        &JWT_JSON
            .replace(r#""audiences": ["web"]"#, r#""audiences": []"#)
            .replace("Ed25519", "Ed448"),
    ));
    let out = core.handle(response(POLICY, "p2", "2", &[bad]));
    let detail = &out[0].error_detail.as_ref().unwrap().message;
    assert!(
        detail.contains("InboundPolicy web: jwt.providers[0].audiences: empty"),
        "{detail}"
    );
    assert!(detail.contains("jwt.providers[0].jwks.inline"), "{detail}");
    assert!(
        table
            .load()
            .inbound
            .authz
            .decide(Some("billing"), &req)
            .is_err(),
        "old intentions"
    );
    assert!(
        table.load().inbound.authn.clone().is_some(),
        "old JWT policy"
    );
    assert_eq!(
        table.load().inbound.mtls,
        crate::mtls::MtlsMode::Permissive,
        "old mode"
    );

    // An inline JWKS that is not JSON, and a mode from a newer agent.
    let mut bad = policy("billing", pb::Action::Allow);
    let mut jwt = jwt_policy(JWT_JSON);
    jwt.providers[0].jwks.as_mut().unwrap().source =
        Some(pb::jwks_source::Source::InlineJson("{".into()));
    bad.jwt = Some(jwt);
    bad.mtls_mode = 9;
    let out = core.handle(response(POLICY, "p3", "3", &[bad]));
    let detail = &out[0].error_detail.as_ref().unwrap().message;
    assert!(
        detail.contains("InboundPolicy web: mtls_mode: unknown value 9"),
        "{detail}"
    );
    assert!(
        detail.contains("InboundPolicy web: jwt.providers[0].jwks.inline: not a JWKS document"),
        "{detail}"
    );

    // A policy without `jwt` turns JWT checks off; the mode goes back to strict.
    let out = core.handle(response(
        POLICY,
        "p4",
        "4",
        &[policy("billing", pb::Action::Allow)],
    ));
    assert!(out[0].error_detail.is_none());
    assert!(table.load().inbound.authn.clone().is_none());
    assert_eq!(table.load().inbound.mtls, crate::mtls::MtlsMode::Strict);
    assert!(
        table
            .load()
            .inbound
            .authz
            .decide(Some("billing"), &req)
            .is_ok()
    );
}

#[test]
fn an_invalid_response_is_nacked_and_the_last_good_table_kept() {
    let (mut core, table) = core();
    core.handle(response(ROUTES, "r1", "1", &[routes("users", None)]));
    let before = table.load_full();
    let out = core.handle(response(ROUTES, "r2", "2", &[routes("users", Some("(["))]));
    assert_eq!(out.len(), 1);
    let nack = &out[0];
    assert_eq!(nack.version_info, "r1", "NACK names the version still held");
    assert_eq!(nack.response_nonce, "2");
    let detail = &nack.error_detail.as_ref().unwrap().message;
    assert!(
        detail.starts_with(
            "RouteConfiguration users: virtual_hosts[0].routes[0].match.regex: invalid regex"
        ),
        "{detail}"
    );
    assert!(Arc::ptr_eq(&before, &table.load_full()), "table untouched");

    let mut status = super::Status::default();
    core.publish(&mut status);
    assert!(status.types[ROUTES].last_nack.is_some());
}

#[test]
fn undecodable_resources_are_nacked() {
    let (mut core, _) = core();
    let mut resp = response(CLUSTER, "c1", "1", &[cluster("users")]);
    resp.resources[0].value = vec![0xff, 0xff, 0xff].into();
    let out = core.handle(resp);
    assert!(
        out[0]
            .error_detail
            .as_ref()
            .unwrap()
            .message
            .contains("resources[0]: cannot decode")
    );
}

/// web's identity store (leaf and bundle of a fresh CA in `mesh.test`),
/// and that CA.
fn identity() -> (Arc<weft_certs::IdentityStore>, weft_certs::Ca) {
    let web = weft_test_support::mesh_identity::MeshIdentity::mint("mesh.test", "web");
    (web.store, web.ca)
}

#[test]
fn a_pushed_trust_bundle_replaces_the_roots_and_a_bad_one_is_nacked_keeping_them() {
    use std::time::Duration;
    use weft_proto::type_url::TRUST_BUNDLE;
    let (store, ca) = identity();
    let (core, _) = core();
    let mut core = core
        .with_identity(store.clone())
        .with_trust_bundle_updates("mesh.test".into());
    let opening = core.initial_requests();
    let bundle_request = opening
        .iter()
        .find(|r| r.type_url == TRUST_BUNDLE)
        .expect("a sidecar with an agent-signed leaf subscribes to its bundle");
    assert_eq!(
        bundle_request.resource_names,
        ["mesh.test"],
        "its own trust domain only"
    );

    // `weftctl ca rotate`: the agent pushes old and new root.
    let rotated = ca.rotate_root(Duration::from_secs(3600)).unwrap();
    let both = pb::TrustBundle {
        trust_domain: "mesh.test".into(),
        roots_pem: rotated.bundle().to_pem(),
    };
    let out = core.handle(response(TRUST_BUNDLE, "v1", "1", &[both]));
    assert!(out[0].error_detail.is_none(), "{out:?}");
    assert_eq!(out[0].version_info, "v1");
    assert_eq!(
        store.bundle(),
        *rotated.bundle(),
        "new handshakes trust both roots"
    );

    // Garbage, an empty bundle or none at all: NACK with the reason, and
    // the roots stay.
    let garbage = pb::TrustBundle {
        trust_domain: "mesh.test".into(),
        roots_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
    };
    let empty = pb::TrustBundle {
        trust_domain: "mesh.test".into(),
        roots_pem: String::new(),
    };
    let other_domain = pb::TrustBundle {
        trust_domain: "other.test".into(),
        roots_pem: ca.bundle().to_pem(),
    };
    for (nonce, pushed) in [
        ("2", vec![garbage]),
        ("3", vec![empty]),
        ("4", vec![other_domain]),
        ("5", vec![]),
    ] {
        let out = core.handle(response(TRUST_BUNDLE, "bad", nonce, &pushed));
        let detail = out[0].error_detail.as_ref().map(|d| d.message.clone());
        assert!(
            detail
                .as_deref()
                .is_some_and(|d| d.contains("TrustBundle mesh.test")),
            "{pushed:?} got {detail:?}"
        );
        assert_eq!(out[0].version_info, "v1", "still holding v1");
        assert_eq!(store.bundle().len(), 2, "the roots stay");
    }
}

/// A core with on-demand discovery (`idle` of 2 s) and its `OnDemand`.
fn on_demand_core(timeout: Duration) -> (Core, Arc<ArcSwap<RoutingTable>>, Arc<OnDemand>) {
    let (core, table) = core();
    let demand = Arc::new(OnDemand::new(table.clone(), timeout));
    let core = core.with_on_demand(demand.clone(), Duration::from_secs(2));
    (core, table, demand)
}

/// Route tables for `users` (to `users`) and `orders` (to `orders`).
fn two_routes() -> Vec<pb::RouteConfiguration> {
    let mut orders = routes("orders", None);
    orders.name = "orders".into();
    orders.virtual_hosts[0].domains = vec!["orders".into()];
    vec![routes("users", None), orders]
}

fn names(reqs: &[weft_proto::discovery::v1::DiscoveryRequest]) -> Vec<(&str, Vec<String>)> {
    reqs.iter()
        .map(|r| (r.type_url.as_str(), r.resource_names.clone()))
        .collect()
}

#[test]
fn routes_go_live_at_once_and_subscribe_to_no_cluster() {
    let (mut core, table) = core();
    let out = core.handle(response(ROUTES, "r1", "1", &two_routes()));
    assert_eq!(out.len(), 1, "the ACK only: no cluster is wanted yet");
    assert_eq!(
        (out[0].type_url.as_str(), out[0].response_nonce.as_str()),
        (ROUTES, "1")
    );
    let t = table.load();
    assert!(
        t.virtual_host("users.weft").is_some(),
        "routes live at once"
    );
    assert!(t.clusters.is_empty(), "no cluster held before a call");
    assert_eq!(
        names(&core.initial_requests()),
        [(ROUTES, vec![]), (POLICY, vec!["web".to_string()])],
        "a reconnect asks for no cluster either (an empty list would be all of them)"
    );
}

#[test]
fn the_subscription_grows_on_demand_and_a_cluster_goes_in_with_its_endpoints() {
    let (mut core, table, _) = on_demand_core(Duration::from_secs(1));
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    let out = core.demand(vec!["users".into()]);
    assert_eq!(
        names(&out),
        [
            (CLUSTER, vec!["users".to_string()]),
            (CLA, vec!["users".to_string()])
        ]
    );
    assert!(
        core.demand(vec!["users".into()]).is_empty(),
        "asked already: nothing new to send"
    );
    assert!(
        core.demand(vec!["billing".into()]).is_empty(),
        "no route names billing: nothing to subscribe to"
    );
    core.handle(response(CLUSTER, "c1", "2", &[cluster("users")]));
    assert!(
        table.load().cluster("users").is_none(),
        "no endpoints yet: a request keeps waiting rather than failing"
    );
    core.handle(response(CLA, "e1", "3", &[cla("users", 8080)]));
    assert_eq!(table.load().clusters["users"].serving.len(), 1);

    let out = core.demand(vec!["orders".into()]);
    assert_eq!(
        names(&out),
        [
            (CLUSTER, vec!["orders".to_string(), "users".to_string()]),
            (CLA, vec!["orders".to_string(), "users".to_string()])
        ]
    );
    assert_eq!(
        (out[0].response_nonce.as_str(), out[0].version_info.as_str()),
        ("2", "c1"),
        "subscription updates carry the type's latest nonce and version"
    );
    // A reconnect opens with every cluster held, and the versions.
    let opening = core.initial_requests();
    assert_eq!(
        opening
            .iter()
            .map(|r| r.type_url.as_str())
            .collect::<Vec<_>>(),
        [ROUTES, CLUSTER, CLA, POLICY]
    );
    assert_eq!(opening[1].version_info, "c1");
}

#[test]
fn idle_on_demand_clusters_are_dropped_and_preloads_stay() {
    let (core, table) = core();
    let demand = Arc::new(OnDemand::new(table.clone(), Duration::from_secs(1)));
    let mut core = core
        .with_required_clusters(["billing".to_string()])
        .with_on_demand(demand.clone(), Duration::from_secs(2));
    let mut users = routes("users", None);
    users.virtual_hosts[0].routes[0].action = Some(pb::RouteAction {
        destination: Some(pb::route_action::Destination::WeightedClusters(
            pb::WeightedClusters {
                clusters: vec![
                    pb::ClusterWeight {
                        name: "users".into(),
                        weight: 50,
                    },
                    pb::ClusterWeight {
                        name: "users-v2".into(),
                        weight: 50,
                    },
                ],
            },
        )),
        ..Default::default()
    });
    core.handle(response(ROUTES, "r1", "1", &[users]));
    core.demand(vec!["users".into(), "users-v2".into()]);
    let all = ["billing", "users", "users-v2"];
    core.handle(response(CLUSTER, "c1", "2", &all.map(cluster)));
    core.handle(response(CLA, "e1", "3", &all.map(|name| cla(name, 8080))));
    assert_eq!(table.load().clusters.len(), 3);

    // users is called at second 3, users-v2 never after its demand at 1.
    demand.set_now(3);
    demand.touch(&table.load().clusters["users"].shared);
    demand.set_now(4);
    let out = core.sweep();
    assert_eq!(
        names(&out),
        [
            (CLUSTER, vec!["billing".to_string(), "users".to_string()]),
            (CLA, vec!["billing".to_string(), "users".to_string()])
        ],
        "users-v2 was idle for 3 s"
    );
    assert!(
        table.load().cluster("users-v2").is_none(),
        "left the table at once"
    );
    assert!(core.sweep().is_empty(), "nothing else idle");
    demand.set_now(5);
    assert!(
        core.sweep().is_empty(),
        "users unused for 2 whole seconds: its stamp may have begun before the call, kept"
    );
    demand.set_now(60);
    let out = core.sweep();
    assert_eq!(
        out[0].resource_names,
        ["billing"],
        "a preload is never dropped"
    );
    assert_eq!(
        table
            .load()
            .clusters
            .keys()
            .map(|k| &**k)
            .collect::<Vec<_>>(),
        ["billing"]
    );
    // A new call brings users back.
    let out = core.demand(vec!["users".into()]);
    assert_eq!(out[0].resource_names, ["billing", "users"]);
}

#[test]
fn dropping_the_last_cluster_sends_an_empty_list_but_a_fresh_stream_sends_none() {
    let (mut core, table, demand) = on_demand_core(Duration::from_secs(1));
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    core.demand(vec!["users".into()]);
    core.handle(response(CLUSTER, "c1", "2", &[cluster("users")]));
    core.handle(response(CLA, "e1", "3", &[cla("users", 8080)]));
    demand.set_now(10);
    let out = core.sweep();
    assert_eq!(
        names(&out),
        [(CLUSTER, vec![]), (CLA, vec![])],
        "after names, an empty list unsubscribes from all"
    );
    assert!(table.load().clusters.is_empty());
    let opening = core.initial_requests();
    assert!(
        opening.iter().all(|r| r.type_url != CLUSTER),
        "on a new stream an empty list would mean every cluster: none is sent"
    );
}

#[test]
fn routes_that_no_longer_name_an_on_demand_cluster_drop_it() {
    let (mut core, table, _) = on_demand_core(Duration::from_secs(1));
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    core.demand(vec!["users".into(), "orders".into()]);
    core.handle(response(
        CLUSTER,
        "c1",
        "2",
        &[cluster("users"), cluster("orders")],
    ));
    core.handle(response(
        CLA,
        "e1",
        "3",
        &[cla("users", 1), cla("orders", 2)],
    ));
    // users now routes to users-v2; orders is gone.
    let out = core.handle(response(ROUTES, "r2", "4", &[routes("users-v2", None)]));
    assert_eq!(names(&out[1..]), [(CLUSTER, vec![]), (CLA, vec![])]);
    assert!(table.load().clusters.is_empty());
    assert!(
        table.load().virtual_host("users").is_some(),
        "the new route is live; users-v2 comes with its first call"
    );
}

#[test]
fn ready_with_routes_policy_and_preloads_not_with_every_routed_cluster() {
    let (mut core, table) = core();
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    assert_eq!(core.waiting_for(), "InboundPolicy");
    // The policy names web's upstreams (its Consul registration's).
    let mut p = policy("*", pb::Action::Allow);
    p.upstreams = vec!["orders".into()];
    let out = core.handle(response(POLICY, "p1", "2", &[p]));
    assert_eq!(
        names(&out[1..]),
        [
            (CLUSTER, vec!["orders".to_string()]),
            (CLA, vec!["orders".to_string()])
        ],
        "the policy's upstreams are subscribed to at once"
    );
    assert!(!core.is_ready());
    assert_eq!(
        core.waiting_for(),
        "Cluster orders; ClusterLoadAssignment orders"
    );
    core.handle(response(CLUSTER, "c1", "3", &[cluster("orders")]));
    core.handle(response(CLA, "e1", "4", &[cla("orders", 8080)]));
    assert!(
        core.is_ready(),
        "users is routed but not needed for readiness"
    );
    assert_eq!(
        table
            .load()
            .clusters
            .keys()
            .map(|k| &**k)
            .collect::<Vec<_>>(),
        ["orders"]
    );
    let mut status = super::Status::default();
    core.publish(&mut status);
    assert_eq!(status.held[0].reason, "policy-upstream");
}

#[test]
fn a_response_with_the_held_version_is_acked_without_a_rebuild() {
    let (core, table) = core();
    let mut core = core.with_required_clusters(["users".to_string()]);
    core.handle(response(CLUSTER, "c1", "1", &[cluster("users")]));
    let before = table.load_full();
    // After a reconnect the agent resends what we already hold.
    let out = core.handle(response(CLUSTER, "c1", "7", &[cluster("users")]));
    assert_eq!(
        (out[0].version_info.as_str(), out[0].response_nonce.as_str()),
        ("c1", "7")
    );
    assert!(Arc::ptr_eq(&before, &table.load_full()));
    // And the reconnect's opening requests carry the versions held.
    assert_eq!(core.initial_requests()[1].version_info, "c1");
}

#[test]
fn unhealthy_endpoints_get_no_traffic_but_are_listed() {
    let (core, table) = core();
    let mut core = core.with_required_clusters(["users".to_string()]);
    let mut a = cla("users", 8080);
    a.endpoints.push(pb::Endpoint {
        address: "127.0.0.1".into(),
        port: 8081,
        health: pb::endpoint::Health::Unhealthy as i32,
        ..Default::default()
    });
    core.handle(response(CLUSTER, "c1", "1", &[cluster("users")]));
    core.handle(response(CLA, "e1", "2", &[a]));
    let t = table.load();
    let c = &t.clusters["users"];
    assert_eq!((c.endpoints.len(), c.serving.len()), (2, 1));
}

#[test]
fn a_tcp_upstream_destination_is_held_from_the_start_whatever_the_routes_name() {
    let (core, table) = core();
    let mut core = core.with_tcp_upstreams(["redis".to_owned()]);
    let opening = core.initial_requests();
    assert_eq!(
        names(&opening),
        [
            (ROUTES, vec![]),
            (CLUSTER, vec!["redis".to_string()]),
            (CLA, vec!["redis".to_string()]),
            (POLICY, vec!["web".to_string()])
        ]
    );
    core.handle(response(
        POLICY,
        "p1",
        "0",
        &[policy("*", pb::Action::Allow)],
    ));
    let out = core.handle(response(ROUTES, "r1", "1", &[routes("users", None)]));
    assert_eq!(out.len(), 1, "routes change nothing to the subscription");
    core.handle(response(CLUSTER, "c1", "2", &[cluster("redis")]));
    assert!(!core.is_ready(), "redis's endpoints have not arrived");
    assert_eq!(core.waiting_for(), "ClusterLoadAssignment redis");
    core.handle(response(CLA, "e1", "3", &[cla("redis", 6379)]));
    assert!(core.is_ready());
    assert_eq!(table.load().clusters["redis"].serving.len(), 1);
    let mut status = super::Status::default();
    core.publish(&mut status);
    assert_eq!(status.held[0].reason, "tcp-upstream");
}

/// A request's wait for `name`, on a task of its own.
fn spawn_fetch(
    demand: &Arc<OnDemand>,
    name: &Arc<str>,
) -> tokio::task::JoinHandle<Result<(), crate::error::ProxyError>> {
    let (demand, name) = (demand.clone(), name.clone());
    tokio::spawn(async move { demand.fetch(&name).await.map(|_| ()) })
}

/// The request path's wait, with tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_first_request_waits_for_its_cluster_and_gives_up_after_the_timeout() {
    let (mut core, table, demand) = on_demand_core(Duration::from_secs(1));
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    let users: Arc<str> = "users".into();

    // Two concurrent first requests: one subscription, one signal.
    let first = spawn_fetch(&demand, &users);
    let second = spawn_fetch(&demand, &users);
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(demand.take_new(), ["users"], "asked once for both");
    assert!(demand.take_new().is_empty());
    assert_eq!(demand.pending(), ["users"]);
    core.demand(vec!["users".into()]);
    core.handle(response(CLUSTER, "c1", "2", &[cluster("users")]));
    core.handle(response(CLA, "e1", "3", &[cla("users", 8080)]));
    first.await.unwrap().expect("arrived within the timeout");
    second
        .await
        .unwrap()
        .expect("the same arrival ends both waits");
    assert!(demand.pending().is_empty());
    assert!(table.load().cluster("users").is_some());

    // orders never arrives: the wait ends at the timeout with a clear 503.
    let orders: Arc<str> = "orders".into();
    let started = tokio::time::Instant::now();
    let err = demand.fetch(&orders).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(err.kind, ErrorKind::DiscoveryTimeout);
    let response = err.to_response();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-weft-error"], "discovery-timeout");
    assert!(err.reason.contains("orders"), "{}", err.reason);
}

/// A route change that stops naming an awaited destination, then names it
/// again: the next request asks anew (a stale wait would time every later
/// request out, as the kv_documents e2e test once saw).
#[tokio::test(start_paused = true)]
async fn a_destination_dropped_while_awaited_is_asked_for_again_when_routed_again() {
    let (mut core, table, demand) = on_demand_core(Duration::from_secs(1));
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    let users: Arc<str> = "users".into();

    let first = spawn_fetch(&demand, &users);
    tokio::task::yield_now().await;
    assert_eq!(demand.take_new(), ["users"]);
    assert!(!core.demand(vec!["users".into()]).is_empty());

    // Before users arrives, its route moves to users-v2: users is unrouted.
    let started = tokio::time::Instant::now();
    core.handle(response(ROUTES, "r2", "2", &[routes("users-v2", None)]));
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::DiscoveryTimeout);
    assert!(err.reason.contains("given up"), "{}", err.reason);
    assert!(started.elapsed() < Duration::from_secs(1), "failed at once");
    assert!(demand.pending().is_empty());
    // The agent's answer to the old subscription arrives late.
    core.handle(response(CLUSTER, "c1", "3", &[cluster("users")]));

    // The route names users again: a request asks for it anew.
    core.handle(response(ROUTES, "r3", "4", &two_routes()));
    let second = spawn_fetch(&demand, &users);
    tokio::task::yield_now().await;
    assert_eq!(demand.take_new(), ["users"], "asked for again");
    let out = core.demand(vec!["users".into()]);
    assert_eq!(
        names(&out),
        [
            (CLUSTER, vec!["users".to_string()]),
            (CLA, vec!["users".to_string()])
        ]
    );
    core.handle(response(CLUSTER, "c2", "5", &[cluster("users")]));
    core.handle(response(CLA, "e2", "6", &[cla("users", 8080)]));
    second.await.unwrap().expect("arrived within the timeout");
    assert!(table.load().cluster("users").is_some());
}

// ---- incremental responses (proto/README.md, "Incremental responses")

fn incremental<M: Message>(
    t: &str,
    version: &str,
    nonce: &str,
    msgs: &[M],
    removed: &[&str],
) -> DiscoveryResponse {
    DiscoveryResponse {
        removed_resources: removed.iter().map(|name| name.to_string()).collect(),
        ..response(t, version, nonce, msgs)
    }
}

fn held_ports(core: &Core) -> Vec<(String, u32)> {
    let mut status = super::Status::default();
    core.publish(&mut status);
    status
        .accepted
        .assignments
        .values()
        .map(|m| (m.cluster_name.clone(), m.endpoints[0].port))
        .collect()
}

#[test]
fn an_incremental_response_is_merged_by_name_and_removed_names_dropped() {
    let (core, table) = core();
    // Preloaded: held whatever the routes name (not on demand).
    let mut core = core.with_required_clusters(["users".to_string(), "orders".to_string()]);
    core.set_incremental(true);
    core.handle(response(ROUTES, "r1", "1", &[routes("users", None)]));
    core.handle(incremental(CLUSTER, "c1", "2", &[cluster("users")], &["*"]));
    core.handle(incremental(
        CLA,
        "e1",
        "3",
        &[cla("users", 8080), cla("orders", 9090)],
        &["*"],
    ));
    assert!(table.load().virtual_host("users").is_some());

    // Only users changed: orders is kept as held.
    let out = core.handle(incremental(CLA, "e2", "4", &[cla("users", 8081)], &[]));
    assert!(out[0].error_detail.is_none());
    assert_eq!(out[0].version_info, "e2");
    assert_eq!(
        held_ports(&core),
        [("orders".into(), 9090), ("users".into(), 8081)]
    );

    core.handle(incremental::<pb::ClusterLoadAssignment>(
        CLA,
        "e3",
        "5",
        &[],
        &["orders"],
    ));
    assert_eq!(held_ports(&core), [("users".into(), 8081)]);

    // "*": whatever was held goes, the response is the whole set.
    core.handle(incremental(CLA, "e4", "6", &[cla("orders", 9091)], &["*"]));
    assert_eq!(held_ports(&core), [("orders".into(), 9091)]);
}

#[test]
fn a_nacked_incremental_response_leaves_the_held_set_as_it_was() {
    let (core, table) = core();
    // Preloaded: held whatever the routes name (not on demand).
    let mut core = core.with_required_clusters(["users".to_string(), "orders".to_string()]);
    core.set_incremental(true);
    core.handle(response(ROUTES, "r1", "1", &[routes("users", None)]));
    core.handle(incremental(CLUSTER, "c1", "2", &[cluster("users")], &["*"]));
    core.handle(incremental(
        CLA,
        "e1",
        "3",
        &[cla("users", 8080), cla("orders", 9090)],
        &["*"],
    ));
    let before = table.load_full();

    // A bad users and the removal of orders, rejected as a whole.
    let out = core.handle(incremental(
        CLA,
        "e2",
        "4",
        &[cla("users", 70000)],
        &["orders"],
    ));
    let nack = &out[0];
    assert_eq!(nack.version_info, "e1", "still holding e1");
    assert!(
        nack.error_detail
            .as_ref()
            .unwrap()
            .message
            .contains("users"),
        "{nack:?}"
    );
    assert!(Arc::ptr_eq(&before, &table.load_full()), "table untouched");
    assert_eq!(
        held_ports(&core),
        [("orders".into(), 9090), ("users".into(), 8080)]
    );

    // The agent's next response is relative to e1, which we still hold.
    core.handle(incremental(CLA, "e3", "5", &[cla("orders", 9092)], &[]));
    assert_eq!(
        held_ports(&core),
        [("orders".into(), 9092), ("users".into(), 8080)]
    );
}

#[test]
fn incremental_updates_put_a_cluster_in_the_table_only_once_both_halves_arrived() {
    let (core, table) = core();
    let mut core = core.with_required_clusters(["users".to_string(), "users-v2".to_string()]);
    core.set_incremental(true);
    core.handle(response(ROUTES, "r1", "1", &[routes("users", None)]));
    core.handle(incremental(CLUSTER, "c1", "2", &[cluster("users")], &["*"]));
    core.handle(incremental(CLA, "e1", "3", &[cla("users", 8080)], &["*"]));
    assert!(table.load().cluster("users").is_some());

    core.handle(incremental(
        ROUTES,
        "r2",
        "4",
        &[routes("users-v2", None)],
        &[],
    ));
    core.handle(incremental(CLUSTER, "c2", "5", &[cluster("users-v2")], &[]));
    assert!(
        table.load().cluster("users-v2").is_none(),
        "no endpoints for users-v2 yet: a request waits for them on demand"
    );
    core.handle(incremental(CLA, "e2", "6", &[cla("users-v2", 9090)], &[]));
    assert!(table.load().cluster("users-v2").is_some());
    assert!(
        table.load().cluster("users").is_some(),
        "the held users cluster stays through both merges"
    );
}

#[test]
fn without_the_agents_incremental_header_each_response_is_the_whole_set() {
    let (core, _) = core();
    let mut core = core.with_required_clusters(["users".to_string(), "orders".to_string()]);
    core.handle(response(
        CLA,
        "e1",
        "1",
        &[cla("users", 8080), cla("orders", 9090)],
    ));
    core.handle(response(CLA, "e2", "2", &[cla("users", 8081)]));
    assert_eq!(held_ports(&core), [("users".into(), 8081)]);
}

#[test]
fn an_idle_dropped_cluster_does_not_come_back_with_the_next_incremental_merge() {
    let (core, table) = core();
    let demand = Arc::new(OnDemand::new(table.clone(), Duration::from_secs(1)));
    let mut core = core.with_on_demand(demand.clone(), Duration::from_secs(2));
    core.set_incremental(true);
    core.handle(response(ROUTES, "r1", "1", &two_routes()));
    core.demand(vec!["users".into(), "orders".into()]);
    let both = ["orders", "users"];
    core.handle(incremental(CLUSTER, "c1", "2", &both.map(cluster), &["*"]));
    core.handle(incremental(
        CLA,
        "e1",
        "3",
        &both.map(|name| cla(name, 8080)),
        &["*"],
    ));
    assert_eq!(table.load().clusters.len(), 2);

    // orders goes idle; users is still called.
    demand.set_now(5);
    demand.touch(&table.load().clusters["users"].shared);
    core.sweep();
    assert!(table.load().cluster("orders").is_none());

    // The agent no longer sends orders (unsubscribed), nor names it removed:
    // a change of users alone must not bring orders back.
    core.handle(incremental(CLUSTER, "c2", "4", &[cluster("users")], &[]));
    core.handle(incremental(CLA, "e2", "5", &[cla("users", 8081)], &[]));
    assert_eq!(held_ports(&core), [("users".into(), 8081)]);
    assert!(table.load().cluster("orders").is_none(), "still dropped");
}

/// The torn-read check: one thread publishes two policies in turn as fast
/// as it can (A: deny `billing`, JWT on, PERMISSIVE, HTTP/2 to the app; B:
/// allow, no JWT, STRICT, auto), through the xDS client's own path, while
/// readers judge requests through the inbound snapshot layer as the
/// inbound stack does. Every request must see all of A or all of B.
#[test]
fn a_request_never_sees_parts_of_two_inbound_policies() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use futures_util::FutureExt as _;
    use http::HeaderValue;
    use tower::{Layer as _, Service as _};

    use crate::body::{BufferedBody, RequestBody};
    use crate::inbound::snapshot::InboundSnapshotLayer;
    use crate::model::Direction;
    use crate::mtls::MtlsMode;
    use crate::table::cluster::Protocol;
    use crate::table::request::{ProxyRequest, Received, RequestCtx, Snapshot};

    let mut a = policy("billing", pb::Action::Deny);
    a.jwt = Some(jwt_policy(JWT_JSON));
    a.mtls_mode = pb::MtlsMode::Permissive.into();
    a.app_protocol = pb::cluster::Protocol::Http2.into();
    let b = policy("billing", pb::Action::Allow);

    let (mut core, table) = core();
    let done = AtomicBool::new(false);
    let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let (table, done, seen) = (table.clone(), &done, &seen);
            scope.spawn(move || {
                // What a request judged below the snapshot layer saw.
                let probe = tower::service_fn(|req: ProxyRequest<Snapshot>| {
                    let policy = req.target.inbound_policy();
                    let head = http::Request::get("/").body(()).unwrap();
                    let parts = [
                        policy.authz.decide(Some("billing"), &head).is_err(),
                        policy.authn.is_some(),
                        policy.mtls == MtlsMode::Permissive,
                        policy.app_protocol == Protocol::Http2,
                    ];
                    futures_util::future::ready(Ok::<_, std::convert::Infallible>(parts))
                });
                let mut stack = InboundSnapshotLayer::new(table).layer(probe);
                while !done.load(Ordering::Relaxed) {
                    let req = ProxyRequest {
                        http: http::Request::new(RequestBody::Buffered(BufferedBody {
                            data: None,
                            trailers: None,
                        })),
                        ctx: RequestCtx::new(
                            Direction::Inbound,
                            "127.0.0.1:1".parse().unwrap(),
                            HeaderValue::from_static("127.0.0.1"),
                        ),
                        target: Received,
                    };
                    let Some(Ok(parts)) = stack.call(req).now_or_never() else {
                        unreachable!("the probe answers at once")
                    };
                    let a_or_b = parts.iter().all(|p| *p) || parts.iter().all(|p| !*p);
                    assert!(a_or_b, "parts of two policies in one request: {parts:?}");
                    seen[usize::from(parts[0])].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // At least 400 versions, and on until the readers have seen both
        // (on a loaded machine they may not run at all during the first
        // 400); bounded, so a reader that never runs fails the test below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let both_seen = || seen.iter().all(|n| n.load(Ordering::Relaxed) > 0);
        let mut version = 0u64;
        while version < 400 || (!both_seen() && std::time::Instant::now() < deadline) {
            version += 1;
            let (name, next) = if version % 2 == 1 {
                ("a", &a)
            } else {
                ("b", &b)
            };
            let out = core.handle(response(
                POLICY,
                &version.to_string(),
                &format!("{name}{version}"),
                std::slice::from_ref(next),
            ));
            assert!(out[0].error_detail.is_none(), "{:?}", out[0].error_detail);
        }
        done.store(true, Ordering::Relaxed);
    });
    let [b_seen, a_seen] = seen.map(|n| n.into_inner());
    assert!(
        a_seen > 0 && b_seen > 0,
        "the readers saw both policies (A {a_seen}, B {b_seen} times)"
    );
}

/// A gateway's core: `web` is its name; each `Gateway` it accepts is
/// recorded (by listener names) in `seen`.
fn gateway_core() -> (Core, Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
    let (core, _) = core();
    let seen: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let record = seen.clone();
    let core = core.with_gateway(Box::new(move |gateway: Option<&pb::Gateway>| {
        let listeners: Vec<String> = gateway
            .map(|g| g.listeners.iter().map(|l| l.name.clone()).collect())
            .unwrap_or_default();
        if listeners.iter().any(|name| name == "refused") {
            return Err(vec!["listeners[0].port: cannot bind".into()]);
        }
        record.lock().unwrap().push(listeners);
        Ok(())
    }));
    (core, seen)
}

fn gateway(listener: &str) -> pb::Gateway {
    pb::Gateway {
        name: "web".into(),
        listeners: vec![pb::GatewayListener {
            name: listener.into(),
            ..Default::default()
        }],
        trusted_hops: 0,
    }
}

#[test]
fn a_gateway_subscribes_to_its_own_gateway_and_is_ready_only_with_it_whatever_arrives_last() {
    use weft_proto::type_url::GATEWAY;
    for gateway_first in [true, false] {
        let (mut core, seen) = gateway_core();
        let opening = core.initial_requests();
        let asked: Vec<_> = opening
            .iter()
            .filter(|r| r.type_url == GATEWAY)
            .map(|r| r.resource_names.clone())
            .collect();
        assert_eq!(asked, [vec!["web".to_string()]]);
        let gateway_response = response(GATEWAY, "g1", "n1", &[gateway("public")]);
        let rest = [
            response(ROUTES, "r1", "n2", &[routes("users", None)]),
            response(POLICY, "p1", "n3", &[policy("web", pb::Action::Allow)]),
        ];
        if gateway_first {
            core.handle(gateway_response.clone());
            assert!(!core.is_ready());
        }
        for r in rest {
            core.handle(r);
        }
        assert_eq!(core.is_ready(), gateway_first);
        if !gateway_first {
            assert_eq!(core.waiting_for(), "Gateway");
            core.handle(gateway_response);
        }
        assert!(core.is_ready(), "gateway first: {gateway_first}");
        assert_eq!(*seen.lock().unwrap(), [vec!["public".to_string()]]);
    }
}

#[test]
fn a_gateway_the_gateway_cannot_apply_is_nacked_and_the_last_good_one_stays() {
    use weft_proto::type_url::GATEWAY;
    let (mut core, seen) = gateway_core();
    core.handle(response(GATEWAY, "g1", "n1", &[gateway("public")]));
    let answer = core.handle(response(GATEWAY, "g2", "n2", &[gateway("refused")]));
    let nack = answer[0].error_detail.as_ref().expect("a NACK");
    assert!(
        nack.message
            .contains("Gateway web: listeners[0].port: cannot bind"),
        "{}",
        nack.message
    );
    assert_eq!(answer[0].version_info, "g1");
    assert_eq!(*seen.lock().unwrap(), [vec!["public".to_string()]]);
}
