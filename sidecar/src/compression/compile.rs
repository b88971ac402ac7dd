//! A `CompressionPolicy` message compiled, every value checked
//! (`weft_rules::compression`), every problem reported at its field for
//! the NACK.

use weft_proto::config::v1 as pb;
use weft_rules::compression::{self as rules, Encoding};

use super::policy::{CompressionPolicy, MediaRange};
use crate::nack::Errors;

/// Compiles `p`, reporting at `at` (`virtual_hosts[0].routes[1].compression`,
/// `compression`); `None` when anything is wrong.
pub(crate) fn compile(
    p: &pb::CompressionPolicy,
    at: &str,
    errs: &mut Errors,
) -> Option<CompressionPolicy> {
    use pb::compression_policy::Encoding as Wire;
    let before = errs.0.len();
    let mut encodings = Vec::with_capacity(p.encodings.len());
    for (i, &value) in p.encodings.iter().enumerate() {
        let field = format!("{at}.encodings[{i}]");
        let name = match Wire::try_from(value) {
            Ok(Wire::Gzip) => "gzip",
            Ok(Wire::Br) => "br",
            Ok(Wire::Zstd) => "zstd",
            Ok(Wire::Unspecified) | Err(_) => "",
        };
        match rules::check_encoding(name) {
            Ok(encoding) => {
                if let Err(reason) = rules::check_no_duplicate(encoding, &encodings) {
                    errs.at(&field, reason);
                }
                encodings.push(encoding);
            }
            Err(reason) => errs.at(&field, reason),
        }
    }
    if encodings.is_empty() {
        encodings = Encoding::defaults().to_vec();
    }
    let min_length = p.min_length.unwrap_or(rules::DEFAULT_MIN_LENGTH);
    if let Err(reason) = rules::check_min_length(min_length) {
        errs.at(&format!("{at}.min_length"), reason);
    }
    let mut content_types = Vec::with_capacity(p.content_types.len());
    for (i, media_type) in p.content_types.iter().enumerate() {
        match rules::check_content_type(media_type) {
            Ok(()) => content_types.push(range(media_type)),
            Err(reason) => errs.at(&format!("{at}.content_types[{i}]"), reason),
        }
    }
    if content_types.is_empty() {
        content_types = rules::DEFAULT_CONTENT_TYPES
            .iter()
            .map(|t| range(t))
            .collect();
    }
    let gzip_level = p.gzip_level.unwrap_or(rules::DEFAULT_GZIP_LEVEL);
    if let Err(reason) = rules::check_gzip_level(gzip_level) {
        errs.at(&format!("{at}.gzip_level"), reason);
    }
    let brotli_quality = p.brotli_quality.unwrap_or(rules::DEFAULT_BROTLI_QUALITY);
    if let Err(reason) = rules::check_brotli_quality(brotli_quality) {
        errs.at(&format!("{at}.brotli_quality"), reason);
    }
    let zstd_level = p.zstd_level.unwrap_or(rules::DEFAULT_ZSTD_LEVEL);
    if let Err(reason) = rules::check_zstd_level(zstd_level) {
        errs.at(&format!("{at}.zstd_level"), reason);
    }
    if errs.0.len() > before {
        return None;
    }
    Some(CompressionPolicy {
        encodings,
        min_length,
        content_types,
        gzip_level,
        brotli_quality,
        zstd_level,
        decompress_requests: p.decompress_requests,
    })
}

/// A checked `type/subtype` or `type/*`.
fn range(media_type: &str) -> MediaRange {
    let (kind, subtype) = media_type.split_once('/').unwrap_or((media_type, "*"));
    MediaRange {
        kind: kind.to_owned(),
        subtype: (subtype != "*").then(|| subtype.to_owned()),
    }
}
