//! HTTP/1.1 on the wire, upstream side: the request head the sidecar
//! writes, the response head it reads (parsed by httparse), and the body
//! framing rules of RFC 9112 §6.
//!
//! Pure functions over buffers: no I/O here, so every rule is unit-tested
//! byte for byte.

use std::fmt;
use std::io::Write as _;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The largest response head accepted (status line and headers). Envoy's
/// default limit is 60 KiB; a larger head is a broken or hostile upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most response headers accepted (hyper's default too).
const MAX_HEADERS: usize = 100;
/// A chunk-size line longer than this (extensions included) is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Trailers are read and dropped, up to this many bytes.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an upstream's response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The status line or a header is not valid HTTP/1.
    InvalidHead(String),
    /// The head did not end within [`MAX_RESPONSE_HEAD`] bytes.
    HeadTooLarge,
    /// Content-Length is not a number, or several disagree.
    InvalidContentLength,
    /// A chunk-size line or the CRLF after a chunk is malformed.
    InvalidChunk,
    /// The trailers exceed their limit.
    TrailersTooLarge,
    /// Bytes followed a complete response on a connection with nothing
    /// else in flight.
    UnexpectedData,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidHead(e) => write!(f, "invalid response head: {e}"),
            Self::HeadTooLarge => write!(
                f,
                "response head larger than {} KiB",
                MAX_RESPONSE_HEAD / 1024
            ),
            Self::InvalidContentLength => write!(f, "invalid Content-Length"),
            Self::InvalidChunk => write!(f, "malformed chunked encoding"),
            Self::TrailersTooLarge => write!(f, "trailers larger than 16 KiB"),
            Self::UnexpectedData => write!(f, "data after the end of the response"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// How the request body is delimited on the upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length,
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

/// Picks the request's framing from what hyper knows of its body (exact
/// length from Content-Length, or unknown for chunked) and makes the
/// headers agree: a stale Content-Length is never forwarded next to
/// chunked encoding (RFC 9112 §6.3 makes that a smuggling vector).
pub fn request_framing(headers: &mut HeaderMap, exact_len: Option<u64>) -> RequestFraming {
    match exact_len {
        Some(0) if !headers.contains_key(header::CONTENT_LENGTH) => RequestFraming::Empty,
        Some(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            if n == 0 {
                RequestFraming::Empty
            } else {
                RequestFraming::Length
            }
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
            RequestFraming::Chunked
        }
    }
}

/// Appends `METHOD path HTTP/1.1`, the headers and the blank line to `out`.
pub fn encode_request_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    encode_fields(headers, out);
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return; // an empty chunk would read as the last one
    }
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with trailers if any.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        encode_fields(trailers, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` lines, in the map's order (headers and trailers alike).
fn encode_fields(fields: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: HEAD, 204, 304.
    Empty,
    /// Exactly this many bytes remain.
    Length(u64),
    /// Chunked, decoded as it arrives.
    Chunked(ChunkedDecoder),
    /// Until the upstream closes the connection.
    UntilClose,
    /// `101 Switching Protocols`: the connection now belongs to the upgrade.
    Upgrade,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, consuming it.
/// `Ok(None)`: incomplete, read more. Interim `1xx` responses (other than
/// 101) are consumed and skipped, as a proxy that does not forward them must.
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, ProtocolError> {
    loop {
        // Offsets of each header's name and value within the head, so the
        // values can share the head's bytes once it is split off.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, minor, count) =
            {
                let mut storage = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let mut res = httparse::Response::new(&mut []);
                let len = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut res, buf, &mut storage)
                {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
                        return Err(ProtocolError::HeadTooLarge);
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(ProtocolError::InvalidHead(format!(
                            "more than {MAX_HEADERS} headers"
                        )));
                    }
                    Err(e) => return Err(ProtocolError::InvalidHead(e.to_string())),
                };
                if len > MAX_RESPONSE_HEAD {
                    return Err(ProtocolError::HeadTooLarge);
                }
                let base = buf.as_ptr() as usize;
                for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
                    let name = h.name.as_ptr() as usize - base;
                    let value = h.value.as_ptr() as usize - base;
                    *span = (
                        name as u32,
                        (name + h.name.len()) as u32,
                        value as u32,
                        (value + h.value.len()) as u32,
                    );
                }
                // httparse guarantees both once the parse is complete.
                (
                    len,
                    res.code.unwrap_or(0),
                    res.version.unwrap_or(1),
                    res.headers.len(),
                )
            };
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code)
            .map_err(|_| ProtocolError::InvalidHead(format!("status {code}")))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue; // 100 Continue, 103 Early Hints: not forwarded
        }
        return build_head(&head, &spans[..count], status, minor, request_method).map(Some);
    }
}

fn build_head(
    head: &Bytes,
    spans: &[(u32, u32, u32, u32)],
    status: StatusCode,
    minor: u8,
    request_method: &Method,
) -> Result<ResponseHead, ProtocolError> {
    // Room beyond the upstream's own headers: layers add some on the way
    // back, and hyper's server reuses this map for the next request on
    // the downstream connection, which the proxy headers then extend;
    // growing a map costs a rehash and a reallocation per request.
    let mut headers = HeaderMap::with_capacity(spans.len() + 16);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for &(ns, ne, vs, ve) in spans {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| ProtocolError::InvalidHead("invalid header name".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| ProtocolError::InvalidHead(format!("invalid value of {name}")))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_content_length(value.as_bytes())?;
            if content_length.is_some_and(|c| c != n) {
                return Err(ProtocolError::InvalidContentLength);
            }
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoded = true;
            // Only the last coding decides: "gzip, chunked" is chunked.
            chunked = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut keep_alive = if version == Version::HTTP_10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
        BodyFraming::Upgrade
    } else if request_method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        BodyFraming::Empty
    } else if transfer_encoded {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3 (3)),
        // and a response carrying both must not be reused.
        if content_length.is_some() {
            keep_alive = false;
            headers.remove(header::CONTENT_LENGTH);
        }
        if chunked {
            BodyFraming::Chunked(ChunkedDecoder::default())
        } else {
            keep_alive = false;
            BodyFraming::UntilClose
        }
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        keep_alive = false;
        BodyFraming::UntilClose
    };
    Ok(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

fn parse_content_length(v: &[u8]) -> Result<u64, ProtocolError> {
    // Digits only: no sign, no whitespace inside, no list ("5, 5" is
    // folded by some servers; refusing it is the safe reading).
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::InvalidContentLength);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What [`BodyFraming::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Nothing decodable yet: read more.
    NeedMore,
    /// The body is complete.
    End,
}

