//! Route matching against a reference model, on generated route tables
//! and requests (proptest, a bounded number of cases so CI time stays
//! fixed). A table goes through the sidecar's own compile step, as a push
//! from the agent would; the request is answered by the first route whose
//! every condition holds, which the model decides from the generated spec
//! with plain string comparisons. Hosts are found whatever their case and
//! port; no path, header or query makes matching panic.

use http::Request;
use proptest::prelude::*;
use weft_proto::config::v1 as pb;
use weft_sidecar::table::RoutingTable;
use weft_sidecar::xds::compile::compile_routes;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Paths, values and names come from a tiny alphabet so that generated
/// requests often hit, nearly hit and just miss the generated routes.
const SEGMENTS: &[&str] = &["a", "b", "ab", "1", "12", "x.y"];
const HEADER_NAMES: &[&str] = &["x-tenant", "x-version"];
const VALUES: &[&str] = &["", "v1", "v12", "v2", "t-a"];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];

/// What a route asks of a path, as the model reads it.
#[derive(Clone, Debug)]
enum PathSpec {
    Any,
    Exact(String),
    Prefix(String),
    /// `literal` followed by one or more digits: the regex
    /// `escape(literal)[0-9]+`, which must match the whole path.
    LiteralThenDigits(String),
}

#[derive(Clone, Debug)]
enum ValueSpec {
    Exact(String),
    Prefix(String),
    /// `escape(literal)[0-9]*` as a whole-value regex.
    LiteralThenDigits(String),
    Present,
}

#[derive(Clone, Debug)]
struct RouteSpec {
    path: PathSpec,
    methods: Vec<String>,
    headers: Vec<(String, ValueSpec, bool)>,
    query: Vec<(String, ValueSpec)>,
}

#[derive(Clone, Debug)]
struct RequestSpec {
    method: String,
    path: String,
    query: Option<Vec<(String, String)>>,
    headers: Vec<(String, String)>,
}

fn path_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(SEGMENTS), 0..4)
        .prop_map(|segments| format!("/{}", segments.join("/")))
}

fn path_spec() -> impl Strategy<Value = PathSpec> {
    prop_oneof![
        Just(PathSpec::Any),
        path_text().prop_map(PathSpec::Exact),
        path_text().prop_map(PathSpec::Prefix),
        path_text().prop_map(PathSpec::LiteralThenDigits),
    ]
}

fn value_spec() -> impl Strategy<Value = ValueSpec> {
    let value = prop::sample::select(VALUES).prop_map(String::from);
    prop_oneof![
        value.clone().prop_map(ValueSpec::Exact),
        value.clone().prop_map(ValueSpec::Prefix),
        value.prop_map(ValueSpec::LiteralThenDigits),
        Just(ValueSpec::Present),
    ]
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        path_spec(),
        prop::collection::vec(prop::sample::select(METHODS).prop_map(String::from), 0..2),
        prop::collection::vec(
            (
                prop::sample::select(HEADER_NAMES).prop_map(String::from),
                value_spec(),
                any::<bool>(),
            ),
            0..2,
        ),
        prop::collection::vec(
            (
                prop::sample::select(&["q", "debug"][..]).prop_map(String::from),
                value_spec(),
            ),
            0..2,
        ),
    )
        .prop_map(|(path, methods, headers, query)| RouteSpec {
            path,
            methods,
            headers,
            query,
        })
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    let value = prop::sample::select(VALUES).prop_map(String::from);
    (
        prop::sample::select(METHODS).prop_map(String::from),
        path_text(),
        prop::option::of(prop::collection::vec(
            (
                prop::sample::select(&["q", "debug", "other"][..]).prop_map(String::from),
                value.clone(),
            ),
            0..3,
        )),
        prop::collection::vec(
            (
                prop::sample::select(HEADER_NAMES).prop_map(String::from),
                value,
            ),
            0..3,
        ),
    )
        .prop_map(|(method, path, query, headers)| RequestSpec {
            method,
            path,
            query,
            headers,
        })
}

fn string_matcher(spec: &ValueSpec) -> pb::StringMatcher {
    use pb::string_matcher::Pattern;
    let pattern = match spec {
        ValueSpec::Exact(value) => Pattern::Exact(value.clone()),
        ValueSpec::Prefix(value) => Pattern::Prefix(value.clone()),
        ValueSpec::LiteralThenDigits(value) => {
            Pattern::Regex(format!("{}[0-9]*", regex::escape(value)))
        }
        ValueSpec::Present => Pattern::Present(true),
    };
    pb::StringMatcher {
        pattern: Some(pattern),
    }
}

