//! The agent never builds what a sidecar refuses, and never accepts a
//! document a sidecar would refuse.
//!
//! Consul accepts service names that cannot be hosts (`<b id="x">`, names
//! with spaces); a route table naming one as a domain made every sidecar
//! refuse the whole push, so one odd registration froze routing for the
//! mesh. Here every resource the agent's snapshot builder makes for a
//! catalog of awkward names goes through the sidecar's own compile step,
//! which must accept it.
//!
//! And a table of invalid documents goes through both ends: the agent's
//! document validation (what `weftctl validate` runs), and, with that
//! validation bypassed, the agent's translation into the resource it would
//! send and the sidecar's compile step (the NACK). Both must refuse, with
//! the same reason for the same field (the document names it as written,
//! the sidecar as the resource's field).

use bytes::Bytes;
use serde_json::{Value, json};
use weft_discovery::documents::{self, Document, DocumentKey};
use weft_discovery::model::{Endpoint, MeshState, RawDocument};
use weft_discovery::snapshot::SnapshotBuilder;
use weft_discovery::snapshot::policy::inbound_policy;
use weft_proto::config::v1 as pb;
use weft_proto::type_url;
use weft_sidecar::xds::{self, compile};

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

/// A document both ends must refuse: `field` is where the agent names the
/// problem in the document, `resource_field` where the sidecar names it in
/// the resource the agent would have sent.
struct Refused {
    key: &'static str,
    document: Value,
    field: &'static str,
    resource_field: &'static str,
}

fn refused(
    key: &'static str,
    document: Value,
    field: &'static str,
    resource_field: &'static str,
) -> Refused {
    Refused {
        key,
        document,
        field,
        resource_field,
    }
}

/// A route table of one route: `users` plus `route`'s members.
fn route(route: Value) -> Value {
    let mut one = json!({ "destination": "users" });
    for (name, value) in route.as_object().expect("an object") {
        one[name] = value.clone();
    }
    if one.get("split").is_some() {
        one.as_object_mut()
            .expect("an object")
            .remove("destination");
    }
    json!({ "routes": [one] })
}

/// A gateway of one plaintext listener `plain` on port 8080 for
/// `api.example.com`, plus `listener`'s members.
fn gateway(listener: Value) -> Value {
    let mut one = json!({ "name": "plain", "port": 8080, "hosts": ["api.example.com"] });
    for (name, value) in listener.as_object().expect("an object") {
        one[name] = value.clone();
    }
    json!({ "listeners": [one] })
}

/// A private key, PEM.
fn key_pem() -> String {
    rcgen::KeyPair::generate().expect("a key").serialize_pem()
}

/// A certificate document whose key is not its leaf's.
fn certificate_mismatched() -> Value {
    let leaf = rcgen::generate_simple_self_signed(vec!["api.example.com".to_owned()])
        .expect("a certificate");
    json!({ "chain_pem": leaf.cert.pem(), "private_key_pem": key_pem() })
}

/// A policy whose one intention lets `web` in with `permission`.
fn permission(permission: Value) -> Value {
    let mut rule = json!({ "action": "allow" });
    for (name, value) in permission.as_object().expect("an object") {
        rule[name] = value.clone();
    }
    json!({ "intentions": [ { "source": "web", "permissions": [rule] } ] })
}

/// A rate limit section of one limit named `l`, plus `redis` when given.
fn limits(limit: Value, redis: Option<Value>) -> Value {
    let mut one = json!({ "name": "l", "key": "whole" });
    for (name, value) in limit.as_object().expect("an object") {
        one[name] = value.clone();
    }
    let mut section = json!({ "limits": [one] });
    if let Some(redis) = redis {
        section["redis"] = redis;
    }
    json!({ "rate_limits": section })
}

const REDIS: &str = "redis://127.0.0.1:6379";

/// A PEM block the schema takes (whether it is a usable certificate is the
/// sidecar's to judge).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// A shared secret of 33 bytes (HS256 needs at least 32).
fn secret() -> String {
    "a".repeat(44)
}

/// A policy with one JWT provider (`ci`, HS256 with a good secret), with
/// `provider`'s members set (or, when null, removed), and `rules`.
fn jwt(provider: Value, rules: Value) -> Value {
    let mut one = json!({ "name": "ci", "issuer": "ci", "audiences": ["users"],
                          "shared_secret": secret() });
    for (name, value) in provider.as_object().expect("an object") {
        match value {
            Value::Null => {
                one.as_object_mut().expect("an object").remove(name);
            }
            value => one[name] = value.clone(),
        }
    }
    json!({ "jwt": { "providers": [one], "rules": rules } })
}

