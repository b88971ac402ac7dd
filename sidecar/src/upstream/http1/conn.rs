//! One HTTP/1.1 connection to an endpoint and one exchange on it: write the
//! request (head, then the body as it streams in), read the response head.
//! The response body is read later by [`super::ResponseBody`], in the task
//! that consumes it: no connection task, no channel between the two.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::Method;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::H1Error;
use super::codec::{self, RequestFraming, ResponseHead};
use crate::request_body::RequestBody;

/// Read-buffer growth per read: most response heads and small bodies fit
/// in one read.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// Request-body bytes buffered before they are written out.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// The stream under the HTTP/1 connection (with its place under the
/// cluster's connection cap).
pub(super) type Io = crate::upstream::UpstreamTcp;

pub(super) struct Connection {
    pub(super) io: Io,
    /// Bytes read from the upstream and not yet consumed.
    pub(super) read_buf: BytesMut,
    /// The request being written; kept between exchanges for its capacity.
    pub(super) write_buf: Vec<u8>,
}

impl Connection {
    pub(super) fn new(io: Io) -> Self {
        Self {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::with_capacity(1024),
        }
    }

    /// Whether an idle connection can carry a request: the upstream has
    /// neither closed it nor sent anything unasked. Never waits: tokio only
    /// reads when the event loop saw the socket become readable, so a quiet
    /// connection costs no system call here.
    pub(super) fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.read_buf),
            Poll::Pending
        ) && self.read_buf.is_empty()
    }

    /// Writes the request head already encoded in `write_buf`, then the
    /// body, and reads the response head. A response that arrives while
    /// the body is still being written (say a 413) is returned as such.
    pub(super) async fn exchange(
        &mut self,
        method: &Method,
        body: &mut RequestBody,
        framing: RequestFraming,
    ) -> Result<ResponseHead, H1Error> {
        match self.write_request(body, framing).await {
            Ok(()) => self.read_head(method).await,
            Err(H1Error::Write(e)) => match self.read_head(method).await {
                // The upstream answered early and stopped reading.
                Ok(mut head) => {
                    head.keep_alive = false;
                    Ok(head)
                }
                Err(H1Error::Closed(_)) => Err(H1Error::Closed(e)),
                Err(_) => Err(H1Error::Write(e)),
            },
            Err(e) => Err(e),
        }
    }

    async fn write_request(
        &mut self,
        body: &mut RequestBody,
        framing: RequestFraming,
    ) -> Result<(), H1Error> {
        if framing == RequestFraming::Empty {
            // Left in the buffer after writing: a request without a body
            // is resent from these bytes if the connection turns out dead.
            return self
                .io
                .write_all(&self.write_buf)
                .await
                .map_err(H1Error::Write);
        }
        let mut trailers = None;
        loop {
            // Take what is ready without waiting, so a small body
            // leaves in the same write as the head.
            let frame =
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        self.flush().await?;
                        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                    }
                };
            let Some(frame) = frame else { break };
            let frame: Frame<_> = frame.map_err(H1Error::RequestBody)?;
            match frame.into_data() {
                Ok(data) if framing == RequestFraming::Chunked => {
                    codec::encode_chunk(&data, &mut self.write_buf)
                }
                Ok(data) => self.write_buf.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
            if self.write_buf.len() >= WRITE_HIGH_WATER {
                self.flush().await?;
            }
        }
        if framing == RequestFraming::Chunked {
            codec::encode_last_chunk(trailers.as_ref(), &mut self.write_buf);
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), H1Error> {
        if !self.write_buf.is_empty() {
            self.io
                .write_all(&self.write_buf)
                .await
                .map_err(H1Error::Write)?;
            self.write_buf.clear();
        }
        Ok(())
    }

    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, H1Error> {
        loop {
            if !self.read_buf.is_empty()
                && let Some(head) = codec::parse_response_head(&mut self.read_buf, method)
                    .map_err(H1Error::Protocol)?
            {
                return Ok(head);
            }
            self.read_buf.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.read_buf).await {
                Ok(0) if self.read_buf.is_empty() => {
                    return Err(H1Error::Closed(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => {
                    return Err(H1Error::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed in the middle of the response head",
                    )));
                }
                Ok(_) => {}
                Err(e) if self.read_buf.is_empty() => return Err(H1Error::Closed(e)),
                Err(e) => return Err(H1Error::Read(e)),
            }
        }
    }
}
