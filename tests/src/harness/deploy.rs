//! What the deployment-file tests (`tests/tests/deploy_*.rs`) share: the
//! CLI contract of Weft's binaries the manifests are written against, the
//! YAML loading (every document, merge keys applied), and one model of a
//! container built from compose services and Kubernetes pod templates
//! alike, so each check is written once for both.
//!
//! A loader fails the calling test, naming the file and document; checks
//! collect every problem and [`report`] them together.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml::Value;

use super::consul::consul_binary;
pub use super::consul::repo_root;

/// weft-sidecar's settings: flag and environment variable.
pub const SIDECAR_SETTINGS: &[(&str, &str)] = &[
    ("--service", "WEFT_SERVICE"),
    ("--discovery", "WEFT_DISCOVERY"),
    ("--inbound", "WEFT_INBOUND"),
    ("--app", "WEFT_APP"),
    ("--outbound", "WEFT_OUTBOUND"),
    ("--admin", "WEFT_ADMIN"),
];

/// weft-discovery's flags.
pub const AGENT_FLAGS: &[&str] = &[
    "--consul",
    "--listen",
    "--admin",
    "--kv-prefix",
    "--config-dir",
];

/// weft-testapp's flags (tests/src/bin/weft-testapp.rs).
pub const TESTAPP_FLAGS: &[&str] = &["--service", "--instance", "--listen"];

pub const SIDECAR_ADMIN_PATHS: &[&str] =
    &["/ready", "/live", "/config_dump", "/clusters", "/metrics"];

pub const AGENT_ADMIN_PATHS: &[&str] = &["/healthz", "/readyz", "/status", "/metrics"];

/// The binaries a Weft image contains, as named in a container's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Sidecar,
    Agent,
    TestApp,
}

impl Binary {
    pub fn of(argv0: &str) -> Option<Self> {
        match argv0.rsplit('/').next().unwrap_or(argv0) {
            "weft-sidecar" => Some(Binary::Sidecar),
            "weft-discovery" => Some(Binary::Agent),
            "weft-testapp" => Some(Binary::TestApp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Binary::Sidecar => "weft-sidecar",
            Binary::Agent => "weft-discovery",
            Binary::TestApp => "weft-testapp",
        }
    }

    pub fn flags(self) -> Vec<&'static str> {
        match self {
            Binary::Sidecar => SIDECAR_SETTINGS.iter().map(|(flag, _)| *flag).collect(),
            Binary::Agent => AGENT_FLAGS.to_vec(),
            Binary::TestApp => TESTAPP_FLAGS.to_vec(),
        }
    }

    /// Settings that hold a listen address: (flag, env).
    pub fn listeners(self) -> &'static [(&'static str, &'static str)] {
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
    pub fn admin(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            Binary::Sidecar => Some(("--admin", SIDECAR_ADMIN_PATHS)),
            Binary::Agent => Some(("--admin", AGENT_ADMIN_PATHS)),
            Binary::TestApp => None,
        }
    }
}

pub fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

pub fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// One YAML document: where it is, and its value with `<<` merge keys applied
/// (compose files share settings through anchors and merges).
pub struct YamlDoc {
    pub file: PathBuf,
    /// "deploy/kubernetes/x.yaml, document 2"
    pub origin: String,
    pub value: Value,
}

pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
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
pub fn yaml_docs(dir: &Path) -> Vec<YamlDoc> {
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
pub fn report(what: &str, problems: Vec<String>) {
    if !problems.is_empty() {
        let mut text = format!("{what} ({}):\n", problems.len());
        for problem in &problems {
            let _ = writeln!(text, "  - {problem}");
        }
        panic!("{text}");
    }
}

pub fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(value, path).and_then(Value::as_str)
}

