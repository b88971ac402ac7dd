//! A `CachePolicy` message compiled, every value checked
//! (`weft_rules::cache`), every problem reported at its field for the NACK.

use std::time::Duration;

use weft_proto::config::v1 as pb;
use weft_rules::cache as rules;

use super::policy::CachePolicy;
use crate::nack::Errors;

/// Compiles `p`, reporting at `at` (`virtual_hosts[0].routes[1].cache`,
/// `cache`); `None` when anything is wrong.
pub(crate) fn compile(p: &pb::CachePolicy, at: &str, errs: &mut Errors) -> Option<CachePolicy> {
    let before = errs.0.len();
    let max_entries = p.max_entries.unwrap_or(rules::DEFAULT_MAX_ENTRIES);
    if let Err(reason) = rules::check_max_entries(max_entries) {
        errs.at(&format!("{at}.max_entries"), reason);
    }
    let max_bytes = p.max_bytes.unwrap_or(rules::DEFAULT_MAX_BYTES);
    if let Err(reason) = rules::check_max_bytes(max_bytes) {
        errs.at(&format!("{at}.max_bytes"), reason);
    }
    let max_body_bytes = p.max_body_bytes.unwrap_or(rules::DEFAULT_MAX_BODY_BYTES);
    if let Err(reason) = rules::check_max_body_bytes(max_body_bytes, max_bytes) {
        errs.at(&format!("{at}.max_body_bytes"), reason);
    }
    let default_ttl = match p.default_ttl.as_ref().map(weft_rules::duration::from_proto) {
        None => Duration::ZERO,
        Some(Ok(ttl)) => {
            if let Err(reason) = rules::check_default_ttl(ttl) {
                errs.at(&format!("{at}.default_ttl"), reason);
            }
            ttl
        }
        Some(Err(reason)) => {
            errs.at(&format!("{at}.default_ttl"), reason);
            Duration::ZERO
        }
    };
    let mut methods = Vec::with_capacity(p.methods.len());
    for (i, name) in p.methods.iter().enumerate() {
        match rules::check_method(name, &methods) {
            Ok(method) => methods.push(method),
            Err(reason) => errs.at(&format!("{at}.methods[{i}]"), reason),
        }
    }
    if methods.is_empty() {
        methods = vec![http::Method::GET, http::Method::HEAD];
    }
    if errs.0.len() > before {
        return None;
    }
    Some(CachePolicy::new(
        max_entries,
        max_bytes,
        max_body_bytes,
        default_ttl,
        methods,
    ))
}
