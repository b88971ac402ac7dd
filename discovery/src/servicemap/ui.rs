//! `/ui` and `/ui/graph.json` on the admin port: one self-contained page
//! (HTML, CSS and JS inline, no CDN) that polls the JSON every second and
//! draws services on a circle with the observed calls between them.
//!
//! Names come from Consul and sidecars: the page only ever puts them into
//! the DOM as text (`textContent`, SVG text nodes), never as markup.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::ads::{SidecarStatus, unix_now};
use crate::model::{Endpoint, Health};

use super::calls::{CallMap, Edge, WINDOW};

/// The page; it fetches `graph.json` beside it.
pub const PAGE: &str = include_str!("ui.html");

/// How often the page polls (milliseconds); sent with the data so the page
/// and the docs cannot disagree.
pub const POLL_MS: u64 = 1000;

#[derive(serde::Serialize)]
pub struct Graph {
    pub now_unix: u64,
    pub window_seconds: u64,
    pub poll_ms: u64,
    pub services: Vec<ServiceNode>,
    pub sidecars: Vec<SidecarStatus>,
    pub edges: Vec<Edge>,
}

#[derive(serde::Serialize)]
pub struct ServiceNode {
    pub name: String,
    /// Known to the catalog (a caller that only reports calls is not).
    pub in_catalog: bool,
    pub instances: Vec<Instance>,
}

#[derive(serde::Serialize)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub healthy: bool,
    pub meshed: bool,
}

/// The graph as of now: the catalog's services, the connected sidecars
/// and the edges of the call window. Services are sorted by name, which
/// is also their place on the page's circle.
pub fn graph(
    services: &BTreeMap<String, Vec<Endpoint>>,
    sidecars: Vec<SidecarStatus>,
    calls: &CallMap,
) -> Graph {
    let edges = calls.edges(Instant::now());
    let mut nodes: BTreeMap<&str, ServiceNode> = services
        .iter()
        .map(|(name, endpoints)| {
            let node = ServiceNode {
                name: name.clone(),
                in_catalog: true,
                instances: endpoints.iter().map(instance).collect(),
            };
            (name.as_str(), node)
        })
        .collect();
    for edge in &edges {
        for name in [&edge.source, &edge.destination] {
            nodes.entry(name.as_str()).or_insert_with(|| ServiceNode {
                name: name.clone(),
                in_catalog: false,
                instances: Vec::new(),
            });
        }
    }
    Graph {
        now_unix: unix_now(),
        window_seconds: WINDOW.as_secs(),
        poll_ms: POLL_MS,
        services: nodes.into_values().collect(),
        sidecars,
        edges,
    }
}

fn instance(endpoint: &Endpoint) -> Instance {
    let address = if endpoint.address.contains(':') {
        format!("[{}]:{}", endpoint.address, endpoint.port)
    } else {
        format!("{}:{}", endpoint.address, endpoint.port)
    };
    Instance {
        id: endpoint.instance_id.clone(),
        address,
        healthy: endpoint.health == Health::Healthy,
        meshed: endpoint.meshed,
    }
}