fn to_proto(routes: &[RouteSpec]) -> pb::RouteConfiguration {
    use pb::route_match::Path;
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, spec)| pb::Route {
            name: format!("r{i}"),
            r#match: Some(pb::RouteMatch {
                path: match &spec.path {
                    PathSpec::Any => None,
                    PathSpec::Exact(path) => Some(Path::Exact(path.clone())),
                    PathSpec::Prefix(path) => Some(Path::Prefix(path.clone())),
                    PathSpec::LiteralThenDigits(path) => {
                        Some(Path::Regex(format!("{}[0-9]+", regex::escape(path))))
                    }
                },
                headers: spec
                    .headers
                    .iter()
                    .map(|(name, value, invert)| pb::HeaderMatcher {
                        name: name.clone(),
                        matcher: Some(string_matcher(value)),
                        invert: *invert,
                    })
                    .collect(),
                methods: spec.methods.clone(),
                query_parameters: spec
                    .query
                    .iter()
                    .map(|(name, value)| pb::QueryParameterMatcher {
                        name: name.clone(),
                        matcher: Some(string_matcher(value)),
                    })
                    .collect(),
            }),
            action: Some(pb::RouteAction {
                destination: Some(pb::route_action::Destination::Cluster(format!("c{i}"))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    pb::RouteConfiguration {
        name: "users".into(),
        virtual_hosts: vec![pb::VirtualHost {
            name: "users".into(),
            domains: vec!["users".into(), "users.weft".into()],
            routes,
        }],
    }
}

/// The model: plain string comparisons, no regex engine.
fn value_matches(spec: &ValueSpec, value: &str) -> bool {
    match spec {
        ValueSpec::Exact(want) => value == want,
        ValueSpec::Prefix(want) => value.starts_with(want.as_str()),
        ValueSpec::LiteralThenDigits(literal) => value
            .strip_prefix(literal.as_str())
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit())),
        ValueSpec::Present => true,
    }
}

fn route_matches(route: &RouteSpec, request: &RequestSpec) -> bool {
    let path_ok = match &route.path {
        PathSpec::Any => true,
        PathSpec::Exact(want) => request.path == *want,
        PathSpec::Prefix(want) => request.path.starts_with(want.as_str()),
        PathSpec::LiteralThenDigits(literal) => request
            .path
            .strip_prefix(literal.as_str())
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())),
    };
    let method_ok = route.methods.is_empty() || route.methods.contains(&request.method);
    // A repeated header matches if any of its values does.
    let headers_ok = route.headers.iter().all(|(name, spec, invert)| {
        let hit = request
            .headers
            .iter()
            .any(|(have, value)| have == name && value_matches(spec, value));
        hit != *invert
    });
    let query_ok = route.query.iter().all(|(name, spec)| {
        request.query.as_ref().is_some_and(|pairs| {
            pairs
                .iter()
                .any(|(have, value)| have == name && value_matches(spec, value))
        })
    });
    path_ok && method_ok && headers_ok && query_ok
}

fn to_request(spec: &RequestSpec) -> Request<()> {
    let mut uri = spec.path.clone();
    if let Some(pairs) = &spec.query {
        let query: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        uri = format!("{uri}?{}", query.join("&"));
    }
    let mut builder = Request::builder().method(spec.method.as_str()).uri(uri);
    for (name, value) in &spec.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder.body(()).expect("a generated request is valid")
}

fn table(routes: &[RouteSpec]) -> RoutingTable {
    let compiled = compile_routes(&to_proto(routes))
        .unwrap_or_else(|errors| panic!("a generated route table was refused: {errors:?}"));
    let mut table = RoutingTable::default();
    for (domains, vhost) in compiled.vhosts {
        for domain in domains {
            table.domains.insert(domain.into_boxed_str(), vhost.clone());
        }
    }
    table
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_request_takes_the_first_route_whose_every_condition_holds(
        routes in prop::collection::vec(route_spec(), 1..6),
        request in request_spec(),
    ) {
        let table = table(&routes);
        let vhost = table.virtual_host("users").expect("the table serves users");
        let chosen = vhost.route_for(&to_request(&request));
        let expected = routes.iter().position(|route| route_matches(route, &request));
        prop_assert_eq!(chosen, expected);
    }

    #[test]
    fn a_host_is_found_whatever_its_case_and_port_and_no_other_host_is(
        upper in prop::collection::vec(any::<bool>(), 10),
        port in prop::option::of(any::<u16>()),
        weft_suffix in any::<bool>(),
        other in "[a-z.-]{1,12}",
    ) {
        let table = table(&[]);
        let name = if weft_suffix { "users.weft" } else { "users" };
        let cased: String = name
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
            .collect();
        let authority = match port {
            Some(port) => format!("{cased}:{port}"),
            None => cased,
        };
        prop_assert!(table.virtual_host(&authority).is_some(), "{authority} not found");
        if other != "users" && other != "users.weft" {
            prop_assert!(table.virtual_host(&other).is_none(), "{other} found");
        }
    }

    #[test]
    fn no_path_header_or_query_makes_matching_panic(
        routes in prop::collection::vec(route_spec(), 1..4),
        path in "/[ -~]{0,40}",
        query in "[ -~]{0,40}",
        header in "[\t -~]{0,40}",
    ) {
        let table = table(&routes);
        let vhost = table.virtual_host("users").expect("the table serves users");
        let uri = format!("{}?{}", path.replace([' ', '#', '?'], "_"), query.replace([' ', '#'], "_"));
        if let Ok(request) = Request::get(uri.as_str())
            .header("x-tenant", header.trim_matches([' ', '\t']))
            .body(())
        {
            let _ = vhost.route_for(&request);
        }
    }
}
