//! Durations: the one text form (`250ms`, `2s`, `1.5m`, `1h`) that
//! documents, the sidecar's settings and its JWT policy write, the same form
//! with days (`3650d`) for certificate lifetimes on the agent's and
//! weftctl's flags, and the one conversion from and to the protocol's
//! `google.protobuf.Duration`.

use std::time::Duration;

/// The units a text form accepts, and the hint its errors end with (which
/// names exactly those units, so an operator sees what to write instead).
struct Units {
    nanos_per_unit: &'static [(&'static str, u128)],
    hint: &'static str,
}

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Documents' units. Days are left out on purpose: the JSON Schema's
/// `duration` pattern allows only these, and a document's timeout in days
/// would be a typo.
const DOCUMENT_UNITS: Units = Units {
    nanos_per_unit: &[
        ("ms", 1_000_000),
        ("s", NANOS_PER_SECOND),
        ("m", 60 * NANOS_PER_SECOND),
        ("h", 3_600 * NANOS_PER_SECOND),
    ],
    hint: "expected a number and a unit (ms, s, m, h), like \"250ms\", \"2s\" or \"1m\"",
};

/// Lifetimes' units: a CA root lives for years, so days too.
const LIFETIME_UNITS: Units = Units {
    nanos_per_unit: &[
        ("ms", 1_000_000),
        ("s", NANOS_PER_SECOND),
        ("m", 60 * NANOS_PER_SECOND),
        ("h", 3_600 * NANOS_PER_SECOND),
        ("d", 86_400 * NANOS_PER_SECOND),
    ],
    hint: "expected a number and a unit (ms, s, m, h, d), like \"24h\" or \"3650d\"",
};

/// Parses `<number>[.<fraction>]<unit>` with unit `ms`, `s`, `m` or `h`.
/// Exact integer arithmetic (no float rounding: "0.1s" is exactly 100 ms);
/// sub-nanosecond fractions are truncated. Zero is accepted here: whether 0
/// makes sense is the caller's decision ([`check_positive`]).
pub fn parse(text: &str) -> Result<Duration, String> {
    parse_with(text, &DOCUMENT_UNITS)
}

/// A certificate's lifetime (`--leaf-ttl`, `weftctl ca init --ttl`):
/// [`parse`]'s form with `d` (24 h) as well, like "3650d". No bare number:
/// seconds would be a surprising unit for a lifetime. At most 100 years
/// (36500d): longer is a typo, and far past any client's date handling.
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let lifetime = parse_with(text, &LIFETIME_UNITS)?;
    if lifetime > Duration::from_secs(86_400 * 36_500) {
        return Err(format!("`{text}` is longer than 100 years (36500d)"));
    }
    Ok(lifetime)
}

fn parse_with(text: &str, units: &Units) -> Result<Duration, String> {
    let hint = units.hint;
    let unit_start = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: {hint}"))?;
    let (number, unit) = text.split_at(unit_start);
    let unit_nanos = units
        .nanos_per_unit
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, nanos)| *nanos)
        .ok_or_else(|| format!("`{text}` has an unknown unit `{unit}`: {hint}"))?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) || number.ends_with('.') {
        return Err(format!("`{text}` is not a number and a unit: {hint}"));
    }
    let too_long = || format!("`{text}` is too long a duration");
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
    // Fraction digits beyond 18 cannot add a nanosecond for any of our
    // units (a day is under 10^14 ns), and 18 digits times a day's
    // nanoseconds still fits a u128.
    let fraction = &fraction[..fraction.len().min(18)];
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let numerator: u128 = fraction.parse().map_err(|_| too_long())?;
        nanos += numerator * unit_nanos / scale;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// A setting's duration: [`parse`]'s form, or a bare number of seconds, as
/// the sidecar's flags and its JWT policy's text have always taken it. At
/// most a year: a longer timeout or interval is a typo.
pub fn parse_setting(text: &str) -> Result<Duration, String> {
    let bare_seconds = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let duration = if bare_seconds {
        parse(&format!("{text}s"))
    } else {
        parse(text)
    }?;
    if duration > Duration::from_secs(86_400 * 365) {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(duration)
}

/// Where a duration must not be 0 (a timeout of 0 would fail every request).
pub fn check_positive(duration: Duration) -> Result<Duration, String> {
    if duration.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(duration)
}

/// The protobuf form of a duration. Durations from [`parse`] are at most
/// u64::MAX nanoseconds (about 584 years), so the seconds always fit.
pub fn to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration as a [`Duration`]: neither part negative, nanos
/// below one second (protobuf's own rule for a normalized duration).
pub fn from_proto(duration: &prost_types::Duration) -> Result<Duration, String> {
    match (
        u64::try_from(duration.seconds),
        u32::try_from(duration.nanos),
    ) {
        (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => Ok(Duration::new(seconds, nanos)),
        _ => Err(format!(
            "invalid duration {}s {}ns (must be non-negative)",
            duration.seconds, duration.nanos
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_fractions_parse_exactly() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_rejected_with_a_hint() {
        for text in [
            "", "2", "s", "2x", "2 s", "-1s", ".5s", "1.s", "1..2s", "2S",
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains("like \"250ms\""), "{text}: {error}");
        }
        assert!(
            parse("99999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn documents_do_not_take_days() {
        let error = parse("1d").unwrap_err();
        assert!(error.contains("(ms, s, m, h)"), "{error}");
        assert!(parse_setting("1d").is_err());
    }

    #[test]
    fn lifetimes_take_days_but_no_bare_seconds_nor_spelled_out_units() {
        for (text, seconds) in [
            ("3650d", 3650 * 86_400),
            ("24h", 24 * 3600),
            ("1.5d", 36 * 3600),
            ("90m", 90 * 60),
            ("36500d", 36_500 * 86_400),
        ] {
            assert_eq!(
                parse_lifetime(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for text in ["30days", "10years", "1w", "", "5", "-1d", "1D", "d"] {
            let error = parse_lifetime(text).unwrap_err();
            assert!(error.contains("(ms, s, m, h, d)"), "{text}: {error}");
        }
        let error = parse_lifetime("36501d").unwrap_err();
        assert!(error.contains("longer than 100 years"), "{error}");
    }

    #[test]
    fn zero_is_refused_where_a_positive_duration_is_needed() {
        assert_eq!(
            check_positive(Duration::ZERO).unwrap_err(),
            "must be greater than 0"
        );
        assert!(check_positive(Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn proto_form_round_trips_and_refuses_negative_parts() {
        let proto = to_proto(Duration::from_millis(1500));
        assert_eq!((proto.seconds, proto.nanos), (1, 500_000_000));
        assert_eq!(from_proto(&proto), Ok(Duration::from_millis(1500)));
        for (seconds, nanos) in [(-1, 0), (0, -1), (0, 1_000_000_000)] {
            let reason = from_proto(&prost_types::Duration { seconds, nanos }).unwrap_err();
            assert!(reason.starts_with("invalid duration"), "{reason}");
        }
    }
}
