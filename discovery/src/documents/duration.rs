//! Durations as documents write them: a number and a unit (`250ms`, `2s`,
//! `1.5m`, `1h`), the form the schema's `duration` pattern accepts.

use std::time::Duration;

/// Parses `<number>[.<fraction>]<unit>` with unit `ms`, `s`, `m` or `h`.
/// Exact integer arithmetic (no float rounding: "0.1s" is exactly 100 ms);
/// sub-nanosecond fractions are truncated. Zero is accepted here: whether 0
/// makes sense is the caller's decision.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint = "expected a number and a unit (ms, s, m, h), like \"250ms\", \"2s\" or \"1m\"";
    let unit_start = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: {hint}"))?;
    let (number, unit) = text.split_at(unit_start);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("`{text}` has an unknown unit `{unit}`: {hint}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) || number.ends_with('.') {
        return Err(format!("`{text}` is not a number and a unit: {hint}"));
    }
    let too_long = || format!("`{text}` is too long a duration");
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
    // Fraction digits beyond 18 cannot add a nanosecond for any of our units.
    let fraction = &fraction[..fraction.len().min(18)];
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let numerator: u128 = fraction.parse().map_err(|_| too_long())?;
        nanos += numerator * unit_nanos / scale;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// The protobuf form of a duration. Durations come from [`parse_duration`]
/// (at most u64::MAX nanoseconds, about 584 years), so the seconds always fit.
pub(crate) fn to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// serde support: a duration field written as a string.
pub(crate) mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_fractions_parse_exactly() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_rejected_with_a_hint() {
        for text in [
            "", "2", "s", "2x", "2 s", "-1s", ".5s", "1.s", "1..2s", "2S",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("like \"250ms\""), "{text}: {error}");
        }
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn proto_form_splits_seconds_and_nanos() {
        let proto = to_proto(Duration::from_millis(1500));
        assert_eq!((proto.seconds, proto.nanos), (1, 500_000_000));
    }
}
