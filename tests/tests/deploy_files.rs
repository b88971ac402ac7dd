//! The deployment files are validated here, not run: CI has no Docker engine
//! and no Kubernetes. Every check is something a user would hit if it were
//! wrong: a manifest `kubectl apply` rejects, a probe on a port nothing listens
//! on, a sidecar flag that does not exist, a compose reference to a missing
//! service, an image tag that floats, a registration file Consul refuses.
//!
//! Covered: every YAML document in `deploy/compose` and `deploy/kubernetes`
//! (multi-document files included), `deploy/Dockerfile`, the Consul service
//! definitions and KV examples of the compose demo. The Consul parts run the
//! very commands the containers run against a real Consul dev agent (1.8.7,
//! from `WEFT_CONSUL_BIN` or `deploy/local/install-consul.sh`).
//!
//! Each test collects every problem it finds and fails once, listing them all
//! with the file and object they are in, so one run shows everything to fix.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_yaml::Value;

// ---------------------------------------------------------------------------
// What the binaries accept (the CLI contract the manifests are written against).
// ---------------------------------------------------------------------------

/// weft-sidecar's settings: flag and environment variable.
const SIDECAR_SETTINGS: &[(&str, &str)] = &[
    ("--service", "WEFT_SERVICE"),
    ("--discovery", "WEFT_DISCOVERY"),
    ("--inbound", "WEFT_INBOUND"),
    ("--app", "WEFT_APP"),
    ("--outbound", "WEFT_OUTBOUND"),
    ("--admin", "WEFT_ADMIN"),
];
/// weft-discovery's flags.
const AGENT_FLAGS: &[&str] = &[
    "--consul",
    "--listen",
    "--admin",
    "--kv-prefix",
    "--config-dir",
];
/// weft-discovery's environment (Consul's own variable names).
const AGENT_ENV: &[&str] = &["CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_CACERT"];
/// weft-testapp's flags (tests/src/bin/weft-testapp.rs).
const TESTAPP_FLAGS: &[&str] = &["--service", "--instance", "--listen"];
const SIDECAR_ADMIN_PATHS: &[&str] = &["/ready", "/live", "/config_dump", "/clusters", "/metrics"];
const AGENT_ADMIN_PATHS: &[&str] = &["/healthz", "/readyz", "/status", "/metrics"];

/// The binaries a Weft image contains, as named in a container's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binary {
    Sidecar,
    Agent,
    TestApp,
}

impl Binary {
    fn of(argv0: &str) -> Option<Self> {
        match argv0.rsplit('/').next().unwrap_or(argv0) {
            "weft-sidecar" => Some(Binary::Sidecar),
            "weft-discovery" => Some(Binary::Agent),
            "weft-testapp" => Some(Binary::TestApp),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Binary::Sidecar => "weft-sidecar",
            Binary::Agent => "weft-discovery",
            Binary::TestApp => "weft-testapp",
        }
    }

