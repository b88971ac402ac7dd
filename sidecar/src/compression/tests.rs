//! Compression as a client meets it, through the layer on the inbound
//! stage (`ProxyRequest<Snapshot>`; the outbound stage reads the route's
//! policy the same way), with every encoding read back by an independent
//! decoder (flate2, brotli, zstd).

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tower::{Service, ServiceExt};
use weft_proto::config::v1 as pb;
use weft_rules::compression::Encoding;

use super::body::compressed;
use super::metrics::{OUTBOUND, Skip};
use super::negotiate::choose;
use super::{CompressionLayer, CompressionPolicy, compile};
use crate::body::{ProxyBody, ProxyBodyKind};
use crate::error::ProxyError;
use crate::model::ProxyResponse;
use crate::nack::Errors;
use crate::table::RoutingTable;
use crate::table::inbound::InboundPolicy;
use crate::table::request::{ProxyRequest, Snapshot, for_tests};

fn compiled(p: &pb::CompressionPolicy) -> Result<CompressionPolicy, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let policy = compile(p, "compression", &mut errs);
    errs.into_result(())
        .map(|()| policy.expect("a policy without errors"))
}

/// A JSON document of about 20 KB: compressible, like an API's answer.
fn json_body() -> Bytes {
    let items: Vec<String> = (0..400)
        .map(|i| format!(r#"{{"id":{i},"name":"user {i}","active":true}}"#))
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(bytes).unwrap(),
        other => panic!("no decoder for {other}"),
    }
    out
}

/// What the app answers: the status, headers and body of the test.
#[derive(Clone)]
struct App {
    status: StatusCode,
    headers: Vec<(&'static str, &'static str)>,
    body: Bytes,
}

impl App {
    fn json() -> Self {
        Self {
            status: StatusCode::OK,
            headers: vec![("content-type", "application/json")],
            body: json_body(),
        }
    }

    fn with(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        self
    }
}

impl Service<ProxyRequest<Snapshot>> for App {
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = std::future::Ready<Result<ProxyResponse, ProxyError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ProxyRequest<Snapshot>) -> Self::Future {
        let mut response = Response::new(ProxyBody::full(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert("content-length", HeaderValue::from(self.body.len()));
        for (name, value) in &self.headers {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        std::future::ready(Ok(response))
    }
}

/// Sends a `method` request with `accept` (Accept-Encoding, if any)
/// through the layer to `app` under `policy`.
async fn send(
    policy: Option<&pb::CompressionPolicy>,
    method: Method,
    accept: Option<&str>,
    app: App,
) -> ProxyResponse {
    let table = RoutingTable {
        inbound: Arc::new(InboundPolicy {
            compression: policy.map(|p| Arc::new(compiled(p).unwrap())),
            ..InboundPolicy::default()
        }),
        ..RoutingTable::default()
    };
    let mut http = Request::builder().method(method).uri("/users");
    if let Some(accept) = accept {
        http = http.header("accept-encoding", accept);
    }
    let http = http.body(for_tests::empty_http().into_body()).unwrap();
    let mut service = tower::Layer::layer(&CompressionLayer::inbound(), app);
    service
        .ready()
        .await
        .unwrap()
        .call(for_tests::snapshot(Arc::new(table), http))
        .await
        .unwrap()
}

fn header<'r>(response: &'r ProxyResponse, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn body_of(response: ProxyResponse) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn defaults() -> pb::CompressionPolicy {
    pb::CompressionPolicy::default()
}

#[test]
fn the_encoding_is_the_highest_q_value_with_ties_to_the_policys_order() {
    use Encoding::{Br, Gzip, Zstd};
    let all = [Zstd, Br, Gzip];
    let table: &[(&str, &[Encoding], Option<Encoding>)] = &[
        ("gzip", &all, Some(Gzip)),
        ("gzip, deflate, br, zstd", &all, Some(Zstd)),
        ("gzip, br", &all, Some(Br)),
        ("gzip, br", &[Gzip, Br], Some(Gzip)),
        ("gzip;q=0.5, br;q=0.9", &all, Some(Br)),
        ("gzip;q=1.0, br;q=0.9", &all, Some(Gzip)),
        ("GZIP;Q=0.3", &all, Some(Gzip)),
        ("x-gzip", &all, Some(Gzip)),
        // q=0 refuses; `*` covers what is not named.
        ("gzip;q=0, br;q=0, zstd;q=0", &all, None),
        ("*", &all, Some(Zstd)),
        ("*;q=0.5, zstd;q=0", &all, Some(Br)),
        ("br;q=0.2, *;q=0.5", &all, Some(Zstd)),
        ("*;q=0", &all, None),
        // A client that weighs identity above every coding gets identity.
        ("gzip;q=0.5, identity", &all, None),
        ("gzip, identity;q=0.5", &all, Some(Gzip)),
        ("identity", &all, None),
        ("", &all, None),
        ("deflate", &all, None),
        ("gzip", &[Br], None),
        // A malformed weight is ignored, not guessed.
        ("gzip;q=2, br;q=0.1234, zstd;q=x", &all, None),
    ];
    for (accept, preference, want) in table {
        let mut headers = http::HeaderMap::new();
        headers.insert("accept-encoding", HeaderValue::from_str(accept).unwrap());
        assert_eq!(
            choose(&headers, preference),
            *want,
            "{accept:?} {preference:?}"
        );
    }
    assert_eq!(
        choose(&http::HeaderMap::new(), &all),
        None,
        "no Accept-Encoding"
    );
}

#[tokio::test]
async fn each_encoding_round_trips_through_a_real_decoder() {
    for encoding in ["gzip", "br", "zstd"] {
        let response = send(Some(&defaults()), Method::GET, Some(encoding), App::json()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-encoding"), Some(encoding));
        assert_eq!(header(&response, "content-length"), None, "{encoding}");
        assert_eq!(header(&response, "vary"), Some("Accept-Encoding"));
        let sent = body_of(response).await;
        assert!(
            sent.len() < json_body().len() / 4,
            "{encoding}: {} bytes",
            sent.len()
        );
        assert_eq!(decode(encoding, &sent), json_body(), "{encoding}");
    }
}

#[tokio::test]
async fn the_policys_levels_are_used() {
    let fastest = pb::CompressionPolicy {
        brotli_quality: Some(0),
        ..defaults()
    };
    let smallest = pb::CompressionPolicy {
        brotli_quality: Some(11),
        ..defaults()
    };
    let fast = body_of(send(Some(&fastest), Method::GET, Some("br"), App::json()).await).await;
    let small = body_of(send(Some(&smallest), Method::GET, Some("br"), App::json()).await).await;
    assert!(
        small.len() < fast.len(),
        "{} !< {}",
        small.len(),
        fast.len()
    );
    assert_eq!(decode("br", &small), json_body());
}

#[tokio::test]
async fn responses_that_do_not_qualify_are_sent_as_they_are() {
    let cases: Vec<(&str, Method, App, Skip)> = vec![
        ("HEAD", Method::HEAD, App::json(), Skip::Status),
        (
            "204",
            Method::GET,
            App {
                status: StatusCode::NO_CONTENT,
                ..App::json()
            },
            Skip::Status,
        ),
        (
            "304",
            Method::GET,
            App {
                status: StatusCode::NOT_MODIFIED,
                ..App::json()
            },
            Skip::Status,
        ),
        (
            "a range",
            Method::GET,
            App {
                status: StatusCode::PARTIAL_CONTENT,
                ..App::json()
            },
            Skip::Status,
        ),
        (
            "already encoded",
            Method::GET,
            App::json().with("content-encoding", "gzip"),
            Skip::Encoded,
        ),
        (
            "no-transform",
            Method::GET,
            App::json().with("cache-control", "public, no-transform"),
            Skip::NoTransform,
        ),
        (
            "an image",
            Method::GET,
            App::json().with("content-type", "image/png"),
            Skip::ContentType,
        ),
        (
            "no content type",
            Method::GET,
            App {
                headers: Vec::new(),
                ..App::json()
            },
            Skip::ContentType,
        ),
        (
            "small",
            Method::GET,
            App {
                body: Bytes::from_static(b"{\"ok\":true}"),
                ..App::json()
            },
            Skip::TooSmall,
        ),
    ];
    for (case, method, app, reason) in cases {
        let before = super::metrics::INBOUND.skipped_total(reason);
        let original = app.body.clone();
        let response = send(Some(&defaults()), method, Some("gzip, br, zstd"), app).await;
        let encoding = header(&response, "content-encoding");
        assert!(
            encoding.is_none() || encoding == Some("gzip") && reason == Skip::Encoded,
            "{case}: {encoding:?}"
        );
        assert_eq!(
            header(&response, "content-length"),
            Some(original.len().to_string().as_str()),
            "{case}"
        );
        assert_eq!(header(&response, "vary"), None, "{case}");
        assert_eq!(body_of(response).await, original, "{case}");
        assert!(
            super::metrics::INBOUND.skipped_total(reason) > before,
            "{case}: not counted as {}",
            reason.label()
        );
    }
}

#[tokio::test]
async fn a_client_accepting_no_encoding_gets_the_plain_answer_with_vary() {
    for accept in [None, Some("identity"), Some("deflate")] {
        let response = send(Some(&defaults()), Method::GET, accept, App::json()).await;
        assert_eq!(header(&response, "content-encoding"), None, "{accept:?}");
        assert_eq!(
            header(&response, "vary"),
            Some("Accept-Encoding"),
            "{accept:?}"
        );
        assert_eq!(body_of(response).await, json_body());
    }
}

#[tokio::test]
async fn a_route_without_a_policy_is_untouched() {
    let response = send(None, Method::GET, Some("gzip"), App::json()).await;
    assert_eq!(header(&response, "content-encoding"), None);
    assert_eq!(header(&response, "vary"), None);
    assert_eq!(body_of(response).await, json_body());
}

#[tokio::test]
async fn content_types_are_matched_without_parameters_and_by_whole_type() {
    let text = pb::CompressionPolicy {
        content_types: vec!["text/*".into()],
        ..defaults()
    };
    let html = App::json().with("content-type", "Text/HTML; charset=utf-8");
    let response = send(Some(&text), Method::GET, Some("gzip"), html).await;
    assert_eq!(header(&response, "content-encoding"), Some("gzip"));
    let json = send(Some(&text), Method::GET, Some("gzip"), App::json()).await;
    assert_eq!(
        header(&json, "content-encoding"),
        None,
        "json is not text/*"
    );
}

#[tokio::test]
async fn a_strong_etag_is_weakened_and_vary_is_merged() {
    let app = App::json().with("etag", "\"v1\"").with("vary", "Origin");
    let response = send(Some(&defaults()), Method::GET, Some("br"), app).await;
    assert_eq!(header(&response, "etag"), Some("W/\"v1\""));
    assert_eq!(header(&response, "vary"), Some("Origin, Accept-Encoding"));

    // A weak ETag stays; a Vary that already names it (or `*`) stays.
    let app = App::json()
        .with("etag", "W/\"v1\"")
        .with("vary", "accept-encoding");
    let response = send(Some(&defaults()), Method::GET, Some("br"), app).await;
    assert_eq!(header(&response, "etag"), Some("W/\"v1\""));
    assert_eq!(header(&response, "vary"), Some("accept-encoding"));
    let app = App::json().with("vary", "*");
    let response = send(Some(&defaults()), Method::GET, Some("br"), app).await;
    assert_eq!(header(&response, "vary"), Some("*"));
}

/// A decoder fed as bytes arrive, for the streaming test: what it has
/// decoded so far.
enum Streaming {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Streaming {
    fn new(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Gzip => Self::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Encoding::Br => Self::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            Encoding::Zstd => Self::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
        }
    }

    fn feed(&mut self, data: &[u8]) -> &[u8] {
        match self {
            Self::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Self::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Self::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }
}

#[tokio::test]
async fn a_body_whose_chunks_arrive_slowly_is_compressed_as_it_streams() {
    for encoding in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream =
            futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |data| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(data))
            });
        let upstream: ProxyBody =
            ProxyBodyKind::Transformed(StreamBody::new(stream).boxed_unsync()).into();
        let mut body = compressed(upstream, encoding, 6, &OUTBOUND);
        let first = "event: the first line of a long answer\n".repeat(8);
        tx.send(Bytes::from(first.clone())).await.unwrap();
        // The upstream has not ended: the first chunk still reaches the
        // client, whole, as soon as the encoder has it.
        let mut sent = Vec::new();
        let mut decoder = Streaming::new(encoding);
        let mut decoded = 0;
        while decoded < first.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("{encoding:?}: the first chunk was held back"))
                .expect("a frame")
                .unwrap();
            let data = frame.into_data().unwrap();
            sent.extend_from_slice(&data);
            let so_far = decoder.feed(&data);
            assert!(first.as_bytes().starts_with(so_far), "{encoding:?}");
            decoded = so_far.len();
        }
        tx.send(Bytes::from_static(b"the end\n")).await.unwrap();
        drop(tx);
        while let Some(frame) = body.frame().await {
            sent.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(
            decode(encoding.as_str(), &sent),
            format!("{first}the end\n").as_bytes(),
            "{encoding:?}"
        );
    }
}

