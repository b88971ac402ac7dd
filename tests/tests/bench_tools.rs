//! The benchmark tools in `bench/` start: an operator's first step with a
//! tool is `--help`, and a tool that crashes there (as `mesh.py` once did
//! on a `%` in a help string) is never run again.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench_dir() -> PathBuf {
    // Invariant: this crate lives in <repo>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .join("bench")
}

#[test]
fn every_python_bench_tool_prints_its_usage_with_help() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(bench_dir())
        .expect("bench/ is readable")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "py"))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 3,
        "bench/ should hold mesh.py, handshakes.py and consul-watch-scale.py: {scripts:?}"
    );
    let mut problems = Vec::new();
    for script in &scripts {
        let output = Command::new("python3")
            .arg(script)
            .arg("--help")
            .output()
            .expect("python3 runs (apt-get install python3)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("usage:") {
            problems.push(format!(
                "{} --help: {} {}{}",
                script.display(),
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_shell_bench_tool_parses_and_fails_loudly_without_its_release_binaries() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(bench_dir())
        .expect("bench/ is readable")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sh"))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 5,
        "bench/ should hold the callgrind and peer scripts: {scripts:?}"
    );
    let mut problems = Vec::new();
    for script in &scripts {
        let output = Command::new("bash")
            .arg("-n")
            .arg(script)
            .output()
            .expect("bash runs");
        if !output.status.success() {
            problems.push(format!(
                "{}: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    // The callgrind scripts that take a release directory refuse an empty
    // one with the command that builds it, before starting anything.
    let empty = std::env::temp_dir().join(format!("weft-no-release-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("a temporary directory");
    for name in ["mesh_instructions.sh", "resilience_instructions.sh"] {
        let output = Command::new("bash")
            .arg(bench_dir().join(name))
            .arg(&empty)
            .output()
            .expect("bash runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() != Some(2) || !stderr.contains("missing") {
            problems.push(format!(
                "{name} with no release binaries: {} {stderr}",
                output.status
            ));
        }
    }
    std::fs::remove_dir_all(&empty).expect("clean up");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
