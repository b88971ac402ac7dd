//! Finding the token in a request: a header (usually `Authorization:
//! Bearer`), a cookie or a query parameter. Borrowed from the request
//! whenever possible (the common case allocates nothing).

use std::borrow::Cow;

use http::Uri;
use http::header::{COOKIE, HeaderMap, HeaderName};

use super::error::{AuthnError, AuthnErrorKind};

/// One compiled place to look (from a `TokenSourceConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenSource {
    Header {
        name: HeaderName,
        /// Matched without regard to ASCII case; the rest is the token.
        prefix: Option<Box<str>>,
    },
    Cookie(Box<str>),
    Query(Box<str>),
}

impl TokenSource {
    /// The header to remove when the provider does not forward its token.
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            Self::Header { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The token in this place, if there is one. A header sent more than
    /// once is an error: the app might read another copy than the one
    /// verified here.
    pub fn find<'a>(
        &self,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Result<Option<Cow<'a, str>>, AuthnError> {
        match self {
            Self::Header { name, prefix } => {
                let mut values = headers.get_all(name).iter();
                let Some(value) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(AuthnError::new(
                        AuthnErrorKind::Malformed,
                        format!("more than one `{name}` header"),
                    ));
                }
                let Ok(value) = value.to_str() else {
                    return Err(AuthnError::new(
                        AuthnErrorKind::Malformed,
                        format!("the `{name}` header is not visible ASCII"),
                    ));
                };
                let token = match prefix {
                    None => value,
                    Some(prefix) => match strip_prefix_ignore_case(value, prefix) {
                        Some(rest) => rest,
                        // Another scheme (Basic...): not ours to judge.
                        None => return Ok(None),
                    },
                };
                Ok(non_empty(token.trim()).map(Cow::Borrowed))
            }
            Self::Cookie(cookie) => Ok(headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(n, _)| *n == &**cookie)
                .and_then(|(_, v)| non_empty(v.trim().trim_matches('"')))
                .map(Cow::Borrowed)),
            Self::Query(param) => Ok(uri
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter_map(|pair| pair.split_once('='))
                .find(|(n, _)| *n == &**param)
                .and_then(|(_, v)| non_empty(v))
                .map(percent_decode)),
        }
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// JWTs are base64url and dots, which need no escaping; a client that
/// escaped them anyway still works. Invalid escapes are kept as they are
/// (the token then fails as malformed).
fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn bearer() -> TokenSource {
        TokenSource::Header {
            name: http::header::AUTHORIZATION,
            prefix: Some("Bearer ".into()),
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let uri = Uri::from_static("/");
        let h = headers(&[("authorization", "bearer  abc.def.ghi ")]);
        assert_eq!(
            bearer().find(&uri, &h).unwrap().as_deref(),
            Some("abc.def.ghi")
        );
        let h = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(bearer().find(&uri, &h).unwrap(), None);
        let h = headers(&[("authorization", "Bearer ")]);
        assert_eq!(bearer().find(&uri, &h).unwrap(), None);
        assert_eq!(bearer().find(&uri, &HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn a_repeated_token_header_is_malformed() {
        let uri = Uri::from_static("/");
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        let err = bearer().find(&uri, &h).unwrap_err();
        assert_eq!(err.kind, AuthnErrorKind::Malformed);
    }

    #[test]
    fn named_header_cookie_and_query() {
        let uri = Uri::from_static("/p?x=1&access_token=a.b%2Ec&y=2");
        let h = headers(&[
            ("x-token", "t.o.k"),
            ("cookie", "theme=dark; session=\"c.o.o\""),
            ("cookie", "other=1"),
        ]);
        let header = TokenSource::Header {
            name: HeaderName::from_static("x-token"),
            prefix: None,
        };
        assert_eq!(header.find(&uri, &h).unwrap().as_deref(), Some("t.o.k"));
        let cookie = TokenSource::Cookie("session".into());
        assert_eq!(cookie.find(&uri, &h).unwrap().as_deref(), Some("c.o.o"));
        let query = TokenSource::Query("access_token".into());
        assert_eq!(query.find(&uri, &h).unwrap().as_deref(), Some("a.b.c"));
        let missing = TokenSource::Query("token".into());
        assert_eq!(missing.find(&uri, &h).unwrap(), None);
    }
}
