//! Validation and compilation of xDS resources into the data path's types.
//!
//! Each resource is checked completely and every problem is reported with
//! its field path (`virtual_hosts[0].routes[2].match.headers[0].regex:
//! invalid regex ...`), so one NACK tells the operator everything. A
//! resource is compiled once when accepted (regexes, header names, weights);
//! [`build_table`] then only assembles Arcs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use weft_proto::config::v1 as pb;

use crate::matcher::{
    PathMatch, QueryMatch, RouteMatch, header_matches, header_name, methods, string_match,
};
use crate::mtls::MeshTls;
use crate::nack::Errors;
use crate::table::cluster::{ClusterShared, Health, Protocol};
use crate::table::{
    Cluster, ClusterSettings, Destination, Endpoint, EndpointAddr, HeaderMutation, LbPolicy,
    PrefixRewrite, Route, RouteAction, RoutingTable, VirtualHost, WeightedClusters,
};
use crate::upstream::{ConnectionLimit, Dns, PoolSettings, UpstreamClient};
use weft_certs::IdentityStore;

/// A route table, compiled.
#[derive(Debug)]
pub struct CompiledRoutes {
    /// `(domains, virtual host)` in order.
    pub vhosts: Vec<(Vec<String>, Arc<VirtualHost>)>,
    /// Every cluster the routes name.
    pub clusters: BTreeSet<String>,
}

/// One endpoint of an assignment, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    pub addr: EndpointAddr,
    pub health: Health,
    pub weight: u32,
    pub meshed: bool,
    pub instance_id: String,
    pub zone: String,
}

fn mutation(m: Option<&pb::HeaderMutation>, path: &str, errs: &mut Errors) -> HeaderMutation {
    let mut out = HeaderMutation::default();
    let Some(m) = m else { return out };
    let pairs = |list: &[pb::HeaderValue], what: &str, errs: &mut Errors| {
        let mut v = Vec::new();
        for (i, hv) in list.iter().enumerate() {
            let p = format!("{path}.{what}[{i}]");
            let name = header_name(&hv.name, &format!("{p}.name"), errs);
            let value = weft_rules::header::check_value(&hv.value)
                .map_err(|reason| errs.at(&format!("{p}.value"), reason))
                .ok();
            if let (Some(n), Some(val)) = (name, value) {
                v.push((n, val));
            }
        }
        v
    };
    out.set = pairs(&m.set, "set", errs);
    out.add = pairs(&m.add, "add", errs);
    for (i, name) in m.remove.iter().enumerate() {
        if let Some(n) = header_name(name, &format!("{path}.remove[{i}]"), errs) {
            out.remove.push(n);
        }
    }
    out
}

