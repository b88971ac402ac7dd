//! The agent never builds what a sidecar refuses. Consul accepts service
//! names that cannot be hosts (`<b id="x">`, names with spaces); a route
//! table naming one as a domain made every sidecar refuse the whole push, so
//! one odd registration froze routing for the mesh. Here every resource the
//! agent's snapshot builder makes for a catalog of awkward names goes
//! through the sidecar's own compile step, which must accept it.

use weft_discovery::model::{Endpoint, MeshState};
use weft_discovery::snapshot::SnapshotBuilder;
use weft_proto::config::v1 as pb;
use weft_proto::type_url;
use weft_sidecar::xds::compile;

/// Names Consul would register: every printable ASCII character inside a
/// name, a few non-ASCII ones, and some whole awkward names.
fn awkward_service_names() -> Vec<String> {
    let mut names: Vec<String> = (0x20u8..0x7f)
        .map(|byte| format!("svc{}x", byte as char))
        .collect();
    names.extend(
        [
            "<b id=\"injected\">",
            "two words",
            "trailing ",
            "ünïcode",
            "名前",
            "UPPER",
            "a:8080",
            "a/b",
            "..",
            "-",
            "x.weft",
        ]
        .map(String::from),
    );
    names
}

fn decoded<M: prost::Message + Default>(
    snapshot: &weft_discovery::snapshot::Snapshot,
    type_url: &str,
) -> Vec<(String, M)> {
    snapshot
        .resources(type_url)
        .into_iter()
        .flatten()
        .map(|(name, resource)| {
            let message = M::decode(resource.any.value.as_ref())
                .unwrap_or_else(|error| panic!("{type_url} {name}: {error}"));
            (name.clone(), message)
        })
        .collect()
}

#[test]
fn every_resource_the_agent_builds_for_awkward_service_names_compiles_in_a_sidecar() {
    let mut state = MeshState::default();
    for (port, name) in (1000u16..).zip(awkward_service_names()) {
        state.services.insert(
            name,
            vec![Endpoint::healthy("127.0.0.1", port, &format!("i-{port}"))],
        );
    }
    let (snapshot, _) = SnapshotBuilder::new().build(&state);

    let routes = decoded::<pb::RouteConfiguration>(&snapshot, type_url::ROUTE_CONFIGURATION);
    let mut refused = Vec::new();
    for (name, route) in &routes {
        if let Err(errors) = compile::compile_routes(route) {
            refused.push(format!("RouteConfiguration {name:?}: {errors:?}"));
        }
    }
    for (name, cluster) in decoded::<pb::Cluster>(&snapshot, type_url::CLUSTER) {
        if let Err(errors) = compile::compile_cluster(&cluster) {
            refused.push(format!("Cluster {name:?}: {errors:?}"));
        }
    }
    for (name, assignment) in
        decoded::<pb::ClusterLoadAssignment>(&snapshot, type_url::CLUSTER_LOAD_ASSIGNMENT)
    {
        if let Err(errors) = compile::compile_assignment(&assignment) {
            refused.push(format!("ClusterLoadAssignment {name:?}: {errors:?}"));
        }
    }
    assert!(
        refused.is_empty(),
        "a sidecar would refuse:\n{}",
        refused.join("\n")
    );

    // Not vacuous: the routable names still have their route tables.
    let hosts: Vec<&str> = routes.iter().map(|(name, _)| name.as_str()).collect();
    for routable in [
        "svc-x", "svc.x", "svc_x", "svc0x", "UPPER", "..", "-", "x.weft",
    ] {
        assert!(hosts.contains(&routable), "no route table for {routable}");
    }
    assert!(!hosts.contains(&"two words"), "{hosts:?}");
}
