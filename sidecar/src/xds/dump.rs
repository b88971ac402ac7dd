//! JSON renderings of the resources for `/config_dump`. prost types do not
//! derive serde, so each message is written out field by field (the same
//! names as the .proto files).

use serde_json::{Value, json};
use weft_proto::config::v1 as pb;

fn dur(d: &Option<prost_types::Duration>) -> Value {
    match d {
        None => Value::Null,
        Some(d) => json!(format!("{}s", d.seconds as f64 + f64::from(d.nanos) / 1e9)),
    }
}

fn string_matcher(m: &Option<pb::StringMatcher>) -> Value {
    use pb::string_matcher::Pattern;
    match m.as_ref().and_then(|m| m.pattern.as_ref()) {
        None => json!({"present": true}),
        Some(Pattern::Exact(v)) => json!({"exact": v}),
        Some(Pattern::Prefix(v)) => json!({"prefix": v}),
        Some(Pattern::Regex(v)) => json!({"regex": v}),
        Some(Pattern::Present(v)) => json!({"present": v}),
    }
}

fn mutation(m: &Option<pb::HeaderMutation>) -> Value {
    let Some(m) = m else { return Value::Null };
    let pairs = |l: &[pb::HeaderValue]| {
        l.iter()
            .map(|h| json!({"name": h.name, "value": h.value}))
            .collect::<Vec<_>>()
    };
    json!({"set": pairs(&m.set), "add": pairs(&m.add), "remove": m.remove})
}

pub fn route_configuration(rc: &pb::RouteConfiguration) -> Value {
    use pb::route_action::Destination;
    use pb::route_match::Path;
    let vhosts: Vec<Value> = rc
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes: Vec<Value> = vh
                .routes
                .iter()
                .map(|r| {
                    let m = r.r#match.clone().unwrap_or_default();
                    let path = match &m.path {
                        None => Value::Null,
                        Some(Path::Prefix(p)) => json!({"prefix": p}),
                        Some(Path::Exact(p)) => json!({"exact": p}),
                        Some(Path::Regex(p)) => json!({"regex": p}),
                    };
                    let a = r.action.clone().unwrap_or_default();
                    let dest = match &a.destination {
                        None => Value::Null,
                        Some(Destination::Cluster(c)) => json!({"cluster": c}),
                        Some(Destination::WeightedClusters(w)) => json!({"weighted_clusters":
                            w.clusters.iter().map(|c| json!({"name": c.name, "weight": c.weight})).collect::<Vec<_>>()}),
                    };
                    json!({
                        "name": r.name,
                        "match": {
                            "path": path,
                            "headers": m.headers.iter().map(|h| json!({"name": h.name, "matcher": string_matcher(&h.matcher), "invert": h.invert})).collect::<Vec<_>>(),
                            "methods": m.methods,
                            "query_parameters": m.query_parameters.iter().map(|q| json!({"name": q.name, "matcher": string_matcher(&q.matcher)})).collect::<Vec<_>>(),
                        },
                        "action": {
                            "destination": dest,
                            "prefix_rewrite": a.prefix_rewrite,
                            "host_rewrite": a.host_rewrite,
                            "timeout": dur(&a.timeout),
                        },
                        "request_headers": mutation(&r.request_headers),
                        "response_headers": mutation(&r.response_headers),
                    })
                })
                .collect();
            json!({"name": vh.name, "domains": vh.domains, "routes": routes})
        })
        .collect();
    json!({"name": rc.name, "virtual_hosts": vhosts})
}