#[tokio::test]
async fn compressed_responses_and_their_bytes_are_counted() {
    let before = super::metrics::INBOUND.compressed_total(Encoding::Zstd);
    let response = send(Some(&defaults()), Method::GET, Some("zstd"), App::json()).await;
    body_of(response).await;
    assert!(super::metrics::INBOUND.compressed_total(Encoding::Zstd) > before);
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Hook));
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "weft_compression_responses_total{direction=\"inbound\",encoding=\"zstd\"}",
        "weft_compression_skipped_total{direction=\"inbound\",reason=\"too-small\"}",
        "weft_compression_bytes_total{direction=\"inbound\",stage=\"in\"}",
        "weft_compression_bytes_total{direction=\"inbound\",stage=\"out\"}",
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
}

#[derive(Debug)]
struct Hook;

impl prometheus_client::collector::Collector for Hook {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let mut encoder = encoder;
        super::metrics::encode(&mut encoder)
    }
}

#[test]
fn a_policy_is_refused_at_each_wrong_field_and_defaults_fill_the_rest() {
    use pb::compression_policy::Encoding as Wire;
    let policy = compiled(&defaults()).unwrap();
    assert_eq!(policy.encodings, Encoding::defaults());
    assert_eq!(policy.min_length, 1024);
    assert_eq!(
        (
            policy.level(Encoding::Gzip),
            policy.level(Encoding::Br),
            policy.level(Encoding::Zstd)
        ),
        (6, 4, 3)
    );
    assert!(policy.compresses(&HeaderValue::from_static("image/svg+xml")));
    assert!(!policy.decompress_requests);

    let bad = pb::CompressionPolicy {
        encodings: vec![
            Wire::Gzip as i32,
            Wire::Unspecified as i32,
            Wire::Gzip as i32,
        ],
        min_length: Some(2 << 30),
        content_types: vec!["text/html; charset=utf-8".into()],
        gzip_level: Some(0),
        brotli_quality: Some(12),
        zstd_level: Some(20),
        decompress_requests: false,
    };
    let errors = compiled(&bad).unwrap_err();
    let fields: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "compression.encodings[1]",
            "compression.encodings[2]",
            "compression.min_length",
            "compression.content_types[0]",
            "compression.gzip_level",
            "compression.brotli_quality",
            "compression.zstd_level",
        ]
    );
}

