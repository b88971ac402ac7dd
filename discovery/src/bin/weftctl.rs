//! weftctl: operator commands for Weft.
//!
//! - `weftctl validate FILE|DIR...` checks KV documents offline, with the
//!   agent's own validation (schema, types, semantics).
//! - `weftctl status` prints a running agent's `/status` as tables.
//! - `weftctl ca init|rotate` creates the mesh CA directory and rotates its
//!   root without an outage (the bundle keeps old and new roots).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use weft_certs::Ca;
use weft_certs::ca::files as ca_files;
use weft_discovery::documents::{self, Document, DocumentKind, FieldError};
use weft_discovery::model::RawDocument;

/// How long `status` waits for the agent: it answers from memory, so a slow
/// answer means something is wrong, and an operator should not stare at a
/// hung terminal.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Operate a Weft mesh: validate configuration documents, inspect the discovery agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check documents offline against the KV schema and Weft's semantic rules.
    ///
    /// Each file's key comes from its path below a `routes/`, `destinations/`,
    /// `policies/`, `gateways/` or `certificates/` folder
    /// (`cfg/routes/users.yaml` is `routes/users`). Directories are walked;
    /// files outside those folders are skipped. A gateway's `kv`
    /// certificates must be among the validated files, and good, as the
    /// agent requires. Prints every error as key, field and reason; exits 1
    /// if there is any.
    Validate {
        /// Files or directories (`.json`, `.yaml`, `.yml`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Known services (comma separated). When given, every route
        /// destination must be one of them or have a `destinations/` document
        /// among the validated files; when absent, references are not checked.
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<String>>,
    },
    /// Print the discovery agent's status: connected sidecars with their
    /// acknowledged versions, the clusters they hold and NACKs, and
    /// rejected documents.
    Status {
        /// The agent's admin address (its --admin).
        #[arg(long, env = "WEFT_ADMIN", default_value = "http://127.0.0.1:15011")]
        admin: String,
    },
    /// Manage the mesh CA directory (root certificate, key, trust bundle).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: a self-signed ECDSA P-256 root for the trust domain,
    /// its key (mode 0600) and a trust bundle holding the root.
    Init {
        /// The mesh's trust domain (lower-case, e.g. `mesh.example.org`).
        #[arg(long)]
        trust_domain: String,
        /// The directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How long the root is valid: a number and a unit (ms, s, m, h, d),
        /// like `3650d` (ten years) or `8760h`; at most `36500d`.
        #[arg(long, default_value = "3650d", value_parser = weft_rules::duration::parse_lifetime)]
        ttl: Duration,
        /// Replace a CA already in the directory. Sidecars that trust only
        /// the old root will refuse leaves of the new one: prefer `rotate`.
        #[arg(long)]
        force: bool,
    },
    /// Generate a new root that signs from now on, keeping the old roots in
    /// the bundle so leaves of old and new roots both verify while sidecars
    /// pick up the new bundle and renew their leaves.
    Rotate {
        /// The CA directory (as written by `ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// How long the new root is valid, like `3650d` (as `init --ttl`).
        #[arg(long, default_value = "3650d", value_parser = weft_rules::duration::parse_lifetime)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, services } => validate(&paths, services.as_deref()),
        Command::Status { admin } => status(&admin),
        Command::Ca { command } => match command {
            CaCommand::Init {
                trust_domain,
                out,
                ttl,
                force,
            } => ca_init(&trust_domain, &out, ttl, force),
            CaCommand::Rotate { dir, ttl } => ca_rotate(&dir, ttl),
        },
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("weftctl: {error:#}");
            ExitCode::from(2)
        }
    }
}

// ---- validate

/// A document found on disk, with the key its path gives it.
struct FoundDocument {
    path: PathBuf,
    key: String,
}