fn route(
    r: &pb::Route,
    path: &str,
    clusters: &mut BTreeSet<String>,
    errs: &mut Errors,
) -> Option<Route> {
    use pb::route_match::Path;
    let before = errs.0.len();
    let m = r.r#match.clone().unwrap_or_default();
    let path_match = match &m.path {
        None => PathMatch::Any,
        Some(Path::Exact(p)) => PathMatch::Exact(p.clone()),
        Some(Path::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(Path::Regex(r)) => match weft_rules::regex::compile_full(r) {
            Ok(re) => PathMatch::Regex(re),
            Err(reason) => {
                errs.at(&format!("{path}.match.regex"), reason);
                PathMatch::Any
            }
        },
    };
    let headers = header_matches(&m.headers, &format!("{path}.match.headers"), errs);
    let methods = methods(&m.methods, &format!("{path}.match.methods"), errs);
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        let p = format!("{path}.match.query_parameters[{i}]");
        if let Err(reason) = weft_rules::name::check_query_parameter_name(&q.name) {
            errs.at(&format!("{p}.name"), reason);
        }
        if let Some(matcher) = string_match(q.matcher.as_ref(), &p, errs) {
            query.push(QueryMatch {
                name: q.name.clone(),
                matcher,
            });
        }
    }

    let action = r.action.clone().unwrap_or_default();
    use pb::route_action::Destination as D;
    let destination = match &action.destination {
        None => {
            errs.at(
                &format!("{path}.action"),
                "no destination (cluster or weighted_clusters)",
            );
            None
        }
        Some(D::Cluster(c)) if c.is_empty() => {
            errs.at(&format!("{path}.action.cluster"), "must not be empty");
            None
        }
        Some(D::Cluster(c)) => {
            clusters.insert(c.clone());
            Some(Destination::Cluster(c.as_str().into()))
        }
        Some(D::WeightedClusters(w)) => {
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    errs.at(
                        &format!("{path}.action.weighted_clusters.clusters[{i}].name"),
                        "must not be empty",
                    );
                }
            }
            let weighted = weft_rules::split::check_weights(w.clusters.iter().map(|c| c.weight))
                .map_err(|reason| errs.at(&format!("{path}.action.weighted_clusters"), reason))
                .ok()
                .and_then(|()| {
                    WeightedClusters::new(
                        w.clusters
                            .iter()
                            .map(|c| (Arc::from(c.name.as_str()), c.weight)),
                    )
                });
            weighted.map(|wc| {
                for (_, name) in &wc.entries {
                    clusters.insert(name.to_string());
                }
                Destination::Weighted(wc)
            })
        }
    };
    let prefix_rewrite = if action.prefix_rewrite.is_empty() {
        None
    } else {
        match &m.path {
            Some(Path::Prefix(p)) => Some(PrefixRewrite {
                matched_prefix: p.clone(),
                replacement: action.prefix_rewrite.clone(),
            }),
            _ => {
                errs.at(
                    &format!("{path}.action.prefix_rewrite"),
                    "only allowed on a prefix path match",
                );
                None
            }
        }
    };
    let host_rewrite = if action.host_rewrite.is_empty() {
        None
    } else {
        match weft_rules::name::check_authority(&action.host_rewrite) {
            Ok(_) => HeaderValue::from_str(&action.host_rewrite).ok(),
            Err(reason) => {
                errs.at(&format!("{path}.action.host_rewrite"), reason);
                None
            }
        }
    };
    let timeout = match action
        .timeout
        .as_ref()
        .map(weft_rules::duration::from_proto)
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            errs.at(&format!("{path}.action.timeout"), e);
            None
        }
    };
    let retry = action.retry_policy.as_ref().and_then(|p| {
        match crate::retry::policy::compile(p, &format!("{path}.action.retry_policy")) {
            Ok(policy) => Some(Arc::new(policy)),
            Err(errors) => {
                errs.0.extend(errors);
                None
            }
        }
    });
    let request_headers = mutation(
        r.request_headers.as_ref(),
        &format!("{path}.request_headers"),
        errs,
    );
    let response_headers = mutation(
        r.response_headers.as_ref(),
        &format!("{path}.response_headers"),
        errs,
    );
    let cors = r
        .cors
        .as_ref()
        .and_then(|cors| crate::cors::compile(cors, &format!("{path}.cors"), errs))
        .map(Arc::new);
    let compression = r
        .compression
        .as_ref()
        .and_then(|c| crate::compression::compile(c, &format!("{path}.compression"), errs))
        .map(Arc::new);
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| crate::cache::compile(c, &format!("{path}.cache"), errs))
        .map(Arc::new);
    let validation = r
        .validation
        .as_ref()
        .and_then(|v| crate::validation::compile(v, &format!("{path}.validation"), errs))
        .map(Arc::new);
    if errs.0.len() > before {
        return None;
    }
    Some(Route {
        name: r.name.as_str().into(),
        matcher: RouteMatch {
            path: path_match,
            headers,
            methods,
            query,
        },
        action: RouteAction {
            destination: destination?,
            prefix_rewrite,
            host_rewrite,
            timeout,
            retry,
        },
        request_headers,
        response_headers,
        cors,
        compression,
        cache,
        validation,
    })
}

