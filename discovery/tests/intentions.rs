//! Authorization config end to end on the agent's side, against a real
//! `consul agent -dev` and the real discovery stream: Consul's intentions
//! and Weft's policy documents become one `InboundPolicy` per service, in
//! Consul's precedence order, pushed to the sidecar that subscribed to it.

mod consul_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use consul_support::DevConsul;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_discovery::ads::{AdsServer, SidecarRegistry};
use weft_discovery::consul::{Intention, QueryOptions};
use weft_discovery::metrics::Metrics;
use weft_discovery::snapshot::{self, DebounceConfig, Snapshot};
use weft_discovery::source::consul::{ConsulSource, ConsulSourceOptions};
use weft_discovery::store::MeshStore;
use weft_proto::config::v1::{Action, InboundPolicy};
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse, Node};
use weft_proto::type_url;

type TestResult = anyhow::Result<()>;

/// The latency budget from a write in Consul to the sidecar.
const WITHIN: Duration = Duration::from_secs(1);

/// The agent as `weft-discovery --consul` runs it: the Consul source, the
/// snapshot builder and the discovery server on a loopback port. Its tasks
/// stop when it is dropped.
struct Agent {
    address: String,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn start_agent(consul: &DevConsul) -> anyhow::Result<Agent> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("weft_discovery=info")
        .with_test_writer()
        .try_init();
    let store = Arc::new(MeshStore::new());
    let metrics = Arc::new(Metrics::new());
    let (publish, snapshots) = watch::channel(None);
    // A short wait, so that quiet watches also cycle during the test.
    let options = ConsulSourceOptions {
        wait: Duration::from_secs(2),
        ..ConsulSourceOptions::default()
    };
    let source = ConsulSource::with_options(consul.client.clone(), options);
    let mut tasks = vec![
        tokio::spawn(source.run(store.clone())),
        tokio::spawn(snapshot::run_builder(
            store,
            DebounceConfig::default(),
            publish,
            metrics.clone(),
        )),
    ];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let service = AdsServer::new(
        snapshots.clone(),
        Arc::new(SidecarRegistry::default()),
        metrics,
    )
    .into_service();
    tasks.push(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
        if let Err(error) = served {
            panic!("the discovery server stopped: {error}");
        }
    }));
    let agent = Agent {
        address,
        snapshots,
        tasks,
    };
    // Ready once the first snapshot (after the first full sync) is out.
    let mut ready = agent.snapshots.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        ready.wait_for(|snapshot| snapshot.is_some()),
    )
    .await
    .context("no first snapshot within 10 s")??;
    Ok(agent)
}

/// A sidecar's end of the discovery stream, subscribed to inbound policies.
struct Sidecar {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    names: Vec<String>,
}

impl Sidecar {
    /// Connects and subscribes to the InboundPolicy of `names`, as a
    /// sidecar does for its own service.
    async fn subscribe(agent: &Agent, names: &[&str]) -> anyhow::Result<Self> {
        let mut client = AggregatedDiscoveryServiceClient::connect(agent.address.clone()).await?;
        let (requests, outbox) = mpsc::channel(16);
        let responses = client
            .stream_resources(ReceiverStream::new(outbox))
            .await?
            .into_inner();
        let sidecar = Self {
            requests,
            responses,
            names: names.iter().map(|name| name.to_string()).collect(),
        };
        sidecar.send("", "").await?;
        Ok(sidecar)
    }

    async fn send(&self, version: &str, nonce: &str) -> anyhow::Result<()> {
        let request = DiscoveryRequest {
            version_info: version.into(),
            node: Some(Node {
                id: "db-1".into(),
                service: "db".into(),
                instance: "db-1".into(),
                ..Node::default()
            }),
            resource_names: self.names.clone(),
            type_url: type_url::INBOUND_POLICY.into(),
            response_nonce: nonce.into(),
            error_detail: None,
        };
        self.requests.send(request).await?;
        Ok(())
    }

    /// The next push (ACKed), as policies by service name.
    async fn next(&mut self, within: Duration) -> anyhow::Result<Policies> {
        let response = tokio::time::timeout(within, self.responses.message())
            .await
            .with_context(|| format!("no push within {within:?}"))??
            .context("the stream ended")?;
        assert_eq!(response.type_url, type_url::INBOUND_POLICY);
        self.send(&response.version_info, &response.nonce).await?;
        let policies = response
            .resources
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, type_url::INBOUND_POLICY);
                InboundPolicy::decode(any.value.as_ref())
            })
            .collect::<Result<_, _>>()?;
        Ok(Policies {
            version: response.version_info,
            policies,
        })
    }

    /// Pushes until one satisfies `check` (a Consul change may arrive in
    /// more than one push); returns it and how long it took.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        check: impl Fn(&Policies) -> bool,
    ) -> anyhow::Result<(Policies, Duration)> {
        let started = Instant::now();
        loop {
            let left = within.saturating_sub(started.elapsed());
            let policies = self
                .next(left)
                .await
                .with_context(|| format!("{what}: not pushed within {within:?}"))?;
            if check(&policies) {
                return Ok((policies, started.elapsed()));
            }
        }
    }

    /// Nothing arrives for a while.
    async fn expect_silence(&mut self) -> TestResult {
        match tokio::time::timeout(Duration::from_millis(500), self.responses.message()).await {
            Ok(message) => bail!("expected no push, got {message:?}"),
            Err(_) => Ok(()),
        }
    }
}

