//! The compressed response body: the upstream's data frames read through
//! an async-compression encoder as they arrive, and sent on as each
//! encoded chunk is ready. The encoder flushes whenever its input waits
//! (async-compression's bufread encoders do, at a pending read), so a
//! slow body's first bytes reach the client before its end.
//!
//! Trailers do not survive: a compressed body is a stream of data only
//! (the default content types are not gRPC's, which needs its trailers).
//!
//! A compressed request body is decoded the same way, through the decoder
//! of its coding. A malformed one fails when the decoder meets it: at the
//! first frame (a bad gzip or zstd header, brotli garbage), before the
//! upstream client has written the request's head, so the app sees
//! nothing and the caller gets a 400; later in the body, the request to
//! the app is cut off (never completed), and the caller gets the 400 (an
//! HTTP/1.1 app) or the error of a reset stream (HTTP/2).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder,
};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};
use weft_rules::compression::Encoding;

use super::metrics::Counts;
use crate::body::{ProxyBody, ProxyBodyKind, RequestBody, TransformedBody};

/// How much encoded output one chunk carries at most.
const CHUNK: usize = 16 * 1024;

/// `body`, encoded with `encoding` at `level`; the bytes in and out counted
/// in `counts`.
pub(super) fn compressed(
    body: ProxyBody,
    encoding: Encoding,
    level: i32,
    counts: &'static Counts,
) -> ProxyBody {
    let input = body.into_data_stream().map(move |chunk| {
        if let Ok(data) = &chunk {
            counts
                .bytes_in
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        chunk.map_err(io::Error::other)
    });
    let reader = StreamReader::new(input);
    let level = Level::Precise(level);
    let encoder: Pin<Box<dyn AsyncRead + Send>> = match encoding {
        Encoding::Gzip => Box::pin(GzipEncoder::with_quality(reader, level)),
        Encoding::Br => Box::pin(BrotliEncoder::with_quality(reader, level)),
        Encoding::Zstd => Box::pin(ZstdEncoder::with_quality(reader, level)),
    };
    let output = ReaderStream::with_capacity(encoder, CHUNK)
        .inspect_ok(move |data: &Bytes| {
            counts
                .bytes_out
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        })
        .map_ok(Frame::data)
        .map_err(Into::into);
    ProxyBodyKind::Transformed(StreamBody::new(output).boxed_unsync()).into()
}

/// The caller's `body`, sent with `Content-Encoding: encoding`, decoded;
/// `malformed` is set when the decoder refuses it.
pub(super) fn decoded(
    body: RequestBody,
    encoding: Encoding,
    malformed: Arc<AtomicBool>,
) -> RequestBody {
    let input = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(io::Error::other));
    let reader = StreamReader::new(input);
    let decoder: Pin<Box<dyn AsyncRead + Send>> = match encoding {
        Encoding::Gzip => Box::pin(GzipDecoder::new(reader)),
        Encoding::Br => Box::pin(BrotliDecoder::new(reader)),
        Encoding::Zstd => Box::pin(ZstdDecoder::new(reader)),
    };
    let output = ReaderStream::with_capacity(decoder, CHUNK)
        .map_ok(Frame::data)
        .map_err(move |error| {
            malformed.store(true, Ordering::Relaxed);
            format!(
                "the request body is not valid {}: {error}",
                encoding.as_str()
            )
            .into()
        });
    RequestBody::Transformed(TransformedBody::new(StreamBody::new(output).boxed_unsync()))
}
