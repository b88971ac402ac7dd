//! The HTTP/1 codec against a reference, on generated input (proptest, a
//! bounded number of cases so CI time stays fixed):
//! - a request head and body the codec writes are read back by hyper's
//!   server exactly as they were meant: method, target, every header and
//!   the body bytes;
//! - a response the codec accepts reads as hyper's client reads it (status,
//!   headers, body), however the bytes are split across reads;
//! - no bytes make the response reader panic, and a head it accepts is one
//!   httparse accepts with the same status.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // A failure prints its minimal input; nothing is written into the
        // source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every exchange with hyper runs under this deadline: a codec bug that
/// leaves hyper waiting for bytes fails the case instead of hanging CI.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

const TCHAR_PUNCT: &[u8] = b"!#$%&'*+-.^_`|~";

/// A header name: a token, lower-case (as `HeaderMap` stores it), never one
/// that frames the message or the connection (those are the codec's own).
fn field_name() -> impl Strategy<Value = HeaderName> {
    let tchar = prop_oneof![
        prop::char::range('a', 'z'),
        prop::char::range('0', '9'),
        prop::sample::select(TCHAR_PUNCT).prop_map(char::from),
    ];
    prop::collection::vec(tchar, 1..16)
        .prop_map(|chars| format!("x-{}", chars.into_iter().collect::<String>()))
        .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).expect("a token"))
}

/// A field value: visible ASCII with inner spaces and tabs, no leading or
/// trailing whitespace (which RFC 9110 §5.5 says is not part of the value).
fn field_value() -> impl Strategy<Value = HeaderValue> {
    let vchar = prop_oneof![
        8 => prop::char::range('!', '~'),
        1 => Just(' '),
        1 => Just('\t'),
    ];
    prop::collection::vec(vchar, 0..40).prop_map(|chars| {
        let text: String = chars.into_iter().collect();
        HeaderValue::from_str(text.trim_matches([' ', '\t'])).expect("visible ASCII")
    })
}

fn fields() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((field_name(), field_value()), 0..8).prop_map(|pairs| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name, value);
        }
        headers
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::OPTIONS),
        "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token")),
    ]
}

/// An origin-form target: `/` segments of pchars, maybe a query.
fn target() -> impl Strategy<Value = String> {
    (
        "(/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,12}){1,4}",
        "(\\?[A-Za-z0-9=&/?%-]{0,20})?",
    )
        .prop_map(|(path, query)| format!("{path}{query}"))
}

/// A body: none, a known length, or chunks of unknown total length.
#[derive(Clone, Debug)]
enum BodyShape {
    Empty,
    Length(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

impl BodyShape {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Empty => Vec::new(),
            Self::Length(body) => body.clone(),
            Self::Chunked(chunks) => chunks.concat(),
        }
    }
}

fn body_shape() -> impl Strategy<Value = BodyShape> {
    let bytes = prop::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        Just(BodyShape::Empty),
        bytes.clone().prop_map(BodyShape::Length),
        prop::collection::vec(bytes, 0..6).prop_map(BodyShape::Chunked),
    ]
}

/// The bytes the codec writes for a request.
fn encode_request(
    method: &Method,
    target: &str,
    headers: &mut HeaderMap,
    body: &BodyShape,
) -> Vec<u8> {
    let exact_len = match body {
        BodyShape::Empty => Some(0),
        BodyShape::Length(body) => Some(body.len() as u64),
        BodyShape::Chunked(_) => None,
    };
    let framing = request_framing(headers, exact_len);
    let mut wire = Vec::new();
    encode_request_head(method, target, headers, framing, &mut wire);
    match body {
        BodyShape::Empty => {}
        BodyShape::Length(body) => wire.extend_from_slice(body),
        BodyShape::Chunked(chunks) => {
            for chunk in chunks {
                encode_chunk(chunk, &mut wire);
            }
            encode_last_chunk(None, &mut wire);
        }
    }
    wire
}