    fn flags(self) -> Vec<&'static str> {
        match self {
            Binary::Sidecar => SIDECAR_SETTINGS.iter().map(|(flag, _)| *flag).collect(),
            Binary::Agent => AGENT_FLAGS.to_vec(),
            Binary::TestApp => TESTAPP_FLAGS.to_vec(),
        }
    }

    /// Settings that hold a listen address: (flag, env).
    fn listeners(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Binary::Sidecar => &[
                ("--inbound", "WEFT_INBOUND"),
                ("--outbound", "WEFT_OUTBOUND"),
                ("--admin", "WEFT_ADMIN"),
            ],
            Binary::Agent => &[("--listen", ""), ("--admin", "")],
            Binary::TestApp => &[("--listen", "")],
        }
    }

    /// Probe paths the binary serves, and on which setting's port; `None` for
    /// the test app, which answers every path.
    fn admin(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            Binary::Sidecar => Some(("--admin", SIDECAR_ADMIN_PATHS)),
            Binary::Agent => Some(("--admin", AGENT_ADMIN_PATHS)),
            Binary::TestApp => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    // Invariant: this crate lives in <repo>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// One YAML document: where it is, and its value with `<<` merge keys applied
/// (compose files share settings through anchors and merges).
struct YamlDoc {
    file: PathBuf,
    /// "deploy/kubernetes/x.yaml, document 2"
    origin: String,
    value: Value,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("reading {}: {error}", relative(&dir)));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|error| panic!("reading {}: {error}", relative(&dir)))
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every document of every YAML file under `dir`. A file that does not parse
/// fails the calling test with the file, the document and serde_yaml's
/// line/column.
fn yaml_docs(dir: &Path) -> Vec<YamlDoc> {
    let files = yaml_files(dir);
    assert!(!files.is_empty(), "no YAML files under {}", relative(dir));
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|error| panic!("reading {}: {error}", relative(&file)));
        let mut in_file = 0;
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{}, document {}", relative(&file), index + 1);
            let mut value = match Value::deserialize(document) {
                Ok(value) => value,
                Err(error) => {
                    errors.push(format!("{origin}: not valid YAML: {error}"));
                    break;
                }
            };
            if let Err(error) = value.apply_merge() {
                errors.push(format!("{origin}: bad `<<` merge: {error}"));
                continue;
            }
            if value.is_null() {
                continue; // an empty document (e.g. a trailing `---`)
            }
            in_file += 1;
            docs.push(YamlDoc {
                file: file.clone(),
                origin,
                value,
            });
        }
        if in_file == 0 && errors.is_empty() {
            errors.push(format!("{}: holds no YAML document", relative(&file)));
        }
    }
    report("YAML files that do not load", errors);
    docs
}

/// Fails with every problem found, one per line.
fn report(what: &str, problems: Vec<String>) {
    if !problems.is_empty() {
        let mut text = format!("{what} ({}):\n", problems.len());
        for problem in &problems {
            let _ = writeln!(text, "  - {problem}");
        }
        panic!("{text}");
    }
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(value, path).and_then(Value::as_str)
}

fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    get(value, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar_text).collect(),
        // Compose accepts a command as one string, split like a shell would
        // for the simple (unquoted) forms used here.
        Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Containers, from compose services and Kubernetes pod templates alike.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum ProbeFrom {
    /// The kubelet, from outside the container: the port must be bound on a
    /// non-loopback address.
    Outside,
    /// A command inside the container (exec probe, compose healthcheck).
    Inside,
}

#[derive(Clone, Debug)]
struct Probe {
    what: String,
    from: ProbeFrom,
    /// The probed port, or why it could not be told.
    port: Result<u16, String>,
    path: Option<String>,
}

#[derive(Clone, Debug)]
struct Container {
    /// "deploy/kubernetes/example-app.yaml, document 2: Deployment weft-demo/users, container weft-sidecar"
    origin: String,
    /// Containers in one network namespace share this key (a pod, or a compose
    /// service and the ones with `network_mode: service:<it>`).
    netns: String,
    /// The compose service or Kubernetes container name.
    name: String,
    image: Option<String>,
    argv: Vec<String>,
    /// Environment; `None` for values taken from elsewhere (valueFrom).
    env: Vec<(String, Option<String>)>,
    named_ports: BTreeMap<String, u16>,
    probes: Vec<Probe>,
    /// The Kubernetes container spec (None for compose).
    k8s: Option<Value>,
}

impl Container {
    fn binary(&self) -> Option<Binary> {
        self.argv.first().and_then(|argv0| Binary::of(argv0))
    }

    /// Whether the environment sets `name` (by value or from a ConfigMap/Secret).
    fn has_env(&self, name: &str) -> bool {
        self.env.iter().any(|(key, _)| key == name)
    }

    fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The value of `--flag X` / `--flag=X` after the binary, else of `env`.
    fn setting(&self, flag: &str, env: &str) -> Option<String> {
        let args = self.argv.get(1..).unwrap_or_default();
        for (index, arg) in args.iter().enumerate() {
            if arg == flag {
                return args.get(index + 1).cloned();
            }
            if let Some(value) = arg
                .strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
            {
                return Some(value.to_string());
            }
        }
        if env.is_empty() {
            return None;
        }
        self.env_value(env).map(str::to_string)
    }

    fn flag_names(&self) -> Vec<String> {
        self.argv
            .get(1..)
            .unwrap_or_default()
            .iter()
            .filter(|arg| arg.starts_with("--"))
            .map(|arg| arg.split('=').next().unwrap_or(arg).to_string())
            .collect()
    }

    /// (setting, address) of every listener the container's binary opens.
    fn listeners(&self) -> Vec<(String, Result<SocketAddr, String>)> {
        let Some(binary) = self.binary() else {
            return Vec::new();
        };
        binary
            .listeners()
            .iter()
            .filter_map(|(flag, env)| {
                let value = self.setting(flag, env)?;
                let parsed = value
                    .parse::<SocketAddr>()
                    .map_err(|error| format!("`{value}` is not IP:PORT ({error})"));
                Some((flag.to_string(), parsed))
            })
            .collect()
    }
}

/// `http://host:port/path` inside a command line: the probed port and path.
fn url_in(words: &[String]) -> Option<(String, u16, String)> {
    words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .find_map(|word| {
            let rest = word
                .strip_prefix("http://")
                .or_else(|| word.strip_prefix("https://"))?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (host, port) = authority.rsplit_once(':')?;
            let port = port.parse().ok()?;
            let path = if path.is_empty() { "/" } else { path };
            Some((host.to_string(), port, path.to_string()))
        })
}

fn compose_file() -> PathBuf {
    deploy().join("compose/docker-compose.yml")
}

fn compose() -> YamlDoc {
    let file = compose_file();
    let mut docs: Vec<YamlDoc> = yaml_docs(&deploy().join("compose"))
        .into_iter()
        .filter(|doc| doc.file == file)
        .collect();
    assert_eq!(docs.len(), 1, "{} must hold one document", relative(&file));
    docs.remove(0)
}

fn compose_services(doc: &YamlDoc) -> BTreeMap<String, Value> {
    let services = get(&doc.value, &["services"])
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("{}: no `services:` mapping", doc.origin));
    services
        .iter()
        .map(|(name, service)| {
            let name = name
                .as_str()
                .unwrap_or_else(|| panic!("{}: a service name is not a string", doc.origin));
            (name.to_string(), service.clone())
        })
        .collect()
}

