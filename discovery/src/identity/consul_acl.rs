//! Consul ACL tokens as credentials (the agent runs with `--consul`).
//!
//! Consul decides, not the agent: a token may act as a service when Consul
//! grants it `service:write` on that service, which is exactly when Consul
//! signs a Connect leaf for it. So the agent asks for
//! `/v1/agent/connect/ca/leaf/<service>` *with the sidecar's token* and reads
//! the answer: 200 yes, 403 no, anything else "cannot tell now". The leaf
//! Consul returns is dropped; Consul caches it, so asking again is cheap.

use std::time::Duration;

use http::StatusCode;

use crate::consul::{ConsulClient, ConsulError};

/// How long the agent waits for Consul's verdict. A local Consul answers in
/// milliseconds; past two seconds the sidecar is better served by an
/// UNAVAILABLE it retries than by a request hanging on a sick Consul.
pub const CONSUL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Consul's answer about one token and one service.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsulVerdict {
    /// Consul grants the token `service:write` on the service.
    Granted,
    /// Consul refused (403); Consul's own words, e.g. "Permission denied"
    /// or "ACL not found".
    Denied(String),
    /// Consul could not be asked or gave no verdict; why, for the log and
    /// the sidecar.
    Unavailable(String),
    /// The token cannot even be sent (not a valid header value).
    Malformed,
}

/// Asks Consul about tokens, with a client that has its own (agent) token
/// but never uses it for these checks.
#[derive(Clone, Debug)]
pub struct ConsulAclCheck {
    client: ConsulClient,
    timeout: Duration,
}

impl ConsulAclCheck {
    pub fn new(client: ConsulClient) -> Self {
        Self {
            client,
            timeout: CONSUL_CHECK_TIMEOUT,
        }
    }

    /// The Consul address, for messages.
    pub fn address(&self) -> &str {
        self.client.address()
    }

    /// Whether Consul grants `token` service:write on `service`. `token`
    /// must not be empty: Consul would read an empty token as its anonymous
    /// token and answer for that.
    pub async fn check(&self, service: &str, token: &str) -> ConsulVerdict {
        debug_assert!(
            !token.is_empty(),
            "an empty token means anonymous to Consul"
        );
        match self
            .client
            .connect_ca_leaf_with_token(service, token, self.timeout)
            .await
        {
            Ok(_leaf) => ConsulVerdict::Granted,
            Err(ConsulError::Status {
                status: StatusCode::FORBIDDEN,
                body,
                ..
            }) => ConsulVerdict::Denied(body),
            Err(ConsulError::Config { .. }) => ConsulVerdict::Malformed,
            Err(error) => ConsulVerdict::Unavailable(error.to_string()),
        }
    }
}