/// One push of inbound policies.
struct Policies {
    version: String,
    policies: Vec<InboundPolicy>,
}

impl Policies {
    fn of(&self, service: &str) -> &InboundPolicy {
        match self
            .policies
            .iter()
            .find(|policy| policy.service == service)
        {
            Some(policy) => policy,
            None => panic!("no policy for {service} in the push"),
        }
    }
}

/// A policy's intentions as `source action origin` (`l7` for one with
/// permissions).
fn intentions(policy: &InboundPolicy) -> Vec<String> {
    policy
        .intentions
        .iter()
        .map(|intention| {
            let action = match (intention.permissions.is_empty(), intention.action()) {
                (false, _) => "l7",
                (true, Action::Allow) => "allow",
                (true, Action::Deny) => "deny",
            };
            format!("{} {action} {}", intention.source, intention.origin)
        })
        .collect()
}

fn consul_intention(source: &str, destination: &str, action: &str) -> Intention {
    Intention {
        source_name: source.into(),
        destination_name: destination.into(),
        source_type: "consul".into(),
        action: action.into(),
        ..Intention::default()
    }
}

#[tokio::test]
async fn the_intention_list_supports_blocking_queries() -> TestResult {
    let consul = DevConsul::start().await?;
    let client = &consul.client;
    let (empty, meta) = client.intentions(&QueryOptions::default()).await?;
    assert!(
        empty.is_empty(),
        "a new Consul has no intentions: {empty:?}"
    );
    assert!(meta.index > 0, "Consul sends an index with the list");

    // With nothing changing, a blocking read waits out its `wait`.
    let started = Instant::now();
    let (_, quiet) = client
        .intentions(&QueryOptions::blocking(
            meta.index,
            Duration::from_millis(500),
        ))
        .await?;
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(quiet.index, meta.index);

    // A change wakes it at once (or, had it landed before the query was
    // sent, answers it at once: either way the new list comes back fast).
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = client
                .intentions(&QueryOptions::blocking(meta.index, Duration::from_secs(30)))
                .await;
            (answer, started.elapsed())
        })
    };
    let id = client
        .intention_create(&consul_intention("web", "db", "deny"))
        .await?;
    let (answer, took) = waiting.await?;
    let (list, woke) = answer?;
    assert!(woke.index > meta.index);
    assert!(took < Duration::from_secs(5), "woke after {took:?}");
    let listed: Vec<_> = list
        .iter()
        .map(|i| {
            (
                i.id.as_str(),
                i.source_name.as_str(),
                i.destination_name.as_str(),
                i.action.as_str(),
                i.source_ns.as_str(),
                i.precedence,
            )
        })
        .collect();
    assert_eq!(listed, [(id.as_str(), "web", "db", "deny", "default", 9)]);
    Ok(())
}

#[tokio::test]
async fn a_consul_intention_reaches_its_destinations_policy_within_a_second_and_leaves_with_it()
-> TestResult {
    let consul = DevConsul::start().await?;
    let agent = start_agent(&consul).await?;
    // `db` is in no catalog: its sidecar still gets an answer.
    let mut sidecar = Sidecar::subscribe(&agent, &["db"]).await?;
    let first = sidecar.next(Duration::from_secs(5)).await?;
    let db = first.of("db");
    assert_eq!(db.default_action(), Action::Allow, "no policy anywhere");
    assert!(db.intentions.is_empty());

    let started = Instant::now();
    let id = consul
        .client
        .intention_create(&consul_intention("web", "db", "deny"))
        .await?;
    let (pushed, _) = sidecar
        .until(WITHIN, "the new intention", |push| {
            !push.of("db").intentions.is_empty()
        })
        .await?;
    let took = started.elapsed();
    eprintln!("a Consul intention reached the sidecar's InboundPolicy in {took:?}");
    assert!(took < WITHIN, "took {took:?}");
    let db = pushed.of("db");
    assert_eq!(intentions(db), [format!("web deny consul:{id}")]);
    assert_eq!(db.default_action(), Action::Allow);

    let started = Instant::now();
    consul.client.intention_delete(&id).await?;
    let (pushed, _) = sidecar
        .until(WITHIN, "the deleted intention gone", |push| {
            push.of("db").intentions.is_empty()
        })
        .await?;
    let took = started.elapsed();
    eprintln!("a deleted Consul intention left the sidecar's InboundPolicy in {took:?}");
    assert!(took < WITHIN, "took {took:?}");
    assert_eq!(
        pushed.version, first.version,
        "the same content has the same version"
    );
    Ok(())
}