/// Compiles a RouteConfiguration; on error, every problem found.
pub fn compile_routes(rc: &pb::RouteConfiguration) -> Result<CompiledRoutes, Vec<String>> {
    let mut errs = Errors(Vec::new());
    if rc.name.is_empty() {
        errs.at("name", "must not be empty");
    }
    let mut clusters = BTreeSet::new();
    let mut vhosts = Vec::new();
    let mut seen = BTreeSet::new();
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let vpath = format!("virtual_hosts[{vi}]");
        if vh.domains.is_empty() {
            errs.at(&format!("{vpath}.domains"), "must name at least one domain");
        }
        let mut domains = Vec::new();
        for (di, d) in vh.domains.iter().enumerate() {
            let lower = d.to_ascii_lowercase();
            let host = crate::table::strip_port(&lower).to_owned();
            if let Err(reason) = weft_rules::name::check_domain(&host) {
                errs.at(&format!("{vpath}.domains[{di}]"), reason);
            } else if !seen.insert(host.clone()) {
                errs.at(
                    &format!("{vpath}.domains[{di}]"),
                    format!("domain {d:?} listed twice"),
                );
            } else {
                domains.push(host);
            }
        }
        let mut routes = Vec::new();
        for (ri, r) in vh.routes.iter().enumerate() {
            if let Some(r) = route(
                r,
                &format!("{vpath}.routes[{ri}]"),
                &mut clusters,
                &mut errs,
            ) {
                routes.push(r);
            }
        }
        vhosts.push((
            domains,
            Arc::new(VirtualHost {
                name: format!("{}/{}", rc.name, vh.name),
                routes,
            }),
        ));
    }
    errs.into_result(CompiledRoutes { vhosts, clusters })
}

