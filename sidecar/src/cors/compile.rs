//! A `CorsPolicy` message compiled, every value checked (`weft_rules::cors`
//! and the header, method and regex rules), every problem reported at its
//! field for the NACK.

use std::time::Duration;

use http::HeaderValue;
use weft_proto::config::v1 as pb;

use super::policy::{CorsPolicy, OriginMatch};
use crate::nack::Errors;

/// The answer's method list when the policy names none: the methods a page
/// may use without a preflight's permission.
const SAFELISTED_METHODS: &str = "GET, HEAD, POST";

/// Compiles `p`, reporting at `at` (`virtual_hosts[0].routes[1].cors`,
/// `cors`); `None` when anything is wrong.
pub(crate) fn compile(p: &pb::CorsPolicy, at: &str, errs: &mut Errors) -> Option<CorsPolicy> {
    use pb::origin_matcher::Pattern;
    let before = errs.0.len();
    if let Err(reason) = weft_rules::cors::check_origins_listed(p.allow_origins.len()) {
        errs.at(&format!("{at}.allow_origins"), reason);
    }
    let mut any_origin = false;
    let mut origins = Vec::with_capacity(p.allow_origins.len());
    for (i, origin) in p.allow_origins.iter().enumerate() {
        let field = format!("{at}.allow_origins[{i}]");
        match &origin.pattern {
            Some(Pattern::Any(true)) => any_origin = true,
            Some(Pattern::Exact(exact)) => match weft_rules::cors::check_exact_origin(exact) {
                Ok(()) => origins.push(OriginMatch::Exact(exact.clone())),
                Err(reason) => errs.at(&field, reason),
            },
            Some(Pattern::Prefix(prefix)) if !prefix.is_empty() => {
                origins.push(OriginMatch::Prefix(prefix.clone()));
            }
            Some(Pattern::Suffix(suffix)) if !suffix.is_empty() => {
                origins.push(OriginMatch::Suffix(suffix.clone()));
            }
            Some(Pattern::Regex(regex)) => match weft_rules::regex::compile_full(regex) {
                Ok(regex) => origins.push(OriginMatch::Regex(regex)),
                Err(reason) => errs.at(&format!("{field}.regex"), reason),
            },
            _ => errs.at(
                &field,
                "no pattern: give exact, prefix, suffix, regex or any",
            ),
        }
    }
    if let Err(reason) = weft_rules::cors::check_credentials(any_origin, p.allow_credentials) {
        errs.at(&format!("{at}.allow_credentials"), reason);
    }
    let mut methods = Vec::with_capacity(p.allow_methods.len());
    for (i, method) in p.allow_methods.iter().enumerate() {
        match weft_rules::method::check(method) {
            Ok(method) => methods.push(method.to_string()),
            Err(reason) => errs.at(&format!("{at}.allow_methods[{i}]"), reason),
        }
    }
    let allow_headers = header_list(&p.allow_headers, &format!("{at}.allow_headers"), errs);
    let expose_headers = header_list(&p.expose_headers, &format!("{at}.expose_headers"), errs);
    let max_age = match p.max_age.as_ref().map(weft_rules::duration::from_proto) {
        None => None,
        Some(Ok(max_age)) => match weft_rules::cors::check_max_age(max_age) {
            Ok(()) => Some(seconds(max_age)),
            Err(reason) => {
                errs.at(&format!("{at}.max_age"), reason);
                None
            }
        },
        Some(Err(reason)) => {
            errs.at(&format!("{at}.max_age"), reason);
            None
        }
    };
    if errs.0.len() > before {
        return None;
    }
    let allow_methods = if methods.is_empty() {
        HeaderValue::from_static(SAFELISTED_METHODS)
    } else {
        joined(&methods)
    };
    Some(CorsPolicy {
        any_origin,
        origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: p.allow_credentials,
    })
}

/// Header names, checked and lower-cased, as one comma-separated value;
/// `None` for an empty list.
fn header_list(names: &[String], at: &str, errs: &mut Errors) -> Option<HeaderValue> {
    let mut checked = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match weft_rules::header::check_name(name) {
            Ok(name) => checked.push(name.as_str().to_owned()),
            Err(reason) => errs.at(&format!("{at}[{i}]"), reason),
        }
    }
    (!checked.is_empty()).then(|| joined(&checked))
}

/// `a, b, c`: tokens only, so always a valid header value.
fn joined(items: &[String]) -> HeaderValue {
    HeaderValue::from_str(&items.join(", ")).expect("tokens joined by \", \" are a header value")
}

fn seconds(max_age: Duration) -> HeaderValue {
    HeaderValue::from(max_age.as_secs().max(1))
}
