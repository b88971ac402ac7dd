//! The discovery stream's HTTP/2 side, written by hand for the responses.
//!
//! Why not tonic's generated server: its encoder writes each message into
//! one buffer per stream and keeps that buffer, at the capacity of the
//! largest message the stream ever sent, for as long as the stream lives.
//! A sidecar's first response can carry every endpoint of the mesh (635 KB
//! at 1,000 services), so every connected sidecar held about 1 MB of agent
//! memory while idle. Here a response is written as a list of chunks made
//! for it alone: small fields copied into chunks of at most
//! [`CHUNK`] bytes, and each resource of [`SHARED_MIN`] bytes or more sent
//! as the snapshot's own bytes (shared by every stream, not copied). The
//! chunks go when HTTP/2 flow control lets them and nothing outlives them.
//!
//! Requests are decoded by tonic's `Streaming` as before.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body_util::StreamBody;
use hyper::body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use tokio::sync::mpsc;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use weft_proto::Any;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};

use super::AdsServer;

/// The gRPC path of the one method.
const STREAM_RESOURCES: &str = "/weft.discovery.v1.AggregatedDiscoveryService/StreamResources";

/// Largest request accepted (a sidecar naming thousands of clusters stays
/// far below; tonic's own default is 4 MiB).
const MAX_REQUEST: usize = 4 << 20;

/// Copied bytes are gathered into chunks of about this size: a DATA frame's
/// default maximum, so few frames and little memory per chunk.
const CHUNK: usize = 16 * 1024;

/// Resources at least this large are sent as the snapshot's bytes instead
/// of copied (a chunk boundary costs a 9-byte frame header).
const SHARED_MIN: usize = 2 * 1024;

/// `AggregatedDiscoveryService` for tonic's router.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "weft.discovery.v1.AggregatedDiscoveryService";
}

impl tower::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != STREAM_RESOURCES {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|address| address.to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let mut codec = tonic_prost::ProstCodec::<DiscoveryResponse, DiscoveryRequest>::default();
        let requests = Streaming::new_request(
            codec.decoder(),
            request.into_body(),
            None,
            Some(MAX_REQUEST),
        );
        let responses = self.server.open_stream(peer, requests);
        Box::pin(async move { Ok(streaming_response(responses)) })
    }
}

/// `grpc-status: 12` for any other method.
fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from_static("12"));
    response
}

/// The response: headers now, then each response's chunks, then the
/// trailers (`grpc-status: 0`) when the stream's task ends.
fn streaming_response(
    responses: mpsc::Receiver<DiscoveryResponse>,
) -> http::Response<tonic::body::Body> {
    struct State {
        responses: mpsc::Receiver<DiscoveryResponse>,
        chunks: VecDeque<Bytes>,
        ended: bool,
    }
    let state = State {
        responses,
        chunks: VecDeque::new(),
        ended: false,
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.chunks.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(chunk)), state));
            }
            if state.ended {
                return None;
            }
            match state.responses.recv().await {
                // One response at a time: the next is encoded when this
                // one's chunks are all taken by HTTP/2.
                Some(response) => state.chunks = encode(&response),
                None => {
                    state.ended = true;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    return Some((Ok(Frame::trailers(trailers)), state));
                }
            }
        }
    });
    let mut response = http::Response::new(tonic::body::Body::new(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    // Sidecars that list these features get them (proto/README.md).
    headers.insert(
        weft_proto::client_features::AGENT_FEATURES_HEADER,
        http::HeaderValue::from_static(weft_proto::client_features::INCREMENTAL),
    );
    response
}

/// Chunks that build one gRPC message (the 5-byte prefix, then the
/// response as prost would encode it: fields in tag order, empty ones left
/// out). Large resources are the snapshot's bytes, not copies.
pub(crate) fn encode(response: &DiscoveryResponse) -> VecDeque<Bytes> {
    let mut chunks = VecDeque::new();
    let mut head = BytesMut::with_capacity(CHUNK.min(response.encoded_len() + 5));
    head.put_u8(0); // not compressed
    head.put_u32(u32::try_from(response.encoded_len()).unwrap_or(u32::MAX));
    put_string(1, &response.version_info, &mut head);
    for any in &response.resources {
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(any.encoded_len() as u64, &mut head);
        put_any(any, &mut head, &mut chunks);
        if head.len() >= CHUNK {
            chunks.push_back(head.split().freeze());
        }
    }
    put_string(4, &response.type_url, &mut head);
    put_string(5, &response.nonce, &mut head);
    for name in &response.removed_resources {
        // Repeated: every element, even an empty one.
        encode_key(6, WireType::LengthDelimited, &mut head);
        encode_varint(name.len() as u64, &mut head);
        head.put_slice(name.as_bytes());
    }
    if !head.is_empty() {
        chunks.push_back(head.freeze());
    }
    chunks
}

fn put_string(tag: u32, value: &str, head: &mut BytesMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, head);
        encode_varint(value.len() as u64, head);
        head.put_slice(value.as_bytes());
    }
}

fn put_any(any: &Any, head: &mut BytesMut, chunks: &mut VecDeque<Bytes>) {
    put_string(1, &any.type_url, head);
    if any.value.is_empty() {
        return;
    }
    encode_key(2, WireType::LengthDelimited, head);
    encode_varint(any.value.len() as u64, head);
    if any.value.len() >= SHARED_MIN {
        chunks.push_back(head.split().freeze());
        chunks.push_back(any.value.clone());
    } else {
        head.put_slice(&any.value);
    }
}

/// Length of the gRPC message `encode` writes (prefix included).
#[cfg(test)]
fn framed_len(response: &DiscoveryResponse) -> usize {
    5 + response.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(sizes: &[usize], removed: &[&str]) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "0123456789abcdef".into(),
            resources: sizes
                .iter()
                .enumerate()
                .map(|(i, size)| Any {
                    type_url: if i == 1 {
                        String::new()
                    } else {
                        "type.googleapis.com/x".into()
                    },
                    value: Bytes::from(vec![i as u8; *size]),
                })
                .collect(),
            type_url: "type.googleapis.com/x".into(),
            nonce: "1f".into(),
            removed_resources: removed.iter().map(|name| name.to_string()).collect(),
        }
    }

    #[test]
    fn the_chunks_are_the_grpc_message_prost_would_write() {
        for original in [
            response(&[], &[]),
            response(&[10, 0, 3000, 20], &["gone", ""]),
            response(&vec![700; 200], &["*"]),
        ] {
            let chunks = encode(&original);
            let bytes: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.to_vec()).collect();
            assert_eq!(bytes.len(), framed_len(&original));
            assert_eq!(bytes[0], 0);
            assert_eq!(
                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
                original.encoded_len()
            );
            assert_eq!(&bytes[5..], original.encode_to_vec().as_slice());
            assert!(
                chunks
                    .iter()
                    .all(|chunk| chunk.len() <= CHUNK + SHARED_MIN + 64),
                "no chunk grows with the response"
            );
        }
    }

    #[test]
    fn large_resources_are_sent_as_the_snapshots_bytes() {
        let original = response(&[10, 4096], &[]);
        let chunks = encode(&original);
        let shared = &original.resources[1].value;
        assert!(
            chunks
                .iter()
                .any(|chunk| chunk.as_ptr() == shared.as_ptr() && chunk.len() == shared.len()),
            "the 4 KB resource is not copied"
        );
    }
}