/// Compiles a Cluster into settings; defaults are those of cluster.proto.
pub fn compile_cluster(c: &pb::Cluster) -> Result<ClusterSettings, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let mut s = ClusterSettings::default();
    if c.name.is_empty() {
        errs.at("name", "must not be empty");
    }
    s.lb = match pb::cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(pb::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(pb::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Err(_) => {
            errs.at("lb_policy", format!("unknown value {}", c.lb_policy));
            LbPolicy::LeastRequest
        }
    };
    s.protocol = protocol(c.protocol).unwrap_or_else(|e| {
        errs.at("protocol", e);
        Protocol::Auto
    });
    if !c.identity.is_empty() {
        match c.identity.parse::<weft_certs::SpiffeId>() {
            Ok(id) => s.identity = Some(id),
            Err(e) => errs.at("identity", e.to_string()),
        }
    }
    if let Some(d) = &c.connect_timeout {
        match weft_rules::duration::from_proto(d) {
            // Zero would fail every connect; read it as "default".
            Ok(d) if d.is_zero() => {}
            Ok(d) => s.pool.connect_timeout = d,
            Err(e) => errs.at("connect_timeout", e),
        }
    }
    if let Some(d) = &c.request_timeout {
        match weft_rules::duration::from_proto(d) {
            Ok(d) if d.is_zero() => s.request_timeout = None,
            Ok(d) => s.request_timeout = Some(d),
            Err(e) => errs.at("request_timeout", e),
        }
    }
    if let Some(p) = &c.retry_policy {
        match crate::retry::policy::compile(p, "retry_policy") {
            Ok(policy) => s.retry = Some(Arc::new(policy)),
            Err(errors) => errs.0.extend(errors),
        }
    }
    if let Some(p) = &c.connection_pool {
        if p.max_requests > 0 {
            s.max_requests = p.max_requests as usize;
        }
        if p.max_idle_per_endpoint > 0 {
            s.pool.max_idle_per_endpoint = p.max_idle_per_endpoint as usize;
        }
        if let Some(d) = &p.idle_timeout {
            match weft_rules::duration::from_proto(d) {
                Ok(d) => s.pool.idle_timeout = d,
                Err(e) => errs.at("connection_pool.idle_timeout", e),
            }
        }
    }
    let breaker = crate::breaker::compile::compile(c, &mut errs);
    s.thresholds = breaker.thresholds;
    s.breaker = breaker.breaker;
    s.outlier = crate::ejection::compile::compile(c, &mut errs);
    if let Some(limits) = &c.rate_limits {
        match crate::ratelimit::RateLimiter::compile(limits, &format!("out:{}", c.name)) {
            Ok(limiter) => s.rate_limits = Some(Arc::new(limiter)),
            Err(e) => errs.0.extend(e),
        }
    }
    errs.into_result(s)
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Validates a ClusterLoadAssignment.
pub fn compile_assignment(
    cla: &pb::ClusterLoadAssignment,
) -> Result<Vec<EndpointSpec>, Vec<String>> {
    let mut errs = Errors(Vec::new());
    if cla.cluster_name.is_empty() {
        errs.at("cluster_name", "must not be empty");
    }
    let mut out = Vec::with_capacity(cla.endpoints.len());
    for (i, e) in cla.endpoints.iter().enumerate() {
        let p = format!("endpoints[{i}]");
        let port = match u16::try_from(e.port) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                errs.at(
                    &format!("{p}.port"),
                    format!("{} is not a port (1-65535)", e.port),
                );
                None
            }
        };
        let addr = if let Ok(ip) = e.address.parse::<IpAddr>() {
            port.map(|port| EndpointAddr::Ip(SocketAddr::new(ip, port)))
        } else if valid_hostname(&e.address) {
            port.map(|port| EndpointAddr::Name {
                host: e.address.to_ascii_lowercase().into(),
                port,
            })
        } else {
            errs.at(
                &format!("{p}.address"),
                format!("{:?} is neither an IP nor a DNS name", e.address),
            );
            None
        };
        let health = match pb::endpoint::Health::try_from(e.health) {
            Ok(pb::endpoint::Health::Unknown) => Health::Unknown,
            Ok(pb::endpoint::Health::Healthy) => Health::Healthy,
            Ok(pb::endpoint::Health::Unhealthy) => Health::Unhealthy,
            Ok(pb::endpoint::Health::Draining) => Health::Draining,
            Err(_) => {
                errs.at(
                    &format!("{p}.health"),
                    format!("unknown value {}", e.health),
                );
                Health::Unknown
            }
        };
        if let Some(addr) = addr {
            out.push(EndpointSpec {
                addr,
                health,
                weight: e.weight.max(1),
                meshed: e.meshed,
                instance_id: e.instance_id.clone(),
                zone: e
                    .locality
                    .as_ref()
                    .map(|l| l.zone.clone())
                    .unwrap_or_default(),
            });
        }
    }
    errs.into_result(out)
}

/// An endpoint for the table, keeping the counters (and, when the pool
/// settings and the mTLS identity did not change, the pooled connections)
/// of the same address in the previous table. `mesh_tls` applies to meshed
/// endpoints only: a plain endpoint is an app outside the mesh. Its
/// connections count against the cluster's `limit`.
pub fn endpoint(
    spec: &EndpointSpec,
    pool: &PoolSettings,
    mesh_tls: Option<&MeshTls>,
    prev: Option<&Arc<Endpoint>>,
    dns: &Dns,
    limit: &Arc<ConnectionLimit>,
) -> Option<Arc<Endpoint>> {
    let authority = http::uri::Authority::try_from(spec.addr.to_string().as_str()).ok()?;
    let stats = prev.map(|p| p.stats.clone()).unwrap_or_default();
    let mesh_tls = mesh_tls.filter(|_| spec.meshed);
    let client = match prev {
        Some(p) if p.client.settings == *pool && p.client.mesh_identity() == mesh_tls => {
            p.client.clone()
        }
        _ => UpstreamClient::new(
            spec.addr.clone(),
            pool.clone(),
            dns.clone(),
            mesh_tls.cloned(),
            limit.clone(),
        ),
    };
    Some(Arc::new(Endpoint {
        addr: spec.addr.clone(),
        authority,
        health: spec.health,
        weight: spec.weight,
        meshed: spec.meshed,
        instance_id: spec.instance_id.clone(),
        zone: spec.zone.clone(),
        stats,
        client,
    }))
}

