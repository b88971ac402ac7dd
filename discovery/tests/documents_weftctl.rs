//! `weftctl` as an operator runs it: `validate` on files and directories,
//! `status` against an admin endpoint that serves the agent's /status shape.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::weftctl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")
}

#[test]
fn weftctl_validate_accepts_the_example_dir() {
    let dir = examples();
    let (code, text) = weftctl(&[
        "validate",
        dir.to_str().expect("a UTF-8 path"),
        "--services",
        "web,users,users-v2,orders,orders-v2",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("ok: "), "{text}");
}

#[test]
fn weftctl_validate_prints_every_error_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("weft-weftctl-validate-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("cfg/routes")).expect("create a test dir");
    std::fs::write(
        dir.join("cfg/routes/users.json"),
        r#"{ "routes": [ { "match": { "path_regex": "[" }, "destination": "users" },
                         { "split": [ { "destination": "ghost", "weight": 0 } ] } ] }"#,
    )
    .expect("write a test document");
    std::fs::write(
        dir.join("cfg/routes/orders.yaml"),
        "routes:\n  - destination: ghost\n",
    )
    .expect("write");

    let (code, text) = weftctl(&[
        "validate",
        dir.to_str().expect("a UTF-8 path"),
        "--services",
        "users",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{text}");
    for line in [
        "routes/users: routes[0].match.path_regex: invalid regex `[`: unclosed character class",
        "routes/users: routes[1].split: the weights sum to 0",
        "routes/orders: routes[0].destination: unknown destination `ghost` (not in the catalog and no destinations/ghost document)",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("invalid: 2 document(s) checked"), "{text}");
}

#[test]
fn weftctl_validate_without_services_does_not_check_references() {
    let dir = std::env::temp_dir().join(format!("weft-weftctl-norefs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("routes")).expect("create a test dir");
    let file = dir.join("routes/orders.json");
    std::fs::write(&file, r#"{ "routes": [ { "destination": "ghost" } ] }"#).expect("write");
    let (code, text) = weftctl(&["validate", file.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("references to services not checked"),
        "{text}"
    );
}

#[test]
fn weftctl_validate_checks_a_gateways_kv_certificates_among_the_validated_files() {
    let dir = std::env::temp_dir().join(format!("weft-weftctl-gateway-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("gateways")).expect("create a test dir");
    std::fs::create_dir_all(dir.join("certificates")).expect("create a test dir");
    let certified = rcgen::generate_simple_self_signed(vec!["api.example.com".into()])
        .expect("a test certificate");
    let api = serde_json::json!({
        "chain_pem": certified.cert.pem(),
        "private_key_pem": certified.signing_key.serialize_pem(),
    });
    std::fs::write(dir.join("certificates/api.json"), api.to_string()).expect("write");
    std::fs::write(
        dir.join("gateways/edge.json"),
        r#"{ "listeners": [ { "name": "public", "port": 8443, "protocol": "https",
             "hosts": ["api.example.com"], "certificates": [ { "kv": "api" } ] } ] }"#,
    )
    .expect("write");
    let path = dir.to_str().expect("a UTF-8 path").to_string();
    let (code, text) = weftctl(&["validate", &path]);
    assert_eq!(code, 0, "{text}");

    std::fs::write(
        dir.join("certificates/bad.json"),
        r#"{ "chain_pem": "junk", "private_key_pem": "junk" }"#,
    )
    .expect("write");
    std::fs::write(
        dir.join("gateways/edge.json"),
        r#"{ "listeners": [ { "name": "public", "port": 8443, "protocol": "https",
             "hosts": ["api.example.com"], "certificates": [ { "kv": "api" }, { "kv": "bad" }, { "kv": "ghost" } ] } ] }"#,
    )
    .expect("write");
    let (code, text) = weftctl(&["validate", &path]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{text}");
    for line in [
        "certificates/bad: chain_pem: the chain holds no certificate",
        "gateways/edge: listeners[0].certificates[1].kv: certificates/bad was refused",
        "gateways/edge: listeners[0].certificates[2].kv: no certificates/ghost document",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("junk"), "no PEM is quoted: {text}");
}

#[test]
fn weftctl_validate_refuses_a_file_it_cannot_key() {
    let file = std::env::temp_dir().join(format!("weft-weftctl-nokey-{}.json", std::process::id()));
    std::fs::write(&file, "{}").expect("write");
    let (code, text) = weftctl(&["validate", file.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "put it under a routes/, destinations/, policies/, gateways/ or certificates/ folder"
        ),
        "{text}"
    );
}

/// Serves one canned `/status` answer on a loopback port; returns the URL
/// and the request line it received.
async fn serve_status_once(body: String) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("weftctl connects");
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.expect("read the request");
            assert!(read > 0, "weftctl closed before sending a whole request");
            request.extend_from_slice(&buffer[..read]);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await.expect("answer");
        String::from_utf8_lossy(&request)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    });
    (url, server)
}

