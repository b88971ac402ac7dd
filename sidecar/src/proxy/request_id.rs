//! Gives every request an `x-request-id` (128 random bits, hex) unless the
//! caller already sent one, so logs of every hop can be joined.

use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

use crate::model::REQUEST_ID;
use crate::table::request::ProxyRequest;

#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

/// 32 lower-case hex digits from a thread-local CSPRNG (no lock, no syscall).
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n: u128 = rand::random();
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

impl<S: Service<ProxyRequest<T>>, T> Service<ProxyRequest<T>> for RequestId<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest<T>) -> Self::Future {
        if !req.http.headers().contains_key(REQUEST_ID) {
            req.http.headers_mut().insert(REQUEST_ID, generate());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let a = super::generate();
        let b = super::generate();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
