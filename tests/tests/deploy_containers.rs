//! Every container of the deployment files, compose and Kubernetes alike (the
//! shared model of `weft_e2e::harness::deploy`): images pinned to a version,
//! probes and healthchecks on ports the container listens on, Weft binaries
//! given only flags and env that exist and every setting they require, and
//! sidecars wired to their app and the agent, exposing only what they should.
//!
//! Each test collects every problem it finds and fails once, listing them all
//! with the file and object they are in, so one run shows everything to fix.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use weft_e2e::harness::deploy::{
    Binary, Container, ProbeFrom, SIDECAR_SETTINGS, all_containers, dockerfile, get, k8s_docs,
    kind, report, seq_at, str_at, url_in,
};

/// weft-discovery's environment (Consul's own variable names).
const AGENT_ENV: &[&str] = &["CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_CACERT"];

/// Why `image` does not name one fixed version, if it does not.
fn unpinned(image: &str) -> Option<String> {
    if image.contains("@sha256:") {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some(format!("`{image}` has no tag: it means :latest")),
        Some((_, "latest")) => Some(format!("`{image}` uses :latest")),
        Some((_, "")) => Some(format!("`{image}` has an empty tag")),
        Some(_) => None,
    }
}

#[test]
fn every_image_is_pinned_to_a_version() {
    let mut problems = Vec::new();
    for container in all_containers() {
        match &container.image {
            None => problems.push(format!("{}: no image", container.origin)),
            Some(image) => {
                if let Some(why) = unpinned(image) {
                    problems.push(format!("{}: {why}", container.origin));
                }
            }
        }
    }
    for (stage, image) in dockerfile().base_images() {
        if let Some(why) = unpinned(&image) {
            problems.push(format!("deploy/Dockerfile, stage {stage}: {why}"));
        }
    }
    report("images that are missing or float", problems);
}

#[test]
fn probes_and_healthchecks_point_at_ports_the_container_listens_on() {
    let mut problems = Vec::new();
    let mut weft_probes = 0;
    for container in all_containers() {
        let Some(binary) = container.binary() else {
            continue; // Consul's own image, registration jobs: not ours to check
        };
        let listeners = container.listeners();
        for probe in &container.probes {
            weft_probes += 1;
            let origin = format!("{}, {}", container.origin, probe.what);
            let port = match &probe.port {
                Ok(port) => *port,
                Err(why) => {
                    problems.push(format!("{origin}: {why}"));
                    continue;
                }
            };
            let bound = listeners
                .iter()
                .find(|(_, addr)| addr.as_ref().is_ok_and(|addr| addr.port() == port));
            let Some((setting, Ok(addr))) = bound else {
                let open: Vec<String> = listeners
                    .iter()
                    .map(|(setting, addr)| format!("{setting} {addr:?}"))
                    .collect();
                problems.push(format!(
                    "{origin}: probes port {port}, but {} listens on {open:?}",
                    binary.name()
                ));
                continue;
            };
            if probe.from == ProbeFrom::Outside && addr.ip().is_loopback() {
                problems.push(format!(
                    "{origin}: the kubelet probes port {port} from outside the pod, but {setting} binds {addr} (loopback)"
                ));
            }
            if let Some((admin_setting, paths)) = binary.admin() {
                if setting != admin_setting {
                    problems.push(format!(
                        "{origin}: probes {setting} (port {port}); health endpoints are on {admin_setting}"
                    ));
                }
                match &probe.path {
                    Some(path) if paths.contains(&path.as_str()) => {}
                    other => problems.push(format!(
                        "{origin}: path {other:?} is not one of {}'s admin paths {paths:?}",
                        binary.name()
                    )),
                }
            }
        }
        if matches!(binary, Binary::Sidecar | Binary::Agent) && container.probes.is_empty() {
            problems.push(format!(
                "{}: {} has no probe/healthcheck",
                container.origin,
                binary.name()
            ));
        }
    }
    assert!(weft_probes > 0, "no probes found on Weft containers");
    report("probes that would fail", problems);
}

#[test]
fn weft_binaries_get_only_flags_and_env_that_exist_and_every_required_setting() {
    let mut problems = Vec::new();
    let mut sidecars = 0;
    for container in all_containers() {
        let Some(binary) = container.binary() else {
            continue;
        };
        let origin = &container.origin;
        let known = binary.flags();
        for flag in container.flag_names() {
            if !known.contains(&flag.as_str()) {
                problems.push(format!(
                    "{origin}: {} has no flag {flag} (known: {known:?})",
                    binary.name()
                ));
            }
        }
        match binary {
            Binary::Sidecar => {
                sidecars += 1;
                let known_env: Vec<&str> = SIDECAR_SETTINGS.iter().map(|(_, env)| *env).collect();
                for (name, _) in &container.env {
                    if name.starts_with("WEFT_") && !known_env.contains(&name.as_str()) {
                        problems.push(format!(
                            "{origin}: weft-sidecar reads no {name} (known: {known_env:?})"
                        ));
                    }
                }
                for (flag, env) in SIDECAR_SETTINGS {
                    if container.setting(flag, env).is_none() {
                        problems.push(format!("{origin}: weft-sidecar needs {flag} or {env}"));
                    }
                }
            }
            Binary::Agent => {
                for (name, _) in &container.env {
                    if name.starts_with("CONSUL_") && !AGENT_ENV.contains(&name.as_str()) {
                        problems.push(format!(
                            "{origin}: weft-discovery reads no {name} (known: {AGENT_ENV:?})"
                        ));
                    }
                    if name.starts_with("WEFT_") {
                        problems.push(format!("{origin}: weft-discovery reads no {name}"));
                    }
                }
                let has_source = container.setting("--consul", "").is_some()
                    || container.has_env("CONSUL_HTTP_ADDR")
                    || container.setting("--config-dir", "").is_some();
                if !has_source {
                    problems.push(format!(
                        "{origin}: weft-discovery needs --consul, CONSUL_HTTP_ADDR or --config-dir"
                    ));
                }
                // Their defaults are loopback: unreachable from other containers.
                for flag in ["--listen", "--admin"] {
                    if container.setting(flag, "").is_none() {
                        problems.push(format!(
                            "{origin}: weft-discovery needs {flag} (the default is loopback-only)"
                        ));
                    }
                }
            }
            Binary::TestApp => {}
        }
        for (setting, addr) in container.listeners() {
            if let Err(why) = addr {
                problems.push(format!("{origin}: {setting}: {why}"));
            }
        }
    }
    assert!(
        sidecars >= 4,
        "expected the sidecars of compose (3) and Kubernetes (1), found {sidecars}"
    );
    report("Weft command lines that would not start", problems);
}

