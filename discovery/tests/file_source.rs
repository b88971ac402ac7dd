//! The file backend against a real directory and real inotify: what it loads
//! at start, and that edits (in place, by atomic rename, deletions, broken
//! files) reach the store within 1 s.

use std::sync::Arc;
use std::time::Duration;

use weft_discovery::model::{Health, MeshState};
use weft_discovery::source::file;
use weft_discovery::store::MeshStore;
use weft_test_support::eventually::watch_until;
use weft_test_support::temp_dir::TempDir;

/// How long a change may take to reach the store (the issue's budget).
const CHANGE_BUDGET: Duration = Duration::from_secs(1);

/// Writes a temporary file in `dir`, then renames it over the target, as vim
/// (backupcopy=no), emacs and most config-management tools do.
fn write_by_rename(dir: &TempDir, relative: &str, content: &str) {
    let temporary = dir.join(".tmp-write");
    std::fs::write(&temporary, content).expect("write the temporary file");
    std::fs::rename(&temporary, dir.join(relative)).expect("rename over the target");
}

const ENDPOINTS: &str = "\
services:
  users:
    - { address: 127.0.0.1, port: 18081, meshed: true, weight: 1 }
    - { address: 127.0.0.1, port: 18082 }
  orders:
    - { address: localhost, port: 18091 }
";

const USERS_ROUTES: &str =
    r#"{ "routes": [ { "match": { "path_prefix": "/" }, "destination": "users" } ] }"#;

/// Starts the backend on `dir` and waits for its first full sync.
async fn start(dir: &TempDir) -> Arc<MeshStore> {
    let store = Arc::new(MeshStore::new());
    let mut synced = store.subscribe_synced();
    tokio::spawn(file::run(dir.path().to_path_buf(), store.clone()));
    tokio::time::timeout(CHANGE_BUDGET, synced.wait_for(|synced| *synced))
        .await
        .expect("the file backend syncs within 1 s")
        .expect("the store outlives the test");
    store
}

/// Waits (on the store's change signal, not by polling) until `condition`
/// holds, for at most CHANGE_BUDGET.
async fn store_reaches(store: &MeshStore, what: &str, condition: impl Fn(&MeshState) -> bool) {
    watch_until(CHANGE_BUDGET, what, &mut store.subscribe(), |_| {
        let state = store.state();
        anyhow::ensure!(condition(&state), "state now: {state:#?}");
        Ok(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}"));
}

fn document(state: &MeshState, key: &str) -> Option<String> {
    state
        .documents
        .get(key)
        .map(|document| String::from_utf8_lossy(&document.value).into_owned())
}

#[tokio::test]
async fn loads_documents_and_endpoints_at_start() {
    let dir = TempDir::create("file-source-start").unwrap();
    dir.write("endpoints.yaml", ENDPOINTS);
    dir.write("routes/users.json", USERS_ROUTES);
    dir.write("destinations/orders.yaml", "load_balancer: round_robin\n");
    dir.write("policies/users.yml", "{}\n");
    dir.write("gateways/edge.json", "{}\n");
    dir.write("certificates/api.yaml", "{}\n");
    dir.write("routes/README.md", "not a document");

    let store = start(&dir).await;
    let state = store.state();

    let keys: Vec<_> = state.documents.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "certificates/api",
            "destinations/orders",
            "gateways/edge",
            "policies/users",
            "routes/users"
        ]
    );
    let routes = &state.documents["routes/users"];
    assert!(!routes.yaml);
    assert!(
        routes.origin.ends_with("routes/users.json"),
        "{}",
        routes.origin
    );
    assert!(state.documents["destinations/orders"].yaml);

    let users = &state.services["users"];
    assert_eq!(users.len(), 2);
    let meshed = users
        .iter()
        .find(|e| e.port == 18081)
        .expect("the 18081 endpoint");
    assert_eq!(meshed.instance_id, "users-127.0.0.1:18081");
    assert_eq!(meshed.health, Health::Healthy);
    assert!(meshed.meshed);
    let plain = users
        .iter()
        .find(|e| e.port == 18082)
        .expect("the 18082 endpoint");
    assert_eq!((plain.weight, plain.meshed), (1, false));
    assert_eq!(state.services["orders"][0].address, "localhost");
}