/// A Cluster's (or an InboundPolicy's app) protocol; an unknown value
/// (from a newer agent) is an error, never a silent guess.
pub(crate) fn protocol(value: i32) -> Result<Protocol, String> {
    match pb::cluster::Protocol::try_from(value) {
        Ok(pb::cluster::Protocol::Auto) => Ok(Protocol::Auto),
        Ok(pb::cluster::Protocol::Http1) => Ok(Protocol::Http1),
        Ok(pb::cluster::Protocol::Http2) => Ok(Protocol::Http2),
        Ok(pb::cluster::Protocol::Tcp) => Ok(Protocol::Tcp),
        Err(_) => Err(format!("unknown value {value}")),
    }
}

/// Assembles a table from the accepted resources, carrying per-cluster and
/// per-endpoint state over from `prev`. Routes go in as they are, a route
/// may name a cluster the table does not hold (discovered on demand).
pub fn build_table(
    prev: &RoutingTable,
    routes: &BTreeMap<String, CompiledRoutes>,
    clusters: &BTreeMap<String, ClusterSettings>,
    assignments: &BTreeMap<String, Vec<EndpointSpec>>,
    identity: Option<&Arc<IdentityStore>>,
    dns: &Dns,
) -> RoutingTable {
    let mut domains = HashMap::new();
    for (name, compiled) in routes {
        for (ds, vh) in &compiled.vhosts {
            for d in ds {
                if domains.contains_key(d.as_str()) {
                    tracing::warn!(domain = %d, route_config = %name, "domain already served by another route table; ignored here");
                    continue;
                }
                domains.insert(d.clone().into_boxed_str(), vh.clone());
            }
        }
    }
    // A cluster enters the table once its Cluster and its assignment have
    // both arrived: a request that finds it in the table has its endpoints
    // (one missing either waits for them in `split`, on demand).
    let names = clusters
        .keys()
        .filter(|name| assignments.contains_key(*name));
    let mut out = HashMap::new();
    for name in names {
        let settings = clusters.get(name).cloned().unwrap_or_default();
        let old = prev.clusters.get(name.as_str());
        let old_eps: HashMap<&EndpointAddr, &Arc<Endpoint>> = old
            .map(|c| c.endpoints.iter().map(|e| (&e.addr, e)).collect())
            .unwrap_or_default();
        // One TLS config per destination identity, shared by its endpoints.
        let mesh_tls = match (identity, &settings.identity) {
            (Some(store), Some(id)) => Some(MeshTls::new(store, id.clone())),
            _ => None,
        };
        let shared = match old {
            Some(c) => {
                // The breaker keeps its state unless its own settings
                // changed (then its counts mean something else).
                if c.settings.breaker != settings.breaker {
                    c.shared.breaker.reset();
                }
                c.shared.clone()
            }
            None => Arc::new(ClusterShared::default()),
        };
        let thresholds = &settings.thresholds;
        shared
            .connections
            .set_caps(thresholds.max_connections, thresholds.max_pending_requests);
        let eps = assignments
            .get(name)
            .map(|specs| {
                specs
                    .iter()
                    .filter_map(|s| {
                        let prev = old_eps.get(&s.addr).copied();
                        endpoint(
                            s,
                            &settings.pool,
                            mesh_tls.as_ref(),
                            prev,
                            dns,
                            &shared.connections,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name: Arc<str> = name.as_str().into();
        out.insert(
            name.clone(),
            Arc::new(Cluster::new(name, settings, eps, shared)),
        );
    }
    RoutingTable {
        domains,
        clusters: out,
        // Published by `Core::accept_policy`; a rebuild of the routes
        // keeps the policy in force.
        inbound: prev.inbound.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::route_action::Destination as D;

    fn prefix_route(prefix: &str, cluster: &str) -> pb::Route {
        pb::Route {
            name: String::new(),
            r#match: Some(pb::RouteMatch {
                path: Some(pb::route_match::Path::Prefix(prefix.into())),
                ..Default::default()
            }),
            action: Some(pb::RouteAction {
                destination: Some(D::Cluster(cluster.into())),
                ..Default::default()
            }),
            request_headers: None,
            response_headers: None,
            cors: None,
            compression: None,
            cache: None,
            validation: None,
        }
    }

    fn rc(routes: Vec<pb::Route>) -> pb::RouteConfiguration {
        pb::RouteConfiguration {
            name: "users".into(),
            virtual_hosts: vec![pb::VirtualHost {
                name: "users".into(),
                domains: vec!["users".into(), "users.weft".into()],
                routes,
            }],
        }
    }

    #[test]
    fn routes_compile_and_name_their_clusters() {
        let mut split = prefix_route("/", "x");
        split.action.as_mut().unwrap().destination =
            Some(D::WeightedClusters(pb::WeightedClusters {
                clusters: vec![
                    pb::ClusterWeight {
                        name: "orders".into(),
                        weight: 90,
                    },
                    pb::ClusterWeight {
                        name: "orders-v2".into(),
                        weight: 10,
                    },
                ],
            }));
        let c = compile_routes(&rc(vec![prefix_route("/api/", "users"), split])).unwrap();
        assert_eq!(
            c.clusters.iter().map(String::as_str).collect::<Vec<_>>(),
            ["orders", "orders-v2", "users"]
        );
        assert_eq!(c.vhosts[0].0, ["users", "users.weft"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut bad_regex = prefix_route("/", "users");
        bad_regex.r#match.as_mut().unwrap().path = Some(pb::route_match::Path::Regex("([".into()));
        let mut zero = prefix_route("/", "x");
        zero.action.as_mut().unwrap().destination =
            Some(D::WeightedClusters(pb::WeightedClusters {
                clusters: vec![pb::ClusterWeight {
                    name: "a".into(),
                    weight: 0,
                }],
            }));
        let mut bad_header = prefix_route("/", "users");
        bad_header.r#match.as_mut().unwrap().headers = vec![pb::HeaderMatcher {
            name: "bad header".into(),
            matcher: None,
            invert: false,
        }];
        let errs = compile_routes(&rc(vec![bad_regex, zero, bad_header])).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("virtual_hosts[0].routes[0].match.regex: invalid regex"));
        assert!(errs[1].contains("routes[1].action.weighted_clusters: the weights sum to 0"));
        assert!(errs[2].contains("routes[2].match.headers[0].name: `"));
    }

    #[test]
    fn retry_policies_compile_on_clusters_and_routes_and_bad_ones_name_their_field() {
        let policy = |max_attempts| pb::RetryPolicy {
            max_attempts,
            on_gateway_error: true,
            ..Default::default()
        };
        let cluster = compile_cluster(&pb::Cluster {
            name: "users".into(),
            retry_policy: Some(policy(3)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cluster.retry.unwrap().max_attempts, 3);
        assert!(
            compile_cluster(&pb::Cluster {
                name: "users".into(),
                ..Default::default()
            })
            .unwrap()
            .retry
            .is_none(),
            "no policy, no retries"
        );
        let errs = compile_cluster(&pb::Cluster {
            name: "users".into(),
            retry_policy: Some(policy(0)),
            ..Default::default()
        })
        .unwrap_err();
        assert!(errs[0].starts_with("retry_policy.max_attempts"), "{errs:?}");

        let mut route = prefix_route("/", "users");
        route.action.as_mut().unwrap().retry_policy = Some(policy(2));
        let compiled = compile_routes(&rc(vec![route.clone()])).unwrap();
        let action = &compiled.vhosts[0].1.routes[0].action;
        assert_eq!(action.retry.as_ref().unwrap().max_attempts, 2);
        route.action.as_mut().unwrap().retry_policy = Some(policy(11));
        let errs = compile_routes(&rc(vec![route])).unwrap_err();
        assert!(
            errs[0].starts_with("virtual_hosts[0].routes[0].action.retry_policy.max_attempts"),
            "{errs:?}"
        );
    }

    #[test]
    fn prefix_rewrite_needs_a_prefix_match() {
        let mut r = prefix_route("/", "users");
        r.r#match.as_mut().unwrap().path = Some(pb::route_match::Path::Exact("/x".into()));
        r.action.as_mut().unwrap().prefix_rewrite = "/y".into();
        let errs = compile_routes(&rc(vec![r])).unwrap_err();
        assert!(errs[0].contains("prefix_rewrite: only allowed on a prefix path match"));
    }

    #[test]
    fn cluster_defaults_and_overrides() {
        let s = compile_cluster(&pb::Cluster {
            name: "users".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s,
            ClusterSettings {
                // A destination's endpoints that cannot be reached are
                // ejected even without a document saying so.
                outlier: Some(crate::ejection::OutlierSettings::unreachable_default()),
                ..ClusterSettings::default()
            }
        );
        let s = compile_cluster(&pb::Cluster {
            name: "users".into(),
            lb_policy: pb::cluster::LbPolicy::RoundRobin as i32,
            request_timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            connection_pool: Some(pb::ConnectionPool {
                max_requests: 7,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.lb, LbPolicy::RoundRobin);
        assert_eq!(s.request_timeout, None, "explicit 0 disables the timeout");
        assert_eq!(s.max_requests, 7);
        assert!(
            compile_cluster(&pb::Cluster {
                name: "x".into(),
                lb_policy: 9,
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn assignments_validate_addresses() {
        let cla = pb::ClusterLoadAssignment {
            cluster_name: "users".into(),
            endpoints: vec![
                pb::Endpoint {
                    address: "10.0.0.1".into(),
                    port: 80,
                    weight: 0,
                    ..Default::default()
                },
                pb::Endpoint {
                    address: "users.service.consul".into(),
                    port: 8080,
                    ..Default::default()
                },
            ],
        };
        let eps = compile_assignment(&cla).unwrap();
        assert_eq!(eps[0].weight, 1, "weight 0 reads as 1");
        assert!(matches!(eps[1].addr, EndpointAddr::Name { .. }));
        let bad = pb::ClusterLoadAssignment {
            cluster_name: "users".into(),
            endpoints: vec![pb::Endpoint {
                address: "not valid!".into(),
                port: 70000,
                ..Default::default()
            }],
        };
        assert_eq!(compile_assignment(&bad).unwrap_err().len(), 2);
    }

    #[test]
    fn endpoint_state_survives_a_new_assignment() {
        let dns = Dns::default();
        let specs = |health| {
            vec![EndpointSpec {
                addr: EndpointAddr::Ip("127.0.0.1:9".parse().unwrap()),
                health,
                weight: 1,
                meshed: false,
                instance_id: "a".into(),
                zone: String::new(),
            }]
        };
        let clusters = BTreeMap::from([("users".to_string(), ClusterSettings::default())]);
        let t1 = build_table(
            &RoutingTable::default(),
            &BTreeMap::new(),
            &clusters,
            &BTreeMap::from([("users".to_string(), specs(Health::Healthy))]),
            None,
            &dns,
        );
        let e1 = t1.clusters["users"].endpoints[0].clone();
        e1.stats
            .requests
            .store(42, std::sync::atomic::Ordering::Relaxed);
        t1.clusters["users"]
            .shared
            .rr_position
            .store(5, std::sync::atomic::Ordering::Relaxed);
        let t2 = build_table(
            &t1,
            &BTreeMap::new(),
            &clusters,
            &BTreeMap::from([("users".to_string(), specs(Health::Unknown))]),
            None,
            &dns,
        );
        let c2 = &t2.clusters["users"];
        assert_eq!(c2.endpoints[0].health, Health::Unknown);
        assert!(Arc::ptr_eq(&c2.endpoints[0].stats, &e1.stats));
        assert_eq!(
            c2.shared
                .rr_position
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }
}
