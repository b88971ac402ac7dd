//! `deploy/Dockerfile`, validated, not built (CI has no Docker engine): it
//! builds the binaries the manifests run, from the workspace's own packages,
//! and runs them as a non-root user.
//!
//! Each test collects every problem it finds and fails once, listing them all
//! with the file and object they are in, so one run shows everything to fix.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use weft_e2e::harness::deploy::{
    all_containers, compose, compose_services, dockerfile, repo_root, report, str_at,
};

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
