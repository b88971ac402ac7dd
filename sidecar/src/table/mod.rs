//! The compiled, immutable routing table the data path reads.
//!
//! The xDS client builds a new [`RoutingTable`] from the accepted resources
//! and swaps it in atomically (`arc-swap`); a request loads the current
//! `Arc<RoutingTable>` once and keeps it until it finishes, so a config
//! change never affects a request half-way. Everything a request needs is
//! precomputed here: domains in a `HashMap`, regexes compiled, weighted
//! splits as cumulative weights, balancing schedules per cluster.
//!
//! The request model ([`request`]) lives here too: what a request records
//! on its way down (its table, route, cluster, endpoint) points into this
//! table, so the two sit together below the features and the stacks.
//!
//! Holding every destination's stats, the table is also what `/metrics`
//! reads them from ([`metrics`]).

pub mod cluster;
pub mod inbound;
pub mod metrics;
pub mod request;
pub mod tcp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub use crate::matcher::RouteMatch;
pub use crate::upstream::EndpointAddr;
pub use cluster::{Cluster, ClusterSettings, Endpoint, EndpointStats, LbPolicy};
pub use inbound::InboundPolicy;

#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Lower-case authority without port -> its virtual host.
    pub domains: HashMap<Box<str>, Arc<VirtualHost>>,
    /// Cluster name -> cluster (settings + endpoints).
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// The service's own inbound policy, swapped with the routes as one
    /// value (see [`InboundPolicy`]).
    pub inbound: Arc<InboundPolicy>,
}

impl RoutingTable {
    /// The virtual host for an authority as the client sent it
    /// (`users`, `users:80`, `USERS.weft`).
    pub fn virtual_host(&self, authority: &str) -> Option<&Arc<VirtualHost>> {
        let host = strip_port(authority);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.domains.get(host.to_ascii_lowercase().as_str())
        } else {
            self.domains.get(host)
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// This table's routes and clusters with another inbound policy: what
    /// the xDS client publishes when only the policy changed (rare; the
    /// maps hold `Arc`s, so this copies pointers).
    pub fn with_inbound(&self, inbound: Arc<InboundPolicy>) -> Self {
        Self {
            domains: self.domains.clone(),
            clusters: self.clusters.clone(),
            inbound,
        }
    }
}

/// `users:80` -> `users`, `[::1]:80` -> `[::1]`, `users` -> `users`.
pub fn strip_port(authority: &str) -> &str {
    // Drop any userinfo (`user@host`), which never names a host we serve.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
        _ => authority,
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    /// `<route config name>/<vhost name>`, for logs.
    pub name: String,
    /// Tried in order; the first match wins.
    pub routes: Vec<Route>,
}

impl VirtualHost {
    pub fn route_for<B>(&self, req: &http::Request<B>) -> Option<usize> {
        self.routes.iter().position(|r| r.matcher.matches(req))
    }
}

#[derive(Debug)]
pub struct Route {
    /// Shared, so that a span or log line keeps it without a copy.
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    /// `None`: no CORS on this route (`crate::cors`).
    pub cors: Option<Arc<crate::cors::CorsPolicy>>,
    /// `None`: no compression on this route (`crate::compression`).
    pub compression: Option<Arc<crate::compression::CompressionPolicy>>,
    /// `None`: no response cache on this route (`crate::cache`).
    pub cache: Option<Arc<crate::cache::CachePolicy>>,
    /// `None`: no validation on this route (`crate::validation`).
    pub validation: Option<Arc<crate::validation::ValidationPolicy>>,
}

#[derive(Debug)]
pub struct RouteAction {
    pub destination: Destination,
    /// Replaces the matched prefix (prefix routes only).
    pub prefix_rewrite: Option<PrefixRewrite>,
    /// Replaces the Host / :authority sent upstream.
    pub host_rewrite: Option<HeaderValue>,
    /// Overrides the cluster's request timeout; `Some(ZERO)` = no timeout.
    pub timeout: Option<Duration>,
    /// Replaces the cluster's retry policy for this route's requests.
    pub retry: Option<Arc<crate::retry::RetryPolicy>>,
}

#[derive(Debug)]
pub struct PrefixRewrite {
    pub matched_prefix: String,
    pub replacement: String,
}

#[derive(Debug)]
pub enum Destination {
    Cluster(Arc<str>),
    Weighted(WeightedClusters),
}

/// A weighted split, as cumulative weights: entry `i` is picked when a
/// uniform draw in `0..total` falls below `cumulative[i]` (and not below the
/// entry before it).
#[derive(Debug)]
pub struct WeightedClusters {
    pub entries: Vec<(u64, Arc<str>)>,
    pub total: u64,
}

impl WeightedClusters {
    /// Builds from `(name, weight)`; zero weights are dropped. `None` when
    /// every weight is zero.
    pub fn new(items: impl IntoIterator<Item = (Arc<str>, u32)>) -> Option<Self> {
        let mut total = 0u64;
        let mut entries = Vec::new();
        for (name, weight) in items {
            if weight == 0 {
                continue;
            }
            total += u64::from(weight);
            entries.push((total, name));
        }
        (total > 0).then_some(Self { entries, total })
    }

    /// The cluster for a draw in `0..total`.
    pub fn pick(&self, draw: u64) -> &Arc<str> {
        let i = self.entries.partition_point(|(cum, _)| *cum <= draw);
        // `draw < total` keeps `i` in range; clamp anyway for safety.
        &self.entries[i.min(self.entries.len() - 1)].1
    }
}

/// Header changes a route applies to the request or the response.
#[derive(Debug, Default)]
pub struct HeaderMutation {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Remove, then set, then add: a route can replace a header and append to it.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        assert_eq!(strip_port("users"), "users");
        assert_eq!(strip_port("users:80"), "users");
        assert_eq!(strip_port("users.weft:8080"), "users.weft");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("u@users:80"), "users");
    }

    #[test]
    fn vhost_lookup_is_case_insensitive_and_ignores_port() {
        let mut t = RoutingTable::default();
        let vh = Arc::new(VirtualHost {
            name: "users/users".into(),
            routes: vec![],
        });
        t.domains.insert("users".into(), vh.clone());
        t.domains.insert("users.weft".into(), vh);
        for a in ["users", "users:80", "USERS.weft", "users.weft:1234"] {
            assert!(t.virtual_host(a).is_some(), "{a}");
        }
        assert!(t.virtual_host("orders").is_none());
    }

    #[test]
    fn split_follows_weights_exactly_over_the_draw_space() {
        let w = WeightedClusters::new([
            (Arc::from("orders"), 90),
            (Arc::from("none"), 0),
            (Arc::from("orders-v2"), 10),
        ])
        .unwrap();
        assert_eq!(w.total, 100);
        let v2 = (0..100).filter(|d| &**w.pick(*d) == "orders-v2").count();
        assert_eq!(v2, 10);
        assert!(WeightedClusters::new([(Arc::from("a"), 0)]).is_none());
    }

    #[test]
    fn header_mutation_order() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let m = HeaderMutation {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("new"),
            )],
            add: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("more"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        m.apply(&mut h);
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["new", "more"]);
        assert!(!h.contains_key("x-gone"));
    }
}
