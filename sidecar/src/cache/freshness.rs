//! RFC 9111's rules as pure functions of headers: what `Cache-Control`
//! says, whether a response may be stored (§3), for how long it is fresh
//! (§4.2.1), whether a request must go upstream (§5.2.1), and whether a
//! stored answer may be served to a request with `Authorization` (§3.5).

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, CACHE_CONTROL, DATE, EXPIRES, PRAGMA, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};

/// The directives of every `Cache-Control` line of a message that the
/// cache acts on; unknown ones are ignored (§5.2.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl Directives {
    pub(super) fn of(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        for line in headers.get_all(CACHE_CONTROL) {
            let Ok(line) = line.to_str() else { continue };
            for directive in line.split(',') {
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                // A malformed delta-seconds counts as 0 (§1.2.2): the safe
                // reading, never fresh.
                let seconds = || Some(value.and_then(|v| v.parse().ok()).unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => directives.no_store = true,
                    // `no-cache="field"` limits what may be reused; treated
                    // as the whole answer, which is the safe reading.
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "public" => directives.public = true,
                    "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = true,
                    "max-age" => directives.max_age = seconds(),
                    "s-maxage" => directives.s_maxage = seconds(),
                    _ => {}
                }
            }
        }
        directives
    }
}

/// The statuses cacheable by default (RFC 9110 §15.1), less 206 (ranges
/// are not stored).
const STORABLE: [u16; 10] = [200, 203, 204, 300, 301, 404, 405, 410, 414, 501];

/// What the request asks of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ask {
    /// Served from the cache when fresh.
    Lookup,
    /// `no-cache`, `max-age=0` (or `Pragma: no-cache`): go upstream, and
    /// store what comes back (a refresh).
    Refresh,
    /// `no-store`: go upstream, store nothing.
    Pass,
}

pub(super) fn ask(request: &HeaderMap) -> Ask {
    let directives = Directives::of(request);
    if directives.no_store {
        return Ask::Pass;
    }
    let pragma_no_cache = || {
        !request.contains_key(CACHE_CONTROL)
            && request.get_all(PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
            })
    };
    if directives.no_cache || directives.max_age == Some(0) || pragma_no_cache() {
        return Ask::Refresh;
    }
    Ask::Lookup
}

/// How long a response may be served from the store, counted from when
/// it was made (its `Age` then adds to its age), or `None` when it may
/// not be stored: a status not cacheable by default, `no-store`,
/// `private`, `no-cache` (this cache does not revalidate), `Vary: *`,
/// `Set-Cookie` (one user's session must not be handed to another), no
/// freshness of its own and no `default_ttl`, or a zero lifetime.
pub(super) fn storable(
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
    default_ttl: Duration,
) -> Option<Duration> {
    if !STORABLE.contains(&status.as_u16()) {
        return None;
    }
    let directives = Directives::of(response);
    if directives.no_store
        || directives.private
        || directives.no_cache
        || Directives::of(request).no_store
        || response.contains_key(SET_COOKIE)
        || vary_star(response)
    {
        return None;
    }
    if request.contains_key(AUTHORIZATION) && !shareable_with_authorization(&directives) {
        return None;
    }
    let lifetime = lifetime(&directives, response).unwrap_or(default_ttl);
    (!lifetime.is_zero()).then_some(lifetime)
}

/// §4.2.1: `s-maxage`, then `max-age`, then `Expires` less `Date`; `None`
/// without any (an `Expires` that does not parse is already expired).
fn lifetime(directives: &Directives, response: &HeaderMap) -> Option<Duration> {
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return Some(Duration::from_secs(seconds));
    }
    let expires = response.get(EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = response
        .get(DATE)
        .and_then(http_date)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// §3.5: a shared cache serves an answer to a request with
/// `Authorization` only when the answer says it may.
pub(super) fn shareable_with_authorization(directives: &Directives) -> bool {
    directives.public || directives.s_maxage.is_some() || directives.must_revalidate
}

pub(super) fn vary_star(response: &HeaderMap) -> bool {
    response
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim() == "*")
}

