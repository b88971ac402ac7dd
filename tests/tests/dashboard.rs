//! The Grafana dashboard and the Prometheus/Grafana provisioning of
//! `deploy/observability`, checked against what Weft really serves: every
//! series a panel queries is one a running sidecar or agent declares on
//! its `/metrics` (so a renamed metric breaks this test, not an operator's
//! dashboard), with the labels the panel selects and groups by; every
//! datasource a panel names is provisioned; the compose file mounts the
//! provisioning where Grafana reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use weft_e2e::harness::gateway::plain_edge;
use weft_e2e::harness::metrics::MetricsPage;
use weft_e2e::harness::otlp::OtlpReceiver;
use weft_e2e::{Call, Mesh, eventually, run};

/// A call through the gateway from a page of the origin its CORS policy
/// allows (`plain_edge`), so CORS judges it.
fn from_allowed_origin(path: &str) -> Call<'_> {
    Call::get("api.example.com", path).headers(&[("origin", "https://app.example.com")])
}

/// Labels Prometheus adds (`job`, `instance`, the scrape config's
/// `service`) or that belong to histograms (`le`): not on Weft's pages.
const SCRAPE_LABELS: &[&str] = &["job", "instance", "service", "le"];

fn observability_dir() -> PathBuf {
    // Invariant: this crate lives in <repo>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("observability")
}

/// The dashboards Grafana is provisioned with: the mesh's and the edge
/// gateway's.
const DASHBOARDS: [&str; 2] = ["weft-mesh.json", "weft-gateway.json"];

fn dashboard(name: &str) -> Value {
    let path = observability_dir().join("grafana/dashboards").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
}

/// Every PromQL expression of every dashboard: (where, expression).
fn all_expressions() -> Vec<(String, String)> {
    DASHBOARDS
        .iter()
        .flat_map(|name| expressions(name, &dashboard(name)))
        .collect()
}

/// Every PromQL expression of one dashboard: (where, expression).
fn expressions(name: &str, dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                found.push((format!("{name} panel {title:?}"), expr.to_owned()));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            let variable = variable["name"].as_str().unwrap_or("?");
            found.push((format!("{name} variable ${variable}"), query.to_owned()));
        }
    }
    found
}