fn validate(paths: &[PathBuf], services: Option<&[String]>) -> anyhow::Result<ExitCode> {
    let mut found = Vec::new();
    let mut problems: Vec<(PathBuf, FieldError)> = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot read it", path.display()))?;
        if metadata.is_dir() {
            walk(path, &mut found)?;
        } else {
            // A file named explicitly must be a document.
            match document_key(path) {
                Some(key) => found.push(FoundDocument { path: path.clone(), key }),
                None => problems.push((
                    path.clone(),
                    FieldError::new(
                        path.display().to_string(),
                        documents::KEY_FIELD,
                        "cannot tell which document this is: put it under a routes/, destinations/, policies/, gateways/ or certificates/ folder (or name it defaults), with a .json, .yaml or .yml extension",
                    ),
                )),
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key).then(a.path.cmp(&b.path)));

    let mut parsed = Vec::new();
    // Each gateway's `kv` certificates, and the certificate documents seen
    // with their verdicts: checked once all are parsed, as the agent does.
    let mut certificate_references = Vec::new();
    let mut certificates: BTreeMap<String, bool> = BTreeMap::new();
    for document in &found {
        let bytes = match std::fs::read(&document.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                let error = FieldError::new(
                    &document.key,
                    documents::DOCUMENT_FIELD,
                    format!("cannot read the file: {error}"),
                );
                problems.push((document.path.clone(), error));
                continue;
            }
        };
        let raw = RawDocument {
            key: document.key.clone(),
            value: Bytes::from(bytes),
            origin: document.path.display().to_string(),
            yaml: document.path.extension().is_some_and(|ext| ext != "json"),
        };
        let references = documents::certificate_references(&raw);
        if !references.is_empty() {
            certificate_references.push((document, references));
        }
        let verdict = documents::parse_document(&raw);
        if let Some(name) = document.key.strip_prefix("certificates/") {
            certificates.insert(name.to_string(), verdict.is_ok());
        }
        match verdict {
            Ok(parsed_document) => parsed.push((document, parsed_document)),
            Err(errors) => problems.extend(errors.into_iter().map(|e| (document.path.clone(), e))),
        }
    }
    for (document, references) in &certificate_references {
        let status = |name: &str| match certificates.get(name) {
            Some(true) => documents::CertificateStatus::Good,
            Some(false) => documents::CertificateStatus::Refused,
            None => documents::CertificateStatus::Missing,
        };
        let errors = documents::validate_certificate_references(&document.key, references, &status);
        problems.extend(errors.into_iter().map(|e| (document.path.clone(), e)));
    }

    if let Some(services) = services {
        // Known: the given services and every service with a destinations/
        // document among the validated files (as the agent does).
        let mut known: BTreeSet<&str> = services.iter().map(String::as_str).collect();
        for (document, _) in &parsed {
            if let Some(service) = document.key.strip_prefix("destinations/") {
                known.insert(service);
            }
        }
        for (document, parsed_document) in &parsed {
            let errors = documents::validate_references(&document.key, parsed_document, &|name| {
                known.contains(name)
            });
            problems.extend(errors.into_iter().map(|e| (document.path.clone(), e)));
        }
    }

    for (path, error) in &problems {
        println!(
            "{}: {}: {}  ({})",
            error.key,
            error.field,
            error.reason,
            path.display()
        );
    }
    let routes = parsed
        .iter()
        .filter(|(_, d)| matches!(d, Document::Route(_)))
        .count();
    let summary = format!(
        "{} document(s) checked ({} route tables), {} error(s){}",
        found.len(),
        routes,
        problems.len(),
        if services.is_some() {
            ""
        } else {
            "; references to services not checked (pass --services to check them)"
        }
    );
    if problems.is_empty() {
        println!("ok: {summary}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("invalid: {summary}");
        Ok(ExitCode::FAILURE)
    }
}

/// Collects every document file under `dir` (recursively, sorted).
fn walk(dir: &Path, found: &mut Vec<FoundDocument>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list it", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: cannot list it", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, found)?;
        } else if let Some(key) = document_key(&path) {
            found.push(FoundDocument { path, key });
        }
    }
    Ok(())
}

