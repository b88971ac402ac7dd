//! The response body of an HTTP/1 exchange, read straight from the
//! upstream connection by whichever task polls it (the downstream
//! connection's), and decoded per its framing. At its end the connection
//! goes back to the pool; a body dropped early closes it, since unread
//! bytes would corrupt the next response.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::H1Pool;
use super::codec::{BodyFraming, Decoded, ProtocolError};
use super::conn::{Connection, Io, READ_CHUNK};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct ResponseBody {
    /// `None` once the body has ended (or never had bytes).
    streaming: Option<Streaming>,
}

struct Streaming {
    conn: Connection,
    framing: BodyFraming,
    keep_alive: bool,
    pool: H1Pool,
}

/// The upstream side of a `101 Switching Protocols`: the raw connection and
/// any bytes the upstream sent right after its response head.
pub struct Upgraded {
    pub io: Io,
    pub buffered: Bytes,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Connection,
        framing: BodyFraming,
        keep_alive: bool,
        pool: &H1Pool,
    ) -> Self {
        let mut body = Self {
            streaming: Some(Streaming {
                conn,
                framing,
                keep_alive,
                pool: pool.clone(),
            }),
        };
        if body
            .streaming
            .as_ref()
            .is_some_and(|s| s.framing.is_complete())
        {
            // Nothing to read (HEAD, 204, 304, Content-Length: 0): the
            // connection is free right away, not when the body is dropped.
            body.finish();
        }
        body
    }

    /// The upgraded connection, if this answers an upgrade with 101.
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        match self.streaming.take() {
            Some(s) if s.framing == BodyFraming::Upgrade => Some(Upgraded {
                io: s.conn.io,
                buffered: s.conn.read_buf.freeze(),
            }),
            other => {
                self.streaming = other;
                None
            }
        }
    }

    /// Ends the body: the connection is pooled if it is clean and reusable.
    fn finish(&mut self) {
        if let Some(s) = self.streaming.take()
            && s.keep_alive
            && s.conn.read_buf.is_empty()
        {
            s.pool.put(s.conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.streaming = None; // closes the connection
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(s) = this.streaming.as_mut() else {
                return Poll::Ready(None);
            };
            match s.framing.decode(&mut s.conn.read_buf) {
                Ok(Decoded::Data(data)) => {
                    if s.framing.is_complete() {
                        if !s.conn.read_buf.is_empty() {
                            return this.fail(ProtocolError::UnexpectedData);
                        }
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    if !s.conn.read_buf.is_empty() {
                        return this.fail(ProtocolError::UnexpectedData);
                    }
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            s.conn.read_buf.reserve(READ_CHUNK);
            match poll_read_buf(Pin::new(&mut s.conn.io), cx, &mut s.conn.read_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if s.framing == BodyFraming::UntilClose => {
                    this.streaming = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the body",
                    ));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.streaming.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.streaming {
            None => SizeHint::with_exact(0),
            Some(s) => match s.framing {
                BodyFraming::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}