/// What one expression asks of the pages: the series it names, the labels
/// each selector matches on, and the labels it groups by.
#[derive(Debug, Default)]
struct Asks {
    series: BTreeSet<String>,
    selected: BTreeMap<String, BTreeSet<String>>,
    grouped_by: BTreeSet<String>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small reading of PromQL, enough for the dashboard's own expressions:
/// metric names are identifiers starting `weft_` or `process_`; a `{...}`
/// after one holds its matchers; `by (...)` lists grouping labels.
fn asks(expr: &str) -> Asks {
    let mut asks = Asks::default();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut last_ident = String::new();
    while i < chars.len() {
        let c = chars[i];
        if is_ident(c) && (i == 0 || !is_ident(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            if ident.starts_with("weft_") || ident.starts_with("process_") {
                asks.series.insert(ident.clone());
            }
            last_ident = ident;
            continue;
        }
        if c == '{' || (c == '(' && matches!(last_ident.as_str(), "by" | "without")) {
            let close = if c == '{' { '}' } else { ')' };
            let end = chars[i..]
                .iter()
                .position(|&x| x == close)
                .map_or(chars.len(), |offset| i + offset);
            let body: String = chars[i + 1..end].iter().collect();
            // Matcher values are quoted: drop them before reading names.
            let unquoted: String = body.split('"').step_by(2).collect::<Vec<_>>().join("");
            let names = unquoted
                .split(',')
                .map(|part| {
                    part.split(['=', '!', '~'])
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                })
                .filter(|name| !name.is_empty());
            if c == '{' {
                asks.selected
                    .entry(last_ident.clone())
                    .or_default()
                    .extend(names);
            } else {
                asks.grouped_by.extend(names);
            }
            i = end + 1;
            last_ident.clear();
            continue;
        }
        if !c.is_whitespace() {
            last_ident.clear();
        }
        i += 1;
    }
    asks
}

/// Problems with one expression against the pages a mesh served.
fn check(origin: &str, expr: &str, pages: &[&MetricsPage], checked: &mut usize) -> Vec<String> {
    let asks = asks(expr);
    let mut problems = Vec::new();
    if asks.series.is_empty() {
        problems.push(format!("{origin}: `{expr}` names no Weft series"));
    }
    // The labels a series' samples carry, over every page.
    let labels_of = |series: &str| -> Option<BTreeSet<String>> {
        let samples: Vec<_> = pages.iter().flat_map(|page| page.named(series)).collect();
        (!samples.is_empty()).then(|| {
            samples
                .iter()
                .flat_map(|s| s.labels.keys().cloned())
                .collect()
        })
    };
    for series in &asks.series {
        if !pages.iter().any(|page| page.declares(series)) {
            problems.push(format!(
                "{origin}: `{series}` is served by neither the sidecar nor the agent"
            ));
        }
    }
    for (series, labels) in &asks.selected {
        let Some(have) = labels_of(series) else {
            continue;
        };
        *checked += 1;
        for label in labels {
            if !SCRAPE_LABELS.contains(&label.as_str()) && !have.contains(label) {
                problems.push(format!(
                    "{origin}: `{series}` has no label `{label}` (it has {have:?})"
                ));
            }
        }
    }
    let known: BTreeSet<String> = asks
        .series
        .iter()
        .filter_map(|s| labels_of(s))
        .flatten()
        .collect();
    if !known.is_empty() {
        for label in &asks.grouped_by {
            if !SCRAPE_LABELS.contains(&label.as_str()) && !known.contains(label) {
                problems.push(format!(
                    "{origin}: groups by `{label}`, which none of {:?} has",
                    asks.series
                ));
            }
        }
    }
    problems
}

#[test]
fn the_promql_reader_finds_series_matchers_and_groupings() {
    let asks = asks(
        r#"histogram_quantile(0.99, sum by (le, service, destination) (rate(weft_request_duration_seconds_bucket{direction="outbound", destination=~"a,b"}[5m]))) / sum(process_open_fds)"#,
    );
    assert_eq!(
        asks.series,
        BTreeSet::from([
            "weft_request_duration_seconds_bucket".to_owned(),
            "process_open_fds".to_owned()
        ])
    );
    assert_eq!(
        asks.selected["weft_request_duration_seconds_bucket"],
        BTreeSet::from(["direction".to_owned(), "destination".to_owned()])
    );
    assert_eq!(
        asks.grouped_by,
        BTreeSet::from([
            "le".to_owned(),
            "service".to_owned(),
            "destination".to_owned()
        ])
    );
}

#[test]
fn every_series_the_dashboard_queries_is_served_by_a_running_sidecar_or_agent() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        // Everything on, so that every series the dashboard can ask for is
        // on the page: spans to a receiver, an access log.
        let receiver = OtlpReceiver::start().await?;
        let access_log = ctx.log_dir.join("client-access.log");
        let (_users, client) = mesh
            .users_and_client_with(&[
                "--otlp-endpoint".into(),
                receiver.grpc_endpoint(),
                "--otlp-protocol".into(),
                "grpc".into(),
                "--access-log".into(),
                access_log.display().to_string(),
            ])
            .await?;
        let (gateway, edge) = plain_edge(&mesh).await?;
        // Traffic, so that the per-destination series have samples whose
        // labels can be checked.
        for path in ["/", "/status/503"] {
            mesh.http
                .call(client.sidecar.outbound, Call::get("users", path))
                .await?;
            mesh.http.call(edge, from_allowed_origin(path)).await?;
        }
        let sidecar = client.sidecar.metrics().await?;
        let agent = mesh.agent.metrics().await?;
        let gateway = MetricsPage::parse(&gateway.metrics().await?)?;
        let expressions = all_expressions();
        ensure!(
            expressions.len() >= 20,
            "only {} expressions in the dashboard",
            expressions.len()
        );
        let mut problems = Vec::new();
        let mut checked = 0;
        for (origin, expr) in &expressions {
            problems.extend(check(
                origin,
                expr,
                &[&sidecar, &agent, &gateway],
                &mut checked,
            ));
        }
        ensure!(
            problems.is_empty(),
            "the dashboard asks for what Weft does not serve:\n  {}",
            problems.join("\n  ")
        );
        ensure!(
            checked >= 10,
            "only {checked} selectors had samples to check their labels against"
        );
        Ok(())
    });
}