impl BodyFraming {
    /// Takes the next body bytes off the front of `buf`. For
    /// [`BodyFraming::UntilClose`] the caller ends the body at EOF.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        match self {
            Self::Empty | Self::Upgrade | Self::Length(0) => Ok(Decoded::End),
            Self::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*remaining).min(buf.len() as u64);
                *remaining -= n;
                Ok(Decoded::Data(buf.split_to(n as usize).freeze()))
            }
            Self::Chunked(decoder) => decoder.decode(buf),
            Self::UntilClose if buf.is_empty() => Ok(Decoded::NeedMore),
            Self::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether no body bytes remain (the connection can be released).
    pub fn is_complete(&self) -> bool {
        match self {
            Self::Empty | Self::Length(0) => true,
            Self::Chunked(decoder) => decoder.state == ChunkState::Done,
            _ => false,
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk: this many bytes remain.
    Data(u64),
    /// Expecting the CRLF that ends a chunk.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one.
    Trailers,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally; trailers are read
/// and dropped (HTTP/1 clients rarely ask for them; gRPC uses HTTP/2).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(ProtocolError::InvalidChunk);
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(ProtocolError::InvalidChunk),
                },
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = remaining.min(buf.len() as u64);
                    self.state = if n == remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - n)
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::InvalidChunk);
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.trailer_bytes + buf.len() > MAX_TRAILERS {
                            return Err(ProtocolError::TrailersTooLarge);
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    self.trailer_bytes += end + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ProtocolError::TrailersTooLarge);
                    }
                    let _ = buf.split_to(end + 2);
                    if end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        bytes: &[u8],
        method: Method,
    ) -> (Result<Option<ResponseHead>, ProtocolError>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let r = parse_response_head(&mut buf, &method);
        (r, buf)
    }

    fn head(bytes: &[u8]) -> ResponseHead {
        parse(bytes, Method::GET).0.unwrap().unwrap()
    }

    /// Decodes everything in `wire` (which must hold the whole body).
    fn body(framing: &mut BodyFraming, wire: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok(out),
                Decoded::NeedMore => panic!("incomplete body: {out:?}"),
            }
        }
    }

    #[test]
    fn request_head_is_origin_form_with_headers_in_order() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.weft"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_request_head(&Method::GET, "/p?q=1", &h, RequestFraming::Empty, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: api.weft\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_follows_the_body_and_drops_a_stale_length() {
        let mut h = HeaderMap::new();
        assert_eq!(request_framing(&mut h, Some(0)), RequestFraming::Empty);
        assert!(h.is_empty(), "no Content-Length invented for a GET");

        assert_eq!(request_framing(&mut h, Some(5)), RequestFraming::Length);
        assert_eq!(h[header::CONTENT_LENGTH], "5");

        assert_eq!(request_framing(&mut h, None), RequestFraming::Chunked);
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let mut out = Vec::new();
        encode_request_head(&Method::POST, "/", &h, RequestFraming::Chunked, &mut out);
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));

        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(request_framing(&mut h, Some(0)), RequestFraming::Empty);
        assert_eq!(
            h[header::CONTENT_LENGTH],
            "0",
            "an explicit empty POST keeps it"
        );
    }

    #[test]
    fn chunked_request_body_encoding() {
        let mut out = Vec::new();
        encode_chunk(b"hello", &mut out);
        encode_chunk(b"", &mut out);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        encode_last_chunk(Some(&t), &mut out);
        assert_eq!(out, b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn content_length_response_is_reusable_and_leaves_the_body_in_the_buffer() {
        let (r, buf) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: a\r\n\r\nhello",
            Method::GET,
        );
        let h = r.unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["x-app"], "a");
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn incomplete_head_asks_for_more_and_consumes_nothing() {
        let (r, buf) = parse(b"HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert!(r.unwrap().is_none());
        assert_eq!(buf.len(), 27);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let (r, buf) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            Method::POST,
        );
        let h = r.unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert!(h.headers.get("link").is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn bodyless_responses() {
        assert_eq!(
            head(b"HTTP/1.1 204 No Content\r\n\r\n").framing,
            BodyFraming::Empty
        );
        assert_eq!(
            head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").framing,
            BodyFraming::Empty
        );
        let (r, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            Method::HEAD,
        );
        let h = r.unwrap().unwrap();
        assert_eq!(h.framing, BodyFraming::Empty);
        assert_eq!(
            h.headers[header::CONTENT_LENGTH],
            "10",
            "kept for the client"
        );
    }

    #[test]
    fn connection_reuse_rules() {
        assert!(
            !head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::UntilClose);
        assert!(!h.keep_alive, "a close-delimited body ends the connection");
        let h = head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Upgrade);
        assert!(!h.keep_alive);
    }

    #[test]
    fn transfer_encoding_overrides_content_length_and_forbids_reuse() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(h.framing, BodyFraming::Chunked(_)));
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::UntilClose);
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(h.framing, BodyFraming::Chunked(_)));
        assert!(h.keep_alive);
    }

    #[test]
    fn malformed_heads_are_refused_with_a_reason() {
        let cases: [(&[u8], ProtocolError); 3] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                ProtocolError::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                ProtocolError::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
                ProtocolError::InvalidContentLength,
            ),
        ];
        for (wire, want) in cases {
            let (r, _) = parse(wire, Method::GET);
            assert_eq!(r.unwrap_err(), want, "{}", String::from_utf8_lossy(wire));
        }
        for wire in [&b"SSH-2.0-OpenSSH\r\n\r\n"[..], b"HTTP/1.1 2000 OK\r\n\r\n"] {
            let (r, _) = parse(wire, Method::GET);
            assert!(matches!(r, Err(ProtocolError::InvalidHead(_))), "{r:?}");
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (r, _) = parse(&many, Method::GET);
        assert!(matches!(r, Err(ProtocolError::InvalidHead(e)) if e.contains("headers")));
    }

    #[test]
    fn oversized_head_is_refused_even_when_incomplete() {
        let mut wire = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        wire.resize(MAX_RESPONSE_HEAD + 10, b'a');
        let (r, _) = parse(&wire, Method::GET);
        assert_eq!(r.unwrap_err(), ProtocolError::HeadTooLarge);
    }

    #[test]
    fn length_body_stops_at_its_length() {
        let mut f = BodyFraming::Length(5);
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(
            f.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"hel"))
        );
        assert_eq!(f.decode(&mut buf).unwrap(), Decoded::NeedMore);
        assert!(!f.is_complete());
        buf.extend_from_slice(b"loEXTRA");
        assert_eq!(
            f.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"lo"))
        );
        assert!(f.is_complete());
        assert_eq!(f.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"EXTRA", "the next bytes are not body");
    }

    #[test]
    fn chunked_body_decodes_across_reads_and_drops_trailers() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        let mut f = BodyFraming::Chunked(ChunkedDecoder::default());
        assert_eq!(body(&mut f, wire).unwrap(), b"hello0123456789");
        assert!(f.is_complete());

        // Byte by byte: every split point works.
        let mut f = BodyFraming::Chunked(ChunkedDecoder::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[*b]);
            while let Decoded::Data(d) = f.decode(&mut buf).unwrap() {
                out.extend_from_slice(&d);
            }
        }
        assert_eq!(out, b"hello0123456789");
        assert!(f.is_complete());
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [&b"zz\r\nhello\r\n0\r\n\r\n"[..], b"5\r\nhelloXX0\r\n\r\n"] {
            let mut f = BodyFraming::Chunked(ChunkedDecoder::default());
            assert_eq!(body(&mut f, wire).unwrap_err(), ProtocolError::InvalidChunk);
        }
        let mut f = BodyFraming::Chunked(ChunkedDecoder::default());
        let mut buf = BytesMut::from(&vec![b'1'; MAX_CHUNK_LINE + 1][..]);
        assert_eq!(f.decode(&mut buf).unwrap_err(), ProtocolError::InvalidChunk);
        let mut trailers = b"0\r\n".to_vec();
        trailers.resize(MAX_TRAILERS + 10, b'a');
        let mut f = BodyFraming::Chunked(ChunkedDecoder::default());
        let mut buf = BytesMut::from(&trailers[..]);
        assert_eq!(
            f.decode(&mut buf).unwrap_err(),
            ProtocolError::TrailersTooLarge
        );
    }
}