pub(super) fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    const OK: StatusCode = StatusCode::OK;

    /// A row: the response's headers, the policy's default_ttl, the
    /// lifetime expected in seconds (`None`: not stored).
    type Row = (
        &'static [(&'static str, &'static str)],
        Duration,
        Option<u64>,
    );

    #[test]
    fn freshness_comes_from_s_maxage_then_max_age_then_expires_then_the_default() {
        let none = HeaderMap::new();
        let ttl = Duration::from_secs(7);
        let table: [Row; 7] = [
            (&[("cache-control", "max-age=60")], Duration::ZERO, Some(60)),
            (
                &[("cache-control", "max-age=60, s-maxage=5")],
                Duration::ZERO,
                Some(5),
            ),
            (
                &[
                    ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
                    ("expires", "Mon, 07 Dec 2026 10:02:00 GMT"),
                ],
                Duration::ZERO,
                Some(120),
            ),
            // A malformed Expires is already expired (RFC 9111 §5.3).
            (&[("expires", "0")], ttl, None),
            (&[], ttl, Some(7)),
            // Without a default, no heuristic freshness.
            (&[], Duration::ZERO, None),
            (&[("cache-control", "max-age=0")], ttl, None),
        ];
        for (response, default_ttl, expected) in table {
            assert_eq!(
                storable(OK, &none, &headers(response), default_ttl),
                expected.map(Duration::from_secs),
                "{response:?}"
            );
        }
    }

    #[test]
    fn only_cacheable_statuses_without_refusals_are_stored() {
        let none = HeaderMap::new();
        let fresh = headers(&[("cache-control", "max-age=60")]);
        for status in [200, 203, 204, 300, 301, 404, 405, 410, 414, 501] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                storable(status, &none, &fresh, Duration::ZERO).is_some(),
                "{status}"
            );
        }
        for status in [201, 206, 302, 304, 400, 500, 503] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                storable(status, &none, &fresh, Duration::ZERO).is_none(),
                "{status}"
            );
        }
        for refused in [
            &[("cache-control", "max-age=60, no-store")][..],
            &[("cache-control", "max-age=60, private")],
            &[("cache-control", "no-cache, max-age=60")],
            &[("cache-control", "max-age=60"), ("vary", "accept, *")],
            &[("cache-control", "max-age=60"), ("set-cookie", "session=1")],
        ] {
            assert!(
                storable(OK, &none, &headers(refused), Duration::from_secs(9)).is_none(),
                "{refused:?}"
            );
        }
        let no_store = headers(&[("cache-control", "no-store")]);
        assert!(storable(OK, &no_store, &fresh, Duration::ZERO).is_none());
    }

    #[test]
    fn an_authorized_request_stores_only_what_says_it_may_be_shared() {
        let authorized = headers(&[("authorization", "Bearer x")]);
        let plain = headers(&[("cache-control", "max-age=60")]);
        assert!(storable(OK, &authorized, &plain, Duration::ZERO).is_none());
        for shared in [
            "max-age=60, public",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            let response = headers(&[("cache-control", shared)]);
            assert!(
                storable(OK, &authorized, &response, Duration::ZERO).is_some(),
                "{shared}"
            );
        }
    }

    #[test]
    fn a_request_looks_up_refreshes_or_passes() {
        assert_eq!(ask(&HeaderMap::new()), Ask::Lookup);
        assert_eq!(
            ask(&headers(&[("cache-control", "max-age=30")])),
            Ask::Lookup
        );
        assert_eq!(
            ask(&headers(&[("cache-control", "no-cache")])),
            Ask::Refresh
        );
        assert_eq!(
            ask(&headers(&[("cache-control", "max-age=0")])),
            Ask::Refresh
        );
        assert_eq!(ask(&headers(&[("pragma", "no-cache")])), Ask::Refresh);
        assert_eq!(ask(&headers(&[("cache-control", "no-store")])), Ask::Pass);
    }
}
