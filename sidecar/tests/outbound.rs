//! The outbound path against a fake agent and real upstream apps on
//! loopback: routing, rewrites, errors, upgrades, HTTP/2, NACK, drain.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_proto::config::v1 as pb;
use weft_sidecar::{Drained, Running, Settings};

async fn start_sidecar(ads: &FakeAds) -> Running {
    start_sidecar_with(ads, |_| {}).await
}

async fn start_sidecar_with(ads: &FakeAds, adjust: impl FnOnce(&mut Settings)) -> Running {
    let app = upstream("local-app").await;
    let mut s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), app);
    s.service = "client".into();
    s.discovery = Some(format!("http://{}", ads.addr).parse().unwrap());
    s.outbound = Some("127.0.0.1:0".parse().unwrap());
    s.admin = Some("127.0.0.1:0".parse().unwrap());
    s.drain_timeout = Duration::from_secs(5);
    adjust(&mut s);
    weft_sidecar::start(s).await.unwrap()
}

/// Whether the sidecar's admin `/ready` answers 200 (the error says what it
/// answered instead).
async fn ready(r: &Running) -> anyhow::Result<()> {
    let reply = get(r.admin_addr.unwrap(), "admin", "/ready", &[]).await;
    anyhow::ensure!(
        reply.status == 200,
        "/ready: {} {}",
        reply.status,
        reply.body
    );
    Ok(())
}

/// Whether the admin `/clusters` shows exactly one request in flight.
async fn one_in_flight(admin: SocketAddr) -> anyhow::Result<()> {
    let clusters = get(admin, "admin", "/clusters", &[]).await.body;
    anyhow::ensure!(clusters.contains("\"in_flight\": 1"), "{clusters}");
    Ok(())
}

async fn start_ready(ads: &FakeAds) -> Running {
    let r = start_sidecar(ads).await;
    eventually(Duration::from_secs(10), "sidecar ready", || ready(&r))
        .await
        .unwrap();
    r
}

/// users, orders (two apps) and their route tables.
async fn two_services() -> (Snapshot, SocketAddr, SocketAddr) {
    let users = upstream("users").await;
    let orders = upstream("orders").await;
    let snap = Snapshot {
        routes: vec![
            route_config("users", vec![route("/", "users")]),
            route_config("orders", vec![route("/", "orders")]),
        ],
        clusters: vec![cluster("users"), cluster("orders")],
        assignments: vec![
            assignment("users", &[healthy(users)]),
            assignment("orders", &[healthy(orders)]),
        ],
        ..Default::default()
    };
    (snap, users, orders)
}

#[tokio::test]
async fn routes_by_host_in_every_authority_form() {
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let sc = start_ready(&ads).await;
    let out = sc.outbound_addr.unwrap();

    for host in ["users", "users:80", "USERS.weft", "users.weft:8080"] {
        let r = get(out, host, "/a", &[]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.body, "users GET /a", "{host}");
        assert_eq!(r.header("x-seen-host"), host, "Host is forwarded as sent");
    }
    assert_eq!(
        get(out, "orders", "/b?x=1", &[]).await.body,
        "orders GET /b?x=1"
    );

    // The app may use the sidecar as HTTP_PROXY: absolute-form request line.
    let resp = raw(
        out,
        "GET http://orders.weft/c HTTP/1.1\r\nHost: orders.weft\r\nConnection: close\r\n\r\n",
        "orders GET /c",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("orders GET /c"), "{resp}");
}

#[tokio::test]
async fn proxy_headers_are_set_and_hop_by_hop_ones_dropped() {
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let sc = start_ready(&ads).await;
    let r = get(
        sc.outbound_addr.unwrap(),
        "users",
        "/",
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-forwarded-for", "10.9.9.9"),
        ],
    )
    .await;
    assert_eq!(
        r.header("x-seen-secret"),
        "",
        "a header named in Connection is hop-by-hop"
    );
    assert_eq!(r.header("x-seen-forwarded-for"), "10.9.9.9, 127.0.0.1");
    assert_eq!(r.header("x-seen-forwarded-proto"), "http");
    let id = r.header("x-seen-request-id");
    assert_eq!(id.len(), 32, "a request id is generated: {id:?}");

    let r = get(
        sc.outbound_addr.unwrap(),
        "users",
        "/",
        &[("x-request-id", "abc")],
    )
    .await;
    assert_eq!(
        r.header("x-seen-request-id"),
        "abc",
        "an existing request id is kept"
    );
}

