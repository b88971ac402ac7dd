//! The sidecar's own HTTP/1.1 client, seen from outside: whatever framing
//! an upstream uses, the client gets the same body; connections are reused
//! only when that is safe; a broken upstream gets a 502 that says why.
//!
//! Upstreams here are scripted at the byte level, since the point is how
//! the sidecar reads exactly what a real server may put on the wire.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_sidecar::Settings;

/// What the scripted upstream does with the n-th request on a connection.
#[derive(Clone, Copy)]
enum Act {
    /// Write these bytes and keep the connection open.
    Reply(&'static str),
    /// Write these bytes and close.
    ReplyAndClose(&'static str),
    /// Close without answering.
    Close,
}

/// An upstream that answers by script: `script(connection, request)` says
/// what to do with the request-th request (0-based) of the connection-th
/// connection. Records every request it read, raw.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn scripted(script: fn(usize, usize) -> Act) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let conn = c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(serve_script(s, conn, script, r));
        }
    });
    Scripted {
        addr,
        connections,
        requests,
    }
}

async fn serve_script(
    mut s: TcpStream,
    conn: usize,
    script: fn(usize, usize) -> Act,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    for n in 0.. {
        let Some(request) = read_request(&mut s, &mut buf).await else {
            return;
        };
        seen.lock().unwrap().push(request);
        match script(conn, n) {
            Act::Reply(bytes) => {
                if s.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Act::ReplyAndClose(bytes) => {
                let _ = s.write_all(bytes.as_bytes()).await;
                return;
            }
            Act::Close => return,
        }
    }
}

/// Reads one request (head, and a Content-Length or chunked body).
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end + 4];
            let lower = head.to_ascii_lowercase();
            let body_len = if lower.contains("transfer-encoding: chunked") {
                text[end + 4..].find("0\r\n\r\n").map(|i| i + 5)
            } else {
                let len = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                (text.len() - end - 4 >= len).then_some(len)
            };
            if let Some(body_len) = body_len {
                let total = end + 4 + body_len;
                let request = text[..total].to_string();
                buf.drain(..total);
                return Some(request);
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A sidecar proxying to `app`; it runs until the returned handle drops.
async fn sidecar_to(app: SocketAddr) -> (SocketAddr, weft_sidecar::Running) {
    let s = Settings::static_proxy("127.0.0.1:0".parse().unwrap(), app);
    let running = weft_sidecar::start(s).await.unwrap();
    (running.inbound_addr, running)
}

const OK_HELLO: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn a_chunked_response_arrives_whole_and_its_connection_is_reused() {
    let app = scripted(|_, _| {
        Act::Reply(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n",
        )
    })
    .await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    for _ in 0..3 {
        let r = get(proxy, "users", "/", &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello world"));
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_close_delimited_response_is_read_to_its_end_and_not_reused() {
    let app = scripted(|_, _| Act::ReplyAndClose("HTTP/1.1 200 OK\r\n\r\nuntil the end")).await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    for _ in 0..2 {
        let r = get(proxy, "users", "/", &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "until the end"));
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_and_http_1_0_responses_are_not_reused() {
    let app = scripted(|c, _| match c {
        0 => Act::Reply("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"),
        1 => Act::Reply("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"),
        _ => Act::Reply(OK_HELLO),
    })
    .await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    for want in ["a", "b", "hello", "hello"] {
        assert_eq!(get(proxy, "users", "/", &[]).await.body, want);
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn interim_responses_are_not_forwarded() {
    let app = scripted(|_, _| {
        Act::Reply("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    })
    .await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    let r = get(proxy, "users", "/", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello"));
    assert_eq!(r.header("link"), "");
}

#[tokio::test]
async fn request_bodies_keep_their_framing() {
    let app = scripted(|_, _| Act::Reply(OK_HELLO)).await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    let with_length = raw(
        proxy,
        "POST /a HTTP/1.1\r\nHost: users\r\nContent-Length: 3\r\n\r\nabc",
        "hello",
    )
    .await;
    assert!(with_length.starts_with("HTTP/1.1 200"), "{with_length}");
    let chunked = raw(
        proxy,
        "POST /b HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "hello",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");

    let seen = app.requests.lock().unwrap().clone();
    assert!(seen[0].starts_with("POST /a HTTP/1.1\r\n"), "{}", seen[0]);
    assert!(seen[0].contains("content-length: 3\r\n"), "{}", seen[0]);
    assert!(seen[0].ends_with("\r\n\r\nabc"), "{}", seen[0]);
    assert!(
        seen[1].contains("transfer-encoding: chunked\r\n"),
        "{}",
        seen[1]
    );
    assert!(!seen[1].contains("content-length"), "{}", seen[1]);
    assert!(
        seen[1].ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "{}",
        seen[1]
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_retried_only_when_safe() {
    // Each connection answers its first request and silently drops on the
    // second: the sidecar finds out only after reusing it.
    let app = scripted(|_, n| {
        if n == 0 {
            Act::Reply(OK_HELLO)
        } else {
            Act::Close
        }
    })
    .await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    assert_eq!(get(proxy, "users", "/", &[]).await.body, "hello");
    // A GET is idempotent and has no body: sent again on a new connection.
    let r = get(proxy, "users", "/", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello"));
    assert_eq!(app.connections.load(Ordering::SeqCst), 2);
    // A POST may have been processed: the client learns, nothing is resent.
    let post = raw(
        proxy,
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 1\r\n\r\nx",
        "\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 502"), "{post}");
    assert!(post.contains("x-weft-error: upstream-reset"), "{post}");
    assert_eq!(app.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalid_responses_are_502_upstream_protocol_error() {
    let cases: [fn(usize, usize) -> Act; 4] = [
        |_, _| Act::Reply("SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        |_, _| Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        |_, _| Act::Reply("HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"),
        |_, _| Act::Reply("HTTP/1.1 999999 Big\r\n\r\n"),
    ];
    for script in cases {
        let app = scripted(script).await;
        let (proxy, _sidecar) = sidecar_to(app.addr).await;
        let r = get(proxy, "users", "/", &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-weft-error")),
            (502, "upstream-protocol-error"),
            "{}",
            r.body
        );
    }
}

#[tokio::test]
async fn an_oversized_response_head_is_refused() {
    static HUGE: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        let mut s = String::from("HTTP/1.1 200 OK\r\nx-big: ");
        s.push_str(&"a".repeat(70 * 1024));
        s.push_str("\r\nContent-Length: 0\r\n\r\n");
        s.leak()
    });
    let app = scripted(|_, _| Act::Reply(*HUGE)).await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    let r = get(proxy, "users", "/", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weft-error")),
        (502, "upstream-protocol-error")
    );
}

#[tokio::test]
async fn an_upstream_dying_mid_body_is_an_error_for_the_client_not_a_short_body() {
    let app = scripted(|_, _| {
        Act::ReplyAndClose("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    })
    .await;
    let (proxy, _sidecar) = sidecar_to(app.addr).await;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "users")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let outcome = match send.send_request(req).await {
        Ok(resp) => http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.is_err(),
        "a truncated body must not end cleanly: {outcome:?}"
    );
}