/// What hyper's server read from `wire`: method, target, headers, body.
async fn read_by_hyper_server(wire: Vec<u8>) -> (Method, String, HeaderMap, Vec<u8>) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = std::sync::Mutex::new(Some(seen_tx));
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let seen_tx = seen_tx.lock().expect("one request").take();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("a body").to_bytes().to_vec();
            let target = parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_default();
            if let Some(seen_tx) = seen_tx {
                let _ = seen_tx.send((parts.method, target, parts.headers, body));
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let serve =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service);
    let exchange = async move {
        client.write_all(&wire).await.expect("writing the request");
        let seen = seen_rx.await.expect("hyper's server read a request");
        drop(client);
        seen
    };
    let (_, seen) = tokio::time::timeout(EXCHANGE_TIMEOUT, async { tokio::join!(serve, exchange) })
        .await
        .expect("hyper's server read the request in time");
    seen
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn a_request_the_codec_writes_is_read_back_identically_by_hyper(
        method in method(),
        target in target(),
        headers in fields(),
        body in body_shape(),
    ) {
        let mut sent = headers;
        let wire = encode_request(&method, &target, &mut sent, &body);
        let (read_method, read_target, mut read_headers, read_body) =
            runtime().block_on(read_by_hyper_server(wire));
        prop_assert_eq!(read_method, method);
        prop_assert_eq!(read_target, target);
        if matches!(body, BodyShape::Chunked(_)) {
            let coding = read_headers.remove(header::TRANSFER_ENCODING);
            prop_assert_eq!(coding, Some(HeaderValue::from_static("chunked")));
        }
        prop_assert_eq!(read_headers, sent);
        prop_assert_eq!(read_body, body.bytes());
    }
}

/// A response an upstream may send, as bytes, with what it means.
#[derive(Clone, Debug)]
struct ResponseCase {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    wire: Vec<u8>,
}

/// How the generated response frames its body on the wire.
#[derive(Clone, Debug)]
enum ResponseFraming {
    Length,
    /// Chunk sizes (the body is cut at them), upper-case hex or not, and
    /// whether chunk extensions and trailers are added.
    Chunked {
        cuts: Vec<usize>,
        upper_hex: bool,
        extensions: bool,
        trailers: bool,
    },
    UntilClose,
}

fn response_framing() -> impl Strategy<Value = ResponseFraming> {
    prop_oneof![
        Just(ResponseFraming::Length),
        (
            prop::collection::vec(1usize..64, 0..8),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(cuts, upper_hex, extensions, trailers)| {
                ResponseFraming::Chunked {
                    cuts,
                    upper_hex,
                    extensions,
                    trailers,
                }
            }),
        Just(ResponseFraming::UntilClose),
    ]
}

