//! `weftctl ca` as an operator runs it: create a CA directory, refuse to
//! clobber it, rotate its root while keeping the old one trusted.

mod common;

use std::path::{Path, PathBuf};

use common::weftctl;
use weft_certs::ca::files;
use weft_certs::{Ca, TrustBundle};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-weftctl-ca-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn path(dir: &Path) -> &str {
    dir.to_str().expect("a UTF-8 path")
}

fn bundle(dir: &Path) -> TrustBundle {
    TrustBundle::from_pem(&std::fs::read_to_string(dir.join(files::BUNDLE)).unwrap()).unwrap()
}

/// `weftctl ca init --trust-domain <trust_domain> --out <dir>`, then `flags`.
fn ca_init(trust_domain: &str, dir: &Path, flags: &[&str]) -> (i32, String) {
    let mut args = vec![
        "ca",
        "init",
        "--trust-domain",
        trust_domain,
        "--out",
        path(dir),
    ];
    args.extend_from_slice(flags);
    weftctl(&args)
}

/// `weftctl ca rotate --dir <dir>`.
fn ca_rotate(dir: &Path) -> (i32, String) {
    weftctl(&["ca", "rotate", "--dir", path(dir)])
}

/// Asserts that weftctl's output reports writing each of `names` in `dir`.
#[track_caller]
fn assert_wrote(text: &str, dir: &Path, names: &[&str]) {
    for name in names {
        let wrote = format!("wrote {}", dir.join(name).display());
        assert!(text.contains(&wrote), "no `{wrote}` in:\n{text}");
    }
}

#[test]
fn ca_init_writes_a_root_its_key_and_a_bundle_and_refuses_to_overwrite_them() {
    let dir = scratch_dir("init");

    let (code, text) = ca_init("mesh.test", &dir, &["--ttl", "30d"]);

    assert_eq!(code, 0, "{text}");
    let every_file = [
        files::CA_CERT,
        files::CA_KEY,
        files::BUNDLE,
        files::TRUST_DOMAIN,
    ];
    assert_wrote(&text, &dir, &every_file);
    let ca = Ca::load(&dir).expect("the directory holds a usable CA");
    assert_eq!(ca.trust_domain().as_str(), "mesh.test");
    assert_eq!(bundle(&dir).roots(), [ca.certificate().clone()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(files::CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{text}");
    }

    let (code, text) = ca_init("mesh.test", &dir, &[]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("already holds a CA"), "{text}");
    assert!(text.contains("--force"), "{text}");
    assert_eq!(
        Ca::load(&dir).unwrap().certificate(),
        ca.certificate(),
        "the existing CA is untouched"
    );

    let (code, text) = ca_init("mesh.test", &dir, &["--force"]);
    assert_eq!(code, 0, "{text}");
    assert_ne!(Ca::load(&dir).unwrap().certificate(), ca.certificate());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ca_init_rejects_an_invalid_trust_domain() {
    let dir = scratch_dir("bad-domain");

    let (code, text) = ca_init("Mesh.Test", &dir, &[]);

    assert_ne!(code, 0, "{text}");
    assert!(text.contains("upper-case"), "{text}");
    assert!(!dir.join(files::CA_KEY).exists());
}

#[test]
fn ca_rotate_signs_with_a_new_root_and_keeps_the_old_root_in_the_bundle() {
    let dir = scratch_dir("rotate");
    let (code, text) = ca_init("mesh.test", &dir, &[]);
    assert_eq!(code, 0, "{text}");
    let old = Ca::load(&dir).unwrap();

    let (code, text) = ca_rotate(&dir);

    assert_eq!(code, 0, "{text}");
    assert!(text.contains("bundle holds 2 root(s)"), "{text}");
    assert_wrote(&text, &dir, &[files::BUNDLE]);
    let new = Ca::load(&dir).unwrap();
    assert_ne!(new.certificate(), old.certificate(), "a new signing root");
    assert_eq!(new.trust_domain(), old.trust_domain());
    let roots = bundle(&dir);
    assert_eq!(roots.len(), 2);
    assert!(roots.contains(old.certificate()), "old leaves still verify");
    assert!(roots.contains(new.certificate()), "new leaves verify");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ca_rotate_without_a_ca_says_where_it_looked() {
    let dir = scratch_dir("rotate-missing");

    let (code, text) = ca_rotate(&dir);

    assert_ne!(code, 0, "{text}");
    assert!(text.contains(&dir.display().to_string()), "{text}");
}
