//! A raw HTTP/2 frame writer and reader (RFC 9113 §4, §6) with an HPACK
//! encoder of literals only (never indexed, no Huffman: RFC 7541 §6.2.2),
//! so a test can put any bytes on the wire (uppercase names, a pseudo-header
//! after a regular field, a bad frame size...) and see what the server does
//! with them: a response, RST_STREAM, GOAWAY, or a closed connection.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const COMPRESSION_ERROR: u32 = 0x9;

/// SETTINGS identifiers (RFC 9113 §6.5.2).
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// One frame: 9-byte header (24-bit length, type, flags, 31-bit stream id)
/// and the payload as given.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

/// The preface and an empty SETTINGS: how every client connection starts.
pub fn client_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(settings(&[]));
    out
}

pub fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(CONTINUATION, flags, stream, block)
}

pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(DATA, flags, stream, payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping(flags: u8, opaque: [u8; 8]) -> Vec<u8> {
    frame(PING, flags, 0, &opaque)
}

pub fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &payload)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn priority(stream: u32, depends_on: u32, weight: u8) -> Vec<u8> {
    let mut payload = depends_on.to_be_bytes().to_vec();
    payload.push(weight);
    frame(PRIORITY, 0, stream, &payload)
}

/// An HPACK integer with an `prefix_bits`-bit prefix, the first byte's
/// high bits set to `first` (RFC 7541 §5.1).
pub fn hpack_int(first: u8, prefix_bits: u32, value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A field as a literal never indexed with a literal name, no Huffman:
/// the bytes go on the wire exactly as given.
pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x10);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name);
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// A header block of literal fields, in this order.
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        literal(name, value, &mut out);
    }
    out
}

/// The pseudo-headers of a plain GET of `/` at `authority`, over http.
pub fn get_fields(authority: &'static str) -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", authority.as_bytes()),
    ]
}

/// A frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Reads one frame; `None` when the connection is closed.
pub async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    if io.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    if io.read_exact(&mut payload).await.is_err() {
        return Ok(None);
    }
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }))
}

/// What the server did about a stream (or the whole connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response on the stream, with its `:status` (0 when the status was
    /// encoded in a way this reader does not decode).
    Response(u16),
    /// RST_STREAM on the stream, with its error code.
    Reset(u32),
    /// GOAWAY, with its error code.
    GoAway(u32),
    /// The connection closed without either.
    Closed,
    /// Nothing about the stream within the wait.
    Silence,
}

/// Reads frames until the server answers, resets or gives up on `stream`,
/// closes, or goes quiet for `wait`, acknowledging the server's SETTINGS
/// on the way (PINGs are not answered: no case waits long enough for the
/// server to mind). Every frame read is pushed to `seen`.
pub async fn outcome<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    stream: u32,
    wait: Duration,
    seen: &mut Vec<Frame>,
) -> anyhow::Result<Outcome> {
    loop {
        let frame = match tokio::time::timeout(wait, read_frame(io)).await {
            Err(_) => return Ok(Outcome::Silence),
            Ok(frame) => frame?,
        };
        let Some(frame) = frame else {
            return Ok(Outcome::Closed);
        };
        seen.push(frame.clone());
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => {
                // A server that already gave up may have closed: what it
                // sends next (GOAWAY) still tells the outcome.
                let _ = io.write_all(&settings_ack()).await;
            }
            HEADERS if frame.stream == stream => {
                return Ok(Outcome::Response(status_of(&frame).unwrap_or(0)));
            }
            RST_STREAM if frame.stream == stream => {
                let code = frame.payload.get(..4).context("a short RST_STREAM")?;
                return Ok(Outcome::Reset(u32::from_be_bytes(code.try_into()?)));
            }
            GOAWAY => {
                let code = frame.payload.get(4..8).context("a short GOAWAY")?;
                return Ok(Outcome::GoAway(u32::from_be_bytes(code.try_into()?)));
            }
            _ => {}
        }
    }
}

/// The `:status` of a response HEADERS frame when it is the first field:
/// an indexed static entry, or a literal with the static `:status` name
/// whose value is plain or Huffman-coded digits.
pub fn status_of(frame: &Frame) -> Option<u16> {
    let mut block = &frame.payload[..];
    if frame.flags & PADDED != 0 {
        let pad = usize::from(*block.first()?);
        block = block.get(1..block.len().checked_sub(pad)?)?;
    }
    if frame.flags & PRIORITY_FLAG != 0 {
        block = block.get(5..)?;
    }
    let first = *block.first()?;
    let indexed = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    if first & 0x80 != 0 {
        let index = first & 0x7f;
        return indexed.iter().find(|(i, _)| *i == index).map(|(_, s)| *s);
    }
    // Literal with the static name 8 (:status): incremental indexing
    // (0x48), without indexing (0x08) or never indexed (0x18).
    if !matches!(first, 0x48 | 0x08 | 0x18) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Decodes a Huffman string made of digits only (RFC 7541 Appendix B:
/// '0'-'2' are 5-bit codes 0-2, '3'-'9' 6-bit codes 0x19-0x1f).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    while out.len() < 3 && at + 5 <= bits.len() {
        let five = bits[at..at + 5].iter().fold(0u8, |n, b| n << 1 | b);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            at += 5;
        } else {
            let six = bits.get(at..at + 6)?.iter().fold(0u8, |n, b| n << 1 | b);
            if !(0x19..=0x1f).contains(&six) {
                return None;
            }
            out.push(char::from(b'3' + (six - 0x19)));
            at += 6;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_is_length_type_flags_stream() {
        let f = frame(HEADERS, END_HEADERS, 3, b"abc");
        assert_eq!(f, [0, 0, 3, 1, 4, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn hpack_integers_follow_rfc_7541_c_1() {
        let mut out = Vec::new();
        hpack_int(0, 5, 1337, &mut out);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn huffman_digits_decode() {
        // "302" in RFC 7541 C.6.1: 0x6402.
        assert_eq!(huffman_digits(&[0x64, 0x02]).as_deref(), Some("302"));
    }
}