#[tokio::test]
async fn header_match_prefix_rewrite_and_header_mutations() {
    let users = upstream("users").await;
    let users_v2 = upstream("users-v2").await;
    let mut v2 = route("/api/v1/users/", "users-v2");
    v2.r#match.as_mut().unwrap().headers = vec![pb::HeaderMatcher {
        name: "x-api-version".into(),
        matcher: Some(pb::StringMatcher {
            pattern: Some(pb::string_matcher::Pattern::Exact("v2".into())),
        }),
        invert: false,
    }];
    v2.action.as_mut().unwrap().prefix_rewrite = "/".into();
    v2.request_headers = Some(pb::HeaderMutation {
        set: vec![pb::HeaderValue {
            name: "x-added".into(),
            value: "yes".into(),
        }],
        ..Default::default()
    });
    v2.response_headers = Some(pb::HeaderMutation {
        add: vec![pb::HeaderValue {
            name: "x-route".into(),
            value: "v2".into(),
        }],
        ..Default::default()
    });
    let mut v1 = route("/api/v1/users/", "users");
    v1.action.as_mut().unwrap().prefix_rewrite = "/".into();
    let mut health = route("/", "users");
    health.r#match.as_mut().unwrap().path = Some(pb::route_match::Path::Exact("/health".into()));
    let ads = FakeAds::start(Snapshot {
        routes: vec![route_config("users", vec![v2, v1, health])],
        clusters: vec![cluster("users"), cluster("users-v2")],
        assignments: vec![
            assignment("users", &[healthy(users)]),
            assignment("users-v2", &[healthy(users_v2)]),
        ],
        ..Default::default()
    })
    .await;
    let sc = start_ready(&ads).await;
    let out = sc.outbound_addr.unwrap();

    let r = get(
        out,
        "users",
        "/api/v1/users/42?full=1",
        &[("x-api-version", "v2")],
    )
    .await;
    assert_eq!(r.body, "users-v2 GET /42?full=1");
    assert_eq!(r.header("x-seen-added"), "yes");
    assert_eq!(r.header("x-route"), "v2");

    let r = get(out, "users", "/api/v1/users/42", &[("x-api-version", "v1")]).await;
    assert_eq!(r.body, "users GET /42");
    assert_eq!(r.header("x-route"), "");

    assert_eq!(
        get(out, "users", "/health", &[]).await.body,
        "users GET /health"
    );
    let r = get(out, "users", "/healthz", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weft-error")),
        (404, "no-route")
    );
}

#[tokio::test]
async fn errors_name_their_cause() {
    let reset = resetting_upstream().await;
    let closed = closed_port().await;
    let slow = upstream("slow").await;
    let sick = upstream("sick").await;
    let mut slow_route = route("/", "slow");
    slow_route.action.as_mut().unwrap().timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let ads = FakeAds::start(Snapshot {
        routes: vec![
            route_config("reset", vec![route("/", "reset")]),
            route_config("closed", vec![route("/", "closed")]),
            route_config("slow", vec![slow_route]),
            route_config("sick", vec![route("/", "sick")]),
        ],
        clusters: vec![
            cluster("reset"),
            cluster("closed"),
            cluster("slow"),
            cluster("sick"),
        ],
        assignments: vec![
            assignment("reset", &[healthy(reset)]),
            assignment("closed", &[healthy(closed)]),
            assignment("slow", &[healthy(slow)]),
            assignment("sick", &[(sick, pb::endpoint::Health::Unhealthy)]),
        ],
        ..Default::default()
    })
    .await;
    let sc = start_ready(&ads).await;
    let out = sc.outbound_addr.unwrap();

    let cases = [
        ("nobody", "/", 404, "no-route"),
        ("sick", "/", 503, "no-healthy-endpoint"),
        ("closed", "/", 503, "connect-failed"),
        ("reset", "/", 502, "upstream-reset"),
        ("slow", "/sleep/2000", 504, "timeout"),
    ];
    for (host, path, status, cause) in cases {
        let r = get(out, host, path, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{host}: {}", r.body);
        assert_eq!(r.header("x-weft-error"), cause, "{host}");
        assert!(
            r.body.ends_with('\n') && r.body.lines().count() == 1,
            "{host}: one-line body {:?}",
            r.body
        );
    }
    // A fast request on the slow cluster is fine.
    assert_eq!(get(out, "slow", "/sleep/1", &[]).await.status, 200);

    let r = raw(out, "GET / HTTP/1.0\r\n\r\n", "\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.0 400"),
        "no Host and no absolute URI: {r}"
    );
}