pub fn cluster(c: &pb::Cluster) -> Value {
    let lb = pb::cluster::LbPolicy::try_from(c.lb_policy)
        .map(|p| p.as_str_name())
        .unwrap_or("INVALID");
    let proto = pb::cluster::Protocol::try_from(c.protocol)
        .map(|p| p.as_str_name())
        .unwrap_or("INVALID");
    json!({
        "name": c.name,
        "lb_policy": lb,
        "connect_timeout": dur(&c.connect_timeout),
        "request_timeout": dur(&c.request_timeout),
        "connection_pool": c.connection_pool.as_ref().map(|p| json!({
            "max_requests": p.max_requests,
            "max_idle_per_endpoint": p.max_idle_per_endpoint,
            "idle_timeout": dur(&p.idle_timeout),
        })),
        "protocol": proto,
        "circuit_breakers": c.circuit_breakers.as_ref().map(|t| json!({
            "max_retries": t.max_retries,
            "max_connections": t.max_connections,
            "max_pending_requests": t.max_pending_requests,
        })),
        "breaker": c.breaker.as_ref().map(|b| json!({
            "consecutive_failures": b.consecutive_failures,
            "failure_ratio": b.failure_ratio,
            "window": dur(&b.window),
            "min_requests": b.min_requests,
            "open_interval": dur(&b.open_interval),
            "max_open_interval": dur(&b.max_open_interval),
            "half_open_probes": b.half_open_probes,
            "failure_on": b.failure_on().map(|f| f.as_str_name()).collect::<Vec<_>>(),
            "grpc_statuses": b.grpc_statuses,
        })),
        "outlier_detection": c.outlier_detection.as_ref().map(|o| json!({
            "consecutive_5xx": o.consecutive_5xx,
            "consecutive_gateway_errors": o.consecutive_gateway_errors,
            "consecutive_unreachable": o.consecutive_unreachable,
            "base_ejection_time": dur(&o.base_ejection_time),
            "max_ejection_time": dur(&o.max_ejection_time),
            "max_ejection_percent": o.max_ejection_percent,
        })),
        "rate_limits": rate_limits(&c.rate_limits),
    })
}

/// Rate limits as configured; the Redis URL without its password.
fn rate_limits(r: &Option<pb::RateLimits>) -> Value {
    use pb::rate_limit::Algorithm;
    use pb::rate_limit_key::Kind;
    let Some(r) = r else { return Value::Null };
    let limits: Vec<Value> = r
        .limits
        .iter()
        .map(|l| {
            let key = match l.key.as_ref().and_then(|k| k.kind.as_ref()) {
                None => Value::Null,
                Some(Kind::Whole(_)) => json!("whole"),
                Some(Kind::Route(_)) => json!("route"),
                Some(Kind::Source(_)) => json!("source"),
                Some(Kind::ClientIp(_)) => json!("client_ip"),
                Some(Kind::Header(h)) => json!({"header": h}),
            };
            let algorithm = match &l.algorithm {
                None => Value::Null,
                Some(Algorithm::Local(b)) => json!({"local": {
                    "requests": b.requests, "per": dur(&b.per), "burst": b.burst}}),
                Some(Algorithm::Global(g)) => json!({"global": {
                    "requests": g.requests, "window": dur(&g.window)}}),
            };
            json!({"name": l.name, "key": key, "algorithm": algorithm, "max_keys": l.max_keys})
        })
        .collect();
    json!({
        "limits": limits,
        "redis": r.redis.as_ref().map(|s| json!({
            "url": crate::ratelimit::redis::redacted(&s.url),
            "timeout": dur(&s.timeout),
            "on_unavailable": pb::redis_settings::Unavailable::try_from(s.on_unavailable)
                .map(|u| u.as_str_name()).unwrap_or("INVALID"),
            "fail_closed_status": s.fail_closed_status,
            "ca_pem": (!s.ca_pem.is_empty()).then(|| format!("<{} bytes>", s.ca_pem.len())),
        })),
    })
}

pub fn assignment(c: &pb::ClusterLoadAssignment) -> Value {
    json!({
        "cluster_name": c.cluster_name,
        "endpoints": c.endpoints.iter().map(|e| json!({
            "address": e.address,
            "port": e.port,
            "health": pb::endpoint::Health::try_from(e.health).map(|h| h.as_str_name()).unwrap_or("INVALID"),
            "weight": e.weight,
            "locality": e.locality.as_ref().map(|l| json!({"region": l.region, "zone": l.zone})),
            "meshed": e.meshed,
            "instance_id": e.instance_id,
        })).collect::<Vec<_>>(),
    })
}

fn action(a: i32) -> &'static str {
    pb::Action::try_from(a)
        .map(|a| a.as_str_name())
        .unwrap_or("INVALID")
}

