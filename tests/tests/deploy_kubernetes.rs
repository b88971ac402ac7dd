//! The Kubernetes manifests (`deploy/kubernetes`), validated, not applied:
//! CI has no cluster. Every check is something a user would hit if it were
//! wrong: an object `kubectl apply` rejects, a kustomization naming a missing
//! file, a container without limits or with a writable root, a reference to
//! a ConfigMap, Secret or ServiceAccount that does not exist. The pod's
//! registration container runs for real against a Consul dev agent.
//!
//! Each test collects every problem it finds and fails once, listing them all
//! with the file and object they are in, so one run shows everything to fix.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use http::{Method, StatusCode};
use serde_yaml::Value;
use weft_e2e::harness::consul::{ConsulOptions, DevConsul, READY_TIMEOUT};
use weft_e2e::harness::deploy::{
    Binary, YamlDoc, get, k8s_containers, k8s_docs, kind, object_name, path_with_consul, pod_spec,
    report, scalar_text, seq_at, str_at, string_list,
};
use weft_e2e::{eventually, run};

fn is_kustomization(doc: &YamlDoc) -> bool {
    kind(doc) == "Kustomization"
}

#[test]
fn kubernetes_objects_have_api_version_kind_name_and_an_existing_namespace() {
    let docs = k8s_docs();
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|doc| kind(doc) == "Namespace")
        .filter_map(|doc| str_at(&doc.value, &["metadata", "name"]))
        .collect();
    // Cluster-scoped kinds used, or likely to be, in these manifests.
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
    ];
    let mut problems = Vec::new();
    for doc in docs.iter().filter(|doc| !is_kustomization(doc)) {
        for field in ["apiVersion", "kind"] {
            if str_at(&doc.value, &[field]).is_none_or(str::is_empty) {
                problems.push(format!("{}: no `{field}`", doc.origin));
            }
        }
        if str_at(&doc.value, &["metadata", "name"]).is_none_or(str::is_empty) {
            problems.push(format!("{}: no `metadata.name`", doc.origin));
        }
        if cluster_scoped.contains(&kind(doc)) {
            continue;
        }
        match str_at(&doc.value, &["metadata", "namespace"]) {
            // Without a namespace it lands in whatever the kubectl context says.
            None => problems.push(format!(
                "{}: {} has no metadata.namespace",
                doc.origin,
                object_name(doc)
            )),
            Some(namespace) if !namespaces.contains(namespace) => problems.push(format!(
                "{}: namespace `{namespace}` is not created by any Namespace in deploy/kubernetes",
                doc.origin
            )),
            Some(_) => {}
        }
    }
    report(
        "Kubernetes objects that kubectl would reject or misplace",
        problems,
    );
}

#[test]
fn kustomization_lists_existing_manifests() {
    let docs = k8s_docs();
    let mut problems = Vec::new();
    let mut found = false;
    for doc in docs.iter().filter(|doc| is_kustomization(doc)) {
        found = true;
        let dir = doc.file.parent().unwrap_or(Path::new("."));
        for resource in seq_at(&doc.value, &["resources"])
            .iter()
            .filter_map(Value::as_str)
        {
            let path = dir.join(resource);
            if !path.is_file() {
                problems.push(format!(
                    "{}: resource `{resource}` does not exist",
                    doc.origin
                ));
            } else if yaml_docs_in_file(&docs, &path).any(is_kustomization) {
                problems.push(format!(
                    "{}: resource `{resource}` is a Kustomization",
                    doc.origin
                ));
            }
        }
        if seq_at(&doc.value, &["resources"]).is_empty() {
            problems.push(format!("{}: lists no resources", doc.origin));
        }
    }
    assert!(
        found,
        "deploy/kubernetes has no kustomization.yaml (kubectl apply -k)"
    );
    report("kustomization problems", problems);
}

fn yaml_docs_in_file<'a>(docs: &'a [YamlDoc], file: &'a Path) -> impl Iterator<Item = &'a YamlDoc> {
    docs.iter().filter(move |doc| doc.file == file)
}

