//! The stored answer's body: the upstream's frames sent on as they arrive
//! and copied aside until the end, when the whole answer is stored. A body
//! that grows past `max_body_bytes`, carries trailers or fails is sent on
//! and not stored; the leader's guard is dropped either way, waking the
//! requests that wait for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};

use super::policy::CachePolicy;
use super::store::{Entry, Guard};
use crate::body::{ProxyBody, ProxyBodyKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `body`, stored as `entry` under `key` once it ends within the policy's
/// body limit.
pub(super) fn teed(
    body: ProxyBody,
    policy: Arc<CachePolicy>,
    key: String,
    entry: Entry,
    guard: Option<Guard>,
) -> ProxyBody {
    let tee = Tee {
        inner: body,
        buffer: BytesMut::new(),
        pending: Some(Pending { policy, key, entry }),
        _guard: guard,
    };
    ProxyBodyKind::Transformed(tee.boxed_unsync()).into()
}

struct Pending {
    policy: Arc<CachePolicy>,
    key: String,
    entry: Entry,
}

struct Tee {
    inner: ProxyBody,
    buffer: BytesMut,
    /// `None` once stored or given up.
    pending: Option<Pending>,
    /// Dropped with the body: after the answer is stored, or abandoned.
    _guard: Option<Guard>,
}

impl Tee {
    fn finish(&mut self) {
        if let Some(Pending {
            policy,
            key,
            mut entry,
        }) = self.pending.take()
        {
            entry.body = std::mem::take(&mut self.buffer).freeze();
            policy.store.insert(key, entry);
        }
        self._guard = None;
    }

    fn give_up(&mut self) {
        self.pending = None;
        self.buffer = BytesMut::new();
        self._guard = None;
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(pending) = &this.pending {
                    match frame.data_ref() {
                        Some(data)
                            if (this.buffer.len() + data.len()) as u64
                                <= pending.policy.max_body_bytes =>
                        {
                            this.buffer.extend_from_slice(data);
                        }
                        // Too long, or trailers (a stored answer would lose
                        // them).
                        _ => this.give_up(),
                    }
                }
                // A body that knows it has ended may not be polled again.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.give_up();
                Poll::Ready(Some(Err(error)))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
