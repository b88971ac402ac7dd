//! Global limits: a sliding window in Redis, shared by every sidecar that
//! enforces the limit, decided by one Lua script in one round trip.
//!
//! The window is estimated from two fixed windows (as Cloudflare does):
//! `previous * (time left of the current window / window) + current`,
//! counted in keys that expire after two windows. The script reads the
//! time from Redis (`TIME`), not from the sidecars, whose clocks differ.
//! Keys carry a `{...}` hash tag, so both windows of a key sit in one slot.
//!
//! Every decision is bounded by the configured timeout (connect included):
//! when Redis is down, slow or unreachable the limit answers
//! [`Unavailable`] within that time, and the caller fails open or closed.
//! The connection is made on the first decision and managed by the redis
//! crate's `ConnectionManager`, which reconnects in the background.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The decision script. KEYS[1]: the window's base key (with hash tag);
/// ARGV[1]: the limit; ARGV[2]: the window in ms. Returns
/// `{allowed (0/1), remaining, ms until a request would be allowed
/// (refused) or until the current window ends (allowed)}`.
const SLIDING_WINDOW: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local start = now - (now % window)
local elapsed = now - start
local current_key = KEYS[1] .. ':' .. start
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (start - window)) or '0')
local current = tonumber(redis.call('GET', current_key) or '0')
local used = previous * (window - elapsed) / window + current
if used + 1 > limit then
  local wait
  if current + 1 <= limit and previous > 0 then
    -- the previous window's share fades until one more request fits
    wait = math.ceil(window - (limit - current - 1) * window / previous) - elapsed
  else
    -- only the next window helps, once this one's share has faded enough
    wait = window - elapsed + math.max(0, math.ceil(window - (limit - 1) * window / math.max(current, 1)))
  end
  if wait < 1 then wait = 1 end
  return {0, 0, wait}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, window * 2)
return {1, math.floor(limit - used - 1), window - elapsed}
";

/// What Redis decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowDecision {
    Allowed { remaining: u64 },
    Limited { retry_after: Duration },
}

/// Redis did not decide within the timeout (down, slow, refused, or an
/// error); the reason is for the log.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// One Redis server and the way to reach it, shared by the global limits
/// of one document and kept across updates that leave its settings alone.
pub struct RedisBackend {
    pub url: String,
    pub timeout: Duration,
    /// The CA(s) trusted for a `rediss://` URL instead of the system store.
    pub ca_pem: Option<String>,
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    script: redis::Script,
    /// When (seconds on the limiter's clock) Redis trouble was last logged:
    /// once a second at most, however many requests meet it.
    last_warned: AtomicU64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &redacted(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<credentials>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl RedisBackend {
    /// Parses the URL and, given, the CA certificates (no connection yet).
    /// Errors start with the field they are about (`url: ` or `ca_pem: `).
    pub fn new(url: &str, timeout: Duration, ca_pem: Option<&str>) -> Result<Self, String> {
        let bad_url = |e: redis::RedisError| {
            format!("url: `{}` is not a usable Redis URL: {e}", redacted(url))
        };
        let client = match ca_pem {
            None => redis::Client::open(url).map_err(bad_url)?,
            Some(pem) => {
                if !url.starts_with("rediss://") {
                    return Err("ca_pem: only used with a rediss:// (TLS) url".into());
                }
                check_ca_pem(pem)?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.as_bytes().to_vec()),
                    },
                )
                .map_err(bad_url)?
            }
        };
        Ok(Self {
            url: url.to_owned(),
            timeout,
            ca_pem: ca_pem.map(str::to_owned),
            client,
            connection: OnceLock::new(),
            script: redis::Script::new(SLIDING_WINDOW),
            last_warned: AtomicU64::new(u64::MAX),
        })
    }

    /// Whether trouble seen at `now_seconds` should be logged: the first
    /// time in each second.
    pub fn should_warn(&self, now_seconds: u64) -> bool {
        self.last_warned.swap(now_seconds, Ordering::Relaxed) != now_seconds
    }

    fn connection(&self) -> Result<ConnectionManager, Unavailable> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        // Reconnects back off quickly and not for long: a request never
        // waits for them (the timeout below), and Redis coming back
        // should be noticed within a second.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| Unavailable(format!("Redis client: {e}")))?;
        Ok(self.connection.get_or_init(|| manager).clone())
    }

    /// One decision for `key`: at most `limit` requests in any `window`.
    pub async fn decide(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<WindowDecision, Unavailable> {
        let mut connection = self.connection()?;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.script.key(key);
        invocation.arg(limit).arg(window_ms);
        let call = invocation.invoke_async::<(u8, i64, i64)>(&mut connection);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(Unavailable(format!(
                "no answer from {} within {:?}",
                redacted(&self.url),
                self.timeout
            ))),
            Ok(Err(e)) => Err(Unavailable(format!("{}: {e}", redacted(&self.url)))),
            Ok(Ok((1, remaining, _))) => Ok(WindowDecision::Allowed {
                remaining: u64::try_from(remaining).unwrap_or(0),
            }),
            Ok(Ok((_, _, wait_ms))) => Ok(WindowDecision::Limited {
                retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(1).max(1)),
            }),
        }
    }
}

/// Every block of `pem` is a certificate usable as a trust anchor, and
/// there is at least one: checked when the limits compile, so a broken CA
/// is refused then (NACK) rather than failing every decision.
fn check_ca_pem(pem: &str) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    weft_rules::pem::check_has_certificate(pem).map_err(|reason| format!("ca_pem: {reason}"))?;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("ca_pem: not PEM certificates: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("ca_pem: not a usable CA certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err("ca_pem: no CERTIFICATE block".into());
    }
    Ok(())
}

/// The Redis key of one limit's window for one request key:
/// `weft:rl:{<scope>:<limit>:<key>}` (the braces are the hash tag).
pub fn window_key(scope: &str, limit: &str, key: &str) -> String {
    format!("weft:rl:{{{scope}:{limit}:{key}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redacted("rediss://:hunter2@cache:6380/0"),
            "rediss://<credentials>@cache:6380/0"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
        let backend = RedisBackend::new(
            "redis://user:hunter2@cache:6379",
            Duration::from_millis(50),
            None,
        )
        .unwrap();
        assert!(!format!("{backend:?}").contains("hunter2"));
    }

    #[test]
    fn trouble_is_logged_once_a_second() {
        let backend =
            RedisBackend::new("redis://cache:6379", Duration::from_millis(50), None).unwrap();
        assert!(backend.should_warn(7));
        assert!(!backend.should_warn(7));
        assert!(backend.should_warn(8));
    }

    #[test]
    fn a_ca_that_does_not_parse_is_refused_when_the_limits_compile() {
        let timeout = Duration::from_millis(50);
        let refused = RedisBackend::new("rediss://cache:6380", timeout, Some("not a PEM"));
        assert!(refused.is_err());
        let refused = RedisBackend::new("redis://cache:6379", timeout, Some("x"));
        assert!(refused.is_err(), "a CA for a plaintext URL");
    }

    #[test]
    fn keys_name_scope_limit_and_key_in_one_hash_slot() {
        assert_eq!(
            window_key("in:users", "per-key", "abc"),
            "weft:rl:{in:users:per-key:abc}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_within_the_timeout() {
        // A port nothing listens on (1 is reserved, connect is refused).
        let backend =
            RedisBackend::new("redis://127.0.0.1:1", Duration::from_millis(50), None).unwrap();
        let started = std::time::Instant::now();
        let decision = backend.decide("k", 1, Duration::from_secs(1)).await;
        assert!(decision.is_err(), "{decision:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