#[test]
fn grafana_provisioning_names_every_datasource_the_dashboard_uses() -> anyhow::Result<()> {
    let dir = observability_dir();
    let read_yaml = |path: PathBuf| -> anyhow::Result<serde_yaml::Value> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))
    };
    let datasources = read_yaml(dir.join("grafana/provisioning/datasources/weft.yml"))?;
    let uids: BTreeSet<&str> = datasources["datasources"]
        .as_sequence()
        .context("datasources: not a list")?
        .iter()
        .filter_map(|ds| ds["uid"].as_str())
        .collect();
    ensure!(
        uids.contains("weft-prometheus") && uids.contains("weft-jaeger"),
        "provisioned datasources: {uids:?}"
    );
    // Exemplars lead to Jaeger: the Prometheus datasource links trace ids there.
    let prometheus = datasources["datasources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|ds| ds["uid"].as_str() == Some("weft-prometheus"))
        .context("no weft-prometheus datasource")?;
    ensure!(
        prometheus["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"].as_str()
            == Some("weft-jaeger"),
        "exemplars of the Prometheus datasource do not link to Jaeger"
    );

    let mut problems = Vec::new();
    let mut exemplar_panels = 0;
    let mut dashboard_uids = BTreeSet::new();
    for name in DASHBOARDS {
        let dashboard = dashboard(name);
        if let Some(uid) = dashboard["uid"].as_str()
            && !dashboard_uids.insert(uid.to_owned())
        {
            problems.push(format!("{name}: dashboard uid {uid:?} used twice"));
        }
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            if let Some(id) = panel["id"].as_u64()
                && !ids.insert(id)
            {
                problems.push(format!("panel {title:?}: id {id} used twice"));
            }
            let mut used = vec![&panel["datasource"]];
            used.extend(
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            );
            for ds in used {
                if let Some(uid) = ds["uid"].as_str()
                    && !uids.contains(uid)
                {
                    problems.push(format!(
                        "panel {title:?}: datasource {uid:?} is not provisioned"
                    ));
                }
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target["exemplar"] == Value::Bool(true) {
                    exemplar_panels += 1;
                    if !target["expr"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("_bucket")
                    {
                        problems.push(format!(
                            "panel {title:?}: exemplars on a query that is not a histogram"
                        ));
                    }
                }
            }
        }
    }
    if exemplar_panels == 0 {
        problems.push("no latency panel shows exemplars (trace ids)".to_owned());
    }

    // The provider reads the directory compose mounts the dashboards in.
    let provider = read_yaml(dir.join("grafana/provisioning/dashboards/weft.yml"))?;
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .context("dashboard provider without options.path")?
        .to_owned();
    let compose_path = dir.join("../compose/docker-compose.yml");
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&compose_path)?)?;
    let volumes: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_sequence()
        .context("compose: grafana has no volumes")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let mounted = |source: &str, target: &str| {
        volumes.iter().any(|v| {
            let mut parts = v.split(':');
            parts.next() == Some(source) && parts.next() == Some(target)
        })
    };
    if !mounted("../observability/grafana/dashboards", &path) {
        problems.push(format!(
            "compose does not mount the dashboards at {path} ({volumes:?})"
        ));
    }
    if !mounted(
        "../observability/grafana/provisioning",
        "/etc/grafana/provisioning",
    ) {
        problems.push(format!(
            "compose does not mount the provisioning ({volumes:?})"
        ));
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// `text` percent-encoded for a query string.
fn query_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard expression as Grafana sends it with every service and
/// destination selected. A variable's `label_values(selector, label)` is
/// Grafana's, not PromQL: Prometheus answers it as the series of
/// `selector`, grouped by `label`.
fn as_grafana_sends_it(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$service", ".*")
        .replace("$destination", ".*");
    match expr
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|inner| inner.rsplit_once(','))
    {
        Some((selector, label)) => format!("count by ({}) ({selector})", label.trim()),
        None => expr,
    }
}

