//! Inbound policies with the file backend (no Consul): `policies/<svc>.*`
//! and the mesh-wide `defaults.*` at the root of the config dir become the
//! InboundPolicy the snapshot serves, and an edit of `defaults` reaches it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use tokio::sync::watch;
use weft_discovery::metrics::Metrics;
use weft_discovery::snapshot::{self, DebounceConfig, Snapshot, Subscription};
use weft_discovery::source::file;
use weft_discovery::store::MeshStore;
use weft_proto::config::v1::{Action, InboundPolicy};
use weft_proto::type_url;
use weft_test_support::eventually::watch_until;
use weft_test_support::temp_dir::TempDir;

/// How long a change may take to reach the snapshot.
const WITHIN: Duration = Duration::from_secs(1);

/// Runs the file backend and the snapshot builder on `dir`.
fn start(dir: &TempDir) -> watch::Receiver<Option<Arc<Snapshot>>> {
    let store = Arc::new(MeshStore::new());
    let (publish, snapshots) = watch::channel(None);
    tokio::spawn(file::run(dir.path().to_owned(), store.clone()));
    tokio::spawn(snapshot::run_builder(
        store,
        DebounceConfig::default(),
        publish,
        Arc::new(Metrics::new()),
    ));
    snapshots
}

fn policy(snapshot: &Snapshot, service: &str) -> InboundPolicy {
    let selection = snapshot.select(
        type_url::INBOUND_POLICY,
        &Subscription::names([service.to_string()]),
    );
    InboundPolicy::decode(selection.resources[0].value.as_ref()).expect("a policy")
}

/// Waits until the served policy of `service` satisfies `check`.
async fn served_policy(
    snapshots: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    service: &str,
    check: impl Fn(&InboundPolicy) -> bool,
) -> InboundPolicy {
    let what = format!("the policy of {service} is served");
    watch_until(WITHIN, &what, snapshots, |snapshot| {
        let served = policy(snapshot.as_ref().context("no snapshot yet")?, service);
        anyhow::ensure!(check(&served), "served: {served:?}");
        Ok(served)
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}"))
}

#[tokio::test]
async fn policy_files_and_the_root_defaults_file_make_the_inbound_policy() {
    let dir = TempDir::create("policy-files-defaults").unwrap();
    dir.write(
        "endpoints.yaml",
        "services:\n  users: [ { address: 127.0.0.1, port: 18081 } ]\n  orders: []\n",
    );
    dir.write(
        "policies/users.yaml",
        "intentions:\n  - { source: web, action: allow }\n  - { source: '*', permissions: [ { action: allow, path_exact: /health } ] }\n",
    );
    dir.write("defaults.yaml", "default: deny\n");
    let mut snapshots = start(&dir);

    let users = served_policy(&mut snapshots, "users", |policy| {
        policy.default_action() == Action::Deny
    })
    .await;
    let found: Vec<_> = users
        .intentions
        .iter()
        .map(|i| (i.source.as_str(), i.origin.as_str(), i.permissions.len()))
        .collect();
    assert_eq!(
        found,
        [
            ("web", "kv:weft/policies/users", 0),
            ("*", "kv:weft/policies/users", 1)
        ]
    );
    let orders = served_policy(&mut snapshots, "orders", |_| true).await;
    assert_eq!(
        orders.default_action(),
        Action::Deny,
        "the mesh-wide default"
    );
    assert!(orders.intentions.is_empty());

    // A JSON defaults file wins over the YAML one, as for every document;
    // editing it reaches the policy of every service without its own default.
    dir.write("defaults.json", r#"{ "default": "allow" }"#);
    let ghost = served_policy(&mut snapshots, "ghost", |policy| {
        policy.default_action() == Action::Allow
    })
    .await;
    assert_eq!(
        ghost.service, "ghost",
        "an unknown name still gets an answer"
    );
    let users = served_policy(&mut snapshots, "users", |_| true).await;
    assert_eq!(users.default_action(), Action::Allow);
}
