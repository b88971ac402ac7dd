//! A CA survives a round trip through its directory, with its key private.

use std::path::PathBuf;
use std::time::Duration;

use weft_certs::ca::files;
use weft_certs::{Ca, LeafInfo, LeafKey, SpiffeId};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_saved_ca_loads_back_and_keeps_signing_for_its_trust_domain() {
    let dir = scratch_dir("save-load");
    let ca = Ca::generate_root(&"mesh.test".parse().unwrap(), Duration::from_secs(3600)).unwrap();

    let written = ca.save(&dir).unwrap();
    let loaded = Ca::load(&dir).unwrap();

    let names: Vec<_> = written
        .iter()
        .map(|path| path.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    for name in [
        files::CA_CERT,
        files::CA_KEY,
        files::BUNDLE,
        files::TRUST_DOMAIN,
    ] {
        assert!(
            names.iter().any(|written| written == name),
            "{name} in {names:?}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(files::CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the CA key is readable by its owner only"
        );
    }
    assert_eq!(loaded.trust_domain(), ca.trust_domain());
    assert_eq!(loaded.certificate(), ca.certificate());
    assert_eq!(loaded.bundle(), ca.bundle());
    assert!(!loaded.is_intermediate());

    let identity: SpiffeId = "spiffe://mesh.test/ns/default/svc/users".parse().unwrap();
    let csr = LeafKey::generate().unwrap().csr_pem(&identity).unwrap();
    let chain = loaded
        .sign_csr(csr.as_bytes(), &identity, weft_certs::DEFAULT_LEAF_TTL)
        .unwrap();
    assert_eq!(LeafInfo::from_pem(&chain).unwrap().identity(), &identity);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_whose_key_belongs_to_another_ca_is_refused() {
    let dir = scratch_dir("mismatch");
    let trust_domain = "mesh.test".parse().unwrap();
    Ca::generate_root(&trust_domain, Duration::from_secs(3600))
        .unwrap()
        .save(&dir)
        .unwrap();
    let other = scratch_dir("mismatch-other");
    Ca::generate_root(&trust_domain, Duration::from_secs(3600))
        .unwrap()
        .save(&other)
        .unwrap();
    std::fs::copy(other.join(files::CA_KEY), dir.join(files::CA_KEY)).unwrap();

    let error = Ca::load(&dir).unwrap_err();

    assert!(error.to_string().contains("does not belong"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn a_rotated_ca_keeps_its_cross_signature_on_disk_until_the_old_root_leaves_the_bundle() {
    let dir = scratch_dir("rotate");
    let trust_domain = "mesh.test".parse().unwrap();
    let old = Ca::generate_root(&trust_domain, Duration::from_secs(3600)).unwrap();
    old.save(&dir).unwrap();
    assert!(!dir.join(files::CROSS_SIGNED).exists());

    let rotated = Ca::load(&dir)
        .unwrap()
        .rotate_root(Duration::from_secs(3600))
        .unwrap();
    rotated.save(&dir).unwrap();
    let loaded = Ca::load(&dir).unwrap();
    assert_eq!(loaded.cross_signed(), rotated.cross_signed());
    assert_eq!(loaded.cross_signed().len(), 1);

    // Every new leaf goes out with it: leaf, then the cross-signed root.
    let identity: SpiffeId = "spiffe://mesh.test/ns/default/svc/users".parse().unwrap();
    let csr = LeafKey::generate().unwrap().csr_pem(&identity).unwrap();
    let chain = loaded
        .sign_csr(csr.as_bytes(), &identity, weft_certs::DEFAULT_LEAF_TTL)
        .unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);

    // The operator drops the old root: its cross-signature is no longer sent.
    let mut new_root_only = loaded.bundle().clone();
    assert!(new_root_only.remove(old.certificate()));
    std::fs::write(dir.join(files::BUNDLE), new_root_only.to_pem()).unwrap();
    assert!(Ca::load(&dir).unwrap().cross_signed().is_empty());

    // `ca init --force` over the directory leaves no stale cross-signature.
    Ca::generate_root(&trust_domain, Duration::from_secs(3600))
        .unwrap()
        .save(&dir)
        .unwrap();
    assert!(!dir.join(files::CROSS_SIGNED).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