#[test]
fn the_dashboards_queries_and_the_alert_rules_run_on_a_real_prometheus_scraping_a_mesh() {
    run(|ctx| async move {
        let prometheus = weft_e2e::harness::binaries::system_tool(
            &["prometheus"],
            "WEFT_PROMETHEUS_BIN",
            "prometheus",
            "the dashboard's queries run on a real Prometheus",
        )?;
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        let (gateway, edge) = plain_edge(&mesh).await?;
        let port = weft_e2e::harness::ports::free_port()?;
        let api = format!("http://127.0.0.1:{port}");
        let alerts = observability_dir().join("alerts.yml").canonicalize()?;
        let agent = mesh.agent.admin_url();
        let agent = agent.trim_start_matches("http://");
        // The compose demo's scrape config, pointed at this mesh, every second.
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\n\
             rule_files: [{alerts:?}]\n\
             scrape_configs:\n\
             - job_name: weft-sidecars\n  static_configs:\n\
             \x20 - targets: [\"{}\"]\n    labels: {{service: client}}\n\
             \x20 - targets: [\"{}\"]\n    labels: {{service: users}}\n\
             - job_name: weft-discovery\n  static_configs:\n\
             \x20 - targets: [\"{agent}\"]\n    labels: {{service: weft-discovery}}\n\
             - job_name: weft-gateways\n  static_configs:\n\
             \x20 - targets: [\"{}\"]\n    labels: {{service: edge}}\n",
            client.sidecar.admin, users.sidecar.admin, gateway.admin,
        );
        let config_path = ctx.log_dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let _prometheus = weft_e2e::harness::process::Process::spawn(
            "prometheus",
            &prometheus,
            &[
                format!("--config.file={}", config_path.display()),
                format!(
                    "--storage.tsdb.path={}",
                    ctx.log_dir.join("prometheus-data").display()
                ),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &ctx.log_dir,
        )?;
        let query = |expr: String| {
            let http = &mesh.http;
            let url = format!("{api}/api/v1/query?query={}", query_encoded(&expr));
            async move {
                let reply = http.get(&url).await?;
                let answer = reply.json()?;
                ensure!(answer["status"] == "success", "{expr}: {}", reply.text());
                Ok::<_, anyhow::Error>(
                    answer["data"]["result"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                )
            }
        };
        // Every target scraped, then traffic, then its rate visible.
        eventually(
            SCRAPE_TIMEOUT,
            "Prometheus scrapes both sidecars, the gateway and the agent",
            || async {
                let up = query("up == 1".into()).await?;
                ensure!(up.len() == 4, "{} of 4 targets up", up.len());
                Ok(())
            },
        )
        .await?;
        eventually(SCRAPE_TIMEOUT, "the traffic shows in a rate", || async {
            for path in ["/", "/status/503"] {
                mesh.http
                    .call(client.sidecar.outbound, Call::get("users", path))
                    .await?;
                mesh.http
                    .call(edge, from_allowed_origin(path))
                    .await?;
            }
            // Both the client's and the gateway's: each is its own target.
            for service in ["client", "edge"] {
                let rate = query(format!(
                    "sum(rate(weft_requests_total{{service=\"{service}\", direction=\"outbound\", destination=\"users\"}}[1m])) > 0"
                ))
                .await?;
                ensure!(!rate.is_empty(), "no rate of {service}'s calls yet");
            }
            Ok(())
        })
        .await?;

        let mut problems = Vec::new();
        let mut with_data = 0;
        let expressions = all_expressions();
        for (origin, expr) in &expressions {
            match query(as_grafana_sends_it(expr)).await {
                Ok(result) if !result.is_empty() => with_data += 1,
                Ok(_) => {}
                Err(error) => problems.push(format!("{origin}: {error:#}")),
            }
        }
        ensure!(
            problems.is_empty(),
            "Prometheus refused the dashboard's queries:\n  {}",
            problems.join("\n  ")
        );
        // Not vacuous: most panels draw something from this small mesh.
        ensure!(
            with_data >= expressions.len() / 2,
            "only {with_data} of {} queries returned data",
            expressions.len()
        );

        // The alert rules loaded, and evaluate without error.
        let rules = mesh
            .http
            .get(&format!("{api}/api/v1/rules"))
            .await?
            .json()?;
        let loaded: Vec<(String, String)> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .map(|rule| {
                (
                    rule["name"].as_str().unwrap_or("?").to_owned(),
                    rule["health"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        let names: BTreeSet<&str> = loaded.iter().map(|(name, _)| name.as_str()).collect();
        ensure!(
            names
                == BTreeSet::from([
                    "WeftGatewayCertificateRefused",
                    "WeftGatewayTlsHandshakesFailing",
                    "WeftHighErrorRatio",
                    "WeftHighLatencyP99",
                    "WeftProxyDown",
                    "WeftUpstreamFailing"
                ]),
            "rules loaded: {loaded:?}"
        );
        eventually(SCRAPE_TIMEOUT, "every rule evaluated healthy", || async {
            let rules = mesh
                .http
                .get(&format!("{api}/api/v1/rules"))
                .await?
                .json()?;
            let unhealthy: Vec<String> = rules["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .filter(|rule| rule["health"] != "ok")
                .map(|rule| format!("{} {} {}", rule["name"], rule["health"], rule["lastError"]))
                .collect();
            ensure!(unhealthy.is_empty(), "{unhealthy:?}");
            Ok(())
        })
        .await?;
        Ok(())
    });
}

/// How long Prometheus gets to start, scrape and evaluate (1 s intervals).
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
