//! HTTP conformance on every listener (RFC 9112, RFC 9113): each request a
//! server must refuse is sent as raw bytes (HTTP/1) or hand-made frames
//! (HTTP/2) to the outbound listener (the app's, plaintext) and to the
//! inbound one (a peer's, with a real mTLS handshake and a CA-issued
//! leaf). Each case asserts what the caller gets and that the app saw
//! nothing. `docs/CONFORMANCE.md` lists every rule with its case here.

use anyhow::{Context as _, ensure};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::AsyncWriteExt;
use weft_e2e::harness::http::HttpClient;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::mtls_users_and_client;
use weft_e2e::harness::mutate::mutate;
use weft_e2e::harness::raw::{self, RawTarget};
use weft_e2e::harness::{app::App, h2_frames as h2};
use weft_e2e::run;

/// What a listener must do with an HTTP/1 request.
#[derive(Clone, Copy, Debug)]
enum H1 {
    /// Answered with this status by the sidecar (`x-weft-error` names the
    /// refusal) or by hyper's parser (no `x-weft-error`); the connection
    /// closes; the app sees nothing.
    Refused {
        status: u16,
        weft_error: Option<&'static str>,
    },
    /// Served: 200, the app sees it once (the control case).
    Served,
    /// Content-Length beside Transfer-Encoding: served by the chunked
    /// framing alone, the Content-Length dropped and the connection closed
    /// after the answer (RFC 9112 §6.3 lets a server do that instead of
    /// refusing; hyper does it before any layer sees the request). Whatever
    /// was smuggled behind or inside the body never reaches the app as a
    /// request of its own.
    ChunkedOnly,
    /// A body that breaks its framing mid-way: the head was already on its
    /// way (the sidecar streams bodies), so the app may see a request whose
    /// body fails, but never a complete one; the caller gets 400, and
    /// nothing after it on the connection is read.
    BodyAborted,
}

const PARSER_400: H1 = H1::Refused {
    status: 400,
    weft_error: None,
};
const MALFORMED: H1 = H1::Refused {
    status: 400,
    weft_error: Some("malformed-request"),
};
const UNKNOWN_CODING: H1 = H1::Refused {
    status: 501,
    weft_error: Some("unsupported"),
};

/// Every HTTP/1 case: name, bytes, expectation. `Host: users` routes on
/// the outbound listener; the inbound one serves its app whatever the Host.
const H1_CASES: &[(&str, &str, H1)] = &[
    (
        "a well-formed request (control)",
        "GET / HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n",
        H1::Served,
    ),
    (
        "two Host lines (RFC 9112 §3.2)",
        "GET / HTTP/1.1\r\nHost: users\r\nHost: users\r\n\r\n",
        MALFORMED,
    ),
    (
        "two different Host lines",
        "GET / HTTP/1.1\r\nHost: users\r\nHost: admin\r\n\r\n",
        MALFORMED,
    ),
    (
        "an Upgrade (WebSocket) request with two Host lines",
        "GET / HTTP/1.1\r\nHost: users\r\nHost: admin\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        MALFORMED,
    ),
    (
        "a CONNECT whose authority differs from Host",
        "CONNECT users:80 HTTP/1.1\r\nHost: admin:80\r\n\r\n",
        MALFORMED,
    ),
    (
        "no Host in HTTP/1.1",
        "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        MALFORMED,
    ),
    (
        "a Host with a space",
        "GET / HTTP/1.1\r\nHost: us ers\r\n\r\n",
        MALFORMED,
    ),
    (
        "a Host with userinfo",
        "GET / HTTP/1.1\r\nHost: evil@users\r\n\r\n",
        MALFORMED,
    ),
    (
        "a Host with a path",
        "GET / HTTP/1.1\r\nHost: users/admin\r\n\r\n",
        MALFORMED,
    ),
    (
        "a Host with a broken percent-encoding",
        "GET / HTTP/1.1\r\nHost: us%zzers\r\n\r\n",
        MALFORMED,
    ),
    (
        "a Host with a percent-encoded octet (hyper's URI parser refuses it too)",
        "GET / HTTP/1.1\r\nHost: us%65rs\r\n\r\n",
        MALFORMED,
    ),
    (
        "a Host with a bad port",
        "GET / HTTP/1.1\r\nHost: users:http\r\n\r\n",
        MALFORMED,
    ),
    (
        "an empty Host with an absolute-form target",
        "GET http://users/ HTTP/1.1\r\nHost:\r\n\r\n",
        MALFORMED,
    ),
    (
        "an absolute-form target whose authority differs from Host (RFC 9112 §3.2.2)",
        "GET http://admin/ HTTP/1.1\r\nHost: users\r\n\r\n",
        MALFORMED,
    ),
    (
        "obs-fold (RFC 9112 §5.2)",
        "GET / HTTP/1.1\r\nHost: users\r\nX-A: one\r\n two\r\n\r\n",
        PARSER_400,
    ),
    (
        "whitespace between field name and colon (RFC 9112 §5.1)",
        "GET / HTTP/1.1\r\nHost: users\r\nX-A : one\r\n\r\n",
        PARSER_400,
    ),
    (
        "an invalid character in a field name",
        "GET / HTTP/1.1\r\nHost: users\r\nX(A): one\r\n\r\n",
        PARSER_400,
    ),
    (
        "NUL in a field value (RFC 9110 §5.5)",
        "GET / HTTP/1.1\r\nHost: users\r\nX-A: a\0b\r\n\r\n",
        PARSER_400,
    ),
    (
        "a bare CR in a field value",
        "GET / HTTP/1.1\r\nHost: users\r\nX-A: a\rb\r\n\r\n",
        PARSER_400,
    ),
    (
        "a bare LF splitting a field line",
        "GET / HTTP/1.1\r\nHost: users\r\nX-A: a\nb\r\n\r\n",
        PARSER_400,
    ),
    (
        "two spaces in the request line (RFC 9112 §3)",
        "GET  / HTTP/1.1\r\nHost: users\r\n\r\n",
        PARSER_400,
    ),
    (
        "an unknown HTTP version",
        "GET / HTTP/1.2\r\nHost: users\r\n\r\n",
        PARSER_400,
    ),
    ("an HTTP/0.9 request line", "GET /\r\n\r\n", PARSER_400),
    (
        "a Content-Length that is not a number (RFC 9112 §6.3)",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: abc\r\n\r\n",
        PARSER_400,
    ),
    (
        "a negative Content-Length",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: -1\r\n\r\n",
        PARSER_400,
    ),
    (
        "a Content-Length list of different values",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 1, 2\r\n\r\nab",
        PARSER_400,
    ),
    (
        "two Content-Length lines with different values",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        PARSER_400,
    ),
    (
        "a Transfer-Encoding whose final coding is not chunked (RFC 9112 §6.3)",
        "POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        PARSER_400,
    ),
    (
        "Transfer-Encoding: xchunked",
        "POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        PARSER_400,
    ),
    (
        "an unknown transfer coding before chunked (RFC 9112 §6.1: 501)",
        "POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        UNKNOWN_CODING,
    ),
    (
        "two Transfer-Encoding lines: chunked applied twice",
        "POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        MALFORMED,
    ),
    (
        "two Transfer-Encoding lines, the last not chunked",
        "POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        PARSER_400,
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        "POST / HTTP/1.0\r\nHost: users\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        PARSER_400,
    ),
    (
        "an invalid chunk size",
        "POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n",
        H1::BodyAborted,
    ),
    (
        "CL.TE smuggling: Content-Length and chunked, a request behind the last chunk",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n",
        H1::ChunkedOnly,
    ),
    (
        "TE.CL smuggling: a request inside the chunk a Content-Length reader would skip",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n27\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n\r\n0\r\n\r\n",
        H1::ChunkedOnly,
    ),
    (
        "TE obfuscated with a leading space, with Content-Length",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 4\r\nTransfer-Encoding:  chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n",
        H1::ChunkedOnly,
    ),
    (
        "TE obfuscated as xchunked, with Content-Length",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n",
        PARSER_400,
    ),
    (
        "TE as chunked, identity with Content-Length",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n",
        PARSER_400,
    ),
    (
        "a Transfer-Encoding name with whitespace before the colon",
        "POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        PARSER_400,
    ),
];

