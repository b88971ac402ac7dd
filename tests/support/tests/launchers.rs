//! The launchers against the real programs (Consul from `WEFT_CONSUL_BIN` or
//! the installer, `redis-server`): what a test written on them relies on. A
//! Consul ready when `start` returns, ACLs that really refuse, and restarts
//! (Consul's, Redis's) on the same port that forget everything.

use http::{Method, StatusCode};
use weft_test_support::consul::{ConsulOptions, DevConsul};
use weft_test_support::redis::{Redis, RespConn};
use weft_test_support::temp_dir::TempDir;

#[tokio::test]
async fn a_started_again_consul_answers_on_the_same_port_with_an_empty_kv() -> anyhow::Result<()> {
    let logs = TempDir::create("support-consul-again")?;
    let mut consul = DevConsul::start(logs.path(), &ConsulOptions::default()).await?;
    let address = consul.address();
    consul
        .api_put("/v1/kv/weft/probe", &serde_json::json!("written"))
        .await?;
    let stored = consul.api_get("/v1/kv/weft/probe").await?;
    anyhow::ensure!(stored[0]["Key"] == "weft/probe", "{stored}");

    consul.stop();
    consul.start_again().await?;
    anyhow::ensure!(consul.address() == address, "moved to {}", consul.address());
    let (status, body) = consul
        .api()
        .send(Method::GET, "/v1/kv/weft/probe", "")
        .await?;
    anyhow::ensure!(
        status == StatusCode::NOT_FOUND,
        "the key survived a restart: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

#[tokio::test]
async fn with_acls_on_the_master_token_reads_the_catalog_and_an_anonymous_call_sees_nothing()
-> anyhow::Result<()> {
    let logs = TempDir::create("support-consul-acl")?;
    let options = ConsulOptions {
        acl_master_token: Some("master-secret".into()),
        ..ConsulOptions::default()
    };
    let consul = DevConsul::start(logs.path(), &options).await?;
    let services = consul.api_get("/v1/catalog/services").await?;
    anyhow::ensure!(services.get("consul").is_some(), "{services}");

    // Default deny: without a token the catalog is filtered to nothing.
    let anonymous = consul
        .api()
        .without_token()
        .get("/v1/catalog/services")
        .await?;
    anyhow::ensure!(anonymous == serde_json::json!({}), "{anonymous}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_redis_answers_on_the_same_port_and_has_forgotten_its_keys()
-> anyhow::Result<()> {
    let logs = TempDir::create("support-redis")?;
    let mut redis = Redis::start(logs.path()).await?;
    let addr = redis.addr;
    redis
        .direct()
        .await?
        .expect_simple(&[b"SET", b"probe", b"written"], "OK")
        .await?;

    redis.stop();
    anyhow::ensure!(
        RespConn::connect(addr).await.is_err(),
        "a stopped Redis still accepts connections"
    );
    redis.restart().await?;
    let value = redis.direct().await?.bulk(&[b"GET", b"probe"]).await?;
    anyhow::ensure!(value.is_none(), "the key survived a restart: {value:?}");
    Ok(())
}