#[tokio::test]
async fn weftctl_status_prints_sidecars_and_rejected_documents() {
    let body = serde_json::json!({
        "ready": true, "backend": "consul http://127.0.0.1:8500", "started_at_unix": 1700000000,
        "sidecars": [ { "node_id": "users-1", "service": "users", "instance": "users-1", "peer": "127.0.0.1:5555",
            "connected_at_unix": 1700000001,
            "types": {
                "RouteConfiguration": { "subscribed": ["*"], "sent_version": "ab12", "acked_version": "ab12", "last_nack": null },
                "Cluster": { "subscribed": ["users"], "sent_version": "cd34", "acked_version": "cd34", "last_nack": null },
                "ClusterLoadAssignment": { "subscribed": ["users"], "sent_version": "ef56", "acked_version": "0a0a",
                    "last_nack": { "version": "ef56", "message": "endpoint 0: port 0", "at_unix": 1700000005 } } } } ],
        "rejected_documents": [ { "key": "routes/users", "origin": "consul kv weft/routes/users",
            "errors": [ { "key": "routes/users", "field": "routes[0].match.path_regex", "reason": "invalid regex `[`" } ],
            "serving": "last good version" } ],
        "counters": { "documents_rejected_total": 1, "responses_sent_total": 9, "nacks_received_total": 1 } })
    .to_string();
    let (url, server) = serve_status_once(body).await;
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(["status", "--admin", &url])
            .output()
            .expect("run weftctl")
    })
    .await
    .expect("weftctl ran");
    let request_line = server.await.expect("the fake admin answered");
    assert_eq!(request_line, "GET /status HTTP/1.1");

    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("agent: ready   backend: consul http://127.0.0.1:8500"),
        "{text}"
    );
    assert!(text.contains("nacks_received_total=1"), "{text}");
    let sidecar = text
        .lines()
        .find(|l| l.starts_with("users "))
        .expect("a sidecar row");
    for cell in [
        "users-1",
        "127.0.0.1:5555",
        "ab12",
        "cd34",
        "0a0a->ef56",
        "1: users",
        "ClusterLoadAssignment ef56: endpoint 0: port 0",
    ] {
        assert!(sidecar.contains(cell), "{cell} in {sidecar}");
    }
    let rejected = text
        .lines()
        .find(|l| l.starts_with("routes/users"))
        .expect("a rejection row");
    for cell in [
        "routes[0].match.path_regex",
        "invalid regex `[`",
        "last good version",
    ] {
        assert!(rejected.contains(cell), "{cell} in {rejected}");
    }
}

#[test]
fn weftctl_status_names_the_address_it_cannot_reach() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, text) = weftctl(&["status", "--admin", &url]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("cannot reach {url}/status")),
        "{text}"
    );
    assert!(text.contains("is weft-discovery running"), "{text}");
}
