//! Which encoding a request accepts (RFC 9110 §12.5.3): each coding's
//! q-value, `*` for the codings not named, `q=0` refusing; the highest
//! q-value wins, ties go to the policy's order, and an `identity` the
//! client weighs above every coding the policy has means no compression.

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;
use weft_rules::compression::Encoding;

/// A q-value in thousandths (`q=0.5` is 500).
type Weight = u16;

const FULL: Weight = 1000;

/// The encoding to answer `headers`' request with, of `preference` (most
/// preferred first); `None`: send the response as it is. A request without
/// `Accept-Encoding` gets none: the RFC lets the server choose any, but
/// a client that says nothing may not decode anything (Envoy and nginx
/// read it the same way).
pub(super) fn choose(headers: &HeaderMap, preference: &[Encoding]) -> Option<Encoding> {
    let mut named: [Option<Weight>; 3] = [None; 3];
    let mut any = None;
    let mut identity = None;
    let mut present = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        present = true;
        let Ok(list) = value.to_str() else {
            continue;
        };
        for member in list.split(',') {
            let mut parts = member.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let Some(weight) = weight(parts) else {
                // A malformed weight: the member is ignored, not guessed.
                continue;
            };
            let slot = if coding == "*" {
                &mut any
            } else if coding.eq_ignore_ascii_case("identity") {
                &mut identity
            } else {
                match encoding(coding) {
                    Some(encoding) => &mut named[index(encoding)],
                    None => continue,
                }
            };
            // Named twice: the higher weight, as a lenient reading.
            *slot = Some(slot.map_or(weight, |earlier: Weight| earlier.max(weight)));
        }
    }
    if !present {
        return None;
    }
    let mut best: Option<(Encoding, Weight)> = None;
    for &encoding in preference {
        let weight = named[index(encoding)].or(any).unwrap_or(0);
        if weight > 0 && best.is_none_or(|(_, top)| weight > top) {
            best = Some((encoding, weight));
        }
    }
    let (encoding, weight) = best?;
    if identity.or(any).is_some_and(|plain| plain > weight) {
        return None;
    }
    Some(encoding)
}

/// A coding token (case-insensitive; `x-gzip` is gzip, RFC 9110 §8.4.1.3).
fn encoding(coding: &str) -> Option<Encoding> {
    [
        ("gzip", Encoding::Gzip),
        ("x-gzip", Encoding::Gzip),
        ("br", Encoding::Br),
        ("zstd", Encoding::Zstd),
    ]
    .into_iter()
    .find(|(name, _)| coding.eq_ignore_ascii_case(name))
    .map(|(_, encoding)| encoding)
}

fn index(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gzip => 0,
        Encoding::Br => 1,
        Encoding::Zstd => 2,
    }
}

/// The member's weight from its parameters: `q=` as RFC 9110 §12.4.2
/// writes it (`0`, `0.5`, `1.000`, at most three decimals); no `q`: 1.
fn weight<'a>(parameters: impl Iterator<Item = &'a str>) -> Option<Weight> {
    for parameter in parameters {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = format!("{fraction:0<3}").parse::<Weight>().ok()?;
        return match whole {
            "0" => Some(thousandths),
            "1" if thousandths == 0 => Some(FULL),
            _ => None,
        };
    }
    Some(FULL)
}