#[test]
fn every_kubernetes_container_has_requests_limits_and_a_locked_down_security_context() {
    let docs = k8s_docs();
    let mut problems = Vec::new();
    for doc in &docs {
        let Some(spec) = pod_spec(doc) else { continue };
        if get(spec, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool) != Some(true) {
            problems.push(format!(
                "{}: pod securityContext.runAsNonRoot is not true",
                doc.origin
            ));
        }
    }
    let containers = k8s_containers(&docs);
    assert!(
        !containers.is_empty(),
        "no containers found in deploy/kubernetes"
    );
    for container in containers {
        let Some(spec) = &container.k8s else { continue };
        let origin = &container.origin;
        for section in ["requests", "limits"] {
            let resources = get(spec, &["resources", section]);
            if section == "requests" {
                for resource in ["cpu", "memory"] {
                    if resources.and_then(|r| r.get(resource)).is_none() {
                        problems.push(format!("{origin}: no resources.requests.{resource}"));
                    }
                }
            } else if resources.and_then(|r| r.get("memory")).is_none() {
                problems.push(format!("{origin}: no resources.limits.memory"));
            }
        }
        if container.binary() == Some(Binary::Sidecar) {
            // The footprint promised in deploy/README.md.
            let requests = get(spec, &["resources", "requests"]);
            let cpu = requests.and_then(|r| r.get("cpu")).and_then(scalar_text);
            let memory = requests.and_then(|r| r.get("memory")).and_then(scalar_text);
            if cpu.as_deref() != Some("10m") || memory.as_deref() != Some("20Mi") {
                problems.push(format!(
                    "{origin}: the sidecar requests cpu {cpu:?} memory {memory:?}; documented: 10m / 20Mi"
                ));
            }
        }
        let security = get(spec, &["securityContext"]);
        let flag = |key: &str| security.and_then(|s| s.get(key)).and_then(Value::as_bool);
        if flag("readOnlyRootFilesystem") != Some(true) {
            problems.push(format!(
                "{origin}: securityContext.readOnlyRootFilesystem is not true"
            ));
        }
        if flag("allowPrivilegeEscalation") != Some(false) {
            problems.push(format!(
                "{origin}: securityContext.allowPrivilegeEscalation is not false"
            ));
        }
        let drops_all = security
            .map(|s| seq_at(s, &["capabilities", "drop"]))
            .unwrap_or_default()
            .iter()
            .any(|cap| cap.as_str() == Some("ALL"));
        if !drops_all {
            problems.push(format!(
                "{origin}: securityContext.capabilities.drop does not hold ALL"
            ));
        }
    }
    report(
        "Kubernetes containers without limits or hardening",
        problems,
    );
}

