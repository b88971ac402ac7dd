//! The request body of the data path, and the byte meter that both
//! directions' bodies carry.
//!
//! The request body sits at the bottom, below `upstream`, which sends it;
//! the response body (`crate::body`) names `upstream`'s body types, so it
//! sits above. [`Metered`] and its [`SizeMeter`] live here, with the
//! request body, because both bodies wrap in them.
//!
//! A [`SizeMeter`] rides beside a body (set by the metrics layer), adds
//! each data frame's length to a plain local count, and tells its
//! [`BodySizeSink`] the total once, when the body is dropped (ended, or
//! abandoned part-way): one sink call per body, no buffering, no atomic
//! per frame.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Which body a byte count is about (the access log's record counts
/// both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Received from the caller.
    Request,
    /// Sent back to the caller.
    Response,
}

/// Where a body's size goes once it is known: the destination's stats,
/// the request's access-log record (both declared above this module, so
/// they implement this).
pub trait BodySizeSink: Send + Sync {
    fn record(&self, side: Side, bytes: u64);
}

/// A body's byte count so far and the sink it goes to when the body is
/// dropped. Three words: every request and response carries one through
/// the whole stack.
pub struct SizeMeter {
    /// The bytes counted so far, with the side in the top bit ([`RESPONSE`]):
    /// no body nears 2^63 bytes, and a field of its own would make the
    /// meter a word longer.
    bytes: u64,
    sink: Arc<dyn BodySizeSink>,
}

/// The top bit of a meter's byte count: set for a response's meter.
const RESPONSE: u64 = 1 << 63;

impl SizeMeter {
    /// A meter for `side` that tells `sink` (converted without a new
    /// allocation: an `Arc` of a sink becomes a `dyn` one in place).
    pub fn new(side: Side, sink: impl Into<Arc<dyn BodySizeSink>>) -> Self {
        let bytes = match side {
            Side::Request => 0,
            Side::Response => RESPONSE,
        };
        Self {
            bytes,
            sink: sink.into(),
        }
    }

    #[inline]
    pub fn count(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
        }
    }
}

impl Drop for SizeMeter {
    fn drop(&mut self) {
        let side = if self.bytes & RESPONSE == 0 {
            Side::Request
        } else {
            Side::Response
        };
        self.sink.record(side, self.bytes & !RESPONSE);
    }
}

/// A body and, once the metrics layer has seen it, the meter that counts
/// the bytes passing through it.
pub struct Metered<B> {
    pub kind: B,
    meter: Option<SizeMeter>,
}

impl<B> Metered<B> {
    /// Counts the bytes passing from here on with `meter`.
    pub fn set_meter(&mut self, meter: SizeMeter) {
        self.meter = Some(meter);
    }
}

