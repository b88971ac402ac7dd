//! The embedded file backend (`--config-dir DIR`): the mesh with no Consul.
//!
//! Layout of DIR:
//! - `routes/<host>.json|yaml|yml`, `destinations/<service>.*`,
//!   `policies/<service>.*`: documents in the KV schema, keyed by their path
//!   relative to DIR without extension (`routes/users`);
//! - `defaults.json|yaml|yml`: the mesh-wide defaults document (key `defaults`);
//! - `endpoints.yaml|yml|json`: the static endpoints of every service:
//!   ```yaml
//!   services:
//!     users:
//!       - { address: 127.0.0.1, port: 18081, meshed: true, weight: 1 }
//!   ```
//!
//! The whole directory is re-read on any change (it is small, and a full
//! read is never inconsistent halfway through an editor's save), debounced
//! so that one save (often several events: write, rename, chmod) costs one
//! read. Documents are handed to the store as they are: validating them is
//! the snapshot builder's job, exactly as for Consul KV. A broken endpoints
//! file is logged and the last good endpoints keep serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::documents::{DEFAULTS_KEY, DocumentKind};
use crate::model::{Endpoint, Health, RawDocument};
use crate::store::MeshStore;

/// Quiet time after the last file event before the directory is re-read:
/// long enough to coalesce one editor save, short enough to stay far inside
/// the 1 s budget for a change to reach the sidecars.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Document file extensions, in the order that wins when one key has several.
const DOCUMENT_EXTENSIONS: [&str; 3] = ["json", "yaml", "yml"];
/// How deep document folders are walked: far beyond any sensible layout,
/// and a stop for symlink loops.
const MAX_DEPTH: usize = 8;
/// Endpoints file names, in the order that is looked for.
const ENDPOINTS_FILES: [&str; 3] = ["endpoints.yaml", "endpoints.yml", "endpoints.json"];

/// Serves `dir` into `store` until the watcher fails. Returns an error only
/// when the directory cannot be watched at all (missing, not a directory, no
/// inotify); problems with single files are logged and survived.
pub async fn run(dir: PathBuf, store: Arc<MeshStore>) -> anyhow::Result<()> {
    let metadata = tokio::fs::metadata(&dir).await.with_context(|| {
        format!(
            "config dir {}: cannot read it (does it exist?)",
            dir.display()
        )
    })?;
    anyhow::ensure!(
        metadata.is_dir(),
        "config dir {}: not a directory",
        dir.display()
    );

    // Watch before the first read, so that a change made during the read is
    // not missed (at worst it causes one extra read).
    let (events, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The receiver is gone only when `run` has returned.
        let _ = events.send(event);
    })
    .context("cannot start a file watcher (inotify) for the config dir")?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("config dir {}: cannot watch it", dir.display()))?;

    let mut source = FileSource::new(dir, store);
    source.reload().await;
    loop {
        // Wait for a relevant event, then for DEBOUNCE of quiet.
        loop {
            match changes.recv().await {
                Some(event) if crate::fs_watch::is_relevant(&event, "config dir") => break,
                Some(_) => continue,
                None => anyhow::bail!("the config dir watcher stopped"),
            }
        }
        while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {}
        source.reload().await;
    }
}

struct FileSource {
    dir: PathBuf,
    store: Arc<MeshStore>,
    /// Documents as last read, to keep serving one whose file exists but
    /// cannot be read right now (permissions, a half-done copy).
    documents: BTreeMap<String, RawDocument>,
    /// The last valid endpoints file; None until one has been read.
    endpoints: Option<BTreeMap<String, Vec<Endpoint>>>,
}

impl FileSource {
    fn new(dir: PathBuf, store: Arc<MeshStore>) -> Self {
        Self {
            dir,
            store,
            documents: BTreeMap::new(),
            endpoints: None,
        }
    }

