//! Copies bytes both ways between two connections until both directions
//! have ended, in the connection's own task (no split halves, no locks).
//!
//! * Bounded: one [`BUFFER_SIZE`] buffer per direction; a direction reads
//!   again only once its buffer is written out, so a slow reader slows the
//!   writer down (TCP and HTTP/2 flow control push back further).
//! * Half-close: when one side ends its sending (EOF), the other side's
//!   sending half is shut down (TCP FIN, HTTP/2 END_STREAM) and the other
//!   direction keeps flowing: a client can send a request, close its
//!   writing half, and still read the whole answer.
//! * Idle timeout: when no byte moves either way for that long, the bridge
//!   ends and both connections are dropped.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Per direction. 16 KiB is one TLS record: large enough for bulk
/// transfers, small enough for thousands of idle tunnels.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// How a bridge ended and what crossed it.
#[derive(Debug)]
pub struct Bridged {
    /// Bytes from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    pub end: End,
}

#[derive(Debug)]
pub enum End {
    /// Both sides ended their sending; every byte was delivered.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// A read or write failed (a reset, a broken pipe).
    Failed(io::Error),
}

/// One direction: read into the buffer, write it out, and on EOF shut the
/// writer down.
struct OneWay {
    buf: Box<[u8]>,
    /// Written up to `start`, read up to `end`.
    start: usize,
    end: usize,
    read_done: bool,
    shut_down: bool,
    /// Data written since the last flush.
    unflushed: bool,
    total: u64,
}

impl OneWay {
    fn new() -> Self {
        Self {
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            read_done: false,
            shut_down: false,
            unflushed: false,
            total: 0,
        }
    }

    /// Moves what it can; ready once the reader ended and the writer is
    /// shut down. Sets `moved` when a byte was read or written.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.shut_down {
                return Poll::Ready(Ok(()));
            }
            if self.start < self.end {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.start..self.end])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.total += n as u64;
                self.unflushed = true;
                *moved = true;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                continue;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.shut_down = true;
                continue;
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Ready(result) => {
                    result?;
                    let n = read.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    } else {
                        self.end = n;
                        *moved = true;
                    }
                }
                Poll::Pending => {
                    // Nothing more to read now: push out what a writer
                    // (TLS, HTTP/2) may still hold before waiting.
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Copies `a` <-> `b` until both directions have ended, one fails, or
/// nothing moves for `idle_timeout`.
pub async fn bridge<A, B>(a: &mut A, b: &mut B, idle_timeout: Duration) -> Bridged
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = OneWay::new();
    let mut b_to_a = OneWay::new();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let end = poll_fn(|cx| {
        let mut moved = false;
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), &mut moved);
        if let Poll::Ready(Err(e)) = forward {
            return Poll::Ready(End::Failed(e));
        }
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), &mut moved);
        if let Poll::Ready(Err(e)) = backward {
            return Poll::Ready(End::Failed(e));
        }
        if forward.is_ready() && backward.is_ready() {
            return Poll::Ready(End::Closed);
        }
        if moved {
            idle.as_mut().reset(Instant::now() + idle_timeout);
        }
        if idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Idle);
        }
        Poll::Pending
    })
    .await;
    Bridged {
        a_to_b: a_to_b.total,
        b_to_a: b_to_a.total,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// `client <-> [a | bridge | b] <-> server`, with small pipes so the
    /// bridge's buffers fill up and drain many times.
    fn pipes(capacity: usize) -> [tokio::io::DuplexStream; 4] {
        let (client, a) = duplex(capacity);
        let (b, server) = duplex(capacity);
        [client, a, b, server]
    }

    #[tokio::test]
    async fn each_side_can_close_its_sending_half_and_still_read_the_answer() {
        let [mut client, mut a, mut b, mut server] = pipes(64);
        let bridge =
            tokio::spawn(async move { bridge(&mut a, &mut b, Duration::from_secs(60)).await });

        client.write_all(b"PING\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(
            request, b"PING\r\n",
            "the server sees the request, then EOF"
        );

        server.write_all(b"+PONG\r\n").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(
            answer, b"+PONG\r\n",
            "the answer still flows after the client's EOF"
        );

        let bridged = bridge.await.unwrap();
        assert!(matches!(bridged.end, End::Closed), "{:?}", bridged.end);
        assert_eq!((bridged.a_to_b, bridged.b_to_a), (6, 7));
    }

    #[tokio::test]
    async fn a_large_transfer_arrives_intact_through_small_buffers() {
        let [mut client, mut a, mut b, mut server] = pipes(1024);
        let bridge =
            tokio::spawn(async move { bridge(&mut a, &mut b, Duration::from_secs(60)).await });
        let payload: Vec<u8> = (0..4 * BUFFER_SIZE as u32 + 17)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert!(
            received == payload,
            "{} bytes arrived of {}",
            received.len(),
            payload.len()
        );
        drop(server);
        drop(writer.await.unwrap());
        let bridged = bridge.await.unwrap();
        assert_eq!(bridged.a_to_b, payload.len() as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_ends_after_the_idle_timeout_and_not_before() {
        let [mut client, mut a, mut b, _server] = pipes(64);
        let idle = Duration::from_secs(30);
        let started = Instant::now();
        let bridge = tokio::spawn(async move { bridge(&mut a, &mut b, idle).await });
        // Traffic every 20 s keeps it open past one idle timeout...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client.write_all(b"x").await.unwrap();
        }
        // ...then silence ends it 30 s after the last byte.
        let bridged = bridge.await.unwrap();
        assert!(matches!(bridged.end, End::Idle), "{:?}", bridged.end);
        assert_eq!(started.elapsed(), Duration::from_secs(60 + 30));
        assert_eq!(bridged.a_to_b, 3);
    }

    #[tokio::test]
    async fn a_broken_side_ends_the_bridge_with_the_error() {
        let [client, mut a, mut b, server] = pipes(64);
        drop(server);
        let mut client = client;
        let bridge =
            tokio::spawn(async move { bridge(&mut a, &mut b, Duration::from_secs(60)).await });
        client.write_all(b"lost").await.unwrap();
        let bridged = bridge.await.unwrap();
        assert!(matches!(bridged.end, End::Failed(_)), "{:?}", bridged.end);
    }
}