#[tokio::test]
async fn overflow_past_max_requests() {
    let slow = upstream("slow").await;
    let mut c = cluster("slow");
    c.connection_pool = Some(pb::ConnectionPool {
        max_requests: 1,
        ..Default::default()
    });
    let ads = FakeAds::start(Snapshot {
        routes: vec![route_config("slow", vec![route("/", "slow")])],
        clusters: vec![c],
        assignments: vec![assignment("slow", &[healthy(slow)])],
        ..Default::default()
    })
    .await;
    let sc = start_ready(&ads).await;
    let out = sc.outbound_addr.unwrap();
    let first = tokio::spawn(async move { get(out, "slow", "/sleep/500", &[]).await.status });
    let admin = sc.admin_addr.unwrap();
    eventually(Duration::from_secs(5), "first request in flight", || {
        one_in_flight(admin)
    })
    .await
    .unwrap();
    let r = get(out, "slow", "/", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weft-error")),
        (503, "overflow")
    );
    assert_eq!(first.await.unwrap(), 200);
}

/// Sends an Upgrade request to users through `out` and reads the 101.
async fn upgraded(out: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: users\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s
}

async fn echoes(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await.unwrap();
    let mut echo = vec![0u8; msg.len()];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, msg);
}

#[tokio::test]
async fn websocket_upgrade_is_bridged() {
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let sc = start_ready(&ads).await;
    let mut s = upgraded(sc.outbound_addr.unwrap()).await;
    for msg in [&b"hello"[..], b"second frame"] {
        echoes(&mut s, msg).await;
    }
}

#[tokio::test]
async fn an_upgraded_connection_idle_past_the_tcp_idle_timeout_is_closed() {
    use tokio::io::AsyncReadExt;
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let idle = Duration::from_millis(300);
    let sc = start_sidecar_with(&ads, |s| s.proxy.tcp_idle_timeout = idle).await;
    eventually(Duration::from_secs(10), "sidecar ready", || ready(&sc))
        .await
        .unwrap();
    let mut s = upgraded(sc.outbound_addr.unwrap()).await;
    echoes(&mut s, b"alive").await;
    let silent = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the idle connection was not closed")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        silent.elapsed() >= idle,
        "closed after {:?}",
        silent.elapsed()
    );
}

#[tokio::test]
async fn shutdown_waits_for_an_upgraded_connection_until_it_closes() {
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let sc = start_ready(&ads).await;
    let mut s = upgraded(sc.outbound_addr.unwrap()).await;
    let handle = sc.shutdown_handle();
    let mut waiting = tokio::spawn(sc.wait());
    handle.shutdown();
    // The bridge keeps working while the sidecar drains...
    echoes(&mut s, b"still open").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "shutdown did not wait for the open upgraded connection"
    );
    // ...and the drain ends once the client closes it.
    drop(s);
    let drained = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the drain did not end after the client closed")
        .unwrap();
    assert_eq!(drained, Drained::Clean);
}

#[tokio::test]
async fn http2_prior_knowledge_passes_through_as_http2() {
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let sc = start_ready(&ads).await;
    let stream = tokio::net::TcpStream::connect(sc.outbound_addr.unwrap())
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("http://users.weft/h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
        assert_eq!(
            resp.headers()["x-seen-authority"],
            "users.weft",
            ":authority is the logical host"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], format!("users GET /h2/{i}").as_bytes());
    }
}