/// An app that reads the request body whole and answers what it read:
/// its headers' Content-Encoding and Content-Length, and the body or the
/// error that ended it.
#[derive(Clone)]
struct Reader;

type Read = (Option<String>, Option<String>, Result<Bytes, String>);

impl Service<ProxyRequest<Snapshot>> for Reader {
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = crate::model::BoxFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ProxyRequest<Snapshot>) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = req.http.into_parts();
            let text = |name| {
                parts
                    .headers
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            let read: Read = (
                text("content-encoding"),
                text("content-length"),
                body.collect()
                    .await
                    .map(|b| b.to_bytes())
                    .map_err(|e| e.to_string()),
            );
            let mut response = Response::new(ProxyBody::empty());
            response.extensions_mut().insert(Arc::new(read));
            Ok(response)
        })
    }
}

async fn upload(decompress: bool, coding: &str, body: Vec<u8>) -> Read {
    let policy = pb::CompressionPolicy {
        decompress_requests: decompress,
        ..defaults()
    };
    let table = RoutingTable {
        inbound: Arc::new(InboundPolicy {
            compression: Some(Arc::new(compiled(&policy).unwrap())),
            ..InboundPolicy::default()
        }),
        ..RoutingTable::default()
    };
    let http = Request::builder()
        .method(Method::POST)
        .uri("/users")
        .header("content-encoding", coding)
        .header("content-length", body.len())
        .body(crate::body::RequestBody::Buffered(
            crate::body::BufferedBody {
                data: Some(Bytes::from(body)),
                trailers: None,
            },
        ))
        .unwrap();
    let mut service = tower::Layer::layer(&CompressionLayer::inbound(), Reader);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(for_tests::snapshot(Arc::new(table), http))
        .await
        .unwrap();
    let read = response.extensions().get::<Arc<Read>>().unwrap();
    (**read).clone()
}

