//! The gateway's compile step: a `Gateway` resource, checked whole by the
//! rules the agent applies too (`weft_rules::gateway`), into the listeners
//! to run. Certificates from files are read here, so a missing or bad file
//! is a NACK with its path, and the listeners keep the last good config.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use weft_proto::config::v1 as pb;
use weft_proto::config::v1::gateway_listener::Protocol;
use weft_proto::config::v1::tls_certificate::Source;
use weft_rules::gateway as rules;

use super::certificates::ServedCertificate;

/// A gateway's listeners, ready to bind.
#[derive(Debug)]
pub struct CompiledGateway {
    pub trusted_hops: u32,
    pub listeners: Vec<CompiledListener>,
}

#[derive(Debug)]
pub struct CompiledListener {
    pub name: String,
    pub addr: SocketAddr,
    /// The hosts it serves, lower case.
    pub hosts: HashSet<String>,
    /// `Some` for HTTPS.
    pub tls: Option<ListenerTls>,
}

#[derive(Debug)]
pub struct ListenerTls {
    /// In the order listed: the first is the default.
    pub certificates: Vec<ServedCertificate>,
    /// The certificates read from files, to read again when they change.
    pub files: Vec<CertificateFiles>,
}

/// A certificate read from files: where, and the files' state when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Its place in [`ListenerTls::certificates`].
    pub index: usize,
    pub chain: PathBuf,
    pub private_key: PathBuf,
    pub stamp: FileStamp,
}

/// What tells a rewritten file: its modification time and length, of both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp([(Option<SystemTime>, u64); 2]);

impl FileStamp {
    pub fn of(chain: &PathBuf, private_key: &PathBuf) -> Self {
        let one = |path: &PathBuf| match std::fs::metadata(path) {
            Ok(meta) => (meta.modified().ok(), meta.len()),
            Err(_) => (None, 0),
        };
        Self([one(chain), one(private_key)])
    }
}

/// Reads a certificate and its key from files.
pub fn read_files(chain: &PathBuf, private_key: &PathBuf) -> Result<ServedCertificate, String> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let chain_pem = read(chain)?;
    let key_pem = read(private_key)?;
    ServedCertificate::from_pem(chain.display().to_string(), &chain_pem, &key_pem)
}

