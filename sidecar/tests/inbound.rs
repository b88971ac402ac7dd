//! The inbound (static) path: the sidecar as a plain reverse proxy to the
//! local app, as benchmarks run it.

mod common;

use std::time::Duration;

use common::*;
use weft_sidecar::Settings;

#[tokio::test]
async fn forwards_to_the_app_with_proxy_headers() {
    let app = upstream("app").await;
    let mut s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), app);
    s.admin = Some("127.0.0.1:0".parse().unwrap());
    let sc = weft_sidecar::start(s).await.unwrap();
    let r = get(
        sc.inbound_addr,
        "users",
        "/hello?x=1",
        &[("keep-alive", "timeout=1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "app GET /hello?x=1");
    assert_eq!(r.header("x-seen-host"), "users");
    assert_eq!(r.header("x-seen-forwarded-for"), "127.0.0.1");
    assert_eq!(r.header("x-seen-request-id").len(), 32);
    assert_eq!(
        get(sc.admin_addr.unwrap(), "a", "/ready", &[]).await.status,
        200,
        "static mode is ready at once"
    );
}

#[tokio::test]
async fn app_down_is_connect_failed() {
    let s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), closed_port().await);
    let sc = weft_sidecar::start(s).await.unwrap();
    let r = get(sc.inbound_addr, "users", "/", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weft-error")),
        (503, "connect-failed")
    );
}

#[tokio::test]
async fn app_timeout_is_504() {
    let app = upstream("app").await;
    let mut s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), app);
    s.proxy.app_request_timeout = Some(Duration::from_millis(100));
    let sc = weft_sidecar::start(s).await.unwrap();
    let r = get(sc.inbound_addr, "users", "/sleep/1000", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weft-error")),
        (504, "timeout")
    );
}

#[tokio::test]
async fn keep_alive_connections_to_the_app_are_reused() {
    let (app, connections) = counting_upstream("app").await;
    let s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), app);
    let sc = weft_sidecar::start(s).await.unwrap();
    for i in 0..20 {
        // A new client connection each time: only the upstream side pools.
        let r = get(sc.inbound_addr, "users", &format!("/{i}"), &[]).await;
        assert_eq!(r.body, format!("app GET /{i}"));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled connection serves them all"
    );

    // A HEAD response has no body to read: the connection still goes back.
    let r = raw(
        sc.inbound_addr,
        "HEAD / HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(
        get(sc.inbound_addr, "users", "/again", &[]).await.status,
        200
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}
