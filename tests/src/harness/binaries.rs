//! Finding the workspace's binaries next to the test executable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{Context as _, bail};

/// The target profile directory (`target/debug`): the test executable lives
/// in its `deps/` folder, the workspace binaries in it.
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?
        .to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A workspace binary (`weft-discovery`, `weft-sidecar`, `weft-testapp`).
/// `WEFT_<NAME>_BIN` (upper case, `-` as `_`) overrides the location.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let variable = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&variable) {
        return Ok(PathBuf::from(path));
    }
    let path = profile_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} NOT FOUND: the end-to-end tests run the workspace binaries.\n\
             Run `cargo build --workspace --bins` first (or set {variable}).",
            path.display()
        );
    }
    warn_if_stale(name, &path);
    Ok(path)
}

/// `cargo test -p weft-e2e` does not rebuild the other crates' binaries, so
/// a test may run an old `weft-sidecar` against new sources. Say so (once
/// per binary) in the test's output, which is shown when it fails.
fn warn_if_stale(name: &str, binary: &Path) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let sources: &[&str] = match name {
        "weft-discovery" => &["discovery/src", "proto"],
        "weft-sidecar" => &["sidecar/src", "proto"],
        _ => return,
    };
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let root = super::consul::repo_root();
    let newer = sources
        .iter()
        .filter_map(|dir| newest_modification(&root.join(dir)))
        .any(|modified| modified > built);
    let first_time = WARNED
        .lock()
        .map(|mut warned| warned.insert(name.to_owned()))
        .unwrap_or(false);
    if newer && first_time {
        eprintln!(
            "WARNING: {} is older than its sources; run `cargo build --workspace --bins` to test the current code",
            binary.display()
        );
    }
}

fn newest_modification(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if let Ok(modified) = metadata.modified() {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// A system tool the tests run (Chromium, Prometheus, promtool): the file
/// `variable` names, else the first of `names` on PATH. Missing, the error
/// says what it is for (`purpose`) and how to install it (Debian's
/// `package`, which deploy/local/test.sh installs).
pub fn system_tool(
    names: &[&str],
    variable: &str,
    package: &str,
    purpose: &str,
) -> anyhow::Result<PathBuf> {
    let install = format!("install it with `sudo apt-get install -y {package}`");
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{variable}={} is not a file. Unset it, or {install}",
                path.display()
            );
        }
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "{} IS MISSING: {purpose}.\n{} (deploy/local/test.sh does), or set {variable}=/path/to/{}.",
                names[0].to_uppercase(),
                capitalized(&install),
                names[0]
            )
        })
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