/// The invalid documents, by kind. Each breaks one rule of `weft-rules`.
fn refused_documents() -> Vec<Refused> {
    vec![
        // ---- Routes: regexes, header names and values, splits, hosts.
        refused(
            "routes/users",
            route(json!({ "match": { "path_regex": "^/items/[0-9+$" } })),
            "routes[0].match.path_regex",
            "virtual_hosts[0].routes[0].match.regex",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "path_regex": "a)(b" } })),
            "routes[0].match.path_regex",
            "virtual_hosts[0].routes[0].match.regex",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "path_regex": "(\\w{100}){100}" } })),
            "routes[0].match.path_regex",
            "virtual_hosts[0].routes[0].match.regex",
        ),
        refused(
            "routes/users",
            json!({ "routes": [ { "destination": "users" },
                                { "destination": "users", "match": { "path_regex": "(" } } ] }),
            "routes[1].match.path_regex",
            "virtual_hosts[0].routes[1].match.regex",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "headers": { "x-b": { "regex": "(" } } } })),
            "routes[0].match.headers.x-b.regex",
            "virtual_hosts[0].routes[0].match.headers[0].regex",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "query": { "q": { "regex": "[" } } } })),
            "routes[0].match.query.q.regex",
            "virtual_hosts[0].routes[0].match.query_parameters[0].regex",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "headers": { "bad name": "x" } } })),
            "routes[0].match.headers.bad name",
            "virtual_hosts[0].routes[0].match.headers[0].name",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "headers": { "x(y)": { "present": true } } } })),
            "routes[0].match.headers.x(y)",
            "virtual_hosts[0].routes[0].match.headers[0].name",
        ),
        refused(
            "routes/users",
            route(json!({ "split": [ { "destination": "orders", "weight": 0 },
                                     { "destination": "orders-v2", "weight": 0 } ] })),
            "routes[0].split",
            "virtual_hosts[0].routes[0].action.weighted_clusters",
        ),
        refused(
            "routes/users",
            route(json!({ "split": [ { "destination": "orders", "weight": 0 } ] })),
            "routes[0].split",
            "virtual_hosts[0].routes[0].action.weighted_clusters",
        ),
        refused(
            "routes/users",
            route(json!({ "request_headers": { "set": { "bad name": "v" } } })),
            "routes[0].request_headers.set.bad name",
            "virtual_hosts[0].routes[0].request_headers.set[0].name",
        ),
        refused(
            "routes/users",
            route(json!({ "request_headers": { "set": { "x-ok": "line\nbreak" } } })),
            "routes[0].request_headers.set.x-ok",
            "virtual_hosts[0].routes[0].request_headers.set[0].value",
        ),
        refused(
            "routes/users",
            route(json!({ "request_headers": { "add": { "a:b": "v" } } })),
            "routes[0].request_headers.add.a:b",
            "virtual_hosts[0].routes[0].request_headers.add[0].name",
        ),
        refused(
            "routes/users",
            route(json!({ "request_headers": { "add": { "x-nul": "a\u{0}b" } } })),
            "routes[0].request_headers.add.x-nul",
            "virtual_hosts[0].routes[0].request_headers.add[0].value",
        ),
        refused(
            "routes/users",
            route(json!({ "request_headers": { "remove": ["bad name"] } })),
            "routes[0].request_headers.remove[0]",
            "virtual_hosts[0].routes[0].request_headers.remove[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "response_headers": { "set": { "x-ok": "del\u{7f}" } } })),
            "routes[0].response_headers.set.x-ok",
            "virtual_hosts[0].routes[0].response_headers.set[0].value",
        ),
        refused(
            "routes/users",
            route(json!({ "response_headers": { "add": { "(x)": "v" } } })),
            "routes[0].response_headers.add.(x)",
            "virtual_hosts[0].routes[0].response_headers.add[0].name",
        ),
        refused(
            "routes/users",
            route(json!({ "response_headers": { "remove": ["x y"] } })),
            "routes[0].response_headers.remove[0]",
            "virtual_hosts[0].routes[0].response_headers.remove[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "host_rewrite": "bad host" })),
            "routes[0].host_rewrite",
            "virtual_hosts[0].routes[0].action.host_rewrite",
        ),
        refused(
            "routes/users",
            route(json!({ "match": { "query": { "": "x" } } })),
            "routes[0].match.query.",
            "virtual_hosts[0].routes[0].match.query_parameters[0].name",
        ),
        // ---- Routes: methods, aliases and retries, where the schema also
        // refuses the value and the rule's reason must win.
        refused(
            "routes/users",
            route(json!({ "match": { "methods": ["G T"] } })),
            "routes[0].match.methods[0]",
            "virtual_hosts[0].routes[0].match.methods[0]",
        ),
        refused(
            "routes/users",
            json!({ "aliases": ["bad host!"], "routes": [ { "destination": "users" } ] }),
            "aliases[0]",
            "virtual_hosts[0].domains[2]",
        ),
        refused(
            "routes/users",
            route(json!({ "retries": { "max_attempts": 11 } })),
            "routes[0].retries.max_attempts",
            "virtual_hosts[0].routes[0].action.retry_policy.max_attempts",
        ),
        refused(
            "routes/users",
            route(json!({ "retries": { "retriable_status_codes": [600] } })),
            "routes[0].retries.retriable_status_codes[0]",
            "virtual_hosts[0].routes[0].action.retry_policy.status_codes[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "retries": { "budget": { "ratio": 1.5 } } })),
            "routes[0].retries.budget.ratio",
            "virtual_hosts[0].routes[0].action.retry_policy.budget_ratio",
        ),
        // ---- Routes and policies: CORS.
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": ["https://app.example.com/"] } })),
            "routes[0].cors.allow_origins[0]",
            "virtual_hosts[0].routes[0].cors.allow_origins[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": [ { "regex": "(" } ] } })),
            "routes[0].cors.allow_origins[0].regex",
            "virtual_hosts[0].routes[0].cors.allow_origins[0].regex",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": [], "allow_credentials": true } })),
            "routes[0].cors.allow_origins",
            "virtual_hosts[0].routes[0].cors.allow_origins",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": ["*"], "allow_credentials": true } })),
            "routes[0].cors.allow_credentials",
            "virtual_hosts[0].routes[0].cors.allow_credentials",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": ["*"], "allow_methods": ["G T"] } })),
            "routes[0].cors.allow_methods[0]",
            "virtual_hosts[0].routes[0].cors.allow_methods[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": ["*"], "allow_headers": ["bad name"] } })),
            "routes[0].cors.allow_headers[0]",
            "virtual_hosts[0].routes[0].cors.allow_headers[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": ["*"], "expose_headers": ["x(y)"] } })),
            "routes[0].cors.expose_headers[0]",
            "virtual_hosts[0].routes[0].cors.expose_headers[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "cors": { "allow_origins": ["*"], "max_age": "48h" } })),
            "routes[0].cors.max_age",
            "virtual_hosts[0].routes[0].cors.max_age",
        ),
        refused(
            "policies/users",
            json!({ "cors": { "allow_origins": ["*"], "allow_credentials": true } }),
            "cors.allow_credentials",
            "cors.allow_credentials",
        ),
        refused(
            "policies/users",
            json!({ "cors": { "allow_origins": ["app.example.com"] } }),
            "cors.allow_origins[0]",
            "cors.allow_origins[0]",
        ),
        // ---- Compression: encodings, bounds and media types.
        refused(
            "routes/users",
            route(json!({ "compression": { "encodings": ["gzip", "br", "gzip"] } })),
            "routes[0].compression.encodings[2]",
            "virtual_hosts[0].routes[0].compression.encodings[2]",
        ),
        refused(
            "routes/users",
            route(json!({ "compression": { "encodings": ["deflate"] } })),
            "routes[0].compression.encodings[0]",
            "virtual_hosts[0].routes[0].compression.encodings[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "compression": { "min_length": 2_000_000_000u64 } })),
            "routes[0].compression.min_length",
            "virtual_hosts[0].routes[0].compression.min_length",
        ),
        refused(
            "routes/users",
            route(json!({ "compression": { "content_types": ["text/html; charset=utf-8"] } })),
            "routes[0].compression.content_types[0]",
            "virtual_hosts[0].routes[0].compression.content_types[0]",
        ),
        refused(
            "routes/users",
            route(json!({ "compression": { "gzip_level": 0 } })),
            "routes[0].compression.gzip_level",
            "virtual_hosts[0].routes[0].compression.gzip_level",
        ),
        refused(
            "routes/users",
            route(json!({ "compression": { "brotli_quality": 12 } })),
            "routes[0].compression.brotli_quality",
            "virtual_hosts[0].routes[0].compression.brotli_quality",
        ),
        refused(
            "routes/users",
            route(json!({ "compression": { "zstd_level": 20 } })),
            "routes[0].compression.zstd_level",
            "virtual_hosts[0].routes[0].compression.zstd_level",
        ),
        refused(
            "policies/users",
            json!({ "compression": { "content_types": ["Text/*"] } }),
            "compression.content_types[0]",
            "compression.content_types[0]",
        ),
        refused(
            "policies/users",
            json!({ "compression": { "zstd_level": 0 } }),
            "compression.zstd_level",
            "compression.zstd_level",
        ),
        // ---- Cache: bounds, the freshness default and the methods.
        refused(
            "routes/users",
            route(json!({ "cache": { "max_entries": 0 } })),
            "routes[0].cache.max_entries",
            "virtual_hosts[0].routes[0].cache.max_entries",
        ),
        refused(
            "routes/users",
            route(json!({ "cache": { "max_bytes": "1MiB", "max_body_bytes": "2MiB" } })),
            "routes[0].cache.max_body_bytes",
            "virtual_hosts[0].routes[0].cache.max_body_bytes",
        ),
        refused(
            "routes/users",
            route(json!({ "cache": { "default_ttl": "48h" } })),
            "routes[0].cache.default_ttl",
            "virtual_hosts[0].routes[0].cache.default_ttl",
        ),
        refused(
            "routes/users",
            route(json!({ "cache": { "methods": ["GET", "POST"] } })),
            "routes[0].cache.methods[1]",
            "virtual_hosts[0].routes[0].cache.methods[1]",
        ),
        refused(
            "policies/users",
            json!({ "cache": { "max_bytes": 100 } }),
            "cache.max_bytes",
            "cache.max_bytes",
        ),
        // ---- Validation: schemas that do not compile, bounds, header names.
        refused(
            "routes/users",
            route(json!({ "validation": { "body": { "type": "objekt" } } })),
            "routes[0].validation.body",
            "virtual_hosts[0].routes[0].validation.body_schema",
        ),
        refused(
            "routes/users",
            route(json!({ "validation": { "query": { "minLength": -1 } } })),
            "routes[0].validation.query",
            "virtual_hosts[0].routes[0].validation.query_schema",
        ),
        refused(
            "routes/users",
            route(json!({ "validation": { "max_body_bytes": 0 } })),
            "routes[0].validation.max_body_bytes",
            "virtual_hosts[0].routes[0].validation.max_body_bytes",
        ),
        refused(
            "policies/users",
            json!({ "validation": { "headers": { "required": ["X-Tenant"] } } }),
            "validation.headers",
            "validation.header_schema",
        ),
        refused(
            "policies/users",
            json!({ "validation": { "max_body_bytes": 17_000_000 } }),
            "validation.max_body_bytes",
            "validation.max_body_bytes",
        ),
        // ---- Destinations: breakers, ejection, retries and rate limits.
        refused(
            "destinations/users",
            json!({ "breaker": { "consecutive_failures": 0 } }),
            "breaker.consecutive_failures",
            "breaker.consecutive_failures",
        ),
        refused(
            "destinations/users",
            limits(json!({ "local": { "requests": 10, "per": "0s" } }), None),
            "rate_limits.limits[0].local.per",
            "rate_limits.limits[0].local.per",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "key": "header", "header": "bad name",
                        "local": { "requests": 10, "per": "1s" } }),
                None,
            ),
            "rate_limits.limits[0].header",
            "rate_limits.limits[0].key.header",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "global": { "requests": 10, "window": "500ms" } }),
                Some(json!({ "url": REDIS })),
            ),
            "rate_limits.limits[0].global.window",
            "rate_limits.limits[0].global.window",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "global": { "requests": 10, "window": "1m" } }),
                Some(json!({ "url": REDIS, "timeout": "2s" })),
            ),
            "rate_limits.redis.timeout",
            "rate_limits.redis.timeout",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "global": { "requests": 10, "window": "1m" } }),
                Some(json!({ "url": REDIS, "timeout": "0ms" })),
            ),
            "rate_limits.redis.timeout",
            "rate_limits.redis.timeout",
        ),
        refused(
            "destinations/users",
            json!({ "retries": { "max_attempts": 0 } }),
            "retries.max_attempts",
            "retry_policy.max_attempts",
        ),
        refused(
            "destinations/users",
            json!({ "breaker": { "failure_ratio": 1.5 } }),
            "breaker.failure_ratio",
            "breaker.failure_ratio",
        ),
        refused(
            "destinations/users",
            json!({ "breaker": { "grpc_statuses": [17] } }),
            "breaker.grpc_statuses[0]",
            "breaker.grpc_statuses[0]",
        ),
        refused(
            "destinations/users",
            json!({ "outlier_detection": { "max_ejection_percent": 101 } }),
            "outlier_detection.max_ejection_percent",
            "outlier_detection.max_ejection_percent",
        ),
        refused(
            "destinations/users",
            limits(json!({ "local": { "requests": 0, "per": "1s" } }), None),
            "rate_limits.limits[0].local.requests",
            "rate_limits.limits[0].local.requests",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "name": "bad name", "local": { "requests": 1, "per": "1s" } }),
                None,
            ),
            "rate_limits.limits[0].name",
            "rate_limits.limits[0].name",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "global": { "requests": 10, "window": "1m" } }),
                Some(json!({ "url": "http://127.0.0.1:6379" })),
            ),
            "rate_limits.redis.url",
            "rate_limits.redis.url",
        ),
        refused(
            "destinations/users",
            limits(
                json!({ "global": { "requests": 10, "window": "1m" } }),
                Some(json!({ "url": "rediss://127.0.0.1:6379", "ca_pem": "junk" })),
            ),
            "rate_limits.redis.ca_pem",
            "rate_limits.redis.ca_pem",
        ),
        // ---- Policies: permissions and rate limits.
        refused(
            "policies/users",
            json!({ "intentions": [ { "source": "", "action": "allow" } ] }),
            "intentions[0].source",
            "intentions[0].source",
        ),
        refused(
            "policies/users",
            permission(json!({ "methods": ["G T"] })),
            "intentions[0].permissions[0].methods[0]",
            "intentions[0].permissions[0].methods[0]",
        ),
        refused(
            "policies/users",
            limits(
                json!({ "global": { "requests": 0, "window": "1m" } }),
                Some(json!({ "url": REDIS })),
            ),
            "rate_limits.limits[0].global.requests",
            "rate_limits.limits[0].global.requests",
        ),
        refused(
            "policies/users",
            permission(json!({ "path_regex": "(" })),
            "intentions[0].permissions[0].path_regex",
            "intentions[0].permissions[0].path_regex",
        ),
        refused(
            "policies/users",
            permission(json!({ "path_regex": "(\\w{100}){100}" })),
            "intentions[0].permissions[0].path_regex",
            "intentions[0].permissions[0].path_regex",
        ),
        refused(
            "policies/users",
            permission(json!({ "headers": { "x-a": { "regex": "[" } } })),
            "intentions[0].permissions[0].headers.x-a.regex",
            "intentions[0].permissions[0].headers[0].regex",
        ),
        refused(
            "policies/users",
            permission(json!({ "headers": { "bad name": { "exact": "x" } } })),
            "intentions[0].permissions[0].headers.bad name",
            "intentions[0].permissions[0].headers[0].name",
        ),
        refused(
            "policies/users",
            limits(json!({ "local": { "requests": 10, "per": "0ms" } }), None),
            "rate_limits.limits[0].local.per",
            "rate_limits.limits[0].local.per",
        ),
        refused(
            "policies/users",
            limits(
                json!({ "key": "header", "header": "a b",
                        "local": { "requests": 10, "per": "1s" } }),
                None,
            ),
            "rate_limits.limits[0].header",
            "rate_limits.limits[0].key.header",
        ),
        refused(
            "policies/users",
            limits(
                json!({ "global": { "requests": 10, "window": "100ms" } }),
                Some(json!({ "url": REDIS })),
            ),
            "rate_limits.limits[0].global.window",
            "rate_limits.limits[0].global.window",
        ),
        // ---- Policies: JWT.
        refused(
            "policies/users",
            json!({ "jwt": { "providers": [] } }),
            "jwt.providers",
            "jwt.providers",
        ),
        refused(
            "policies/users",
            jwt(json!({ "audiences": [] }), json!([])),
            "jwt.providers[0].audiences",
            "jwt.providers[0].audiences",
        ),
        refused(
            "policies/users",
            jwt(json!({ "audiences": [""] }), json!([])),
            "jwt.providers[0].audiences[0]",
            "jwt.providers[0].audiences[0]",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "shared_secret": null, "jwks": { "uri": "ftp://idp.example/jwks" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.uri",
            "jwt.providers[0].jwks.uri",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "shared_secret": null,
                        "jwks": { "uri": "https://idp.example/jwks", "ca_file": "idp-ca.pem" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.ca_file",
            "jwt.providers[0].jwks.ca_file",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "shared_secret": null,
                        "jwks": { "uri": "https://idp.example/jwks", "ca_pem": "junk" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.ca_pem",
            "jwt.providers[0].jwks.ca_pem",
        ),
        refused(
            "policies/users",
            jwt(
                json!({}),
                json!([ { "match": { "path_prefix": "/" }, "required_roles": ["a b"] } ]),
            ),
            "jwt.rules[0].required_roles[0]",
            "jwt.rules[0].required_roles[0]",
        ),
        refused(
            "policies/users",
            jwt(
                json!({}),
                json!([ { "match": { "path_prefix": "/", "methods": ["G T"] } } ]),
            ),
            "jwt.rules[0].match.methods[0]",
            "jwt.rules[0].match.methods[0]",
        ),
        refused(
            "policies/users",
            jwt(json!({ "name": "  " }), json!([])),
            "jwt.providers[0].name",
            "jwt.providers[0].name",
        ),
        refused(
            "policies/users",
            jwt(json!({ "issuer": "" }), json!([])),
            "jwt.providers[0].issuer",
            "jwt.providers[0].issuer",
        ),
        refused(
            "policies/users",
            jwt(json!({ "from": [ { "cookie": "a=b" } ] }), json!([])),
            "jwt.providers[0].from[0].cookie",
            "jwt.providers[0].from[0].cookie",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "from": [ { "query": "access token" } ] }),
                json!([]),
            ),
            "jwt.providers[0].from[0].query",
            "jwt.providers[0].from[0].query",
        ),
        refused(
            "policies/users",
            jwt(json!({ "required_claims": { "": "x" } }), json!([])),
            "jwt.providers[0].required_claims.",
            "jwt.providers[0].required_claims.",
        ),
        refused(
            "policies/users",
            jwt(
                json!({}),
                json!([ { "match": { "path_prefix": "/public/../admin" } } ]),
            ),
            "jwt.rules[0].match.path_prefix",
            "jwt.rules[0].match.path_prefix",
        ),
        refused(
            "policies/users",
            jwt(
                json!({}),
                json!([ { "match": { "path_exact": "/%61dmin" } } ]),
            ),
            "jwt.rules[0].match.path_exact",
            "jwt.rules[0].match.path_exact",
        ),
        refused(
            "policies/users",
            jwt(
                json!({}),
                json!([ { "match": { "path_prefix": "public" } } ]),
            ),
            "jwt.rules[0].match.path_prefix",
            "jwt.rules[0].match.path_prefix",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "shared_secret": null, "algorithms": ["HS256"],
                        "jwks": { "uri": "https://idp.example/jwks" } }),
                json!([]),
            ),
            "jwt.providers[0].algorithms[0]",
            "jwt.providers[0].algorithms[0]",
        ),
        refused(
            "policies/users",
            jwt(json!({ "algorithms": ["ES256"] }), json!([])),
            "jwt.providers[0].algorithms[0]",
            "jwt.providers[0].algorithms[0]",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "algorithms": ["RS256"], "jwks": { "uri": "https://idp.example/jwks" } }),
                json!([]),
            ),
            "jwt.providers[0].algorithms",
            "jwt.providers[0].algorithms",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "jwks": { "inline": { "keys": [] }, "cache_duration": "5m" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.cache_duration",
            "jwt.providers[0].jwks.cache_duration",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "jwks": { "inline": { "keys": [] }, "ca_pem": CA_PEM } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.ca_pem",
            "jwt.providers[0].jwks.ca_pem",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "jwks": { "uri": "http://idp.example/jwks", "ca_file": "/etc/weft/idp-ca.pem" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.ca_file",
            "jwt.providers[0].jwks.ca_file",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "jwks": { "uri": "https://idp.example/jwks", "min_refetch_interval": "0s" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.min_refetch_interval",
            "jwt.providers[0].jwks.min_refetch_interval",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "jwks": { "uri": "https://idp.example/jwks", "cache_duration": "0ms" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.cache_duration",
            "jwt.providers[0].jwks.cache_duration",
        ),
        refused(
            "policies/users",
            jwt(json!({ "shared_secret": "c2hvcnQ=" }), json!([])),
            "jwt.providers[0].shared_secret",
            "jwt.providers[0].shared_secret",
        ),
        refused(
            "policies/users",
            jwt(json!({ "shared_secret": "***" }), json!([])),
            "jwt.providers[0].shared_secret",
            "jwt.providers[0].shared_secret",
        ),
        refused(
            "policies/users",
            jwt(json!({ "clock_leeway": "10m" }), json!([])),
            "jwt.providers[0].clock_leeway",
            "jwt.providers[0].clock_leeway",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "shared_secret": null,
                        "jwks": { "uri": "https://idp.example/jwks", "fetch_timeout": "2m" } }),
                json!([]),
            ),
            "jwt.providers[0].jwks.fetch_timeout",
            "jwt.providers[0].jwks.fetch_timeout",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "claim_headers": { "sub": "authorization" } }),
                json!([]),
            ),
            "jwt.providers[0].claim_headers.sub",
            "jwt.providers[0].claim_headers.sub",
        ),
        refused(
            "policies/users",
            jwt(
                json!({ "claim_headers": { "sub": "x-weft-route" } }),
                json!([]),
            ),
            "jwt.providers[0].claim_headers.sub",
            "jwt.providers[0].claim_headers.sub",
        ),
        refused(
            "policies/users",
            jwt(
                json!({}),
                json!([ { "match": { "path_prefix": "/" }, "public": true,
                          "required_roles": ["admin"] } ]),
            ),
            "jwt.rules[0].required_roles",
            "jwt.rules[0].required_roles",
        ),
        refused(
            "policies/users",
            json!({ "jwt": { "providers": [
                { "name": "ci", "issuer": "a", "audiences": ["users"], "shared_secret": secret() },
                { "name": "ci", "issuer": "b", "audiences": ["users"], "shared_secret": secret() } ] } }),
            "jwt.providers[1].name",
            "jwt.providers[1].name",
        ),
        refused(
            "policies/users",
            json!({ "jwt": { "providers": [
                { "name": "a", "issuer": "ci", "audiences": ["users"], "shared_secret": secret() },
                { "name": "b", "issuer": "ci", "audiences": ["users"], "shared_secret": secret() } ] } }),
            "jwt.providers[1].issuer",
            "jwt.providers[1].issuer",
        ),
        // ---- Gateways: listeners, hosts, certificates, trusted hops.
        refused(
            "gateways/edge",
            gateway(json!({ "port": 0 })),
            "listeners[0].port",
            "listeners[0].port",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "address": "localhost" })),
            "listeners[0].address",
            "listeners[0].address",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "name": "public listener" })),
            "listeners[0].name",
            "listeners[0].name",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "hosts": [] })),
            "listeners[0].hosts",
            "listeners[0].hosts",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "hosts": ["API.example.com"] })),
            "listeners[0].hosts[0]",
            "listeners[0].hosts[0]",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "hosts": ["api.example.com:443"] })),
            "listeners[0].hosts[0]",
            "listeners[0].hosts[0]",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "protocol": "https" })),
            "listeners[0].certificates",
            "listeners[0].certificates",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "certificates": [
                { "chain_file": "/etc/weft/api.crt", "private_key_file": "/etc/weft/api.key" } ] })),
            "listeners[0].certificates",
            "listeners[0].certificates",
        ),
        refused(
            "gateways/edge",
            gateway(json!({ "protocol": "https", "certificates": [
                { "chain_file": "api.crt", "private_key_file": "/etc/weft/api.key" } ] })),
            "listeners[0].certificates[0].chain_file",
            "listeners[0].certificates[0]",
        ),
        refused(
            "gateways/edge",
            json!({ "trusted_hops": 11, "listeners": [
                { "name": "plain", "port": 8080, "hosts": ["api.example.com"] } ] }),
            "trusted_hops",
            "trusted_hops",
        ),
        refused(
            "gateways/edge",
            json!({ "listeners": [
                { "name": "plain", "port": 8080, "hosts": ["api.example.com"] },
                { "name": "plain", "port": 8081, "hosts": ["api.example.com"] } ] }),
            "listeners[1].name",
            "listeners[1].name",
        ),
        refused(
            "gateways/edge",
            json!({ "listeners": [
                { "name": "a", "port": 8080, "hosts": ["api.example.com"] },
                { "name": "b", "address": "0.0.0.0", "port": 8080, "hosts": ["api.example.com"] } ] }),
            "listeners[1].port",
            "listeners[1].port",
        ),
        // ---- Certificates: served inline by a gateway's listener.
        refused(
            "certificates/api",
            certificate_mismatched(),
            "private_key_pem",
            "listeners[0].certificates[0]",
        ),
        refused(
            "certificates/api",
            json!({ "chain_pem": "no PEM here", "private_key_pem": key_pem() }),
            "chain_pem",
            "listeners[0].certificates[0]",
        ),
    ]
}

