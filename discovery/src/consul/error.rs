//! What can go wrong talking to Consul, typed so that callers decide on
//! retries from the variant, never from message text.

use std::time::Duration;

use http::{Method, StatusCode};

/// An error from one Consul API call. Every variant names the request
/// (`method` and `path`, which never contains the ACL token: that travels in
/// a header) so a log line alone says what failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// The configuration cannot work (bad address, unsupported scheme, an
    /// unreadable CA file or client key).
    #[error("invalid Consul configuration: {field}: {reason}")]
    Config {
        /// The setting at fault, e.g. `CONSUL_HTTP_ADDR`.
        field: &'static str,
        reason: String,
    },

    /// No HTTP answer: connection refused or reset, DNS failure.
    #[error(
        "{method} {path}: cannot reach Consul at {address}: {source}; is Consul running at {address}?"
    )]
    Connect {
        method: Method,
        path: String,
        address: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Consul accepted the TCP connection and closed it (or reset it)
    /// without an answer. Consul 1.8 does exactly this to a connection over
    /// `limits.http_max_conns_per_client` (measured on 1.8.7: the accept
    /// succeeds, then an immediate EOF, no HTTP status); a Consul shutting
    /// down looks the same.
    #[error(
        "{method} {path}: Consul at {address} accepted the connection and closed it without an answer: {source}; Consul refused the connection: over `limits.http_max_conns_per_client` (connections per client address, 200 by default)? Lower --consul-max-connections, raise the limit, or look for other clients on this address; or Consul was stopping"
    )]
    Closed {
        method: Method,
        path: String,
        address: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The TLS handshake with Consul failed, or Consul ended the TLS session
    /// with an alert (a TLS 1.3 server refuses a missing client certificate
    /// only after the handshake). `reason` says what and ends with a hint
    /// naming the setting to check (`CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
    /// `CONSUL_TLS_SERVER_NAME`...).
    #[error("{method} {path}: TLS with Consul at {address} failed: {reason}")]
    Tls {
        method: Method,
        path: String,
        address: String,
        reason: String,
        /// `false` when the failure is configuration (an untrusted or
        /// misnamed certificate, a refused client certificate): retrying
        /// cannot help until someone changes a setting or a certificate.
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The request (including a blocking query's `wait`) took longer than
    /// allowed; a stopped or overloaded agent looks like this.
    #[error(
        "{method} {path}: Consul at {address} did not answer within {timeout:?}; is it running and not overloaded?"
    )]
    Timeout {
        method: Method,
        path: String,
        address: String,
        timeout: Duration,
    },

    /// Consul answered with a status the endpoint does not expect.
    /// `body` is Consul's own explanation (e.g. "No cluster leader",
    /// "ACL not found"), truncated to a few hundred bytes.
    #[error("{method} {path}: Consul answered HTTP {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },

    /// Consul answered 2xx but the body is not what this client expects.
    #[error("{method} {path}: cannot decode Consul's answer: {reason}")]
    Decode {
        method: Method,
        path: String,
        reason: String,
    },
}

impl ConsulError {
    /// Whether the same request may succeed later without anyone changing
    /// anything: transport failures, timeouts, 5xx (leader elections answer
    /// 500 "No cluster leader") and 429. A 4xx (bad ACL token, bad request)
    /// or an undecodable body needs an operator, not a retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConsulError::Connect { .. }
            | ConsulError::Closed { .. }
            | ConsulError::Timeout { .. } => true,
            ConsulError::Tls { retryable, .. } => *retryable,
            ConsulError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ConsulError::Config { .. } | ConsulError::Decode { .. } => false,
        }
    }

    /// Every value [`ConsulError::kind`] returns.
    pub const KINDS: [&'static str; 8] = [
        "config",
        "connect",
        "closed",
        "tls",
        "timeout",
        "status_5xx",
        "status_4xx",
        "decode",
    ];

    /// A short, bounded name of the variant (`connect`, `closed`, `tls`,
    /// `timeout`, `status_4xx`, `status_5xx`, `decode`, `config`): the
    /// `kind` label of the agent's watch error counter.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulError::Config { .. } => "config",
            ConsulError::Connect { .. } => "connect",
            ConsulError::Closed { .. } => "closed",
            ConsulError::Tls { .. } => "tls",
            ConsulError::Timeout { .. } => "timeout",
            ConsulError::Status { status, .. } if status.is_server_error() => "status_5xx",
            ConsulError::Status { .. } => "status_4xx",
            ConsulError::Decode { .. } => "decode",
        }
    }

    /// The HTTP status Consul answered with, if it answered at all.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ConsulError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The request path (with query string) that failed, if a request was made.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConsulError::Connect { path, .. }
            | ConsulError::Closed { path, .. }
            | ConsulError::Tls { path, .. }
            | ConsulError::Timeout { path, .. }
            | ConsulError::Status { path, .. }
            | ConsulError::Decode { path, .. } => Some(path),
            ConsulError::Config { .. } => None,
        }
    }
}

/// The most of Consul's error body kept in [`ConsulError::Status`]: enough for
/// its one-line messages, bounded so a proxy's HTML error page cannot flood logs.
pub(crate) const MAX_ERROR_BODY: usize = 512;

/// Consul's error body as text, cut at [`MAX_ERROR_BODY`] on a char boundary.
pub(crate) fn error_body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= MAX_ERROR_BODY {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> ConsulError {
        ConsulError::Status {
            method: Method::GET,
            path: "/v1/kv/x".into(),
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
            body: String::new(),
        }
    }

    #[test]
    fn server_errors_and_throttling_are_retryable_client_errors_are_not() {
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(!status(400).is_retryable());
        assert_eq!(status(503).kind(), "status_5xx");
        assert_eq!(status(403).kind(), "status_4xx");
        assert!(ConsulError::KINDS.contains(&status(503).kind()));
    }

    #[test]
    fn long_error_bodies_are_truncated_on_a_char_boundary() {
        let body = "é".repeat(MAX_ERROR_BODY);
        let text = error_body_text(body.as_bytes());
        assert!(text.len() <= MAX_ERROR_BODY + '…'.len_utf8());
        assert!(text.ends_with('…'));
        assert_eq!(
            error_body_text(b"  No cluster leader\n"),
            "No cluster leader"
        );
    }
}