    async fn reload(&mut self) {
        let dir = self.dir.clone();
        let previous = self.documents.clone();
        // Plain blocking file I/O, off the runtime's worker threads.
        let read = tokio::task::spawn_blocking(move || {
            (read_documents(&dir, &previous), read_endpoints(&dir))
        })
        .await;
        let (documents, endpoints) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(
                    "config dir {}: reading it failed: {error}",
                    self.dir.display()
                );
                return;
            }
        };
        self.documents = documents;
        self.store.set_documents(self.documents.clone());

        match endpoints {
            Ok(Some((path, services))) => {
                tracing::debug!(path = %path.display(), services = services.len(), "static endpoints loaded");
                self.endpoints = Some(services.clone());
                self.store.set_all_services(services);
            }
            Ok(None) => {
                // Once, not on every re-read.
                if self
                    .endpoints
                    .as_ref()
                    .is_none_or(|services| !services.is_empty())
                {
                    tracing::warn!(
                        "config dir {}: no endpoints file ({}); no service has endpoints",
                        self.dir.display(),
                        ENDPOINTS_FILES.join(", ")
                    );
                }
                self.endpoints = Some(BTreeMap::new());
                self.store.set_all_services(BTreeMap::new());
            }
            Err(error) => {
                let serving = if self.endpoints.is_some() {
                    "keeping the last good endpoints"
                } else {
                    "no endpoints yet, not ready until the file is fixed"
                };
                tracing::error!("{error}; {serving}");
            }
        }
        // Ready once documents and a valid endpoint set are both in the store.
        if self.endpoints.is_some() {
            self.store.mark_synced();
        }
    }
}

/// Reads every document under `routes/`, `destinations/`, `policies/`,
/// `gateways/` and `certificates/`, and the `defaults` document at the root. A file that exists but cannot
/// be read keeps its `previous` content.
fn read_documents(
    dir: &Path,
    previous: &BTreeMap<String, RawDocument>,
) -> BTreeMap<String, RawDocument> {
    let mut found: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for kind in [
        DocumentKind::Route,
        DocumentKind::Destination,
        DocumentKind::Policy,
        DocumentKind::Gateway,
        DocumentKind::Certificate,
    ] {
        let folder = dir.join(kind.folder());
        if folder.is_dir() {
            collect_files(&folder, MAX_DEPTH, &mut |path| {
                if let Some(key) = document_key(dir, path) {
                    found.entry(key).or_default().push(path.to_path_buf());
                }
            });
        }
    }
    for extension in DOCUMENT_EXTENSIONS {
        let path = dir.join(format!("{DEFAULTS_KEY}.{extension}"));
        if path.is_file() {
            found
                .entry(DEFAULTS_KEY.to_string())
                .or_default()
                .push(path);
        }
    }

    let mut documents = BTreeMap::new();
    for (key, mut paths) in found {
        paths.sort_by_key(|path| extension_rank(path));
        let path = &paths[0];
        if paths.len() > 1 {
            let ignored: Vec<_> = paths[1..].iter().map(|p| p.display().to_string()).collect();
            tracing::warn!(
                %key,
                "{} and {} hold the same document; using {} (remove the others)",
                path.display(),
                ignored.join(", "),
                path.display()
            );
        }
        match std::fs::read(path) {
            Ok(bytes) => {
                let yaml = path.extension().is_some_and(|ext| ext != "json");
                documents.insert(
                    key.clone(),
                    RawDocument {
                        key,
                        value: Bytes::from(bytes),
                        origin: format!("file {}", path.display()),
                        yaml,
                    },
                );
            }
            Err(error) => {
                let kept = previous.get(&key).cloned();
                tracing::error!(
                    %key,
                    "cannot read {}: {error}; {}",
                    path.display(),
                    if kept.is_some() { "keeping its last read content" } else { "skipping it" }
                );
                if let Some(document) = kept {
                    documents.insert(key, document);
                }
            }
        }
    }
    documents
}

/// Calls `visit` for every regular file under `folder`, recursively.
/// Sub-folders produce keys like `routes/a/b`, which the snapshot builder
/// rejects visibly (in /status) rather than this reader ignoring them.
fn collect_files(folder: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::error!("cannot list {}: {error}", folder.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if depth == 0 {
                tracing::warn!(
                    "{}: nested too deep (a symlink loop?); skipped",
                    path.display()
                );
                continue;
            }
            collect_files(&path, depth - 1, visit);
        } else if path.is_file() {
            visit(&path);
        }
    }
}