/// What the agent (and `weftctl validate`) says of the document.
fn agent_verdict(case: &Refused) -> Vec<documents::FieldError> {
    let raw = RawDocument {
        key: case.key.into(),
        value: Bytes::from(case.document.to_string()),
        origin: format!("test {}", case.key),
        yaml: false,
    };
    match documents::parse_document(&raw) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

/// What a sidecar says of the resource the agent would send for the
/// document, had it not validated it: its NACK's reasons, or none.
fn sidecar_verdict(case: &Refused) -> Vec<String> {
    let key = DocumentKey::parse(case.key).expect("a document key");
    let document = documents::parse_unchecked(key.kind(), &case.document)
        .unwrap_or_else(|error| panic!("{}: the typed parse refused it: {error}", case.key));
    let name = key.name();
    let verdict = match &document {
        Document::Route(routes) => {
            compile::compile_routes(&routes.to_route_configuration(name)).map(drop)
        }
        Document::Destination(destination) => {
            compile::compile_cluster(&destination.to_cluster(name)).map(drop)
        }
        Document::Policy(policy) => {
            xds::check_inbound_policy(&inbound_policy(name, Some(policy), None, &[]))
        }
        Document::Gateway(gateway) => {
            weft_sidecar::gateway::compile::compile(&gateway.to_gateway(name, &Default::default()))
                .map(drop)
        }
        // What a gateway makes of it: one HTTPS listener serving it.
        Document::Certificate(certificate) => {
            weft_sidecar::gateway::compile::compile(&pb::Gateway {
                name: "edge".into(),
                listeners: vec![pb::GatewayListener {
                    name: "public".into(),
                    port: 8443,
                    protocol: pb::gateway_listener::Protocol::Https as i32,
                    hosts: vec![name.into()],
                    certificates: vec![pb::TlsCertificate {
                        name: format!("certificates/{name}"),
                        source: Some(pb::tls_certificate::Source::Pem(certificate.to_pem())),
                    }],
                    ..Default::default()
                }],
                trusted_hops: 0,
            })
            .map(drop)
        }
        Document::Defaults(_) => panic!("no defaults rows: the defaults have no rule of their own"),
    };
    verdict.err().unwrap_or_default()
}

#[tokio::test]
async fn every_document_a_sidecar_would_refuse_the_agent_refuses_with_the_same_reason() {
    let cases = refused_documents();
    assert!(cases.len() >= 30, "only {} documents", cases.len());
    let mut disagreements = Vec::new();
    for case in &cases {
        let agent = agent_verdict(case);
        let key = DocumentKey::parse(case.key).expect("a document key");
        if let Err(e) = documents::parse_unchecked(key.kind(), &case.document) {
            disagreements.push(format!(
                "TYPED-REFUSED {} {}: {e}",
                case.field, case.document
            ));
            continue;
        }
        let sidecar = sidecar_verdict(case);
        let said = || {
            format!(
                "{} {}\n  agent:   {:?}\n  sidecar: {:?}",
                case.key,
                case.document,
                agent.iter().map(ToString::to_string).collect::<Vec<_>>(),
                sidecar
            )
        };
        if sidecar.is_empty() {
            disagreements.push(format!(
                "the sidecar accepts it (a useless row): {}",
                said()
            ));
            continue;
        }
        let Some(reason) = agent
            .iter()
            .find(|error| error.field == case.field)
            .map(|error| error.reason.clone())
        else {
            disagreements.push(format!("the agent names no `{}`: {}", case.field, said()));
            continue;
        };
        let expected = format!("{}: {reason}", case.resource_field);
        if !sidecar.contains(&expected) {
            disagreements.push(format!("the sidecar does not say {expected:?}: {}", said()));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} documents:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}
