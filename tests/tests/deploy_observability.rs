//! The observability set-up of the compose demo (`deploy/observability`):
//! Prometheus scrapes every Weft admin port and the sidecars export their
//! spans to Jaeger, checked against the files, not a running stack.
//!
//! Each test collects every problem it finds and fails once, listing them all
//! with the file and object they are in, so one run shows everything to fix.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_yaml::Value;
use weft_e2e::harness::binaries::system_tool;
use weft_e2e::harness::deploy::{
    Binary, Container, compose, compose_containers, compose_services, deploy, relative, report,
    seq_at, str_at, url_in,
};

/// The compose demo's Prometheus scrapes every Weft container's admin port,
/// at a path the binary serves, labelled with the sidecar's own service (the
/// dashboard filters on it); and the sidecars export their spans to the
/// compose Jaeger's OTLP port for the protocol they name.
#[test]
fn prometheus_scrapes_every_weft_admin_port_and_sidecars_export_spans_to_jaeger() {
    let path = deploy().join("observability").join("prometheus.yml");
    let config: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("reading {}: {error}", path.display())),
    )
    .unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()));
    let doc = compose();
    let services = compose_services(&doc);
    let containers: Vec<Container> = compose_containers(&doc);
    let mut problems = Vec::new();
    let mut scraped = BTreeSet::new();
    for job in seq_at(&config, &["scrape_configs"]) {
        let job_name = str_at(job, &["job_name"]).unwrap_or("?");
        let metrics_path = str_at(job, &["metrics_path"]).unwrap_or("/metrics");
        for group in seq_at(job, &["static_configs"]) {
            let service_label = str_at(group, &["labels", "service"]);
            for target in seq_at(group, &["targets"]).iter().filter_map(Value::as_str) {
                let origin = format!("{}: job {job_name}, target {target}", relative(&path));
                let Some((host, port)) = target
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                else {
                    problems.push(format!("{origin}: not HOST:PORT"));
                    continue;
                };
                // The weft container in that network namespace whose admin port it is.
                let found = containers.iter().find(|c| {
                    c.netns == format!("compose:{host}")
                        && c.binary().and_then(Binary::admin).is_some_and(|(flag, _)| {
                            let env = if c.binary() == Some(Binary::Sidecar) {
                                "WEFT_ADMIN"
                            } else {
                                ""
                            };
                            c.setting(flag, env)
                                .and_then(|v| v.parse::<SocketAddr>().ok())
                                .is_some_and(|a| a.port() == port)
                        })
                });
                let Some(container) = found else {
                    problems.push(format!(
                        "{origin}: no Weft container of `{host}` serves its admin port on {port}"
                    ));
                    continue;
                };
                scraped.insert(container.name.clone());
                let binary = container.binary().expect("found by its binary");
                if let Some((_, paths)) = binary.admin()
                    && !paths.contains(&metrics_path)
                {
                    problems.push(format!(
                        "{origin}: {} does not serve {metrics_path}",
                        binary.name()
                    ));
                }
                if binary == Binary::Sidecar {
                    let service = container.setting("--service", "WEFT_SERVICE");
                    if service.as_deref() != service_label {
                        problems.push(format!("{origin}: labelled service={service_label:?}, but the sidecar is --service {service:?}"));
                    }
                } else if service_label.is_none() {
                    problems.push(format!("{origin}: no `service` label"));
                }
            }
        }
    }
    for container in &containers {
        if matches!(container.binary(), Some(Binary::Sidecar | Binary::Agent))
            && !scraped.contains(&container.name)
        {
            problems.push(format!(
                "{}: not scraped by {}",
                container.origin,
                relative(&path)
            ));
        }
    }
    for sidecar in containers
        .iter()
        .filter(|c| c.binary() == Some(Binary::Sidecar))
    {
        let origin = &sidecar.origin;
        let Some(endpoint) = sidecar.env_value("OTEL_EXPORTER_OTLP_ENDPOINT") else {
            problems.push(format!(
                "{origin}: no OTEL_EXPORTER_OTLP_ENDPOINT: its spans go nowhere"
            ));
            continue;
        };
        let protocol = sidecar
            .env_value("OTEL_EXPORTER_OTLP_PROTOCOL")
            .unwrap_or("grpc");
        let want_port = match protocol {
            "grpc" => 4317,
            "http/protobuf" => 4318,
            other => {
                problems.push(format!("{origin}: OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is neither grpc nor http/protobuf"));
                continue;
            }
        };
        match url_in(&[endpoint.to_string()]) {
            Some((host, port, _)) => {
                let jaeger = services
                    .get(&host)
                    .and_then(|s| str_at(s, &["image"]))
                    .is_some_and(|image| image.starts_with("jaegertracing/all-in-one:"));
                if !jaeger || port != want_port {
                    problems.push(format!("{origin}: OTLP endpoint {endpoint} should be a Jaeger all-in-one service on {want_port} ({protocol})"));
                }
            }
            None => problems.push(format!(
                "{origin}: OTLP endpoint {endpoint} is not http://HOST:PORT"
            )),
        }
    }
    report("the compose observability wiring", problems);
}

/// The alert rules the compose Prometheus loads are valid, and each fires
/// (and stays quiet) as its unit tests say: proxy down, error ratio, p99
/// latency, a failing upstream.
#[test]
fn the_alert_rules_pass_promtools_checks_and_their_unit_tests() {
    let dir = deploy().join("observability");
    let config: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("prometheus.yml is YAML");
    let rule_files: Vec<&str> = seq_at(&config, &["rule_files"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(rule_files, ["alerts.yml"], "prometheus.yml's rule_files");
    let promtool = system_tool(
        &["promtool"],
        "WEFT_PROMTOOL_BIN",
        "prometheus",
        "the alert rules are tested with `promtool test rules`",
    )
    .unwrap_or_else(|error| panic!("{error:#}"));
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", promtool.display()));
        assert!(
            output.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