pub fn compile(gateway: &pb::Gateway) -> Result<CompiledGateway, Vec<String>> {
    let mut errors = Vec::new();
    if let Err(e) = rules::check_trusted_hops(gateway.trusted_hops) {
        errors.push(format!("trusted_hops: {e}"));
    }
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut listeners = Vec::new();
    for (i, listener) in gateway.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        let mut fail = |field: &str, reason: String| errors.push(format!("{at}.{field}: {reason}"));
        if let Err(e) = rules::check_listener_name(&listener.name) {
            fail("name", e);
        } else if !names.insert(listener.name.as_str()) {
            fail("name", rules::duplicate_listener_name(&listener.name));
        }
        let ip = rules::check_bind_address(&listener.address)
            .map_err(|e| fail("address", e))
            .ok();
        let port = rules::check_port(listener.port)
            .map_err(|e| fail("port", e))
            .ok();
        // "" and "0.0.0.0" are one address: compared as parsed.
        if let (Some(ip), Some(port)) = (ip, port)
            && !addresses.insert((ip, port))
        {
            fail("port", rules::duplicate_listener(&listener.address, port));
        }
        if let Err(e) = rules::check_hosts_listed(listener.hosts.len()) {
            fail("hosts", e);
        }
        for (j, host) in listener.hosts.iter().enumerate() {
            if let Err(e) = rules::check_host(host) {
                fail(&format!("hosts[{j}]"), e);
            }
        }
        let https = listener.protocol() == Protocol::Https;
        if let Err(e) = rules::check_certificates_for(https, listener.certificates.len()) {
            fail("certificates", e);
        }
        let mut certificates = Vec::new();
        let mut files = Vec::new();
        for (j, certificate) in listener.certificates.iter().enumerate() {
            let field = format!("certificates[{j}]");
            let served = match &certificate.source {
                Some(Source::Pem(pem)) => ServedCertificate::from_pem(
                    certificate.name.clone(),
                    &pem.chain_pem,
                    &pem.private_key_pem,
                ),
                Some(Source::Files(paths)) => {
                    let checked = rules::check_file_path(&paths.chain_path)
                        .and(rules::check_file_path(&paths.private_key_path));
                    checked.and_then(|()| {
                        let chain = PathBuf::from(&paths.chain_path);
                        let private_key = PathBuf::from(&paths.private_key_path);
                        // Stamped before reading: a write that lands
                        // between the two is seen as a change next time.
                        let stamp = FileStamp::of(&chain, &private_key);
                        let served = read_files(&chain, &private_key)?;
                        files.push(CertificateFiles {
                            index: certificates.len(),
                            chain,
                            private_key,
                            stamp,
                        });
                        Ok(served)
                    })
                }
                None => Err("no source: files or pem".into()),
            };
            match served {
                Ok(served) => certificates.push(served),
                Err(e) => fail(&field, e),
            }
        }
        if let (Some(port), Some(ip)) = (port, ip) {
            listeners.push(CompiledListener {
                name: listener.name.clone(),
                addr: SocketAddr::new(ip, port),
                hosts: listener.hosts.iter().cloned().collect(),
                tls: https.then_some(ListenerTls {
                    certificates,
                    files,
                }),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CompiledGateway {
        trusted_hops: gateway.trusted_hops,
        listeners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(names: &[&str]) -> pb::TlsCertificate {
        let key = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        pb::TlsCertificate {
            name: format!("certificates/{}", names[0]),
            source: Some(Source::Pem(pb::CertificatePem {
                chain_pem: key.cert.pem(),
                private_key_pem: key.signing_key.serialize_pem(),
            })),
        }
    }

    fn listener(name: &str, port: u32, https: bool) -> pb::GatewayListener {
        pb::GatewayListener {
            name: name.into(),
            address: "127.0.0.1".into(),
            port,
            protocol: if https {
                Protocol::Https
            } else {
                Protocol::Http
            } as i32,
            hosts: vec!["api.example.com".into()],
            certificates: if https {
                vec![pem(&["api.example.com"])]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn a_good_gateway_compiles_to_its_listeners() {
        let compiled = compile(&pb::Gateway {
            name: "edge".into(),
            listeners: vec![
                listener("public", 8443, true),
                listener("plain", 8080, false),
            ],
            trusted_hops: 1,
        })
        .unwrap();
        assert_eq!(compiled.listeners.len(), 2);
        let https = &compiled.listeners[0];
        assert_eq!(https.addr, "127.0.0.1:8443".parse().unwrap());
        let tls = https.tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].names, ["api.example.com"]);
        assert!(compiled.listeners[1].tls.is_none());
    }

    #[test]
    fn every_broken_rule_is_named_by_its_field() {
        let mut bad = listener("public", 0, true);
        bad.hosts = vec!["API.example.com".into()];
        bad.certificates.push(pb::TlsCertificate {
            name: "/nope.pem".into(),
            source: Some(Source::Files(pb::CertificateFiles {
                chain_path: "/nonexistent/chain.pem".into(),
                private_key_path: "/nonexistent/key.pem".into(),
            })),
        });
        let errors = compile(&pb::Gateway {
            name: "edge".into(),
            listeners: vec![
                bad,
                listener("public", 8080, false),
                listener("x", 8080, false),
            ],
            trusted_hops: 11,
        })
        .unwrap_err();
        let fields: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "trusted_hops",
                "listeners[0].port",
                "listeners[0].hosts[0]",
                "listeners[0].certificates[1]",
                "listeners[1].name",
                "listeners[2].port",
            ],
            "{errors:#?}"
        );
        assert!(
            errors[3].contains("/nonexistent/chain.pem"),
            "{}",
            errors[3]
        );
    }
}