#[test]
fn sidecars_reach_their_app_and_the_agent_and_expose_only_what_they_should() {
    let containers = all_containers();
    let k8s = k8s_docs();
    let mut problems = Vec::new();
    for sidecar in containers
        .iter()
        .filter(|c| c.binary() == Some(Binary::Sidecar))
    {
        let origin = &sidecar.origin;
        let addr = |flag: &str, env: &str| {
            sidecar
                .setting(flag, env)
                .and_then(|value| value.parse::<SocketAddr>().ok())
        };
        // The app must be the one sharing the network namespace.
        if let Some(app) = addr("--app", "WEFT_APP") {
            let apps: Vec<&Container> = containers
                .iter()
                .filter(|c| c.netns == sidecar.netns && c.binary() == Some(Binary::TestApp))
                .collect();
            let listening = apps.iter().any(|c| {
                c.listeners()
                    .iter()
                    .any(|(_, a)| a.as_ref().is_ok_and(|a| a.port() == app.port()))
            });
            if !listening {
                problems.push(format!(
                    "{origin}: --app {app}, but no app in its network namespace listens on port {}",
                    app.port()
                ));
            }
        }
        // Outbound is an open door into the mesh: loopback only.
        if let Some(outbound) = addr("--outbound", "WEFT_OUTBOUND")
            && !outbound.ip().is_loopback()
        {
            problems.push(format!(
                "{origin}: outbound {outbound} is reachable from other hosts: bind it to 127.0.0.1"
            ));
        }
        // Inbound and admin serve other sidecars, Consul's checks and probes.
        for (flag, env) in [("--inbound", "WEFT_INBOUND"), ("--admin", "WEFT_ADMIN")] {
            if let Some(listen) = addr(flag, env)
                && listen.ip().is_loopback()
            {
                problems.push(format!("{origin}: {flag} {listen} is loopback: other sidecars and health checks cannot reach it"));
            }
        }
        let Some(discovery) = sidecar.setting("--discovery", "WEFT_DISCOVERY") else {
            continue;
        };
        let Some((_, port, _)) = url_in(std::slice::from_ref(&discovery)) else {
            problems.push(format!(
                "{origin}: --discovery `{discovery}` is not http://HOST:PORT"
            ));
            continue;
        };
        let host = discovery
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or_default();
        if sidecar.netns.starts_with("compose:") {
            // The compose service of that name must run the agent listening on that port.
            let agent = containers
                .iter()
                .find(|c| c.netns.starts_with("compose:") && c.name == host);
            match agent {
                Some(agent) if agent.binary() == Some(Binary::Agent) => {
                    let listen = agent.setting("--listen", "").and_then(|v| v.parse::<SocketAddr>().ok());
                    if listen.map(|l| l.port()) != Some(port) {
                        problems.push(format!("{origin}: --discovery port {port}, but `{host}` listens on {listen:?}"));
                    }
                }
                _ => problems.push(format!("{origin}: --discovery host `{host}` is not a compose service running weft-discovery")),
            }
        } else {
            // name.namespace.svc[.cluster.local] of a Service in the manifests, on its port.
            let mut parts = host.split('.');
            let (name, namespace) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let service = k8s.iter().find(|doc| {
                kind(doc) == "Service"
                    && str_at(&doc.value, &["metadata", "name"]) == Some(name)
                    && str_at(&doc.value, &["metadata", "namespace"]) == Some(namespace)
            });
            match service {
                None => problems.push(format!("{origin}: --discovery host `{host}`: no Service {namespace}/{name} in deploy/kubernetes")),
                Some(service) => {
                    let ports: Vec<u64> = seq_at(&service.value, &["spec", "ports"])
                        .iter()
                        .filter_map(|p| get(p, &["port"])?.as_u64())
                        .collect();
                    if !ports.contains(&u64::from(port)) {
                        problems.push(format!("{origin}: --discovery port {port}, but Service {namespace}/{name} has ports {ports:?}"));
                    }
                }
            }
        }
    }
    report("sidecars wired to the wrong place", problems);
}
