//! The conformance rules against generated input (proptest, a bounded
//! number of cases per run so CI time stays fixed): hosts built from
//! RFC 3986's grammar are accepted and hyper's URI parser agrees; a byte
//! outside the grammar is refused; any transfer-coding list gets the
//! verdict RFC 9112 §6.1 gives it; and no header set makes `check` panic
//! or lets two Host fields through.

use http::{Request, Uri, Version};
use proptest::prelude::*;

use super::*;

/// Cases per property: enough to walk the grammar's branches, few enough
/// that the whole file runs in well under a second.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // A failure prints its minimal input; nothing is written into the
        // source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const UNRESERVED_PUNCT: &[u8] = b"-._~";
const SUB_DELIMS: &[u8] = b"!$&'()*+,;=";

/// `reg-name`: unreserved and sub-delims, non-empty (Weft refuses the
/// pct-encoded octets RFC 3986 also allows, as hyper does).
fn reg_name() -> impl Strategy<Value = String> {
    let plain = prop_oneof![
        prop::char::range('a', 'z').prop_map(String::from),
        prop::char::range('A', 'Z').prop_map(String::from),
        prop::char::range('0', '9').prop_map(String::from),
        prop::sample::select(UNRESERVED_PUNCT).prop_map(|b| char::from(b).to_string()),
        prop::sample::select(SUB_DELIMS).prop_map(|b| char::from(b).to_string()),
    ];
    prop::collection::vec(plain, 1..24).prop_map(|parts| parts.concat())
}

fn ipv4() -> impl Strategy<Value = String> {
    prop::array::uniform4(any::<u8>()).prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}"))
}

fn ipv6_literal() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u16>(), 8).prop_map(|groups| {
        let text: Vec<String> = groups.iter().map(|g| format!("{g:x}")).collect();
        format!("[{}]", text.join(":"))
    })
}

/// `uri-host [ ":" port ]` as RFC 3986 builds it.
fn grammar_host() -> impl Strategy<Value = String> {
    let host = prop_oneof![reg_name(), ipv4(), ipv6_literal()];
    let port = prop::option::of(0u16..=u16::MAX);
    (host, port).prop_map(|(host, port)| match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// Bytes a Host may never hold outside an IP literal (and that make no
/// port either): whitespace, delimiters of other URI parts, quotes, and
/// `%` (a pct-encoded octet, refused as hyper refuses it).
const NEVER_IN_HOST: &[u8] = b" \t@/?#\"<>\\^`{|}%";

fn h1_with_hosts(hosts: &[&str]) -> Request<()> {
    let mut builder = Request::builder().version(Version::HTTP_11).uri("/");
    for host in hosts {
        builder = builder.header("host", *host);
    }
    builder.body(()).expect("a request of valid parts")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_host_the_grammar_builds_is_accepted_and_hyper_parses_it(host in grammar_host()) {
        prop_assert!(valid_host(host.as_bytes(), false), "refused {host}");
        prop_assert!(
            http::uri::Authority::try_from(host.as_str()).is_ok(),
            "accepted {host}, which hyper's URI parser refuses"
        );
        prop_assert_eq!(check(&h1_with_hosts(&[&host])), Ok(()));
    }

    #[test]
    fn a_byte_outside_the_grammar_makes_a_host_invalid(
        name in reg_name(),
        bad in prop::sample::select(NEVER_IN_HOST),
        at in any::<prop::sample::Index>(),
    ) {
        let mut host = name.into_bytes();
        let at = at.index(host.len() + 1);
        host.insert(at, bad);
        prop_assert!(!valid_host(&host, false), "accepted {:?}", String::from_utf8_lossy(&host));
    }

    #[test]
    fn two_host_lines_are_refused_whatever_they_hold(
        first in grammar_host(),
        second in prop_oneof![grammar_host(), Just(String::new())],
        h2 in any::<bool>(),
    ) {
        let version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let uri: Uri = if h2 { format!("http://{first}/").parse().expect("a grammar host") } else { Uri::from_static("/") };
        let request = Request::builder()
            .version(version)
            .uri(uri)
            .header("host", first.as_str())
            .header("host", second.as_str())
            .body(())
            .expect("valid parts");
        prop_assert_eq!(check(&request), Err(TWO_HOSTS));
    }

    #[test]
    fn a_transfer_coding_list_gets_the_verdict_rfc_9112_gives_it(
        lines in prop::collection::vec(
            prop::collection::vec(
                (
                    prop::sample::select(&["chunked", "CHUNKED", "Chunked", "gzip", "deflate", "identity", "x-custom"][..]),
                    prop::sample::select(&["", " ", "\t", "  "][..]),
                ),
                1..4,
            ),
            1..3,
        ),
    ) {
        let mut builder = Request::builder().version(Version::HTTP_11).uri("/").header("host", "users");
        let mut chunked = 0;
        let mut other = false;
        for line in &lines {
            let value: Vec<String> = line.iter().map(|(coding, space)| format!("{space}{coding}{space}")).collect();
            builder = builder.header("transfer-encoding", value.join(","));
            for (coding, _) in line {
                if coding.eq_ignore_ascii_case("chunked") {
                    chunked += 1;
                } else {
                    other = true;
                }
            }
        }
        let expected = if other {
            Err(UNKNOWN_CODING)
        } else if chunked > 1 {
            Err(CHUNKED_TWICE)
        } else {
            Ok(())
        };
        prop_assert_eq!(check(&builder.body(()).expect("valid parts")), expected);
    }

    #[test]
    fn no_header_set_makes_the_check_panic(
        version in prop::sample::select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..]),
        target in prop::sample::select(&["/", "*", "http://users/", "http://users:80/x", "https://[::1]:443/", "users:443"][..]),
        fields in prop::collection::vec(
            (
                prop::sample::select(&["host", "transfer-encoding", "content-length", "te", "connection", "x-any"][..]),
                prop::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'\t')], 0..20),
            ),
            0..6,
        ),
    ) {
        let mut builder = Request::builder().version(version).uri(target);
        for (name, value) in &fields {
            builder = builder.header(*name, HeaderValue::from_bytes(value).expect("visible ASCII and tab"));
        }
        let request = builder.body(()).expect("valid parts");
        let hosts = request.headers().get_all(header::HOST).iter().count();
        let verdict = check(&request);
        if hosts > 1 && version != Version::HTTP_10 {
            prop_assert_eq!(verdict, Err(TWO_HOSTS));
        }
        if hosts == 0 && version == Version::HTTP_11 {
            prop_assert_eq!(verdict, Err(NO_HOST));
        }
    }
}