fn response_case() -> impl Strategy<Value = ResponseCase> {
    (
        prop_oneof![200u16..=203, 205u16..=303, 305u16..=599],
        fields(),
        prop::collection::vec(any::<u8>(), 0..300),
        response_framing(),
    )
        .prop_map(|(code, headers, body, framing)| {
            let status = StatusCode::from_u16(code).expect("a status code");
            let mut wire = format!("HTTP/1.1 {code} Whatever\r\n").into_bytes();
            encode_fields(&headers, &mut wire);
            match &framing {
                ResponseFraming::Length => {
                    wire.extend_from_slice(
                        format!("content-length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    wire.extend_from_slice(&body);
                }
                ResponseFraming::Chunked {
                    cuts,
                    upper_hex,
                    extensions,
                    trailers,
                } => {
                    wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                    let mut rest = body.as_slice();
                    let mut cuts = cuts.iter().copied().cycle();
                    while !rest.is_empty() {
                        let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                        let size = if *upper_hex {
                            format!("{n:X}")
                        } else {
                            format!("{n:x}")
                        };
                        wire.extend_from_slice(size.as_bytes());
                        if *extensions {
                            wire.extend_from_slice(b";name=value");
                        }
                        wire.extend_from_slice(b"\r\n");
                        wire.extend_from_slice(&rest[..n]);
                        wire.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    wire.extend_from_slice(b"0\r\n");
                    if *trailers {
                        wire.extend_from_slice(b"x-checksum: 1234\r\n");
                    }
                    wire.extend_from_slice(b"\r\n");
                }
                ResponseFraming::UntilClose => {
                    wire.extend_from_slice(b"connection: close\r\n\r\n");
                    wire.extend_from_slice(&body);
                }
            }
            ResponseCase {
                status,
                headers,
                body,
                wire,
            }
        })
}

/// What the codec reads from `wire` handed over in the pieces `cuts` makes:
/// status, headers and body; the body ends at its framing's end or, for a
/// read-until-close body, where the bytes end.
fn read_by_codec(
    wire: &[u8],
    cuts: &[usize],
) -> Result<(StatusCode, HeaderMap, Vec<u8>), ProtocolError> {
    let mut pieces = Vec::new();
    let mut rest = wire;
    for &cut in cuts {
        let n = cut.min(rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces.push(rest);
    let mut pieces = pieces.into_iter();
    let mut buf = BytesMut::new();
    let mut head = loop {
        if let Some(head) = parse_response_head(&mut buf, &Method::GET)? {
            break head;
        }
        match pieces.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None => return Err(ProtocolError::InvalidHead("incomplete head".into())),
        }
    };
    let mut body = Vec::new();
    loop {
        match head.framing.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => break,
            Decoded::NeedMore => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None if matches!(head.framing, BodyFraming::UntilClose) => break,
                None => return Err(ProtocolError::InvalidChunk),
            },
        }
    }
    Ok((head.status, head.headers, body))
}

/// What hyper's client reads from an upstream that writes `wire` and closes.
async fn read_by_hyper_client(wire: Vec<u8>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let upstream = async move {
        // Read the request head before answering, as a server would.
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server.read(&mut buf).await.expect("reading the request");
            assert!(n > 0, "the client closed before its request ended");
            request.extend_from_slice(&buf[..n]);
        }
        server.write_all(&wire).await.expect("writing the response");
        server.shutdown().await.expect("closing");
        // Keep the read side open until the client is done.
        let _ = server.read(&mut buf).await;
    };
    let client = async move {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("a handshake over a pipe");
        tokio::spawn(connection);
        let request = Request::get("/")
            .header("host", "upstream")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let response = sender
            .send_request(request)
            .await
            .expect("hyper read a response");
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .expect("hyper read the body")
            .to_bytes()
            .to_vec();
        (parts.status, parts.headers, body)
    };
    let (_, read) =
        tokio::time::timeout(EXCHANGE_TIMEOUT, async { tokio::join!(upstream, client) })
            .await
            .expect("hyper's client read the response in time");
    read
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn a_response_the_codec_accepts_reads_as_hyper_reads_it_however_it_is_split(
        case in response_case(),
        cuts in prop::collection::vec(0usize..200, 0..12),
    ) {
        let read = read_by_codec(&case.wire, &cuts);
        let (status, mut headers, body) = match read {
            Ok(read) => read,
            Err(error) => return Err(TestCaseError::fail(format!("the codec refused a valid response: {error}"))),
        };
        let (hyper_status, mut hyper_headers, hyper_body) = runtime().block_on(read_by_hyper_client(case.wire.clone()));
        prop_assert_eq!(status, case.status);
        prop_assert_eq!(status, hyper_status);
        prop_assert_eq!(&body, &case.body);
        prop_assert_eq!(&body, &hyper_body);
        for framing_header in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION] {
            prop_assert_eq!(headers.remove(&framing_header), hyper_headers.remove(&framing_header));
        }
        prop_assert_eq!(&headers, &case.headers);
        prop_assert_eq!(&headers, &hyper_headers);
    }
}

/// A valid response damaged by a few edits: bytes flipped, inserted or
/// removed. Most such inputs are near-misses a parser must judge exactly.
fn damaged_response() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0u8..3);
    (response_case(), prop::collection::vec(edit, 1..4)).prop_map(|(case, edits)| {
        let mut wire = case.wire;
        for (at, byte, kind) in edits {
            if wire.is_empty() {
                break;
            }
            let i = at.index(wire.len());
            match kind {
                0 => wire[i] = byte,
                1 => wire.insert(i, byte),
                _ => {
                    wire.remove(i);
                }
            }
        }
        wire
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn no_bytes_make_the_response_reader_panic_and_a_head_it_accepts_httparse_accepts(
        wire in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            damaged_response(),
        ],
        cuts in prop::collection::vec(0usize..200, 0..6),
    ) {
        if let Ok((status, _, _)) = read_by_codec(&wire, &cuts) {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut reference = httparse::Response::new(&mut storage);
            let parsed = reference.parse(&wire);
            prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "httparse: {:?}", parsed);
            // The codec skips interim 1xx heads; httparse reads the first.
            if !reference.code.is_some_and(|code| (100..200).contains(&code) && code != 101) {
                prop_assert_eq!(reference.code, Some(status.as_u16()));
            }
        }
    }
}
