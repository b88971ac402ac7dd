//! A compiled compression policy: the encodings in order, the levels, and
//! which responses qualify, made once when the policy arrives.

use http::HeaderValue;
use weft_rules::compression::Encoding;

/// A media range of the policy: `type/subtype`, or `type/*` (no subtype).
#[derive(Debug)]
pub(super) struct MediaRange {
    pub(super) kind: String,
    pub(super) subtype: Option<String>,
}

/// One route's (or one service's) compression policy.
#[derive(Debug)]
pub struct CompressionPolicy {
    /// Most preferred first; never empty.
    pub(super) encodings: Vec<Encoding>,
    pub(super) min_length: u64,
    pub(super) content_types: Vec<MediaRange>,
    pub(super) gzip_level: u32,
    pub(super) brotli_quality: u32,
    pub(super) zstd_level: i32,
    pub(super) decompress_requests: bool,
}

impl CompressionPolicy {
    /// The level `encoding` is run at.
    pub(super) fn level(&self, encoding: Encoding) -> i32 {
        match encoding {
            // Both are checked to small ranges (at most 9 and 11).
            Encoding::Gzip => self.gzip_level as i32,
            Encoding::Br => self.brotli_quality as i32,
            Encoding::Zstd => self.zstd_level,
        }
    }

    /// Whether a response of `content_type` is compressed: its media type
    /// (parameters left out, compared without case) is listed.
    pub(super) fn compresses(&self, content_type: &HeaderValue) -> bool {
        let Ok(value) = content_type.to_str() else {
            return false;
        };
        let essence = value.split(';').next().unwrap_or("").trim();
        let Some((kind, subtype)) = essence.split_once('/') else {
            return false;
        };
        self.content_types.iter().any(|range| {
            range.kind.eq_ignore_ascii_case(kind)
                && range
                    .subtype
                    .as_ref()
                    .is_none_or(|listed| listed.eq_ignore_ascii_case(subtype))
        })
    }
}
