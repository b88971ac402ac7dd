//! Finding the workspace's binaries next to the test executable.

use std::path::PathBuf;

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
    Ok(path)
}