/// `DIR/routes/users.yaml` -> `routes/users`. None for files that are not
/// documents: other extensions, hidden files and editor temporaries.
fn document_key(dir: &Path, path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') || name.ends_with('~') {
        return None;
    }
    let extension = path.extension()?.to_str()?;
    if !DOCUMENT_EXTENSIONS.contains(&extension) {
        return None;
    }
    let relative = path.with_extension("");
    let relative = relative.strip_prefix(dir).ok()?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect();
    Some(parts?.join("/"))
}

fn extension_rank(path: &Path) -> usize {
    let extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or_default();
    DOCUMENT_EXTENSIONS
        .iter()
        .position(|known| *known == extension)
        .unwrap_or(DOCUMENT_EXTENSIONS.len())
}

type Services = BTreeMap<String, Vec<Endpoint>>;

/// Reads the endpoints file: Ok(None) when there is none, Err with the path
/// and every problem found when it is unreadable or invalid.
fn read_endpoints(dir: &Path) -> Result<Option<(PathBuf, Services)>, String> {
    let present: Vec<PathBuf> = ENDPOINTS_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.is_file())
        .collect();
    let path = match present.as_slice() {
        [] => return Ok(None),
        [path] => path.clone(),
        [first, ..] => {
            let names: Vec<_> = present.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "endpoints file {}: several endpoints files ({}); keep only one",
                first.display(),
                names.join(", ")
            ));
        }
    };
    let bytes = std::fs::read(&path)
        .map_err(|error| format!("endpoints file {}: cannot read it: {error}", path.display()))?;
    let yaml = path.extension().is_some_and(|ext| ext != "json");
    parse_endpoints(&bytes, yaml)
        .map(|services| Some((path.clone(), services)))
        .map_err(|problems| format!("endpoints file {}: {}", path.display(), problems.join("; ")))
}

/// The endpoints file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    /// Service name -> its endpoints. A service with an empty list is known
    /// but has no instances (its callers get 503).
    services: BTreeMap<String, Vec<StaticEndpoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticEndpoint {
    /// IP address or DNS name (the sidecar resolves names).
    address: String,
    port: u16,
    /// Whether address:port is the instance's sidecar (its inbound
    /// listener) rather than the app. Default false: a plain service.
    #[serde(default)]
    meshed: bool,
    /// Relative load-balancing weight. Default 1.
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
}

fn default_weight() -> u32 {
    1
}