#[test]
fn kubernetes_references_resolve() {
    let docs = k8s_docs();
    let mut problems = Vec::new();
    let labels_match = |selector: &Value, labels: Option<&Value>| -> bool {
        let Some(selector) = selector.as_mapping() else {
            return false;
        };
        !selector.is_empty()
            && selector
                .iter()
                .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
    };
    let workloads: Vec<&YamlDoc> = docs.iter().filter(|doc| pod_spec(doc).is_some()).collect();
    let namespace = |doc: &YamlDoc| {
        str_at(&doc.value, &["metadata", "namespace"])
            .unwrap_or("")
            .to_string()
    };
    for doc in &workloads {
        let labels = get(&doc.value, &["spec", "template", "metadata", "labels"]);
        if let Some(selector) = get(&doc.value, &["spec", "selector", "matchLabels"])
            && !labels_match(selector, labels)
        {
            problems.push(format!(
                "{}: spec.selector does not match the pod template's labels",
                doc.origin
            ));
        }
        let Some(spec) = pod_spec(doc) else { continue };
        // Config references: a required key that does not exist keeps the pod
        // in CreateContainerConfigError.
        for list in ["initContainers", "containers"] {
            for container in seq_at(spec, &[list]) {
                for var in seq_at(container, &["env"]) {
                    for (reference, source_kind) in
                        [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")]
                    {
                        let Some(reference) = get(var, &["valueFrom", reference]) else {
                            continue;
                        };
                        if get(reference, &["optional"]).and_then(Value::as_bool) == Some(true) {
                            continue;
                        }
                        let (name, key) =
                            (str_at(reference, &["name"]), str_at(reference, &["key"]));
                        let found = docs.iter().any(|other| {
                            kind(other) == source_kind
                                && namespace(other) == namespace(doc)
                                && str_at(&other.value, &["metadata", "name"]) == name
                                && key.is_some_and(|key| {
                                    get(&other.value, &["data", key]).is_some()
                                        || get(&other.value, &["stringData", key]).is_some()
                                })
                        });
                        if !found {
                            problems.push(format!("{}: env {:?} needs {source_kind} {name:?} key {key:?}, not in deploy/kubernetes (mark it optional?)", doc.origin, str_at(var, &["name"])));
                        }
                    }
                }
            }
        }
    }
    let containers = k8s_containers(&docs);
    for doc in docs
        .iter()
        .filter(|doc| matches!(kind(doc), "Service" | "PodDisruptionBudget"))
    {
        let selector = match kind(doc) {
            "Service" => get(&doc.value, &["spec", "selector"]),
            _ => get(&doc.value, &["spec", "selector", "matchLabels"]),
        };
        let Some(selector) = selector else {
            problems.push(format!("{}: no selector", doc.origin));
            continue;
        };
        let selected: Vec<&&YamlDoc> = workloads
            .iter()
            .filter(|w| namespace(w) == namespace(doc))
            .filter(|w| {
                labels_match(
                    selector,
                    get(&w.value, &["spec", "template", "metadata", "labels"]),
                )
            })
            .collect();
        if selected.is_empty() {
            problems.push(format!(
                "{}: selects no workload in deploy/kubernetes",
                doc.origin
            ));
            continue;
        }
        if kind(doc) == "Service" {
            for port in seq_at(&doc.value, &["spec", "ports"]) {
                let Some(target) = get(port, &["targetPort"]).or_else(|| get(port, &["port"]))
                else {
                    continue;
                };
                let found = selected.iter().any(|w| {
                    containers
                        .iter()
                        .filter(|c| c.netns == format!("k8s:{}", w.origin))
                        .any(|c| match target {
                            Value::String(name) => c.named_ports.contains_key(name),
                            Value::Number(number) => c
                                .named_ports
                                .values()
                                .any(|p| Some(u64::from(*p)) == number.as_u64()),
                            _ => false,
                        })
                });
                if !found {
                    problems.push(format!(
                        "{}: targetPort {target:?} is not a port of the selected pods",
                        doc.origin
                    ));
                }
            }
        }
    }
    report("Kubernetes references that do not resolve", problems);
}

/// Kills a child process (a registration script) if the test fails midway.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kubernetes' `$(VAR)` expansion of command, args and env values: references
/// to variables defined (earlier) are replaced, `$$` is a literal `$`, anything
/// else is kept as written.
fn kubelet_expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(index) = rest.find('$') {
        out.push_str(&rest[..index]);
        let after = &rest[index + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = vars.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn kubernetes_registration_container_registers_then_deregisters_on_sigterm() {
    run(|ctx| async move {
        let consul = DevConsul::start(&ctx.log_dir, &ConsulOptions::default()).await?;
        let docs = k8s_docs();
        let containers = k8s_containers(&docs);
        let register = containers
            .iter()
            .find(|c| c.name == "consul-register")
            .expect("the example app has a consul-register container");
        let spec = register.k8s.as_ref().expect("a Kubernetes container");

        // The downward API values of a pod; then the manifest's own env, in order,
        // expanded as the kubelet does (only earlier variables are visible).
        let pod_name = "users-5f7d8c9b4-x2x1z";
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        for var in seq_at(spec, &["env"]) {
            let name = str_at(var, &["name"]).unwrap_or_default().to_string();
            let value = match (
                str_at(var, &["value"]),
                str_at(var, &["valueFrom", "fieldRef", "fieldPath"]),
            ) {
                (Some(value), _) => kubelet_expand(value, &vars),
                (None, Some("status.hostIP" | "status.podIP")) => "127.0.0.1".into(),
                (None, Some("metadata.name")) => pod_name.into(),
                (None, Some("metadata.namespace")) => "weft-demo".into(),
                _ => continue, // optional secret: absent
            };
            vars.insert(name, value);
        }
        assert_eq!(
            vars.get("CONSUL_HTTP_ADDR").map(String::as_str),
            Some("http://127.0.0.1:8500"),
            "CONSUL_HTTP_ADDR must expand to the node's agent ($(HOST_IP) defined before it)"
        );
        // The node agent is this test's Consul.
        vars.insert("CONSUL_HTTP_ADDR".into(), consul.address());

        let command: Vec<String> = string_list(get(spec, &["command"]))
            .iter()
            .chain(string_list(get(spec, &["args"])).iter())
            .map(|word| kubelet_expand(word, &vars))
            .collect();
        let tmp = ctx.log_dir.clone();
        let path = path_with_consul()?;
        let script_log_path = tmp.join("consul-register.log");
        let script_log = std::fs::File::create(&script_log_path)
            .unwrap_or_else(|error| panic!("creating {}: {error}", script_log_path.display()));
        let script_output = || std::fs::read_to_string(&script_log_path).unwrap_or_default();
        let mut script = KillOnDrop(
            Command::new(&command[0])
                .args(&command[1..])
                .env_clear()
                .envs(&vars)
                .env("PATH", path)
                .env("TMPDIR", &tmp)
                .stdout(Stdio::null())
                .stderr(Stdio::from(script_log.try_clone().unwrap_or_else(
                    |error| panic!("cloning the log handle: {error}"),
                )))
                .spawn()
                .unwrap_or_else(|error| panic!("starting the consul-register script: {error}")),
        );

        let id = format!("weft-demo-{pod_name}");
        let registered = format!("/v1/agent/service/{id}-sidecar-proxy");
        let proxy = eventually(
            READY_TIMEOUT,
            "the pod is registered with its sidecar proxy",
            || {
                if let Ok(Some(status)) = script.0.try_wait() {
                    panic!(
                        "the consul-register script exited ({status}) instead of staying up:\n{}",
                        script_output()
                    );
                }
                consul.api_get(&registered)
            },
        )
        .await?;
        let mut problems = Vec::new();
        let sidecar = containers
            .iter()
            .find(|c| c.netns == register.netns && c.binary() == Some(Binary::Sidecar))
            .expect("the pod has a weft-sidecar");
        let inbound = sidecar
            .setting("--inbound", "WEFT_INBOUND")
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .map(|a| a.port());
        let app = sidecar
            .setting("--app", "WEFT_APP")
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .map(|a| a.port());
        if proxy["Kind"] != "connect-proxy"
            || proxy["Port"].as_u64() != inbound.map(u64::from)
            || proxy["Address"] != "127.0.0.1"
            || proxy["Proxy"]["DestinationServiceName"] != "users"
            || proxy["Proxy"]["LocalServicePort"].as_u64() != app.map(u64::from)
        {
            problems.push(format!(
            "the sidecar proxy registration should be connect-proxy at POD_IP:{inbound:?} for users on app port {app:?}: {proxy}"
        ));
        }

        // Pod deletion: SIGTERM. The script deregisters and exits 0.
        let pid = script.0.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            killed.is_ok_and(|s| s.success()),
            "sending SIGTERM to {pid}"
        );
        let status = eventually(
            Duration::from_secs(10),
            "the consul-register script exits on SIGTERM",
            || {
                let exited = script.0.try_wait();
                async move { exited?.context("still running") }
            },
        )
        .await?;
        if !status.success() {
            problems.push(format!(
                "the script exited with {status} on SIGTERM, expected 0:\n{}",
                script_output()
            ));
        }
        for service in [id.clone(), format!("{id}-sidecar-proxy")] {
            let answer = consul
                .api()
                .send(Method::GET, &format!("/v1/agent/service/{service}"), "")
                .await;
            match answer {
                Ok((StatusCode::NOT_FOUND, _)) => {}
                other => problems.push(format!(
                    "{service} is still registered after SIGTERM: {other:?}"
                )),
            }
        }
        report("the Kubernetes registration lifecycle", problems);
        Ok(())
    });
}
