//! The compose demo (`deploy/compose`), validated, not run: CI has no Docker
//! engine. Every check is something a user would hit if it were wrong: a
//! reference to a missing service, volume or file, a registration file Consul
//! refuses or that disagrees with the sidecars, a KV example the agent
//! rejects. The registration and KV-loading commands the containers run are
//! run for real against a Consul dev agent (1.8.7, from `WEFT_CONSUL_BIN` or
//! `deploy/local/install-consul.sh`).
//!
//! Each test collects every problem it finds and fails once, listing them all
//! with the file and object they are in, so one run shows everything to fix.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde_yaml::Value;
use weft_e2e::harness::consul::{ConsulOptions, DevConsul, consul_binary};
use weft_e2e::harness::deploy::{
    Binary, SIDECAR_ADMIN_PATHS, compose, compose_containers, compose_file, compose_services,
    deploy, dockerfile, get, path_with_consul, relative, report, seq_at, str_at, string_list,
    url_in,
};
use weft_e2e::run;

#[test]
fn compose_references_resolve() {
    let doc = compose();
    let services = compose_services(&doc);
    let dir = compose_file()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let parsed_dockerfile = dockerfile();
    let dockerfile_stages = parsed_dockerfile.stage_names();
    let mut problems = Vec::new();
    let text = std::fs::read_to_string(compose_file()).unwrap_or_default();
    // Compose substitutes $VAR and ${VAR} from the host's environment, so a
    // shell `$x` in a command silently becomes "". `$$` is a literal `$`.
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.replace("$$", "").contains('$') {
            problems.push(format!(
                "{}:{}: a single `$` is substituted by compose; write `$$` for the shell: {}",
                relative(&compose_file()),
                number + 1,
                line.trim()
            ));
        }
    }
    for (name, service) in &services {
        let origin = format!("service `{name}`");
        if let Some(mode) = str_at(service, &["network_mode"])
            && let Some(target) = mode.strip_prefix("service:")
        {
            if !services.contains_key(target) {
                problems.push(format!("{origin}: network_mode {mode}: no such service"));
            }
            if get(service, &["ports"]).is_some() {
                problems.push(format!("{origin}: publishes ports but shares `{target}`'s network: publish them on `{target}`"));
            }
        }
        let depends: Vec<(String, Option<String>)> = match get(service, &["depends_on"]) {
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|s| (s.to_string(), None))
                .collect(),
            Some(Value::Mapping(map)) => map
                .iter()
                .filter_map(|(key, value)| {
                    Some((
                        key.as_str()?.to_string(),
                        str_at(value, &["condition"]).map(str::to_string),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        for (target, condition) in depends {
            let Some(target_service) = services.get(&target) else {
                problems.push(format!("{origin}: depends_on `{target}`: no such service"));
                continue;
            };
            match condition.as_deref() {
                Some("service_healthy") if get(target_service, &["healthcheck"]).is_none() => {
                    problems.push(format!(
                        "{origin}: waits for `{target}` to be healthy, but it has no healthcheck"
                    ))
                }
                Some("service_completed_successfully") => {
                    if str_at(target_service, &["restart"]).unwrap_or("no") != "no" {
                        problems.push(format!(
                            "{origin}: waits for `{target}` to complete, but it restarts"
                        ));
                    }
                }
                None | Some("service_started" | "service_healthy") => {}
                Some(other) => problems.push(format!(
                    "{origin}: depends_on condition `{other}` does not exist"
                )),
            }
        }
        for volume in seq_at(service, &["volumes"])
            .iter()
            .filter_map(Value::as_str)
        {
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('.') && !dir.join(source).exists() {
                problems.push(format!("{origin}: volume source `{source}` does not exist"));
            }
        }
        if let Some(build) = get(service, &["build"]) {
            let context = dir.join(str_at(build, &["context"]).unwrap_or("."));
            let dockerfile = context.join(str_at(build, &["dockerfile"]).unwrap_or("Dockerfile"));
            if !dockerfile.is_file() {
                problems.push(format!(
                    "{origin}: build Dockerfile {} does not exist",
                    dockerfile.display()
                ));
            } else if dockerfile.canonicalize().ok()
                != deploy().join("Dockerfile").canonicalize().ok()
            {
                problems.push(format!(
                    "{origin}: builds {}, expected deploy/Dockerfile",
                    dockerfile.display()
                ));
            }
            if let Some(target) = str_at(build, &["target"])
                && !dockerfile_stages.contains(target)
            {
                problems.push(format!("{origin}: build target `{target}` is not a stage of deploy/Dockerfile ({dockerfile_stages:?})"));
            }
        }
    }
    report(
        &format!(
            "{} references that do not resolve",
            relative(&compose_file())
        ),
        problems,
    );
}

fn consul_dir() -> PathBuf {
    deploy().join("compose/consul")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("json") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", relative(path)));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{}: not valid JSON: {error}", relative(path)))
}

#[test]
fn consul_registrations_match_the_compose_sidecars() {
    let containers = compose_containers(&compose());
    let files = json_files(&consul_dir().join("services"));
    assert!(
        !files.is_empty(),
        "no service definitions in deploy/compose/consul/services"
    );
    let mut problems = Vec::new();
    let mut registered = BTreeSet::new();
    for file in &files {
        let origin = relative(file);
        let definition = read_json(file);
        let service = &definition["service"];
        let Some(name) = service["name"].as_str() else {
            problems.push(format!("{origin}: no service.name"));
            continue;
        };
        registered.insert(name.to_string());
        let Some(sidecar) = containers.iter().find(|c| {
            c.binary() == Some(Binary::Sidecar)
                && c.setting("--service", "WEFT_SERVICE").as_deref() == Some(name)
        }) else {
            problems.push(format!(
                "{origin}: no compose sidecar runs with --service {name}"
            ));
            continue;
        };
        let port_of = |flag: &str, env: &str| {
            sidecar
                .setting(flag, env)
                .and_then(|v| v.parse::<SocketAddr>().ok())
                .map(|a| a.port())
        };
        let proxy = &service["connect"]["sidecar_service"];
        if !proxy.is_object() {
            problems.push(format!(
                "{origin}: no connect.sidecar_service: Consul would not see `{name}` as meshed"
            ));
            continue;
        }
        // Other sidecars dial the proxy's address and port: the sidecar's inbound.
        let inbound = port_of("--inbound", "WEFT_INBOUND");
        if proxy["port"].as_u64() != inbound.map(u64::from) {
            problems.push(format!(
                "{origin}: sidecar_service.port {} but the sidecar's inbound port is {inbound:?}",
                proxy["port"]
            ));
        }
        let netns_owner = sidecar.netns.trim_start_matches("compose:");
        for (field, value) in [
            ("service.address", &service["address"]),
            ("sidecar_service.address", &proxy["address"]),
        ] {
            if value.as_str() != Some(netns_owner) {
                problems.push(format!("{origin}: {field} {value} should be `{netns_owner}`, the container whose network the sidecar shares"));
            }
        }
        let app = port_of("--app", "WEFT_APP");
        if service["port"].as_u64() != app.map(u64::from) {
            problems.push(format!(
                "{origin}: service.port {} but the sidecar's app port is {app:?}",
                service["port"]
            ));
        }
        // Every HTTP check must hit a port and path that answer.
        let admin = port_of("--admin", "WEFT_ADMIN");
        let checks = service["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(proxy["checks"].as_array().into_iter().flatten());
        for check in checks {
            let Some(url) = check["http"].as_str() else {
                continue;
            };
            let Some((host, port, path)) = url_in(&[url.to_string()]) else {
                problems.push(format!(
                    "{origin}: check URL `{url}` is not http://HOST:PORT/PATH"
                ));
                continue;
            };
            if host != netns_owner {
                problems.push(format!(
                    "{origin}: check `{url}` targets host `{host}`, not `{netns_owner}`"
                ));
            }
            let ok = (Some(port) == admin && SIDECAR_ADMIN_PATHS.contains(&path.as_str()))
                || Some(port) == inbound;
            if !ok {
                problems.push(format!("{origin}: check `{url}` is neither a sidecar admin path on {admin:?} nor the inbound port {inbound:?}"));
            }
        }
    }
    // Every sidecar's service is registered, and every file is registered by the one-shot.
    for sidecar in containers
        .iter()
        .filter(|c| c.binary() == Some(Binary::Sidecar))
    {
        let service = sidecar
            .setting("--service", "WEFT_SERVICE")
            .unwrap_or_default();
        if !registered.contains(&service) {
            problems.push(format!(
                "{}: service `{service}` has no definition in deploy/compose/consul/services",
                sidecar.origin
            ));
        }
    }
    let register = compose_register_files();
    for file in &files {
        if !register.contains(file) {
            problems.push(format!(
                "{} is not registered by the consul-register service",
                relative(file)
            ));
        }
    }
    report("Consul registrations that do not match the demo", problems);
}

/// The host files that the compose `consul-register` service registers, by
/// mapping its container paths back through its volumes.
fn compose_register_files() -> Vec<PathBuf> {
    let doc = compose();
    let services = compose_services(&doc);
    let register = services
        .get("consul-register")
        .expect("compose has a consul-register service");
    let argv = string_list(get(register, &["command"]));
    let mounts: Vec<(String, String)> = seq_at(register, &["volumes"])
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect();
    let dir = compose_file()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    argv.iter()
        .filter_map(|arg| {
            mounts.iter().find_map(|(host, container)| {
                arg.strip_prefix(&format!("{container}/"))
                    .map(|rest| dir.join(host).join(rest))
            })
        })
        .map(|path| path.canonicalize().unwrap_or(path))
        .collect()
}

#[test]
fn example_kv_documents_are_valid_weft_documents() {
    let kv_root = consul_dir().join("kv");
    let files = json_files(&kv_root);
    assert!(
        !files.is_empty(),
        "no KV examples in deploy/compose/consul/kv"
    );
    // The compose agent runs with --kv-prefix weft/.
    let prefix = "weft/";
    let services: BTreeSet<String> = json_files(&consul_dir().join("services"))
        .iter()
        .filter_map(|file| {
            read_json(file)["service"]["name"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let mut problems = Vec::new();
    for file in &files {
        let key = relative_key(&kv_root, file);
        let Some(document_key) = key.strip_prefix(prefix) else {
            problems.push(format!(
                "{}: key `{key}` is outside the agent's prefix `{prefix}`",
                relative(file)
            ));
            continue;
        };
        let raw = weft_discovery::model::RawDocument {
            key: document_key.to_string(),
            value: bytes::Bytes::from(std::fs::read(file).unwrap_or_default()),
            origin: relative(file),
            yaml: false,
        };
        match weft_discovery::documents::parse_document(&raw) {
            Err(errors) => {
                problems.extend(errors.iter().map(|e| format!("{}: {e}", relative(file))))
            }
            Ok(document) => {
                let unknown = weft_discovery::documents::validate_references(
                    document_key,
                    &document,
                    &|name| services.contains(name),
                );
                problems.extend(unknown.iter().map(|e| format!("{}: {e}", relative(file))));
            }
        }
    }
    report("example KV documents the agent would reject", problems);
}

/// `weft/routes/api` for `<kv root>/weft/routes/api.json`.
fn relative_key(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file).with_extension("");
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn compose_registration_and_kv_loading_work_against_a_real_consul() {
    run(|ctx| async move {
        let consul = DevConsul::start(&ctx.log_dir, &ConsulOptions::default()).await?;
        let doc = compose();
        let services = compose_services(&doc);
        let dir = compose_file()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();

        // consul-register: the same `consul services register FILE...` with the
        // container paths mapped back to the repository's files.
        let files = compose_register_files();
        let register = services
            .get("consul-register")
            .expect("compose has consul-register");
        let argv = string_list(get(register, &["command"]));
        let mut args: Vec<String> = argv
            .iter()
            .take_while(|a| !a.starts_with('/'))
            .cloned()
            .collect();
        args.extend(files.iter().map(|f| f.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        consul_cli(&consul, &args)?;

        let agent_services = consul.api_get("/v1/agent/services").await?;
        let mut problems = Vec::new();
        for file in &files {
            let definition = read_json(file);
            let id = definition["service"]["id"].as_str().unwrap_or_default();
            let name = definition["service"]["name"].as_str().unwrap_or_default();
            let proxy = &agent_services[format!("{id}-sidecar-proxy")];
            if proxy["Kind"] != "connect-proxy" {
                problems.push(format!(
                    "{}: Consul registered no connect-proxy for {id}: {proxy}",
                    relative(file)
                ));
                continue;
            }
            // What weft-discovery reads for a meshed service.
            let connect = consul
                .api_get(&format!("/v1/health/connect/{name}"))
                .await
                .unwrap_or_default();
            let endpoint = &connect[0]["Service"];
            if endpoint["Port"] != definition["service"]["connect"]["sidecar_service"]["port"]
                || endpoint["Address"] != definition["service"]["address"]
                || endpoint["Proxy"]["DestinationServiceName"] != name
            {
                problems.push(format!(
                    "{}: /v1/health/connect/{name} answers {endpoint}",
                    relative(file)
                ));
            }
        }

        // consul-kv: its shell script, with compose's `$$` unescaped and the
        // mount path mapped to the repository's folder.
        let kv = services.get("consul-kv").expect("compose has consul-kv");
        let entrypoint = string_list(get(kv, &["entrypoint"]));
        let script = string_list(get(kv, &["command"]))
            .join(" ")
            .replace("$$", "$");
        let (host, container) = seq_at(kv, &["volumes"])
            .iter()
            .filter_map(Value::as_str)
            .find_map(|v| {
                let mut parts = v.split(':');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .expect("consul-kv mounts the KV folder");
        let kv_dir = dir.join(&host);
        let script = script.replace(&container, &kv_dir.display().to_string());
        let shell = entrypoint.first().expect("consul-kv has an entrypoint");
        let path = path_with_consul()?;
        let output = Command::new(shell)
            .args(&entrypoint[1..])
            .arg(&script)
            .env("CONSUL_HTTP_ADDR", consul.address())
            .env("PATH", path)
            .output()
            .unwrap_or_else(|error| panic!("running the consul-kv script with {shell}: {error}"));
        assert!(
            output.status.success(),
            "the consul-kv script failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for file in json_files(&kv_dir) {
            let key = relative_key(&kv_dir, &file);
            let stored = consul_cli(&consul, &["kv", "get", &key])?;
            let expected = std::fs::read_to_string(&file).unwrap_or_default();
            if stored.trim_end() != expected.trim_end() {
                problems.push(format!(
                    "KV {key} holds {stored:?}, not the content of {}",
                    relative(&file)
                ));
            }
        }
        report(
            "the compose demo's Consul setup, run against Consul",
            problems,
        );
        Ok(())
    });
}

/// Runs a consul CLI command against `consul`, as the demo's containers
/// do; its output, or an error with what it printed.
fn consul_cli(consul: &DevConsul, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(consul_binary()?)
        .args(args)
        .env("CONSUL_HTTP_ADDR", consul.address())
        .output()
        .with_context(|| format!("running consul {args:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "consul {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