/// A gateway's listeners; a certificate by its source and chain, never
/// its private key.
pub fn gateway(g: &pb::Gateway) -> Value {
    use pb::tls_certificate::Source;
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let certificates: Vec<Value> = l
                .certificates
                .iter()
                .map(|c| match &c.source {
                    Some(Source::Files(files)) => json!({
                        "name": c.name,
                        "chain_file": files.chain_path,
                        "private_key_file": files.private_key_path,
                    }),
                    Some(Source::Pem(pem)) => json!({
                        "name": c.name,
                        "chain_pem": pem.chain_pem,
                        "private_key_pem": "[redacted]",
                    }),
                    None => json!({ "name": c.name }),
                })
                .collect();
            json!({
                "name": l.name,
                "address": l.address,
                "port": l.port,
                "protocol": l.protocol().as_str_name(),
                "hosts": l.hosts,
                "certificates": certificates,
            })
        })
        .collect();
    json!({ "name": g.name, "trusted_hops": g.trusted_hops, "listeners": listeners })
}

pub fn inbound_policy(p: &pb::InboundPolicy) -> Value {
    let permission = |perm: &pb::Permission| {
        use pb::permission::Path;
        let path = match &perm.path {
            None => Value::Null,
            Some(Path::PathExact(v)) => json!({"exact": v}),
            Some(Path::PathPrefix(v)) => json!({"prefix": v}),
            Some(Path::PathRegex(v)) => json!({"regex": v}),
        };
        json!({
            "action": action(perm.action),
            "path": path,
            "methods": perm.methods,
            "headers": perm.headers.iter().map(|h| json!({
                "name": h.name, "matcher": string_matcher(&h.matcher), "invert": h.invert,
            })).collect::<Vec<_>>(),
        })
    };
    json!({
        "service": p.service,
        "mtls_mode": pb::MtlsMode::try_from(p.mtls_mode).map(|m| m.as_str_name()).unwrap_or("INVALID"),
        "jwt": jwt(p.jwt.as_ref()),
        "default_action": action(p.default_action),
        "opaque_tcp": p.opaque_tcp,
        "app_protocol": pb::cluster::Protocol::try_from(p.app_protocol).map(|m| m.as_str_name()).unwrap_or("INVALID"),
        "rate_limits": rate_limits(&p.rate_limits),
        "intentions": p.intentions.iter().map(|i| json!({
            "source": i.source,
            "action": action(i.action),
            "permissions": i.permissions.iter().map(permission).collect::<Vec<_>>(),
            "origin": i.origin,
        })).collect::<Vec<_>>(),
    })
}

/// The JWT policy as the document would write it, shared secrets redacted
/// (the dump is for debugging; a secret in it would end up in tickets).
fn jwt(sent: Option<&pb::JwtPolicy>) -> Value {
    let Some(sent) = sent else {
        return Value::Null;
    };
    let mut policy = match crate::authn::AuthnConfig::from_proto(sent) {
        Ok(config) => serde_json::to_value(config).unwrap_or(Value::Null),
        Err(errors) => json!(format!("<not a policy: {errors}>")),
    };
    if let Some(providers) = policy.get_mut("providers").and_then(Value::as_array_mut) {
        for provider in providers {
            if let Some(secret) = provider.get_mut("shared_secret") {
                *secret = json!("<redacted>");
            }
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dumped_jwt_policy_never_shows_a_shared_secret() {
        let dumped = inbound_policy(&pb::InboundPolicy {
            service: "users".into(),
            jwt: Some(pb::JwtPolicy {
                providers: vec![pb::JwtProvider {
                    name: "ci".into(),
                    issuer: "ci".into(),
                    audiences: vec!["users".into()],
                    shared_secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA".into(),
                    ..Default::default()
                }],
                rules: Vec::new(),
            }),
            mtls_mode: pb::MtlsMode::Permissive.into(),
            ..Default::default()
        });
        assert_eq!(dumped["mtls_mode"], "PERMISSIVE");
        assert_eq!(dumped["jwt"]["providers"][0]["name"], "ci");
        assert_eq!(dumped["jwt"]["providers"][0]["shared_secret"], "<redacted>");
        assert!(!dumped.to_string().contains("c2VjcmV0"));
    }
}