impl<B> From<B> for Metered<B> {
    fn from(kind: B) -> Self {
        Self { kind, meter: None }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.kind).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(meter)) = (&polled, &mut this.meter) {
            meter.count(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

/// The one request body type of the data path: the caller's body streamed
/// through as it arrives (every request, unless its destination retries),
/// or a body the `retry` layer buffered so that each try can send it again.
/// An enum, like [`ProxyBody`](crate::body::ProxyBody), so the streaming
/// path costs one branch per frame and no allocation.
pub enum RequestBody {
    /// The caller's body, streamed through untouched.
    Streaming(ReceivedBody),
    /// A whole body in memory, sent as it is (a retriable request's; each
    /// try gets its own cheap clone of the bytes).
    Buffered(BufferedBody),
    /// A body the `retry` layer started to buffer and found too large: the
    /// bytes read so far, then the rest as it streams. Never retried.
    /// Boxed, like the trailers of [`BufferedBody`], so that this enum is no
    /// larger than `Incoming` and the streaming path moves no more bytes
    /// than before.
    Prefixed(Box<PrefixedBody>),
    /// The caller's body rewritten as it streams by a policy layer (the
    /// compression layer's decoder). Never retried, like `Prefixed`.
    Transformed(TransformedBody),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// See [`RequestBody::Transformed`]. A request is shared between threads
/// by reference (`Sync`), which a decoder's state need not be: the mutex
/// makes it so, and costs nothing, since the body is only ever polled
/// through `&mut` ([`std::sync::Mutex::get_mut`] takes no lock).
pub struct TransformedBody(std::sync::Mutex<UnsyncBoxBody<Bytes, BoxError>>);

impl TransformedBody {
    pub fn new(body: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self(std::sync::Mutex::new(body))
    }
}

/// A request body held in memory: its data and any trailers. Cloning shares
/// the bytes (reference counted), it does not copy them.
#[derive(Clone, Debug, Default)]
pub struct BufferedBody {
    pub data: Option<Bytes>,
    pub trailers: Option<Box<http::HeaderMap>>,
}

/// See [`RequestBody::Prefixed`].
pub struct PrefixedBody {
    pub head: Option<Bytes>,
    pub rest: ReceivedBody,
}

/// The caller's body as hyper received it, with the meter that counts it.
pub type ReceivedBody = Metered<Incoming>;

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self::Streaming(body.into())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    /// The caller's (hyper's) error, or a transforming layer's.
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Streaming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Buffered(body) => Poll::Ready(
                match body.data.take().filter(|d| !d.is_empty()) {
                    Some(data) => Some(Frame::data(data)),
                    None => body.trailers.take().map(|t| Frame::trailers(*t)),
                }
                .map(Ok),
            ),
            Self::Prefixed(body) => match body.head.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Pin::new(&mut body.rest).poll_frame(cx).map_err(Into::into),
            },
            Self::Transformed(body) => match body.0.get_mut() {
                Ok(body) => Pin::new(body).poll_frame(cx),
                Err(_) => Poll::Ready(Some(Err("a request body's decoder panicked".into()))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming(body) => body.is_end_stream(),
            Self::Buffered(body) => {
                body.data.as_ref().is_none_or(Bytes::is_empty) && body.trailers.is_none()
            }
            Self::Prefixed(body) => body.head.is_none() && body.rest.is_end_stream(),
            // Not known without polling (see `TransformedBody`).
            Self::Transformed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming(body) => body.size_hint(),
            // Trailers need chunked framing on HTTP/1.1: no exact length.
            Self::Buffered(BufferedBody {
                trailers: Some(_), ..
            }) => SizeHint::default(),
            Self::Buffered(body) => {
                SizeHint::with_exact(body.data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Prefixed(body) => {
                let head = body.head.as_ref().map_or(0, |d| d.len() as u64);
                let rest = body.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + head);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
            Self::Transformed(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_body_is_no_larger_than_the_callers_body_and_its_meter() {
        // Every request's future holds one: a larger enum would cost every
        // request a longer copy, retries or not.
        assert!(
            std::mem::size_of::<RequestBody>()
                <= std::mem::size_of::<Incoming>() + std::mem::size_of::<Option<SizeMeter>>() + 8,
            "{} bytes",
            std::mem::size_of::<RequestBody>()
        );
    }

    #[test]
    fn a_meter_is_three_words_and_records_its_side_and_count_once_when_dropped() {
        assert_eq!(
            std::mem::size_of::<Option<SizeMeter>>(),
            3 * std::mem::size_of::<usize>()
        );

        #[derive(Default)]
        struct Recorded(std::sync::Mutex<Vec<(Side, u64)>>);
        impl BodySizeSink for Recorded {
            fn record(&self, side: Side, bytes: u64) {
                self.0.lock().unwrap().push((side, bytes));
            }
        }
        let sink = Arc::new(Recorded::default());
        for (told, side) in [Side::Request, Side::Response].into_iter().enumerate() {
            let mut meter = SizeMeter::new(side, sink.clone() as Arc<dyn BodySizeSink>);
            meter.count(&Frame::data(Bytes::from_static(b"hello")));
            meter.count(&Frame::trailers(http::HeaderMap::new()));
            meter.count(&Frame::data(Bytes::from_static(b"!")));
            assert_eq!(sink.0.lock().unwrap().len(), told, "told only when dropped");
            drop(meter);
        }
        assert_eq!(
            *sink.0.lock().unwrap(),
            [(Side::Request, 6), (Side::Response, 6)]
        );
    }
}