/// Parses and checks an endpoints file; returns every problem found.
fn parse_endpoints(bytes: &[u8], yaml: bool) -> Result<Services, Vec<String>> {
    let file: EndpointsFile = if yaml {
        let deserializer = serde_yaml::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(deserializer)
            .map_err(|error| vec![path_error(error.path(), error.inner())])?
    } else {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| vec![path_error(error.path(), error.inner())])?
    };
    let mut problems = Vec::new();
    let mut services = BTreeMap::new();
    for (service, endpoints) in file.services {
        if service.is_empty()
            || !service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            problems.push(format!(
                "services.{service}: not a valid service name (letters, digits, `.`, `_`, `-`)"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut converted = Vec::with_capacity(endpoints.len());
        for (index, endpoint) in endpoints.into_iter().enumerate() {
            let field = format!("services.{service}[{index}]");
            if endpoint.address.is_empty() || endpoint.address.contains(char::is_whitespace) {
                problems.push(format!(
                    "{field}.address: `{}` is not an address or host name",
                    endpoint.address
                ));
            }
            if endpoint.port == 0 {
                problems.push(format!("{field}.port: must be 1-65535"));
            }
            if endpoint.weight == 0 {
                problems.push(format!(
                    "{field}.weight: must be at least 1 (remove the endpoint to send it no traffic)"
                ));
            }
            if !seen.insert((endpoint.address.clone(), endpoint.port)) {
                problems.push(format!(
                    "{field}: {}:{} is listed twice",
                    endpoint.address, endpoint.port
                ));
            }
            converted.push(Endpoint {
                instance_id: format!("{service}-{}:{}", endpoint.address, endpoint.port),
                address: endpoint.address,
                port: endpoint.port,
                health: Health::Healthy,
                weight: endpoint.weight,
                meshed: endpoint.meshed,
                region: endpoint.region,
                zone: endpoint.zone,
            });
        }
        services.insert(service, converted);
    }
    if problems.is_empty() {
        Ok(services)
    } else {
        Err(problems)
    }
}

fn path_error(path: &serde_path_to_error::Path, error: &dyn std::fmt::Display) -> String {
    let path = path.to_string();
    if path == "." {
        format!("{error}")
    } else {
        format!("{path}: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_paths_without_extension() {
        let dir = Path::new("/cfg");
        assert_eq!(
            document_key(dir, Path::new("/cfg/routes/users.json")).as_deref(),
            Some("routes/users")
        );
        assert_eq!(
            document_key(dir, Path::new("/cfg/destinations/orders-v2.yml")).as_deref(),
            Some("destinations/orders-v2")
        );
        assert_eq!(
            document_key(dir, Path::new("/cfg/routes/a/b.yaml")).as_deref(),
            Some("routes/a/b")
        );
        for ignored in [
            "/cfg/routes/users.json.swp",
            "/cfg/routes/.users.json",
            "/cfg/routes/users.json~",
            "/cfg/routes/README.md",
            "/cfg/routes/users",
        ] {
            assert_eq!(document_key(dir, Path::new(ignored)), None, "{ignored}");
        }
    }

    #[test]
    fn json_wins_over_yaml_for_the_same_key() {
        let mut paths = [
            PathBuf::from("a.yml"),
            PathBuf::from("a.yaml"),
            PathBuf::from("a.json"),
        ];
        paths.sort_by_key(|path| extension_rank(path));
        assert_eq!(paths[0], PathBuf::from("a.json"));
    }

    #[test]
    fn endpoints_get_defaults_and_instance_ids() {
        let services = parse_endpoints(
            b"services:\n  users:\n    - { address: 127.0.0.1, port: 18081, meshed: true, weight: 3 }\n    - { address: users.internal, port: 80 }\n  idle: []\n",
            true,
        )
        .unwrap();
        assert_eq!(services["idle"], []);
        let users = &services["users"];
        assert_eq!(users[0].instance_id, "users-127.0.0.1:18081");
        assert!(users[0].meshed);
        assert_eq!(users[0].weight, 3);
        assert_eq!(users[0].health, Health::Healthy);
        assert_eq!(users[1].address, "users.internal");
        assert_eq!((users[1].weight, users[1].meshed), (1, false));
    }

    #[test]
    fn endpoints_json_is_accepted_too() {
        let services = parse_endpoints(
            br#"{"services": {"web": [{"address": "::1", "port": 8080}]}}"#,
            false,
        )
        .unwrap();
        assert_eq!(services["web"][0].instance_id, "web-::1:8080");
    }

    #[test]
    fn every_endpoint_problem_is_reported() {
        let problems = parse_endpoints(
            b"services:\n  users:\n    - { address: '', port: 0, weight: 0 }\n    - { address: a, port: 1 }\n    - { address: a, port: 1 }\n  'bad name': []\n",
            true,
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "services.bad name: not a valid service name (letters, digits, `.`, `_`, `-`)",
                "services.users[0].address: `` is not an address or host name",
                "services.users[0].port: must be 1-65535",
                "services.users[0].weight: must be at least 1 (remove the endpoint to send it no traffic)",
                "services.users[2]: a:1 is listed twice",
            ]
        );
    }

    #[test]
    fn structural_endpoint_errors_name_the_field() {
        let problems = parse_endpoints(
            b"services:\n  users:\n    - { address: a, port: 99999 }\n",
            true,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("services.users[0].port: "),
            "{problems:?}"
        );
        let problems = parse_endpoints(b"service: {}\n", true).unwrap_err();
        assert!(
            problems[0].contains("unknown field `service`"),
            "{problems:?}"
        );
    }
}