pub fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    get(value, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

pub fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar_text).collect(),
        // Compose accepts a command as one string, split like a shell would
        // for the simple (unquoted) forms used here.
        Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeFrom {
    /// The kubelet, from outside the container: the port must be bound on a
    /// non-loopback address.
    Outside,
    /// A command inside the container (exec probe, compose healthcheck).
    Inside,
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub what: String,
    pub from: ProbeFrom,
    /// The probed port, or why it could not be told.
    pub port: Result<u16, String>,
    pub path: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Container {
    /// "deploy/kubernetes/example-app.yaml, document 2: Deployment weft-demo/users, container weft-sidecar"
    pub origin: String,
    /// Containers in one network namespace share this key (a pod, or a compose
    /// service and the ones with `network_mode: service:<it>`).
    pub netns: String,
    /// The compose service or Kubernetes container name.
    pub name: String,
    pub image: Option<String>,
    pub argv: Vec<String>,
    /// Environment; `None` for values taken from elsewhere (valueFrom).
    pub env: Vec<(String, Option<String>)>,
    pub named_ports: BTreeMap<String, u16>,
    pub probes: Vec<Probe>,
    /// The Kubernetes container spec (None for compose).
    pub k8s: Option<Value>,
}

impl Container {
    pub fn binary(&self) -> Option<Binary> {
        self.argv.first().and_then(|argv0| Binary::of(argv0))
    }

    /// Whether the environment sets `name` (by value or from a ConfigMap/Secret).
    pub fn has_env(&self, name: &str) -> bool {
        self.env.iter().any(|(key, _)| key == name)
    }

    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The value of `--flag X` / `--flag=X` after the binary, else of `env`.
    pub fn setting(&self, flag: &str, env: &str) -> Option<String> {
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

    pub fn flag_names(&self) -> Vec<String> {
        self.argv
            .get(1..)
            .unwrap_or_default()
            .iter()
            .filter(|arg| arg.starts_with("--"))
            .map(|arg| arg.split('=').next().unwrap_or(arg).to_string())
            .collect()
    }

    /// (setting, address) of every listener the container's binary opens.
    pub fn listeners(&self) -> Vec<(String, Result<SocketAddr, String>)> {
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
pub fn url_in(words: &[String]) -> Option<(String, u16, String)> {
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

pub fn compose_file() -> PathBuf {
    deploy().join("compose/docker-compose.yml")
}

pub fn compose() -> YamlDoc {
    let file = compose_file();
    let mut docs: Vec<YamlDoc> = yaml_docs(&deploy().join("compose"))
        .into_iter()
        .filter(|doc| doc.file == file)
        .collect();
    assert_eq!(docs.len(), 1, "{} must hold one document", relative(&file));
    docs.remove(0)
}

pub fn compose_services(doc: &YamlDoc) -> BTreeMap<String, Value> {
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

pub fn compose_env(service: &Value) -> Vec<(String, Option<String>)> {
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

pub fn compose_containers(doc: &YamlDoc) -> Vec<Container> {
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

pub fn k8s_docs() -> Vec<YamlDoc> {
    yaml_docs(&deploy().join("kubernetes"))
}

pub fn kind(doc: &YamlDoc) -> &str {
    str_at(&doc.value, &["kind"]).unwrap_or("")
}

pub fn object_name(doc: &YamlDoc) -> String {
    let name = str_at(&doc.value, &["metadata", "name"]).unwrap_or("?");
    match str_at(&doc.value, &["metadata", "namespace"]) {
        Some(namespace) => format!("{} {namespace}/{name}", kind(doc)),
        None => format!("{} {name}", kind(doc)),
    }
}

/// The pod spec of a workload object, if it is one.
pub fn pod_spec(doc: &YamlDoc) -> Option<&Value> {
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

pub fn k8s_probe(what: &str, probe: &Value, named: &BTreeMap<String, u16>) -> Probe {
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

pub fn k8s_containers(docs: &[YamlDoc]) -> Vec<Container> {
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

pub fn all_containers() -> Vec<Container> {
    let mut containers = compose_containers(&compose());
    containers.extend(k8s_containers(&k8s_docs()));
    containers
}

pub struct Stage {
    pub name: String,
    pub from: String,
    /// Binaries copied into /usr/local/bin, with the stage they come from.
    pub binaries: BTreeSet<String>,
    pub user: Option<String>,
}

pub struct Dockerfile {
    pub stages: Vec<Stage>,
    /// Names the build copies out of target/release/.
    pub built: BTreeSet<String>,
}

impl Dockerfile {
    pub fn stage_names(&self) -> BTreeSet<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    /// (stage, image) of every FROM that names an image, not a stage.
    pub fn base_images(&self) -> Vec<(String, String)> {
        self.stages
            .iter()
            .filter(|s| !self.stages.iter().any(|other| other.name == s.from))
            .map(|s| (s.name.clone(), s.from.clone()))
            .collect()
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The binaries a stage ends up with, including its base stages'.
    pub fn binaries(&self, name: &str) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        let mut current = self.stage(name);
        while let Some(stage) = current {
            all.extend(stage.binaries.iter().cloned());
            current = self.stage(&stage.from);
        }
        all
    }

    pub fn user(&self, name: &str) -> Option<String> {
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

pub fn dockerfile() -> Dockerfile {
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

/// `PATH` with the Consul binary's folder first, for the demo's scripts that
/// call `consul` by name.
pub fn path_with_consul() -> anyhow::Result<String> {
    let binary = consul_binary()?;
    let folder = binary.parent().unwrap_or(Path::new(""));
    Ok(format!(
        "{}:{}",
        folder.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}