#[tokio::test]
async fn document_edits_reach_the_store_within_a_second() {
    let dir = TempDir::create("file-source-edits").unwrap();
    dir.write("endpoints.yaml", ENDPOINTS);
    dir.write("routes/users.json", USERS_ROUTES);
    let store = start(&dir).await;

    // In place.
    let v2 = r#"{ "routes": [ { "destination": "users-v2" } ] }"#;
    dir.write("routes/users.json", v2);
    store_reaches(&store, "the edited route document", |state| {
        document(state, "routes/users").as_deref() == Some(v2)
    })
    .await;

    // By atomic rename.
    let v3 = r#"{ "routes": [ { "destination": "users-v3" } ] }"#;
    write_by_rename(&dir, "routes/users.json", v3);
    store_reaches(&store, "the renamed-over route document", |state| {
        document(state, "routes/users").as_deref() == Some(v3)
    })
    .await;

    // A new folder and file after start.
    dir.write("destinations/users.yaml", "connect_timeout: 250ms\n");
    store_reaches(&store, "a document in a new folder", |state| {
        state.documents.contains_key("destinations/users")
    })
    .await;

    // Deleted.
    std::fs::remove_file(dir.path().join("routes/users.json")).expect("remove the route file");
    store_reaches(&store, "the deleted route document gone", |state| {
        !state.documents.contains_key("routes/users")
    })
    .await;
}

#[tokio::test]
async fn endpoint_edits_reach_the_store_and_broken_files_keep_the_last_good_endpoints() {
    let dir = TempDir::create("file-source-endpoints").unwrap();
    dir.write("endpoints.yaml", ENDPOINTS);
    let store = start(&dir).await;

    write_by_rename(
        &dir,
        "endpoints.yaml",
        "services:\n  users:\n    - { address: 127.0.0.1, port: 18083 }\n",
    );
    store_reaches(&store, "the new endpoint set", |state| {
        state.services.len() == 1 && state.services["users"][0].port == 18083
    })
    .await;

    // Break the endpoints file and, in the same burst, change a document:
    // seeing the document proves the directory was re-read, so the
    // endpoints that are still there were kept on purpose.
    dir.write(
        "endpoints.yaml",
        "services:\n  users:\n    - { address: 127.0.0.1, port: nope }\n",
    );
    dir.write("routes/marker.json", USERS_ROUTES);
    store_reaches(&store, "the marker document", |state| {
        state.documents.contains_key("routes/marker")
    })
    .await;
    let users = &store.state().services["users"];
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].port, 18083, "the last good endpoints keep serving");

    // Fixed again: applies.
    dir.write(
        "endpoints.yaml",
        "services:\n  users:\n    - { address: 127.0.0.1, port: 18084 }\n",
    );
    store_reaches(&store, "the fixed endpoint set", |state| {
        state.services["users"][0].port == 18084
    })
    .await;
}

#[tokio::test]
async fn invalid_documents_are_passed_on_for_the_builder_to_reject() {
    // The backend does not judge documents: the snapshot builder validates
    // them the same way for Consul and files, and reports them in /status.
    let dir = TempDir::create("file-source-invalid").unwrap();
    dir.write("endpoints.yaml", ENDPOINTS);
    dir.write("routes/users.json", "{ not json");
    let store = start(&dir).await;
    assert_eq!(
        document(&store.state(), "routes/users").as_deref(),
        Some("{ not json")
    );
}

#[tokio::test]
async fn a_broken_endpoints_file_at_start_is_not_ready_until_fixed() {
    let dir = TempDir::create("file-source-broken-start").unwrap();
    dir.write("endpoints.yaml", "services: [");
    dir.write("routes/users.json", USERS_ROUTES);
    let store = Arc::new(MeshStore::new());
    let mut synced = store.subscribe_synced();
    let mut changes = store.subscribe();
    tokio::spawn(file::run(dir.path().to_path_buf(), store.clone()));

    // The first read stores the documents (a change), then judges the
    // endpoints file.
    tokio::time::timeout(CHANGE_BUDGET, changes.changed())
        .await
        .expect("the first read stores the documents")
        .expect("the store outlives the test");
    assert!(!store.is_synced(), "no valid endpoints yet: not ready");

    dir.write("endpoints.yaml", ENDPOINTS);
    tokio::time::timeout(CHANGE_BUDGET, synced.wait_for(|synced| *synced))
        .await
        .expect("ready within 1 s of the fix")
        .expect("the store outlives the test");
    assert_eq!(store.state().services["users"].len(), 2);
}

#[tokio::test]
async fn a_missing_directory_is_an_error_that_names_it() {
    let dir = std::env::temp_dir().join(format!("weft-file-source-missing-{}", std::process::id()));
    let error = file::run(dir.clone(), Arc::new(MeshStore::new()))
        .await
        .expect_err("a missing dir cannot be served");
    let message = format!("{error:#}");
    assert!(message.contains(&dir.display().to_string()), "{message}");
    assert!(message.contains("does it exist?"), "{message}");
}
