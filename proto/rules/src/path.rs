//! Request paths as JWT rules see them.
//!
//! Rules match the path the way the app will understand it, or not at all:
//! percent-encoded unreserved characters are decoded first (`/%61dmin` is
//! `/admin`), and a path with dot segments, `//`, backslashes or an encoded
//! slash is refused, since whether `/public/../admin` is public would
//! otherwise depend on how the app normalises it. A rule's own path must be
//! normalized already ([`crate::jwt::check_rule_path`]), or it could never
//! match a request.

use std::borrow::Cow;

/// The path as rules see it: percent-encoded unreserved characters decoded
/// (RFC 3986 §6.2.2.2). `None` if it has dot segments (also encoded), empty
/// segments, backslashes or an encoded slash or backslash. Allocates only
/// for a path with escapes.
pub fn normalized(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form requests have no segments.
        return matches!(path, "" | "*").then_some(Cow::Borrowed(path));
    }
    let path = if path.contains('%') {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    segments_are_plain(&path).then_some(path)
}

fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            match byte {
                b'/' | b'\\' => return None,
                b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                    out.push(char::from(b));
                }
                _ => out.push_str(&path[i..i + 3]),
            }
            i += 3;
            continue;
        }
        // Copy up to the next '%' in one go ('%' is ASCII, so both ends
        // are char boundaries).
        let next = bytes[i + 1..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(bytes.len(), |n| i + 1 + n);
        out.push_str(&path[i..next]);
        i = next;
    }
    Some(out)
}

/// No `.` or `..` segment, no empty segment (a trailing `/` is fine), no
/// backslash.
fn segments_are_plain(path: &str) -> bool {
    let rest = &path[1..];
    if rest.is_empty() {
        return true;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    !rest.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_the_app_could_read_differently_are_refused() {
        for bad in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/.%2E/admin",
            "/./admin",
            "/admin/.",
            "//admin",
            "/a//b",
            "/public%2f..%2fadmin",
            "/public%2Fadmin",
            "/a\\b",
            "/a%5cb",
            "relative",
        ] {
            assert_eq!(normalized(bad), None, "{bad}");
        }
        for good in [
            "/",
            "/a",
            "/a/",
            "/a/b.c",
            "/a/...",
            "/.well-known/x",
            "*",
            "",
        ] {
            assert_eq!(normalized(good).as_deref(), Some(good), "{good}");
        }
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded_for_matching() {
        assert_eq!(normalized("/%61dmin/x").as_deref(), Some("/admin/x"));
        // Reserved characters stay encoded.
        assert_eq!(normalized("/a%3Fb%20c").as_deref(), Some("/a%3Fb%20c"));
        assert_eq!(normalized("/%zz").as_deref(), Some("/%zz"));
    }
}