fn encode(encoding: &str, plain: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(plain).unwrap();
            encoder.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &plain[..], &mut out, &Default::default()).unwrap();
            out
        }
        "zstd" => zstd::stream::encode_all(plain, 3).unwrap(),
        other => panic!("no encoder for {other}"),
    }
}

#[tokio::test]
async fn a_compressed_request_body_reaches_the_app_decoded() {
    for encoding in ["gzip", "br", "zstd"] {
        let (coding, length, body) = upload(true, encoding, encode(encoding, &json_body())).await;
        assert_eq!((coding, length), (None, None), "{encoding}");
        assert_eq!(body.unwrap(), json_body(), "{encoding}");
    }
    // Not asked to: the app gets what the client sent.
    let sent = encode("gzip", &json_body());
    let (coding, _, body) = upload(false, "gzip", sent.clone()).await;
    assert_eq!(coding.as_deref(), Some("gzip"));
    assert_eq!(body.unwrap(), sent);
    // A coding the proxy does not speak goes on as sent.
    let (coding, _, body) = upload(true, "deflate", b"raw".to_vec()).await;
    assert_eq!(coding.as_deref(), Some("deflate"));
    assert_eq!(body.unwrap(), &b"raw"[..]);
}

#[tokio::test]
async fn a_malformed_compressed_request_body_fails_at_its_first_frame() {
    for encoding in ["gzip", "br", "zstd"] {
        let (_, _, body) = upload(true, encoding, b"this is not compressed at all".to_vec()).await;
        let error = body.unwrap_err();
        assert!(
            error.contains(&format!("not valid {encoding}")),
            "{encoding}: {error}"
        );
    }
}