#[tokio::test]
async fn an_invalid_resource_is_nacked_and_the_old_table_keeps_serving() {
    let (snap, users, _) = two_services().await;
    let ads = FakeAds::start(snap.clone()).await;
    let sc = start_ready(&ads).await;
    let out = sc.outbound_addr.unwrap();
    assert_eq!(get(out, "users", "/x", &[]).await.body, "users GET /x");

    let mut bad = snap.clone();
    let mut r = route("/", "orders");
    r.r#match.as_mut().unwrap().path = Some(pb::route_match::Path::Regex("/([".into()));
    bad.routes[0] = route_config("users", vec![r]);
    ads.set(bad);
    eventually(Duration::from_secs(5), "a NACK", || async {
        anyhow::ensure!(!ads.nacks().is_empty(), "no NACK yet");
        Ok(())
    })
    .await
    .unwrap();
    let nack = ads.nacks().remove(0);
    let detail = nack.error_detail.unwrap().message;
    assert!(
        detail.contains(
            "RouteConfiguration users: virtual_hosts[0].routes[0].match.regex: invalid regex"
        ),
        "{detail}"
    );
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.type_url, weft_proto::type_url::ROUTE_CONFIGURATION);

    assert_eq!(
        get(out, "users", "/x", &[]).await.body,
        "users GET /x",
        "old table still serves"
    );
    let dump = get(sc.admin_addr.unwrap(), "admin", "/config_dump", &[])
        .await
        .body;
    assert!(
        dump.contains("invalid regex"),
        "last NACK shown in /config_dump: {dump}"
    );

    // A later valid version is accepted and applied.
    let mut good = snap;
    good.assignments[0] = assignment("users", &[healthy(users)]);
    good.routes[0] = route_config("users", vec![route("/", "orders")]);
    ads.set(good);
    eventually(Duration::from_secs(5), "new route applied", || async {
        let body = get(out, "users", "/x", &[]).await.body;
        anyhow::ensure!(body == "orders GET /x", "answered {body:?}");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn ready_only_after_a_complete_config_and_serves_while_agent_is_away() {
    // Reserve the agent's port, start the sidecar with no agent there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    drop(listener);
    let app = upstream("local-app").await;
    let mut s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), app);
    s.service = "client".into();
    s.discovery = Some(format!("http://{agent_addr}").parse().unwrap());
    s.outbound = Some("127.0.0.1:0".parse().unwrap());
    s.admin = Some("127.0.0.1:0".parse().unwrap());
    let sc = weft_sidecar::start(s).await.unwrap();
    let r = get(sc.admin_addr.unwrap(), "admin", "/ready", &[]).await;
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .starts_with("not ready: waiting for RouteConfiguration"),
        "{}",
        r.body
    );

    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start_on(
        tokio::net::TcpListener::bind(agent_addr).await.unwrap(),
        snap,
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "ready after the agent appears",
        || ready(&sc),
    )
    .await
    .unwrap();

    ads.stop();
    let out = sc.outbound_addr.unwrap();
    for _ in 0..20 {
        assert_eq!(
            get(out, "users", "/", &[]).await.status,
            200,
            "last good config keeps serving"
        );
    }
    assert!(
        ready(&sc).await.is_ok(),
        "stays ready while the agent is away"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let (snap, _, _) = two_services().await;
    let ads = FakeAds::start(snap).await;
    let sc = start_ready(&ads).await;
    let out = sc.outbound_addr.unwrap();
    let admin = sc.admin_addr.unwrap();
    let in_flight = tokio::spawn(async move { get(out, "users", "/sleep/300", &[]).await });
    eventually(Duration::from_secs(5), "request in flight", || {
        one_in_flight(admin)
    })
    .await
    .unwrap();
    let handle = sc.shutdown_handle();
    let waiting = tokio::spawn(sc.wait());
    handle.shutdown();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    assert_eq!(waiting.await.unwrap(), Drained::Clean);
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "no longer accepting"
    );
}