fn compose_env(service: &Value) -> Vec<(String, Option<String>)> {
    match get(service, &["environment"]) {
        Some(Value::Mapping(map)) => map
            .iter()
            .filter_map(|(key, value)| Some((key.as_str()?.to_string(), scalar_text(value))))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((key, value)) => (key.to_string(), Some(value.to_string())),
                None => (item.to_string(), None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn compose_containers(doc: &YamlDoc) -> Vec<Container> {
    compose_services(doc)
        .into_iter()
        .map(|(name, service)| {
            let mut argv = string_list(get(&service, &["entrypoint"]));
            argv.extend(string_list(get(&service, &["command"])));
            let netns = str_at(&service, &["network_mode"])
                .and_then(|mode| mode.strip_prefix("service:"))
                .unwrap_or(&name)
                .to_string();
            let mut probes = Vec::new();
            if let Some(test) = get(&service, &["healthcheck", "test"]) {
                let words = string_list(Some(test));
                let (port, path) = match url_in(&words) {
                    Some((_, port, path)) => (Ok(port), Some(path)),
                    None => (Err("no http:// URL in the healthcheck".to_string()), None),
                };
                probes.push(Probe {
                    what: "healthcheck".into(),
                    from: ProbeFrom::Inside,
                    port,
                    path,
                });
            }
            Container {
                origin: format!("{}: service `{name}`", relative(&doc.file)),
                netns: format!("compose:{netns}"),
                name: name.clone(),
                image: str_at(&service, &["image"]).map(str::to_string),
                argv,
                env: compose_env(&service),
                named_ports: BTreeMap::new(),
                probes,
                k8s: None,
            }
        })
        .collect()
}

fn k8s_docs() -> Vec<YamlDoc> {
    yaml_docs(&deploy().join("kubernetes"))
}

fn kind(doc: &YamlDoc) -> &str {
    str_at(&doc.value, &["kind"]).unwrap_or("")
}

fn is_kustomization(doc: &YamlDoc) -> bool {
    kind(doc) == "Kustomization"
}

fn object_name(doc: &YamlDoc) -> String {
    let name = str_at(&doc.value, &["metadata", "name"]).unwrap_or("?");
    match str_at(&doc.value, &["metadata", "namespace"]) {
        Some(namespace) => format!("{} {namespace}/{name}", kind(doc)),
        None => format!("{} {name}", kind(doc)),
    }
}

/// The pod spec of a workload object, if it is one.
fn pod_spec(doc: &YamlDoc) -> Option<&Value> {
    match kind(doc) {
        "Pod" => get(&doc.value, &["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            get(&doc.value, &["spec", "template", "spec"])
        }
        "CronJob" => get(
            &doc.value,
            &["spec", "jobTemplate", "spec", "template", "spec"],
        ),
        _ => None,
    }
}

fn k8s_probe(what: &str, probe: &Value, named: &BTreeMap<String, u16>) -> Probe {
    let resolve = |port: &Value| -> Result<u16, String> {
        match port {
            Value::Number(number) => number
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("port {number} is not a port number")),
            Value::String(name) => named
                .get(name)
                .copied()
                .ok_or_else(|| format!("named port `{name}` is not among the container's ports")),
            other => Err(format!("port {other:?} is neither a number nor a name")),
        }
    };
    for handler in ["httpGet", "tcpSocket", "grpc"] {
        if let Some(port) = get(probe, &[handler, "port"]) {
            return Probe {
                what: format!("{what} ({handler})"),
                from: ProbeFrom::Outside,
                port: resolve(port),
                path: str_at(probe, &[handler, "path"]).map(str::to_string),
            };
        }
    }
    let words = string_list(get(probe, &["exec", "command"]));
    let (port, path) = match url_in(&words) {
        Some((_, port, path)) => (Ok(port), Some(path)),
        None => (
            Err("no port: neither httpGet/tcpSocket/grpc nor a URL in exec".into()),
            None,
        ),
    };
    Probe {
        what: format!("{what} (exec)"),
        from: ProbeFrom::Inside,
        port,
        path,
    }
}

fn k8s_containers(docs: &[YamlDoc]) -> Vec<Container> {
    let mut containers = Vec::new();
    for doc in docs {
        let Some(spec) = pod_spec(doc) else { continue };
        for list in ["initContainers", "containers"] {
            for container in seq_at(spec, &[list]) {
                let name = str_at(container, &["name"]).unwrap_or("?").to_string();
                let named_ports: BTreeMap<String, u16> = seq_at(container, &["ports"])
                    .iter()
                    .filter_map(|port| {
                        let name = str_at(port, &["name"])?;
                        let number = get(port, &["containerPort"])?.as_u64()?;
                        Some((name.to_string(), u16::try_from(number).ok()?))
                    })
                    .collect();
                let env = seq_at(container, &["env"])
                    .iter()
                    .filter_map(|var| {
                        let key = str_at(var, &["name"])?.to_string();
                        Some((key, get(var, &["value"]).and_then(scalar_text)))
                    })
                    .collect();
                let mut argv = string_list(get(container, &["command"]));
                argv.extend(string_list(get(container, &["args"])));
                let probes = ["startupProbe", "readinessProbe", "livenessProbe"]
                    .iter()
                    .filter_map(|what| {
                        get(container, &[what]).map(|probe| k8s_probe(what, probe, &named_ports))
                    })
                    .collect();
                containers.push(Container {
                    origin: format!("{}: {}, container `{name}`", doc.origin, object_name(doc)),
                    netns: format!("k8s:{}", doc.origin),
                    name,
                    image: str_at(container, &["image"]).map(str::to_string),
                    argv,
                    env,
                    named_ports,
                    probes,
                    k8s: Some(container.clone()),
                });
            }
        }
    }
    containers
}

fn all_containers() -> Vec<Container> {
    let mut containers = compose_containers(&compose());
    containers.extend(k8s_containers(&k8s_docs()));
    containers
}

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

// ---------------------------------------------------------------------------
// Static checks.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Consul registrations and KV examples of the compose demo.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Dockerfile.
// ---------------------------------------------------------------------------

struct Stage {
    name: String,
    from: String,
    /// Binaries copied into /usr/local/bin, with the stage they come from.
    binaries: BTreeSet<String>,
    user: Option<String>,
}

struct Dockerfile {
    stages: Vec<Stage>,
    /// Names the build copies out of target/release/.
    built: BTreeSet<String>,
}

impl Dockerfile {
    fn stage_names(&self) -> BTreeSet<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    /// (stage, image) of every FROM that names an image, not a stage.
    fn base_images(&self) -> Vec<(String, String)> {
        self.stages
            .iter()
            .filter(|s| !self.stages.iter().any(|other| other.name == s.from))
            .map(|s| (s.name.clone(), s.from.clone()))
            .collect()
    }

    fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The binaries a stage ends up with, including its base stages'.
    fn binaries(&self, name: &str) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        let mut current = self.stage(name);
        while let Some(stage) = current {
            all.extend(stage.binaries.iter().cloned());
            current = self.stage(&stage.from);
        }
        all
    }

    fn user(&self, name: &str) -> Option<String> {
        let mut current = self.stage(name);
        while let Some(stage) = current {
            if stage.user.is_some() {
                return stage.user.clone();
            }
            current = self.stage(&stage.from);
        }
        None
    }
}

fn dockerfile() -> Dockerfile {
    let path = deploy().join("Dockerfile");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading deploy/Dockerfile: {error}"));
    // Join continuation lines, drop comments.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    let mut built = BTreeSet::new();
    for instruction in instructions {
        let words: Vec<&str> = instruction.split_whitespace().collect();
        let Some(op) = words.first().map(|w| w.to_ascii_uppercase()) else {
            continue;
        };
        match op.as_str() {
            "FROM" => {
                let image = words.get(1).copied().unwrap_or_default();
                let name = match words.get(2).map(|w| w.to_ascii_uppercase()) {
                    Some(as_) if as_ == "AS" => {
                        words.get(3).copied().unwrap_or_default().to_string()
                    }
                    _ => stages.len().to_string(),
                };
                stages.push(Stage {
                    name,
                    from: image.to_string(),
                    binaries: BTreeSet::new(),
                    user: None,
                });
            }
            "COPY" => {
                let Some(stage) = stages.last_mut() else {
                    continue;
                };
                let args: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                if let Some((dest, sources)) = args.split_last()
                    && dest.starts_with("/usr/local/bin")
                {
                    stage.binaries.extend(
                        sources
                            .iter()
                            .map(|s| s.rsplit('/').next().unwrap_or(s).to_string()),
                    );
                }
            }
            "USER" => {
                if let Some(stage) = stages.last_mut() {
                    stage.user = words.get(1).map(|u| u.to_string());
                }
            }
            "RUN" => {
                for word in &words {
                    if let Some(name) = word.strip_prefix("target/release/") {
                        built.insert(name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Dockerfile { stages, built }
}

/// Workspace facts from `cargo metadata`: bin target names, version, rust-version.
fn workspace() -> (BTreeSet<String>, String, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(repo_root().join("Cargo.toml"))
        .output()
        .unwrap_or_else(|error| panic!("running {cargo} metadata: {error}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let bins = packages
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    let discovery = packages
        .iter()
        .find(|p| p["name"] == "weft-discovery")
        .expect("weft-discovery in the workspace");
    (
        bins,
        discovery["version"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        discovery["rust_version"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn dockerfile_builds_the_binaries_the_manifests_run_as_a_non_root_user() {
    let dockerfile = dockerfile();
    let (bins, version, rust_version) = workspace();
    let mut problems = Vec::new();
    for name in &dockerfile.built {
        if !bins.contains(name) {
            problems.push(format!("deploy/Dockerfile copies target/release/{name}, which is not a bin of the workspace ({bins:?})"));
        }
    }
    // The builder uses the workspace's rust-version: the image proves the MSRV.
    let builder = dockerfile
        .stages
        .first()
        .map(|s| s.from.clone())
        .unwrap_or_default();
    if !builder.starts_with(&format!("rust:{rust_version}-"))
        && builder != format!("rust:{rust_version}")
    {
        problems.push(format!("deploy/Dockerfile builds with `{builder}`, the workspace's rust-version is {rust_version}"));
    }
    let runtime = dockerfile
        .stages
        .last()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    for required in ["weft-discovery", "weftctl", "weft-sidecar"] {
        if !dockerfile.binaries(&runtime).contains(required) {
            problems.push(format!("the runtime stage `{runtime}` lacks {required}"));
        }
    }
    // Image name -> stage: weft = the default (last) stage; a compose build
    // names its target for its image.
    let mut image_stage: BTreeMap<String, String> = BTreeMap::new();
    image_stage.insert("weft".into(), runtime.clone());
    for service in compose_services(&compose()).values() {
        if let (Some(image), Some(target)) = (
            str_at(service, &["image"]),
            str_at(service, &["build", "target"]),
        ) {
            let repo = image.split(':').next().unwrap_or(image).to_string();
            image_stage.insert(repo, target.to_string());
        }
    }
    for stage in image_stage.values() {
        match dockerfile.user(stage).as_deref() {
            Some(user) => {
                let uid = user.split(':').next().unwrap_or(user);
                if uid == "0" || uid == "root" || uid.parse::<u32>().is_err() {
                    problems.push(format!("stage `{stage}` runs as USER {user}: use a non-zero numeric uid (runAsNonRoot can only verify a number)"));
                }
            }
            None => problems.push(format!("stage `{stage}` has no USER: it runs as root")),
        }
    }
    for container in all_containers() {
        let Some(image) = &container.image else {
            continue;
        };
        let Some((repo, tag)) = image.rsplit_once(':') else {
            continue;
        };
        let Some(stage) = image_stage.get(repo) else {
            continue;
        };
        if tag != version {
            problems.push(format!("{}: image `{image}`, but the workspace version (what deploy/README.md builds) is {version}", container.origin));
        }
        if let Some(binary) = container.argv.first() {
            let binary = binary.rsplit('/').next().unwrap_or(binary);
            if binary.starts_with("weft") && !dockerfile.binaries(stage).contains(binary) {
                problems.push(format!(
                    "{}: runs {binary}, which stage `{stage}` ({image}) does not contain",
                    container.origin
                ));
            }
        }
    }
    report("Dockerfile problems", problems);
}

// ---------------------------------------------------------------------------
// Against a real Consul: the commands the containers run.
// ---------------------------------------------------------------------------

/// A Consul dev agent on free loopback ports, killed on drop.
struct ConsulDev {
    child: Child,
    binary: PathBuf,
    http_port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|error| panic!("picking a free loopback port: {error}"))
}

fn consul_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WEFT_CONSUL_BIN") {
        return PathBuf::from(path);
    }
    let script = deploy().join("local/install-consul.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", relative(&script)));
    assert!(
        output.status.success(),
        "Consul is required by these tests and {} could not provide it: {}",
        relative(&script),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

impl ConsulDev {
    fn start() -> Self {
        let binary = consul_binary();
        let http_port = free_port();
        let log = std::env::temp_dir().join(format!(
            "weft-deploy-consul-{}-{http_port}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|error| panic!("creating {}: {error}", log.display()));
        let stderr = log_file
            .try_clone()
            .unwrap_or_else(|error| panic!("cloning the log handle: {error}"));
        let child = Command::new(&binary)
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
                "-serf-wan-port",
                "-1",
            ])
            .args(["-http-port", &http_port.to_string()])
            .args(["-serf-lan-port", &free_port().to_string()])
            .args(["-server-port", &free_port().to_string()])
            .args(["-node", &format!("weft-deploy-{http_port}")])
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()));
        let mut consul = ConsulDev {
            child,
            binary,
            http_port,
            log,
        };
        consul.wait_until("Consul elects itself leader", |consul| {
            let (status, body) = consul.get("/v1/status/leader")?;
            (status == 200 && body.contains(':')).then_some(())
        });
        consul
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// A plain HTTP/1.0 GET (Consul closes the connection after answering).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())?;
        Some((status, body))
    }

    fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(path)?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Polls `check` (the readiness signal) until it answers, failing with
    /// Consul's log if it does not within 30 s or Consul exits.
    fn wait_until<T>(&mut self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Consul exited ({status}) before: {what}\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs a consul CLI command against this agent.
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.binary)
            .args(args)
            .env("CONSUL_HTTP_ADDR", self.address())
            .output()
            .unwrap_or_else(|error| panic!("running consul {args:?}: {error}"));
        assert!(
            output.status.success(),
            "consul {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for ConsulDev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Kills a child process (a registration script) if the test fails midway.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn compose_registration_and_kv_loading_work_against_a_real_consul() {
    let consul = ConsulDev::start();
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
    consul.cli(&args);

    let agent_services = consul
        .get_json("/v1/agent/services")
        .expect("GET /v1/agent/services");
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
            .get_json(&format!("/v1/health/connect/{name}"))
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
    let consul_dir = consul
        .binary
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        consul_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
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
        let stored = consul.cli(&["kv", "get", &key]);
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
    let mut consul = ConsulDev::start();
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
    let tmp = std::env::temp_dir().join(format!("weft-deploy-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)
        .unwrap_or_else(|error| panic!("creating {}: {error}", tmp.display()));
    let consul_dir = consul
        .binary
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        consul_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
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
    let proxy = consul.wait_until("the pod is registered with its sidecar proxy", |consul| {
        if let Ok(Some(status)) = script.0.try_wait() {
            panic!(
                "the consul-register script exited ({status}) instead of staying up:\n{}",
                script_output()
            );
        }
        consul.get_json(&format!("/v1/agent/service/{id}-sidecar-proxy"))
    });
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match script.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => {
                panic!("the consul-register script did not exit within 10 s of SIGTERM: {other:?}")
            }
        }
    };
    if !status.success() {
        problems.push(format!(
            "the script exited with {status} on SIGTERM, expected 0:\n{}",
            script_output()
        ));
    }
    for service in [id.clone(), format!("{id}-sidecar-proxy")] {
        match consul.get(&format!("/v1/agent/service/{service}")) {
            Some((404, _)) => {}
            other => problems.push(format!(
                "{service} is still registered after SIGTERM: {other:?}"
            )),
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    report("the Kubernetes registration lifecycle", problems);
}

// ---------------------------------------------------------------------------
// Observability: the Prometheus scrape config and the trace export of compose.
// ---------------------------------------------------------------------------

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
