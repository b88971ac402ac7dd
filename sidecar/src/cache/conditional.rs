//! Conditional requests answered from the store (RFC 9110 §13.1.1,
//! §13.1.3): `If-None-Match` against the stored `ETag` (weak comparison),
//! else `If-Modified-Since` against its `Last-Modified`.

use http::header::{
    CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, VARY,
};
use http::{HeaderMap, Response, StatusCode};

use super::freshness::http_date;
use super::store::Entry;
use crate::body::ProxyBody;
use crate::model::ProxyResponse;

/// The headers a 304 carries from the stored answer (RFC 9110 §15.4.5).
const KEPT: [http::HeaderName; 6] = [CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, VARY];

/// A 304 when `request`'s conditionals say the client holds `entry`.
/// Only for answers a 200 would be (a 304 stands for the 200).
pub(super) fn not_modified(entry: &Entry, request: &HeaderMap) -> Option<ProxyResponse> {
    if entry.status != StatusCode::OK {
        return None;
    }
    let holds = if request.contains_key(IF_NONE_MATCH) {
        let etag = entry.headers.get(ETAG).and_then(|v| v.to_str().ok());
        request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" && etag.is_some() || etag.is_some_and(|etag| weak_eq(tag, etag)))
    } else {
        // If-Modified-Since is ignored when If-None-Match is present.
        let since = request.get(IF_MODIFIED_SINCE).and_then(http_date);
        let modified = entry.headers.get(LAST_MODIFIED).and_then(http_date);
        matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
    };
    if !holds {
        return None;
    }
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in KEPT {
        for value in entry.headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Some(response)
}

/// Weak comparison (RFC 9110 §8.8.3.2): equal opaque tags, either or both
/// marked weak.
pub(super) fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
    let (a, b) = (opaque(a), opaque(b));
    a.starts_with('"') && a.len() >= 2 && a == b
}
