//! Compression policies: which encodings, how hard, for which responses.

/// The content codings a proxy compresses with (RFC 9110 §8.4.1), in the
/// default order of preference: zstd and brotli are smaller than gzip at
/// the default levels, gzip is what every client speaks.
pub const ENCODINGS: [&str; 3] = ["zstd", "br", "gzip"];

/// The default minimum length: below about a kilobyte the encoding's own
/// header and the lost `Content-Length` outweigh the bytes saved (nginx's
/// `gzip_min_length` advice, Envoy's default of 30 is too low for brotli).
pub const DEFAULT_MIN_LENGTH: u64 = 1024;

/// A minimum above this would never compress what a proxy streams; a
/// section that should not compress is better removed.
pub const MAX_MIN_LENGTH: u64 = 1 << 30;

/// The media types compressed when a policy lists none: text and the
/// structured text formats. Images, audio, video and archives are already
/// compressed (SVG is XML).
pub const DEFAULT_CONTENT_TYPES: [&str; 8] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "image/svg+xml",
];

/// Default levels: gzip's own default; brotli 4 and zstd 3 compress
/// better than gzip 6 at about its speed (brotli 11 is for static files,
/// far too slow for a stream).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
pub const DEFAULT_BROTLI_QUALITY: u32 = 4;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// One coding a policy may list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gzip,
    Br,
    Zstd,
}

impl Encoding {
    /// The token of `Content-Encoding` and `Accept-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Br => "br",
            Self::Zstd => "zstd",
        }
    }

    /// The default order of preference ([`ENCODINGS`]).
    pub fn defaults() -> [Self; 3] {
        [Self::Zstd, Self::Br, Self::Gzip]
    }
}

/// An encoding's name as a policy writes it.
pub fn check_encoding(name: &str) -> Result<Encoding, String> {
    match name {
        "gzip" => Ok(Encoding::Gzip),
        "br" => Ok(Encoding::Br),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err("not an encoding the proxy speaks: gzip, br or zstd".into()),
    }
}

/// An encoding listed twice: the order is the preference, so a second
/// mention is a mistake in it.
pub fn check_no_duplicate(encoding: Encoding, earlier: &[Encoding]) -> Result<(), String> {
    if earlier.contains(&encoding) {
        return Err(format!("`{}` is listed twice", encoding.as_str()));
    }
    Ok(())
}

pub fn check_min_length(min_length: u64) -> Result<(), String> {
    if min_length > MAX_MIN_LENGTH {
        return Err(
            "must be at most 1073741824 (1 GiB); to compress nothing, remove the section".into(),
        );
    }
    Ok(())
}

pub fn check_gzip_level(level: u32) -> Result<(), String> {
    if !(1..=9).contains(&level) {
        return Err("must be from 1 (fastest) to 9 (smallest)".into());
    }
    Ok(())
}

pub fn check_brotli_quality(quality: u32) -> Result<(), String> {
    if quality > 11 {
        return Err("must be from 0 (fastest) to 11 (smallest)".into());
    }
    Ok(())
}

/// zstd's ordinary levels; the "ultra" ones above 19 need a window too
/// large for a proxy's per-response memory.
pub fn check_zstd_level(level: i32) -> Result<(), String> {
    if !(1..=19).contains(&level) {
        return Err("must be from 1 (fastest) to 19 (smallest)".into());
    }
    Ok(())
}

/// A media type as `type/subtype` or `type/*`, lower case, without
/// parameters: what a response's `Content-Type` is compared with.
pub fn check_content_type(media_type: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "`{media_type}` is not a media type: `type/subtype` or `type/*`, lower case, \
             without parameters"
        ))
    };
    let Some((kind, subtype)) = media_type.split_once('/') else {
        return refuse();
    };
    // RFC 9110 §5.6.2's token characters, less upper case.
    let token = |part: &str| {
        !part.is_empty()
            && part.bytes().all(|b| {
                (b.is_ascii_graphic() && !b.is_ascii_uppercase())
                    && !b"\"(),/:;<=>?@[\\]{}".contains(&b)
            })
    };
    if !token(kind) || !(subtype == "*" || token(subtype)) || kind == "*" {
        return refuse();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_the_three_tokens_each_listed_once() {
        for name in ENCODINGS {
            assert_eq!(check_encoding(name).unwrap().as_str(), name);
        }
        for bad in ["deflate", "GZIP", "identity", "*", ""] {
            assert!(check_encoding(bad).is_err(), "{bad}");
        }
        let earlier = [Encoding::Gzip];
        assert!(check_no_duplicate(Encoding::Gzip, &earlier).is_err());
        assert!(check_no_duplicate(Encoding::Br, &earlier).is_ok());
    }

    #[test]
    fn levels_and_the_minimum_are_bounded() {
        assert!(check_gzip_level(0).is_err());
        assert!(check_gzip_level(9).is_ok());
        assert!(check_gzip_level(10).is_err());
        assert!(check_brotli_quality(0).is_ok());
        assert!(check_brotli_quality(12).is_err());
        assert!(check_zstd_level(0).is_err());
        assert!(check_zstd_level(19).is_ok());
        assert!(check_zstd_level(22).is_err());
        assert!(check_min_length(0).is_ok());
        assert!(check_min_length(MAX_MIN_LENGTH + 1).is_err());
    }

    #[test]
    fn content_types_are_type_and_subtype_or_a_whole_type() {
        for good in DEFAULT_CONTENT_TYPES
            .iter()
            .copied()
            .chain(["text/*", "application/vnd.api+json"])
        {
            assert!(check_content_type(good).is_ok(), "{good}");
        }
        for bad in [
            "text",
            "*/*",
            "text/",
            "/json",
            "Text/HTML",
            "text/html; charset=utf-8",
            "a b/c",
        ] {
            assert!(check_content_type(bad).is_err(), "{bad}");
        }
    }
}