#[tokio::test]
async fn a_policy_document_and_consul_intentions_merge_in_precedence_order() -> TestResult {
    let consul = DevConsul::start().await?;
    let agent = start_agent(&consul).await?;
    let mut sidecar = Sidecar::subscribe(&agent, &["db", "users"]).await?;
    sidecar.next(Duration::from_secs(5)).await?;

    consul
        .client
        .kv_put(
            "weft/policies/db",
            r#"{ "intentions": [
                { "source": "web", "action": "allow" },
                { "source": "*", "permissions": [ { "action": "allow", "path_prefix": "/public/", "methods": ["GET"] } ] } ] }"#,
        )
        .await?;
    consul
        .client
        .kv_put("weft/defaults", r#"{ "default": "deny" }"#)
        .await?;
    let web_deny = consul
        .client
        .intention_create(&consul_intention("web", "db", "deny"))
        .await?;
    let monitor_allow = consul
        .client
        .intention_create(&consul_intention("monitor", "*", "allow"))
        .await?;

    let expected = [
        // Precedence 9 (web -> db): Consul's deny before the document's allow.
        format!("web deny consul:{web_deny}"),
        "web allow kv:weft/policies/db".to_string(),
        // 8 (* -> db).
        "* l7 kv:weft/policies/db".to_string(),
        // 6 (monitor -> *).
        format!("monitor allow consul:{monitor_allow}"),
    ];
    let (pushed, took) = sidecar
        .until(WITHIN, "the merged policy", |push| {
            intentions(push.of("db")) == expected
                && push.of("users").default_action() == Action::Deny
        })
        .await?;
    eprintln!("document, defaults and two Consul intentions merged and pushed in {took:?}");
    let db = pushed.of("db");
    assert_eq!(db.default_action(), Action::Deny, "from weft/defaults");
    let public = &db.intentions[2].permissions[0];
    assert_eq!(public.methods, ["GET"]);
    assert!(db.jwt.is_none());
    let users = pushed.of("users");
    assert_eq!(
        intentions(users),
        [format!("monitor allow consul:{monitor_allow}")],
        "a service without a document gets the intentions for every destination"
    );

    // The document's own default wins over the mesh-wide one.
    consul
        .client
        .kv_put(
            "weft/policies/db",
            r#"{ "default": "allow", "intentions": [ { "source": "web", "action": "allow" } ] }"#,
        )
        .await?;
    let (pushed, _) = sidecar
        .until(WITHIN, "the document's default", |push| {
            push.of("db").default_action() == Action::Allow
        })
        .await?;
    assert_eq!(
        intentions(pushed.of("db")),
        [
            format!("web deny consul:{web_deny}"),
            "web allow kv:weft/policies/db".to_string(),
            format!("monitor allow consul:{monitor_allow}"),
        ]
    );
    assert_eq!(pushed.of("users").default_action(), Action::Deny);
    Ok(())
}

#[tokio::test]
async fn an_invalid_policy_document_is_rejected_and_the_previous_policy_keeps_serving() -> TestResult
{
    let consul = DevConsul::start().await?;
    let agent = start_agent(&consul).await?;
    let mut sidecar = Sidecar::subscribe(&agent, &["db"]).await?;
    sidecar.next(Duration::from_secs(5)).await?;

    consul
        .client
        .kv_put(
            "weft/policies/db",
            r#"{ "default": "deny", "intentions": [ { "source": "web", "action": "allow" } ] }"#,
        )
        .await?;
    let (good, _) = sidecar
        .until(WITHIN, "the good document", |push| {
            push.of("db").default_action() == Action::Deny
        })
        .await?;
    assert_eq!(intentions(good.of("db")), ["web allow kv:weft/policies/db"]);

    consul
        .client
        .kv_put(
            "weft/policies/db",
            r#"{ "default": "allow", "intentions": [
                { "source": "web", "action": "allow" },
                { "source": "api", "permissions": [ { "action": "allow", "path_regex": "/v1/[a-z+" } ] },
                { "source": "web", "action": "deny" } ] }"#,
        )
        .await?;
    let mut snapshots = agent.snapshots.clone();
    let snapshot = tokio::time::timeout(
        WITHIN,
        snapshots.wait_for(|snapshot| {
            snapshot
                .as_ref()
                .is_some_and(|snapshot| !snapshot.rejected.is_empty())
        }),
    )
    .await
    .context("no rejection within 1 s")??
    .clone();
    let Some(snapshot) = snapshot else {
        bail!("no snapshot");
    };
    let rejected = &snapshot.rejected[0];
    assert_eq!(rejected.key, "policies/db");
    assert_eq!(rejected.origin, "consul kv weft/policies/db");
    assert_eq!(rejected.serving, "last good version");
    let errors: Vec<String> = rejected.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "policies/db: intentions[1].permissions[0].path_regex: invalid regex `/v1/[a-z+`: unclosed character class",
            "policies/db: intentions[2].source: `web` already has an intention at intentions[0]: one intention per source (put its permissions in one list)",
        ]
    );

    // No push for the rejected version; a sidecar connecting now gets the
    // last good policy, with the version the first one holds.
    sidecar.expect_silence().await?;
    let mut late = Sidecar::subscribe(&agent, &["db"]).await?;
    let served = late.next(Duration::from_secs(5)).await?;
    assert_eq!(served.version, good.version);
    assert_eq!(served.of("db"), good.of("db"));
    Ok(())
}