/// Sends every HTTP/1 case to `target` and checks each: the answer, the
/// closed connection, and what the app saw.
async fn check_http1_cases(target: &RawTarget, app: &App, http: &HttpClient) -> anyhow::Result<()> {
    let cases = H1_CASES
        .iter()
        .map(|(name, bytes, expect)| (*name, (bytes.as_bytes(), *expect)));
    every_case(target, cases, async |(bytes, expect)| {
        check_http1_case(target, app, http, bytes, expect).await
    })
    .await
}

/// Runs `check` on each case against `target`; fails naming every case
/// that failed, not just the first.
async fn every_case<C>(
    target: &RawTarget,
    cases: impl IntoIterator<Item = (&'static str, C)>,
    check: impl AsyncFn(C) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for (name, case) in cases {
        if let Err(e) = check(case).await {
            failures.push(format!("{name}, on the {} listener: {e:#}", target.name));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

async fn check_http1_case(
    target: &RawTarget,
    app: &App,
    http: &HttpClient,
    bytes: &[u8],
    expect: H1,
) -> anyhow::Result<()> {
    let before = app.requests_seen(http).await?;
    let exchange = target.exchange(bytes).await?;
    let responses = exchange.responses().context("reading the answer")?;
    let seen = app.requests_seen(http).await? - before;
    let first = responses
        .first()
        .with_context(|| format!("no answer ({exchange:?})"))?;
    let closed = exchange.closed;
    match expect {
        H1::Refused { status, weft_error } => {
            ensure!(
                first.status == status && first.header("x-weft-error") == weft_error,
                "expected {status} with x-weft-error {weft_error:?}, got {} {:?}: {}",
                first.status,
                first.header("x-weft-error"),
                String::from_utf8_lossy(&first.body)
            );
            ensure!(seen == 0, "the app saw {seen} request(s)");
            ensure!(
                closed && responses.len() == 1,
                "the connection stayed open or answered again: {responses:?}"
            );
        }
        H1::Served | H1::ChunkedOnly => {
            ensure!(
                first.status == 200 && seen == 1 && responses.len() == 1 && closed,
                "the app saw {seen} request(s), the caller got {responses:?} (closed: {closed})"
            );
            ensure!(
                matches!(expect, H1::Served) || first.header("connection") == Some("close"),
                "the connection was not closed after the answer: {first:?}"
            );
        }
        H1::BodyAborted => {
            ensure!(
                first.status == 400 && seen <= 1 && responses.len() == 1 && closed,
                "the app saw {seen} request(s), the caller got {responses:?} (closed: {closed})"
            );
        }
    }
    Ok(())
}

/// The mesh of these tests: `users` (meshed) called by `client`, with
/// mTLS between them or (no CA) in plaintext.
struct Listeners {
    ca: Option<MeshCa>,
    mesh: weft_e2e::Mesh,
    users: weft_e2e::MeshedInstance,
    client: weft_e2e::MeshedInstance,
}

impl Listeners {
    async fn start(ctx: &weft_e2e::TestCtx, mtls: bool) -> anyhow::Result<Self> {
        if mtls {
            let (ca, mesh, users, client) = mtls_users_and_client(ctx, "24h").await?;
            return Ok(Self {
                ca: Some(ca),
                mesh,
                users,
                client,
            });
        }
        let mesh = weft_e2e::Mesh::start(ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        Ok(Self {
            ca: None,
            mesh,
            users,
            client,
        })
    }

    /// The client's outbound listener, and users' inbound listener: with
    /// mTLS reached with a leaf the mesh CA issued to `client`, offering
    /// `alpn`; else in plaintext.
    fn both(&self, alpn: &[u8]) -> anyhow::Result<[RawTarget; 2]> {
        let outbound = RawTarget::plain("outbound", self.client.sidecar.outbound);
        let inbound = match &self.ca {
            Some(ca) => RawTarget::mtls(
                "inbound mTLS",
                self.users.sidecar.inbound,
                ca.connector("client", "users", &[alpn])?,
            ),
            None => RawTarget::plain("inbound plaintext", self.users.sidecar.inbound),
        };
        Ok([outbound, inbound])
    }
}

use h2::Outcome;

/// h2's refusal of a malformed request: RST_STREAM(PROTOCOL_ERROR).
const RESET: Outcome = Outcome::Reset(h2::PROTOCOL_ERROR);
/// h2's refusal of a field it cannot even decode into a header map (an
/// uppercase or unknown name, a value with CR, LF or NUL): the whole
/// connection, GOAWAY(PROTOCOL_ERROR), a stricter answer than RFC 9113
/// §8.1.1's stream error.
const GOAWAY: Outcome = Outcome::GoAway(h2::PROTOCOL_ERROR);
/// The conformance layer's: 400 with `x-weft-error: malformed-request`.
const H2_MALFORMED: Outcome = Outcome::Response(400);

type Fields = &'static [(&'static [u8], &'static [u8])];

const GET: (&[u8], &[u8]) = (b":method", b"GET");
const POST: (&[u8], &[u8]) = (b":method", b"POST");
const HTTP: (&[u8], &[u8]) = (b":scheme", b"http");
const ROOT: (&[u8], &[u8]) = (b":path", b"/");
const USERS: (&[u8], &[u8]) = (b":authority", b"users");

/// Every HTTP/2 request case: name, fields of the HEADERS frame (in
/// order, as HPACK literals), a DATA frame if any (the HEADERS frame then
/// leaves the stream open), and the server's answer about stream 1; unless
/// it is the control's 200, the app sees nothing.
const H2_CASES: &[(&str, Fields, Option<&[u8]>, Outcome)] = &[
    (
        "a well-formed request (control)",
        &[GET, HTTP, ROOT, USERS],
        None,
        Outcome::Response(200),
    ),
    (
        "an uppercase field name (RFC 9113 §8.2.1)",
        &[GET, HTTP, ROOT, USERS, (b"X-Upper", b"a")],
        None,
        GOAWAY,
    ),
    (
        "connection (RFC 9113 §8.2.2)",
        &[GET, HTTP, ROOT, USERS, (b"connection", b"keep-alive")],
        None,
        RESET,
    ),
    (
        "keep-alive",
        &[GET, HTTP, ROOT, USERS, (b"keep-alive", b"timeout=5")],
        None,
        RESET,
    ),
    (
        "proxy-connection",
        &[GET, HTTP, ROOT, USERS, (b"proxy-connection", b"keep-alive")],
        None,
        RESET,
    ),
    (
        "transfer-encoding",
        &[GET, HTTP, ROOT, USERS, (b"transfer-encoding", b"chunked")],
        None,
        RESET,
    ),
    (
        "upgrade",
        &[GET, HTTP, ROOT, USERS, (b"upgrade", b"websocket")],
        None,
        RESET,
    ),
    (
        "te other than trailers",
        &[GET, HTTP, ROOT, USERS, (b"te", b"gzip")],
        None,
        RESET,
    ),
    (
        "a pseudo-header after a regular field (RFC 9113 §8.3)",
        &[GET, HTTP, (b"x-a", b"1"), ROOT, USERS],
        None,
        RESET,
    ),
    (
        "an unknown pseudo-header",
        &[GET, HTTP, ROOT, USERS, (b":foo", b"bar")],
        None,
        GOAWAY,
    ),
    (
        "a duplicated pseudo-header",
        &[GET, HTTP, ROOT, ROOT, USERS],
        None,
        RESET,
    ),
    (
        "a response pseudo-header in a request",
        &[GET, HTTP, ROOT, USERS, (b":status", b"200")],
        None,
        RESET,
    ),
    ("no :method", &[HTTP, ROOT, USERS], None, RESET),
    ("no :scheme", &[GET, ROOT, USERS], None, RESET),
    ("no :path", &[GET, HTTP, USERS], None, RESET),
    (
        "an empty :path",
        &[GET, HTTP, (b":path", b""), USERS],
        None,
        RESET,
    ),
    (
        "a content-length above the DATA sent (RFC 9113 §8.1.1)",
        &[POST, HTTP, ROOT, USERS, (b"content-length", b"10")],
        Some(b"abc"),
        RESET,
    ),
    (
        "a content-length below the DATA sent",
        &[POST, HTTP, ROOT, USERS, (b"content-length", b"1")],
        Some(b"abc"),
        RESET,
    ),
    (
        "CR/LF in a field value (RFC 9113 §8.2.1)",
        &[GET, HTTP, ROOT, USERS, (b"x-a", b"a\r\nx-b: b")],
        None,
        GOAWAY,
    ),
    (
        "NUL in a field value",
        &[GET, HTTP, ROOT, USERS, (b"x-a", b"a\0b")],
        None,
        GOAWAY,
    ),
    (
        "a field value with leading whitespace",
        &[GET, HTTP, ROOT, USERS, (b"x-a", b" a")],
        None,
        H2_MALFORMED,
    ),
    (
        "a field value with trailing whitespace",
        &[GET, HTTP, ROOT, USERS, (b"x-a", b"a\t")],
        None,
        H2_MALFORMED,
    ),
    (
        ":authority disagreeing with host (RFC 9113 §8.3.1)",
        &[GET, HTTP, ROOT, USERS, (b"host", b"admin")],
        None,
        H2_MALFORMED,
    ),
    (
        "a CONNECT (an opaque tunnel) whose host disagrees with :authority",
        &[
            (b":method", b"CONNECT"),
            (b":authority", b"users:80"),
            (b"host", b"admin"),
        ],
        None,
        H2_MALFORMED,
    ),
    (
        "two host fields",
        &[
            GET,
            HTTP,
            ROOT,
            USERS,
            (b"host", b"users"),
            (b"host", b"users"),
        ],
        None,
        H2_MALFORMED,
    ),
];

/// An extended CONNECT (RFC 8441, a WebSocket a peer sidecar carries)
/// whose host disagrees with :authority.
const EXTENDED_CONNECT: Fields = &[
    (b":method", b"CONNECT"),
    (b":protocol", b"websocket"),
    HTTP,
    ROOT,
    USERS,
    (b"host", b"admin"),
];

/// The cases whose answer depends on the listener: only the inbound one
/// takes an extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL), where the
/// conformance layer judges it before the upgrade layer rebuilds it; on
/// the outbound one h2 refuses `:protocol` itself.
const INBOUND_H2_CASES: &[(&str, Fields, Option<&[u8]>, Outcome)] = &[(
    "an extended CONNECT whose host disagrees with :authority",
    EXTENDED_CONNECT,
    None,
    H2_MALFORMED,
)];
const OUTBOUND_H2_CASES: &[(&str, Fields, Option<&[u8]>, Outcome)] = &[(
    "an extended CONNECT, which the outbound listener does not take",
    EXTENDED_CONNECT,
    None,
    RESET,
)];

/// Sends every HTTP/2 request case on its own connection to `target` and
/// checks the server's answer about stream 1 and what the app saw.
async fn check_http2_cases(target: &RawTarget, app: &App, http: &HttpClient) -> anyhow::Result<()> {
    let by_listener = if target.name.starts_with("inbound") {
        INBOUND_H2_CASES
    } else {
        OUTBOUND_H2_CASES
    };
    let cases = H2_CASES
        .iter()
        .chain(by_listener)
        .map(|(name, fields, body, expected)| (*name, (*fields, *body, *expected)));
    every_case(target, cases, async |(fields, body, expected)| {
        check_http2_case(target, app, http, fields, body, expected).await
    })
    .await
}

async fn check_http2_case(
    target: &RawTarget,
    app: &App,
    http: &HttpClient,
    fields: Fields,
    body: Option<&[u8]>,
    expected: Outcome,
) -> anyhow::Result<()> {
    let before = app.requests_seen(http).await?;
    let mut io = target.connect().await?;
    let mut bytes = h2::client_start();
    let block = h2::block(fields);
    match body {
        None => bytes.extend(h2::headers(1, h2::END_HEADERS | h2::END_STREAM, &block)),
        Some(body) => {
            bytes.extend(h2::headers(1, h2::END_HEADERS, &block));
            bytes.extend(h2::data(1, h2::END_STREAM, body));
        }
    }
    io.write_all(&bytes).await?;
    let mut frames = Vec::new();
    let got = h2::outcome(&mut io, 1, raw::QUIET, &mut frames).await?;
    let seen = app.requests_seen(http).await? - before;
    ensure!(
        got == expected,
        "expected {expected:?}, got {got:?} (frames: {frames:?})"
    );
    let served = expected == Outcome::Response(200);
    ensure!(seen == u64::from(served), "the app saw {seen} request(s)");
    Ok(())
}

/// A list of cases, run against both listeners.
#[derive(Clone, Copy, Debug)]
enum Suite {
    Http1,
    Http2,
    H2spec,
}

impl Suite {
    fn alpn(self) -> &'static [u8] {
        match self {
            Self::Http1 => b"http/1.1",
            Self::Http2 | Self::H2spec => b"h2",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Http1 => H1_CASES.len(),
            Self::Http2 => H2_CASES.len() + INBOUND_H2_CASES.len(),
            Self::H2spec => h2spec_cases().len(),
        }
    }

    /// A rule the suite breaks on both listeners, to find in the metrics.
    fn counted_rule(self) -> Option<&'static str> {
        match self {
            Self::Http1 => Some("two-hosts"),
            Self::Http2 => Some("host-not-authority"),
            Self::H2spec => None,
        }
    }

    async fn check(self, target: &RawTarget, app: &App, http: &HttpClient) -> anyhow::Result<()> {
        match self {
            Self::Http1 => check_http1_cases(target, app, http).await,
            Self::Http2 => check_http2_cases(target, app, http).await,
            Self::H2spec => check_h2spec_cases(target).await,
        }
    }
}

fn on_both_listeners(suite: Suite) {
    on_both_listeners_of(suite, true);
}

/// Runs `suite` on the outbound and the inbound listener of an mTLS mesh,
/// or of a plaintext one.
fn on_both_listeners_of(suite: Suite, mtls: bool) {
    run(|ctx| async move {
        let l = Listeners::start(&ctx, mtls).await?;
        let start = std::time::Instant::now();
        for target in &l.both(suite.alpn())? {
            suite.check(target, &l.users.app, &l.mesh.http).await?;
        }
        // What the conformance layer refused shows in each sidecar's
        // metrics, by listener and rule.
        if let Some(rule) = suite.counted_rule() {
            for (sidecar, direction) in [
                (&l.client.sidecar, "outbound"),
                (&l.users.sidecar, "inbound"),
            ] {
                let refused = sidecar.metrics().await?.value(
                    "weft_malformed_requests_total",
                    &[("direction", direction), ("rule", rule)],
                );
                ensure!(
                    refused >= 1.0,
                    "no {rule} refusal counted on the {direction} listener"
                );
            }
        }
        ctx.measured(
            &format!(
                "{} {suite:?} conformance cases on 2 listeners ({})",
                suite.len(),
                if mtls { "mTLS mesh" } else { "plaintext mesh" }
            ),
            start.elapsed(),
        );
        Ok(())
    });
}

#[test]
fn every_http1_request_a_server_must_refuse_is_refused_on_both_listeners_and_never_reaches_the_app()
{
    on_both_listeners(Suite::Http1);
}

#[test]
fn every_http2_request_a_server_must_treat_as_malformed_is_refused_on_both_listeners_and_never_reaches_the_app()
 {
    on_both_listeners(Suite::Http2);
}

#[test]
fn in_a_plaintext_mesh_the_inbound_listener_refuses_the_same_http1_requests() {
    on_both_listeners_of(Suite::Http1, false);
}

#[test]
fn in_a_plaintext_mesh_the_inbound_listener_refuses_the_same_http2_requests() {
    on_both_listeners_of(Suite::Http2, false);
}

#[test]
fn the_h2spec_cases_pass_on_both_listeners() {
    on_both_listeners(Suite::H2spec);
}

/// What h2spec expects of the server after a case's frames.
#[derive(Clone, Copy, Debug)]
enum Spec {
    /// A connection error: GOAWAY with this code.
    ConnectionError(u32),
    /// An error for which the RFC names this code, where h2 (the crate)
    /// sends GOAWAY(PROTOCOL_ERROR), as it does for any frame it cannot
    /// load: the connection is refused all the same, only the code a
    /// client logs differs (docs/CONFORMANCE.md lists these).
    ProtocolErrorFor(u32),
    /// A stream error on stream 1 (RST_STREAM with this code); a GOAWAY
    /// with the same code is accepted too, as h2spec does.
    StreamError(u32),
    /// The frames are ignored: the connection still answers a PING, and
    /// the client's SETTINGS were acknowledged.
    Alive,
    /// Not an HTTP/2 connection preface: no HTTP/2 frame comes back.
    NotHttp2,
}

/// A valid request HEADERS frame for `stream` with these flags.
fn request(stream: u32, flags: u8) -> Vec<u8> {
    h2::headers(stream, flags, &h2::block(&h2::get_fields("users")))
}

/// Concatenated frames.
fn frames(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A request's header block split over HEADERS and CONTINUATION with
/// `between` sent in the middle, where RFC 9113 §6.10 allows no frame.
fn split_header_block(between: Vec<u8>) -> Vec<u8> {
    let fields = h2::block(&h2::get_fields("users"));
    let (first, second) = fields.split_at(fields.len() / 2);
    frames(&[
        h2::headers(1, h2::END_STREAM, first),
        between,
        h2::continuation(1, h2::END_HEADERS, second),
    ])
}

/// Only the 9-byte header of a frame too large to be read: the server
/// refuses it on the header, and a payload it never reads would turn its
/// close into a reset that can discard its GOAWAY before the test reads it.
fn frame_head(mut frame: Vec<u8>) -> Vec<u8> {
    frame.truncate(9);
    frame
}

/// A frame with the reserved bit of its stream id set.
fn with_reserved_bit(mut frame: Vec<u8>) -> Vec<u8> {
    frame[5] |= 0x80;
    frame
}

/// h2spec's cases (its `generic`, `http2` and `hpack` sections, by
/// section of RFC 9113 / RFC 7541), each as the frames sent after the
/// preface and an empty SETTINGS, and what the server must do.
fn h2spec_cases() -> Vec<(&'static str, Vec<u8>, Spec)> {
    use Spec::*;
    use h2::*;
    let open = END_HEADERS; // HEADERS that leave stream 1 open
    let done = END_HEADERS | END_STREAM;
    let fields = block(&get_fields("users"));
    let (first_half, second_half) = fields.split_at(fields.len() / 2);
    vec![
        (
            "http2/3.5: a ping after the preface is answered",
            vec![],
            Alive,
        ),
        (
            "http2/3.5/1: an invalid connection preface",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
            NotHttp2,
        ),
        (
            "http2/4.1/1: an unknown frame type is ignored",
            frame(0x20, 0, 0, b"ignored"),
            Alive,
        ),
        (
            "http2/4.1/2: unknown flags are ignored",
            ping(0x10, [0; 8]),
            Alive,
        ),
        (
            "http2/4.1/3: the reserved bit is ignored",
            with_reserved_bit(ping(0, [1; 8])),
            Alive,
        ),
        (
            "http2/4.2/2: DATA above SETTINGS_MAX_FRAME_SIZE",
            frames(&[
                request(1, open),
                frame_head(data(1, END_STREAM, &[b'a'; 16385])),
            ]),
            ConnectionError(FRAME_SIZE_ERROR),
        ),
        (
            "http2/4.2/3: HEADERS above SETTINGS_MAX_FRAME_SIZE",
            frame_head(headers(1, done, &[0u8; 16385])),
            ConnectionError(FRAME_SIZE_ERROR),
        ),
        (
            "http2/4.3/1: an invalid header block fragment",
            headers(1, done, &[0x00, 0x01, 0x61]),
            ProtocolErrorFor(COMPRESSION_ERROR),
        ),
        (
            "http2/4.3/2: PRIORITY between HEADERS and CONTINUATION",
            split_header_block(priority(1, 0, 16)),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.1/1: DATA on an idle stream",
            data(1, END_STREAM, b"a"),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.1/2: RST_STREAM on an idle stream",
            rst_stream(1, 0x8),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.1/3: WINDOW_UPDATE on an idle stream",
            window_update(1, 100),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.1/4: CONTINUATION on an idle stream",
            continuation(1, END_HEADERS, &fields),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.1/5: DATA on a half-closed (remote) stream",
            frames(&[request(1, done), data(1, END_STREAM, b"a")]),
            ProtocolErrorFor(STREAM_CLOSED),
        ),
        (
            "http2/5.1.1/1: an even stream id from the client",
            request(2, done),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.1.1/2: a stream id lower than one already used",
            frames(&[request(5, done), request(3, done)]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.3.1/2: PRIORITY making a stream depend on itself",
            priority(1, 1, 16),
            StreamError(PROTOCOL_ERROR),
        ),
        (
            "http2/5.5/2: an unknown frame inside a header block",
            split_header_block(frame(0x20, 0, 1, b"x")),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.1/1: DATA on stream 0",
            data(0, END_STREAM, b"a"),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.1/3: DATA with a pad length beyond the payload",
            frames(&[
                request(1, open),
                frame(DATA, PADDED | END_STREAM, 1, &[9, b'a']),
            ]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.2/1: HEADERS on stream 0",
            request(0, done),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.2/2: HEADERS with a pad length beyond the payload",
            frame(HEADERS, done | PADDED, 1, &[200, 0x82]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.2/3: HEADERS on another stream inside a header block",
            frames(&[headers(1, END_STREAM, first_half), request(3, done)]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.3/1: PRIORITY on stream 0",
            priority(0, 1, 16),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.3/2: PRIORITY of 4 bytes",
            frame(PRIORITY, 0, 1, &[0, 0, 0, 3]),
            ProtocolErrorFor(FRAME_SIZE_ERROR),
        ),
        (
            "http2/6.4/1: RST_STREAM on stream 0",
            rst_stream(0, 0x8),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.4/3: RST_STREAM of 3 bytes",
            frames(&[request(1, open), frame(RST_STREAM, 0, 1, &[0, 0, 8])]),
            ProtocolErrorFor(FRAME_SIZE_ERROR),
        ),
        (
            "http2/6.5/1: SETTINGS ACK with a payload",
            frame(SETTINGS, ACK, 0, &[0, 4, 0, 0, 0, 1]),
            ProtocolErrorFor(FRAME_SIZE_ERROR),
        ),
        (
            "http2/6.5/2: SETTINGS on a stream",
            frame(SETTINGS, 0, 1, &[0, 4, 0, 0, 0, 1]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.5/3: SETTINGS of 3 bytes",
            frame(SETTINGS, 0, 0, &[0, 4, 0]),
            ProtocolErrorFor(FRAME_SIZE_ERROR),
        ),
        (
            "http2/6.5.2/1: SETTINGS_ENABLE_PUSH of 2",
            settings(&[(SETTINGS_ENABLE_PUSH, 2)]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.5.2/2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
            settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)]),
            ProtocolErrorFor(FLOW_CONTROL_ERROR),
        ),
        (
            "http2/6.5.2/3: SETTINGS_MAX_FRAME_SIZE below 16384",
            settings(&[(SETTINGS_MAX_FRAME_SIZE, 16383)]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.5.2/4: SETTINGS_MAX_FRAME_SIZE above 2^24-1",
            settings(&[(SETTINGS_MAX_FRAME_SIZE, 1 << 24)]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.5.2/5: an unknown setting is ignored",
            settings(&[(0xff, 1)]),
            Alive,
        ),
        (
            "http2/6.7/2: a PING ACK from the client is ignored",
            ping(ACK, [2; 8]),
            Alive,
        ),
        (
            "http2/6.7/3: PING on a stream",
            frame(PING, 0, 1, &[0; 8]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.7/4: PING of 7 bytes",
            frame(PING, 0, 0, &[0; 7]),
            ProtocolErrorFor(FRAME_SIZE_ERROR),
        ),
        (
            "http2/6.8/1: GOAWAY on a stream",
            frame(GOAWAY, 0, 1, &[0; 8]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.9/1: WINDOW_UPDATE of 0 on the connection",
            window_update(0, 0),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.9/2: WINDOW_UPDATE of 0 on a stream",
            frames(&[request(1, open), window_update(1, 0)]),
            StreamError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.9/3: WINDOW_UPDATE of 3 bytes",
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1]),
            ProtocolErrorFor(FRAME_SIZE_ERROR),
        ),
        (
            "http2/6.9.1/2: the connection window above 2^31-1",
            frames(&[window_update(0, 0x7fff_ffff), window_update(0, 0x7fff_ffff)]),
            ConnectionError(FLOW_CONTROL_ERROR),
        ),
        (
            "http2/6.9.1/3: a stream window above 2^31-1",
            frames(&[
                request(1, open),
                window_update(1, 0x7fff_ffff),
                window_update(1, 0x7fff_ffff),
            ]),
            StreamError(FLOW_CONTROL_ERROR),
        ),
        (
            "http2/6.10/1: CONTINUATION after END_HEADERS",
            frames(&[request(1, open), continuation(1, END_HEADERS, &fields)]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/6.10/2: CONTINUATION on another stream",
            frames(&[
                headers(1, END_STREAM, first_half),
                continuation(3, END_HEADERS, second_half),
            ]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "http2/8.1/1: trailers without END_STREAM",
            frames(&[
                request(1, open),
                headers(1, END_HEADERS, &block(&[(b"x-t", b"1")])),
            ]),
            StreamError(PROTOCOL_ERROR),
        ),
        (
            "http2/8.4: PUSH_PROMISE from a client",
            frames(&[
                request(1, open),
                frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
            ]),
            ConnectionError(PROTOCOL_ERROR),
        ),
        (
            "hpack/2.3.3: an index beyond the static and dynamic tables",
            headers(1, done, &[0xbe]),
            ProtocolErrorFor(COMPRESSION_ERROR),
        ),
        (
            "hpack/4.2: a table size update above SETTINGS_HEADER_TABLE_SIZE",
            headers(1, done, &[0x3f, 0xe2, 0x1f]),
            ProtocolErrorFor(COMPRESSION_ERROR),
        ),
        (
            "hpack/5.2/1: a Huffman string with EOS inside",
            headers(1, done, &[0x82, 0x84, 0x41, 0x84, 0xff, 0xff, 0xff, 0xff]),
            ProtocolErrorFor(COMPRESSION_ERROR),
        ),
        (
            "hpack/5.2/2: Huffman padding longer than 7 bits",
            headers(1, done, &[0x82, 0x84, 0x41, 0x82, 0xff, 0xff]),
            ProtocolErrorFor(COMPRESSION_ERROR),
        ),
        (
            "hpack/6.1: an indexed field of index 0",
            headers(1, done, &[0x80]),
            ProtocolErrorFor(COMPRESSION_ERROR),
        ),
    ]
}

async fn check_h2spec_cases(target: &RawTarget) -> anyhow::Result<()> {
    let cases = h2spec_cases()
        .into_iter()
        .map(|(name, bytes, spec)| (name, (name, bytes, spec)));
    every_case(target, cases, async |(name, bytes, spec)| {
        check_h2spec_case(target, name, &bytes, spec).await
    })
    .await
}

async fn check_h2spec_case(
    target: &RawTarget,
    name: &str,
    bytes: &[u8],
    spec: Spec,
) -> anyhow::Result<()> {
    let mut io = target.connect().await?;
    let mut wire = if name.starts_with("http2/3.5/") {
        Vec::new()
    } else {
        h2::client_start()
    };
    wire.extend_from_slice(bytes);
    let probe = *b"weftping";
    if matches!(spec, Spec::Alive) {
        wire.extend(h2::ping(0, probe));
    }
    // The server may close before it has read everything (a frame too
    // large): what it said before that is still there to read.
    let written = io.write_all(&wire).await;
    let mut frames = Vec::new();
    match spec {
        Spec::Alive => loop {
            written
                .as_ref()
                .map_err(|e| anyhow::anyhow!("writing: {e}"))?;
            let Some(frame) = tokio::time::timeout(raw::QUIET, h2::read_frame(&mut io))
                .await
                .context("no answer to a PING")??
            else {
                anyhow::bail!("the connection closed: {frames:?}");
            };
            ensure!(frame.kind != h2::GOAWAY, "GOAWAY: {frame:?}");
            frames.push(frame.clone());
            if frame.kind == h2::PING && frame.flags & h2::ACK != 0 && frame.payload == probe {
                let acked = frames
                    .iter()
                    .any(|f| f.kind == h2::SETTINGS && f.flags & h2::ACK != 0);
                ensure!(acked, "our SETTINGS were not acknowledged: {frames:?}");
                return Ok(());
            }
        },
        Spec::NotHttp2 => {
            let answer = raw::read_until_quiet(&mut io, raw::QUIET).await?;
            ensure!(
                answer.bytes.is_empty() || answer.bytes.starts_with(b"HTTP/1.1 "),
                "an answer that is neither HTTP/1 nor nothing: {answer:?}"
            );
            Ok(())
        }
        Spec::ConnectionError(_) | Spec::ProtocolErrorFor(_) => {
            let (code, rfc) = match spec {
                Spec::ProtocolErrorFor(rfc) => {
                    (h2::PROTOCOL_ERROR, format!(" (RFC 9113 names {rfc})"))
                }
                Spec::ConnectionError(code) => (code, String::new()),
                _ => unreachable!("matched above"),
            };
            let got = h2::outcome(&mut io, u32::MAX, raw::QUIET, &mut frames).await?;
            ensure!(
                got == Outcome::GoAway(code),
                "expected GOAWAY({code}){rfc}, got {got:?} (frames: {frames:?})"
            );
            Ok(())
        }
        Spec::StreamError(code) => {
            let got = h2::outcome(&mut io, 1, raw::QUIET, &mut frames).await?;
            ensure!(
                got == Outcome::Reset(code) || got == Outcome::GoAway(code),
                "expected RST_STREAM({code}) or GOAWAY({code}), got {got:?} (frames: {frames:?})"
            );
            Ok(())
        }
    }
}

/// How long the fuzz test mutates inputs on each listener and protocol:
/// 1.5 s in CI, `WEFT_FUZZ_MS` for a longer run.
fn fuzz_time() -> std::time::Duration {
    let ms = std::env::var("WEFT_FUZZ_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(1500);
    std::time::Duration::from_millis(ms)
}
/// How long a variant's answer may keep the test waiting.
const FUZZ_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// Tokens the mutator inserts whole into HTTP/1 variants.
const H1_DICTIONARY: &[&[u8]] = &[
    b"Host: admin\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b" chunked",
    b"0\r\n\r\n",
    b"\r\n",
    b"\r\n ",
    b"GET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n",
];

/// Variants in flight at once: each may wait [`FUZZ_QUIET`] for an
/// answer that never comes (a body left half sent).
const FUZZ_BATCH: usize = 16;

/// Sends mutated HTTP/1 cases for [`fuzz_time`], [`FUZZ_BATCH`] at a time:
/// once the sidecar has closed the connection, what it sent must read as
/// well-formed HTTP/1 responses, none a 500 `internal`. Returns how many
/// variants were sent.
async fn fuzz_http1(target: &RawTarget, rng: &mut StdRng) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + fuzz_time();
    let mut sent = 0;
    while std::time::Instant::now() < deadline {
        let variants: Vec<Vec<u8>> = (0..FUZZ_BATCH)
            .map(|_| {
                let (_, seed, _) = H1_CASES[rng.random_range(0..H1_CASES.len())];
                mutate(rng, seed.as_bytes(), H1_DICTIONARY)
            })
            .collect();
        let exchanges = futures_util::future::join_all(
            variants
                .iter()
                .map(|variant| target.exchange_within(variant, FUZZ_QUIET)),
        )
        .await;
        for (variant, exchange) in variants.iter().zip(exchanges) {
            let exchange = exchange?;
            sent += 1;
            let describe = || {
                format!(
                    "{:?} on the {} listener: {:?}",
                    String::from_utf8_lossy(variant),
                    target.name,
                    String::from_utf8_lossy(&exchange.bytes)
                )
            };
            // An answer cut short by the quiet wait may end mid-way.
            let responses = match exchange.responses() {
                Ok(responses) => responses,
                Err(_) if !exchange.closed => continue,
                Err(e) => anyhow::bail!("a malformed answer ({e}) to {}", describe()),
            };
            for response in responses {
                ensure!(
                    response.header("x-weft-error") != Some("internal"),
                    "an internal error for {}",
                    describe()
                );
            }
        }
    }
    Ok(sent)
}

/// Sends mutated HTTP/2 conversations (the preface, then a mutated case)
/// for [`fuzz_time`]: whatever comes back must read as frames. Returns
/// how many variants were sent.
async fn fuzz_http2(target: &RawTarget, rng: &mut StdRng) -> anyhow::Result<u64> {
    let mut corpus: Vec<Vec<u8>> = h2spec_cases()
        .into_iter()
        .map(|(_, bytes, _)| bytes)
        .collect();
    corpus.extend(H2_CASES.iter().map(|(_, fields, _, _)| {
        h2::headers(1, h2::END_HEADERS | h2::END_STREAM, &h2::block(fields))
    }));
    let dictionary: Vec<Vec<u8>> = vec![
        h2::settings(&[(h2::SETTINGS_INITIAL_WINDOW_SIZE, 0)]),
        h2::window_update(0, 1),
        h2::rst_stream(1, 0),
        h2::ping(0, [0; 8]),
        h2::data(1, 0, b"abc"),
        h2::continuation(1, h2::END_HEADERS, &[0x82]),
    ];
    let dictionary: Vec<&[u8]> = dictionary.iter().map(Vec::as_slice).collect();
    let deadline = std::time::Instant::now() + fuzz_time();
    let mut sent = 0;
    while std::time::Instant::now() < deadline {
        let variants: Vec<Vec<u8>> = (0..FUZZ_BATCH)
            .map(|_| {
                let seed = &corpus[rng.random_range(0..corpus.len())];
                let mut wire = h2::client_start();
                wire.extend(mutate(rng, seed, &dictionary));
                wire
            })
            .collect();
        for outcome in
            futures_util::future::join_all(variants.iter().map(|wire| h2_variant(target, wire)))
                .await
        {
            outcome?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// Sends one HTTP/2 variant and reads frames until the server closes or
/// goes quiet (a frame cut short by the close reads as the end).
async fn h2_variant(target: &RawTarget, wire: &[u8]) -> anyhow::Result<()> {
    let mut io = target.connect().await?;
    let _ = io.write_all(wire).await;
    while let Ok(frame) = tokio::time::timeout(FUZZ_QUIET, h2::read_frame(&mut io)).await {
        if frame?.is_none() {
            break;
        }
    }
    Ok(())
}

#[test]
fn mutated_smuggling_cases_and_h2_frames_crash_no_listener_and_get_well_formed_answers() {
    run(|ctx| async move {
        let mut l = Listeners::start(&ctx, true).await?;
        // WEFT_FUZZ_SEED replays a run; every run records its seed.
        let seed: u64 = std::env::var("WEFT_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        ctx.record("fuzz seed (WEFT_FUZZ_SEED)", &seed.to_string());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sent = 0;
        for target in &l.both(b"http/1.1")? {
            sent += fuzz_http1(target, &mut rng)
                .await
                .with_context(|| format!("seed {seed}"))?;
        }
        for target in &l.both(b"h2")? {
            sent += fuzz_http2(target, &mut rng)
                .await
                .with_context(|| format!("seed {seed}"))?;
        }
        ctx.record(
            "fuzz variants sent (HTTP/1 and HTTP/2 on 2 listeners)",
            &format!("{sent} in 4 x {:?}", fuzz_time()),
        );
        // Both sidecars still run and still serve a well-formed request.
        l.users.sidecar.check_running()?;
        l.client.sidecar.check_running()?;
        for target in &l.both(b"http/1.1")? {
            let control = target.exchange(H1_CASES[0].1.as_bytes()).await?;
            let status = control.responses()?.first().map(|r| r.status);
            ensure!(
                status == Some(200),
                "after fuzzing, the {} listener answered {status:?}",
                target.name
            );
        }
        for sidecar in [&l.users.sidecar, &l.client.sidecar] {
            ensure!(
                !sidecar.log()?.contains("panicked"),
                "a sidecar panicked (seed {seed})"
            );
        }
        Ok(())
    });
}