/// `anything/routes/users.yaml` -> `routes/users`: the path below the last
/// `routes`, `destinations`, `policies`, `gateways` or `certificates` folder, without extension, and
/// `defaults.*` outside them -> `defaults`. None
/// for files that are not documents (other extensions, hidden files, files
/// outside those folders).
fn document_key(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let extension = path.extension()?.to_str()?;
    if name.starts_with('.') || !matches!(extension, "json" | "yaml" | "yml") {
        return None;
    }
    let stem = path.with_extension("");
    let parts: Vec<String> = stem
        .components()
        .map(|part| part.as_os_str().to_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    let folder = parts[..parts.len().saturating_sub(1)]
        .iter()
        .rposition(|part| DocumentKind::from_folder(part).is_some());
    match folder {
        Some(folder) => Some(parts[folder..].join("/")),
        // The mesh-wide defaults live at the top of a config directory.
        None if parts.last().is_some_and(|last| last == "defaults") => Some("defaults".into()),
        None => None,
    }
}

// ---- ca

fn ca_init(trust_domain: &str, out: &Path, ttl: Duration, force: bool) -> anyhow::Result<ExitCode> {
    let trust_domain = trust_domain
        .parse()
        .context("--trust-domain is not a valid SPIFFE trust domain")?;
    let existing: Vec<&str> = [ca_files::CA_CERT, ca_files::CA_KEY, ca_files::BUNDLE]
        .into_iter()
        .filter(|name| out.join(name).exists())
        .collect();
    anyhow::ensure!(
        existing.is_empty() || force,
        "{} already holds a CA ({}); not overwriting it. Use `weftctl ca rotate --dir {}` to replace its root without an outage, or --force to discard it",
        out.display(),
        existing.join(", "),
        out.display()
    );
    let ca = Ca::generate_root(&trust_domain, ttl).context("cannot generate the root")?;
    let written = ca.save(out).context("cannot write the CA")?;
    println!(
        "created a CA for trust domain {} in {}",
        ca.trust_domain(),
        out.display()
    );
    println!("  signing root: {}", describe_root(&ca));
    print_written(&written);
    println!(
        "hand {} to every sidecar and keep {} secret",
        ca_files::BUNDLE,
        ca_files::CA_KEY
    );
    Ok(ExitCode::SUCCESS)
}

fn ca_rotate(dir: &Path, ttl: Duration) -> anyhow::Result<ExitCode> {
    let old = Ca::load(dir).with_context(|| format!("cannot load the CA in {}", dir.display()))?;
    let new = old.rotate_root(ttl).context("cannot rotate the root")?;
    let written = new.save(dir).context("cannot write the rotated CA")?;
    println!(
        "rotated the root of trust domain {} in {}",
        new.trust_domain(),
        dir.display()
    );
    println!("  previous root: {}", describe_root(&old));
    println!("  signing root:  {}", describe_root(&new));
    println!(
        "  bundle holds {} root(s): {}",
        new.bundle().len(),
        new.bundle()
            .roots()
            .iter()
            .map(|root| fingerprint(root))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_written(&written);
    println!(
        "  new leaves carry the new root cross-signed by the previous one, so peers that still trust only the previous root accept them"
    );
    println!(
        "next: distribute {} to every sidecar and let leaves renew from the new root; remove the old root from the bundle only after that",
        ca_files::BUNDLE
    );
    Ok(ExitCode::SUCCESS)
}

fn describe_root(ca: &Ca) -> String {
    format!(
        "sha256 {}, valid until {}",
        fingerprint(ca.certificate()),
        humantime::format_rfc3339_seconds(ca.not_after())
    )
}

fn print_written(paths: &[PathBuf]) {
    for path in paths {
        let note = if path
            .file_name()
            .is_some_and(|name| name == ca_files::CA_KEY)
        {
            " (private key, mode 0600)"
        } else {
            ""
        };
        println!("  wrote {}{note}", path.display());
    }
}

/// SHA-256 of the certificate's DER, in hex: what `openssl x509
/// -fingerprint -sha256` prints (without colons), to tell roots apart.
fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

// ---- status

/// The agent's `/status`, as far as weftctl shows it. Every field has a
/// default so that an older or newer agent still prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    ready: bool,
    backend: String,
    started_at_unix: u64,
    sidecars: Vec<SidecarStatus>,
    rejected_documents: Vec<RejectedDocument>,
    counters: BTreeMap<String, serde_json::Value>,
    /// None before the first change reached a sidecar (or from an agent
    /// that does not measure it).
    convergence: Option<Convergence>,
}

/// From a change reaching the agent to the last sidecar's ACK, estimated
/// by the agent from its `convergence_seconds` histogram.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Convergence {
    count: u64,
    p50_seconds: f64,
    p99_seconds: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SidecarStatus {
    node_id: String,
    service: String,
    instance: String,
    peer: String,
    connected_at_unix: u64,
    types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TypeStatus {
    subscribed: Vec<String>,
    sent_version: Option<String>,
    acked_version: Option<String>,
    last_nack: Option<Nack>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Nack {
    version: String,
    message: String,
    at_unix: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RejectedDocument {
    key: String,
    origin: String,
    errors: Vec<FieldError>,
    serving: String,
}

/// The clusters a sidecar subscribes to (its preloads and the
/// destinations its app called recently): `3: a, b, c`, the first few
/// names of a long list, `all` for a wildcard, `-` without a subscription.
fn held_cell(cluster: Option<&TypeStatus>) -> String {
    const SHOWN: usize = 4;
    let Some(cluster) = cluster else {
        return "-".into();
    };
    if cluster.subscribed.iter().any(|name| name == "*") {
        return "all".into();
    }
    let names = &cluster.subscribed;
    let mut cell = format!("{}", names.len());
    if !names.is_empty() {
        let shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
        cell.push_str(&format!(": {}", shown.join(", ")));
        if names.len() > SHOWN {
            cell.push_str(&format!(" +{} more", names.len() - SHOWN));
        }
    }
    cell
}

fn status(admin: &str) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let body = runtime.block_on(get_status(admin))?;
    let status: Status = serde_json::from_slice(&body)
        .with_context(|| format!("{admin}/status did not answer with the expected JSON (is it a weft-discovery admin port?)"))?;
    print!("{}", render_status(&status, unix_now()));
    Ok(ExitCode::SUCCESS)
}

async fn get_status(admin: &str) -> anyhow::Result<Bytes> {
    let url = format!("{}/status", admin.trim_end_matches('/'));
    let uri: http::Uri = url.parse().with_context(|| {
        format!("--admin {admin:?} is not a URL (expected e.g. http://127.0.0.1:15011)")
    })?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "--admin {admin:?}: only http:// is supported (the admin port is plain HTTP on loopback)"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = async {
        let response = client.get(uri).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(STATUS_TIMEOUT, request)
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within {STATUS_TIMEOUT:?}"))?
        .with_context(|| {
            format!("cannot reach {url}: is weft-discovery running with this --admin address?")
        })?;
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    Ok(body)
}

/// The resource types in the order a sidecar subscribes to them, then any
/// others the agent reports.
fn type_columns(status: &Status) -> Vec<String> {
    let mut columns: Vec<String> = ["RouteConfiguration", "Cluster", "ClusterLoadAssignment"]
        .into_iter()
        .map(String::from)
        .collect();
    for sidecar in &status.sidecars {
        for name in sidecar.types.keys() {
            let short = weft_proto::type_url::short(name).to_string();
            if !columns.contains(&short) {
                columns.push(short);
            }
        }
    }
    columns
}

fn render_status(status: &Status, now_unix: u64) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "agent: {}   backend: {}   started: {}\n",
        if status.ready {
            "ready"
        } else {
            "NOT READY (first sync not done)"
        },
        if status.backend.is_empty() {
            "?"
        } else {
            &status.backend
        },
        wall_clock(status.started_at_unix, now_unix)
    ));
    if !status.counters.is_empty() {
        let counters: Vec<String> = status
            .counters
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        out.push_str(&format!("counters: {}\n", counters.join("  ")));
    }
    if let Some(convergence) = &status.convergence {
        out.push_str(&format!(
            "convergence (change -> last ACK): p50 {}  p99 {}  ({} changes)\n",
            seconds(convergence.p50_seconds),
            seconds(convergence.p99_seconds),
            convergence.count
        ));
    }

    out.push_str(&format!("\nSIDECARS ({})\n", status.sidecars.len()));
    let columns = type_columns(status);
    let mut header = vec![
        "SERVICE".to_string(),
        "INSTANCE".into(),
        "NODE ID".into(),
        "PEER".into(),
    ];
    header.extend(columns.iter().map(|column| format!("{column} (acked)")));
    header.push("CLUSTERS HELD".into());
    header.push("LAST NACK".into());
    let mut rows = vec![header];
    for sidecar in &status.sidecars {
        let types: BTreeMap<&str, &TypeStatus> = sidecar
            .types
            .iter()
            .map(|(name, status)| (weft_proto::type_url::short(name), status))
            .collect();
        let mut row = vec![
            sidecar.service.clone(),
            sidecar.instance.clone(),
            sidecar.node_id.clone(),
            sidecar.peer.clone(),
        ];
        let mut nacks = Vec::new();
        for column in &columns {
            row.push(match types.get(column.as_str()) {
                None => "-".into(),
                Some(state) => {
                    if let Some(nack) = &state.last_nack {
                        nacks.push((
                            nack.at_unix,
                            format!(
                                "{column} {}: {} (at {})",
                                nack.version,
                                nack.message,
                                wall_clock(nack.at_unix, now_unix)
                            ),
                        ));
                    }
                    version_cell(state)
                }
            });
        }
        row.push(held_cell(types.get("Cluster").copied()));
        // The most recent NACK of any type.
        nacks.sort();
        row.push(nacks.pop().map_or_else(|| "-".into(), |(_, text)| text));
        rows.push(row);
    }
    out.push_str(&table(&rows));
    if status.sidecars.is_empty() {
        out.push_str("(no sidecar connected)\n");
    }

    let errors: usize = status
        .rejected_documents
        .iter()
        .map(|d| d.errors.len().max(1))
        .sum();
    out.push_str(&format!(
        "\nREJECTED DOCUMENTS ({})\n",
        status.rejected_documents.len()
    ));
    if errors == 0 {
        out.push_str("(none)\n");
    } else {
        let mut rows = vec![vec![
            "KEY".to_string(),
            "FIELD".into(),
            "REASON".into(),
            "SERVING".into(),
            "ORIGIN".into(),
        ]];
        for document in &status.rejected_documents {
            if document.errors.is_empty() {
                rows.push(vec![
                    document.key.clone(),
                    "-".into(),
                    "-".into(),
                    document.serving.clone(),
                    document.origin.clone(),
                ]);
            }
            for error in &document.errors {
                rows.push(vec![
                    document.key.clone(),
                    error.field.clone(),
                    error.reason.clone(),
                    document.serving.clone(),
                    document.origin.clone(),
                ]);
            }
        }
        out.push_str(&table(&rows));
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A moment for people: UTC date and time, and how long ago
/// (`2023-11-14T22:13:20Z (2h 5m ago)`); `-` when the agent did not say.
fn wall_clock(unix: u64, now_unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let ago = now_unix.saturating_sub(unix);
    let (d, h, m, s) = (ago / 86_400, ago / 3_600 % 24, ago / 60 % 60, ago % 60);
    let ago = match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    };
    format!("{} ({ago} ago)", humantime::format_rfc3339_seconds(at))
}

/// A duration for people: milliseconds below 10 s.
fn seconds(value: f64) -> String {
    if value < 10.0 {
        format!("{:.1} ms", value * 1000.0)
    } else {
        format!("{value:.1} s")
    }
}

/// The acked version; `acked->sent` while a newer version awaits its ACK.
fn version_cell(state: &TypeStatus) -> String {
    match (&state.acked_version, &state.sent_version) {
        (Some(acked), Some(sent)) if acked != sent => format!("{acked}->{sent}"),
        (Some(acked), _) => acked.clone(),
        (None, Some(sent)) => format!("(none)->{sent}"),
        (None, None) => "(none)".into(),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (column, cell) in row.iter().enumerate() {
            if column == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_path_below_the_kind_folder() {
        assert_eq!(
            document_key(Path::new("cfg/routes/users.yaml")).as_deref(),
            Some("routes/users")
        );
        assert_eq!(
            document_key(Path::new("/a/routes/x/destinations/orders.json")).as_deref(),
            Some("destinations/orders")
        );
        assert_eq!(
            document_key(Path::new("policies/web.yml")).as_deref(),
            Some("policies/web")
        );
        assert_eq!(
            document_key(Path::new("cfg/defaults.json")).as_deref(),
            Some("defaults")
        );
        assert_eq!(document_key(Path::new("cfg/endpoints.yaml")), None);
        assert_eq!(
            document_key(Path::new("cfg/routes.json")),
            None,
            "the folder, not the file, names the kind"
        );
        assert_eq!(document_key(Path::new("cfg/routes/notes.txt")), None);
        assert_eq!(document_key(Path::new("cfg/routes/.users.json")), None);
    }

    #[test]
    fn status_renders_sidecars_and_rejections_as_tables() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "ready": true, "backend": "consul http://127.0.0.1:8500", "started_at_unix": 1700000000,
            "sidecars": [ { "node_id": "users-1", "service": "users", "instance": "users-1", "peer": "127.0.0.1:5555",
                "connected_at_unix": 1700000001,
                "types": {
                    "type.googleapis.com/weft.config.v1.RouteConfiguration": { "subscribed": ["*"], "sent_version": "ab12", "acked_version": "ab12", "last_nack": null },
                    "Cluster": { "subscribed": ["users"], "sent_version": "cd34", "acked_version": "ef56",
                                 "last_nack": { "version": "cd34", "message": "cluster users: bad timeout", "at_unix": 1700000002 } } } } ],
            "rejected_documents": [ { "key": "routes/users", "origin": "consul kv weft/routes/users",
                "errors": [ { "key": "routes/users", "field": "routes[0].match.path_regex", "reason": "invalid regex" } ],
                "serving": "last good version" } ],
            "counters": { "documents_rejected_total": 1 },
            "convergence": { "count": 12, "p50_seconds": 0.0234, "p99_seconds": 1.5 } }))
        .unwrap();
        let text = render_status(&status, 1_700_007_384);
        assert!(
            text.contains(
                "convergence (change -> last ACK): p50 23.4 ms  p99 1500.0 ms  (12 changes)"
            ),
            "{text}"
        );
        assert!(
            text.starts_with(
                "agent: ready   backend: consul http://127.0.0.1:8500   started: 2023-11-14T22:13:20Z (2h 3m ago)\n"
            ),
            "{text}"
        );
        assert!(text.contains("documents_rejected_total=1"), "{text}");
        let sidecar = text
            .lines()
            .find(|line| line.starts_with("users "))
            .expect("a sidecar row");
        assert!(
            sidecar.contains("users-1") && sidecar.contains("127.0.0.1:5555"),
            "{sidecar}"
        );
        assert!(sidecar.contains("ab12"), "acked route version: {sidecar}");
        assert!(
            sidecar.contains("ef56->cd34"),
            "cluster version awaiting ACK: {sidecar}"
        );
        assert!(sidecar.contains("1: users"), "clusters held: {sidecar}");
        assert!(
            sidecar.ends_with(
                "Cluster cd34: cluster users: bad timeout (at 2023-11-14T22:13:22Z (2h 3m ago))"
            ),
            "{sidecar}"
        );
        assert!(
            sidecar.contains(" - "),
            "no endpoints subscription: {sidecar}"
        );
        let rejected = text
            .lines()
            .find(|line| line.starts_with("routes/users"))
            .expect("a rejection row");
        for cell in [
            "routes[0].match.path_regex",
            "invalid regex",
            "last good version",
            "consul kv weft/routes/users",
        ] {
            assert!(rejected.contains(cell), "{cell} in {rejected}");
        }
    }

    #[test]
    fn the_held_clusters_cell_names_the_first_few() {
        let held = |names: &[&str]| {
            held_cell(Some(&TypeStatus {
                subscribed: names.iter().map(|n| n.to_string()).collect(),
                ..TypeStatus::default()
            }))
        };
        assert_eq!(held(&[]), "0");
        assert_eq!(held(&["*"]), "all");
        assert_eq!(held(&["a", "b"]), "2: a, b");
        assert_eq!(
            held(&["a", "b", "c", "d", "e", "f"]),
            "6: a, b, c, d +2 more"
        );
        assert_eq!(held_cell(None), "-");
    }

    #[test]
    fn an_empty_status_still_prints() {
        let text = render_status(&Status::default(), 1_700_000_000);
        assert!(text.contains("NOT READY"));
        assert!(text.contains("(no sidecar connected)"));
        assert!(text.contains("REJECTED DOCUMENTS (0)\n(none)"));
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["aaa".into(), "b".into(), "c".into()],
        ];
        assert_eq!(table(&rows), "A    BB  C\naaa  b   c\n");
    }
}
