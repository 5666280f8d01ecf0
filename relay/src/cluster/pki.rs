//! The cluster's certificates: one CA per cluster, one certificate per node, made by
//! `blindrelay cluster init` and `blindrelay cluster cert`. A node link is mutual TLS
//! under that CA alone (no system roots): a QUIC peer is a node only if the cluster CA
//! signed its certificate for the node id it claims.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The CA certificate's and key's file names in a cluster directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// Node ids are one DNS label: each node certificate names its node as a DNS SAN, which
/// is what the TLS handshake checks.
pub const MAX_NODE_ID: usize = 63;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: String },
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: not a PEM {what}")]
    Pem { path: String, what: &'static str },
    #[error("node id `{0}` is not one DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')")]
    NodeId(String),
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Check a node id: a lowercase DNS label.
pub fn check_node_id(id: &str) -> Result<(), PkiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PkiError::NodeId(id.to_string()))
    }
}

/// The CA's parameters. `cluster cert` rebuilds the issuer from these and the CA key, so
/// the signer's name and key usages are the ones `cluster init` wrote into `ca.pem`.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "blindrelay cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write `text` to a new file (never over an existing one); keys get mode 0600.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists {
                path: path.display().to_string(),
            }
        } else {
            io(path)(e)
        }
    })?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// `cluster init`: a new CA in `dir` (created if missing). Returns the files written.
pub fn init(dir: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

/// `cluster cert`: a certificate for node `node`, signed by the CA in `dir`, written to
/// `dir/NODE.pem` and `dir/NODE.key`. It is valid both as a server and as a client: a
/// node accepts links and opens them.
pub fn node_cert(dir: &Path, node: &str) -> Result<(PathBuf, PathBuf), PkiError> {
    check_node_id(node)?;
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|_| PkiError::Pem {
        path: ca_key_path.display().to_string(),
        what: "private key",
    })?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let (cert_path, key_path) = (
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    );
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let mut p = CertificateParams::new(vec![node.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("blindrelay node {node}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

/// A node's TLS identity and the CA it trusts, read from PEM files.
pub struct NodeTls {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl NodeTls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let pem = |path: &Path, what| PkiError::Pem {
            path: path.display().to_string(),
            what,
        };
        let ca_der = CertificateDer::from_pem_slice(read(ca)?.as_bytes())
            .map_err(|_| pem(ca, "certificate"))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(read(cert)?.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| pem(cert, "certificate"))?;
        if chain.is_empty() {
            return Err(pem(cert, "certificate"));
        }
        let key_der = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
            .map_err(|_| pem(key, "private key"))?;
        Ok(NodeTls {
            ca: ca_der,
            chain,
            key: key_der,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_dns_labels() {
        for ok in ["a", "node-1", "eu-west-3b", &"x".repeat(63)] {
            assert!(check_node_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Node", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert!(check_node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_and_cert_write_files_once() {
        let dir = std::env::temp_dir().join(format!("br-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, ca_key) = init(&dir).expect("init");
        assert!(matches!(init(&dir), Err(PkiError::Exists { .. })));
        let (cert, key) = node_cert(&dir, "n1").expect("cert");
        assert!(matches!(
            node_cert(&dir, "n1"),
            Err(PkiError::Exists { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        for k in [&ca_key, &key] {
            let mode = std::fs::metadata(k).expect("key file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", k.display());
        }
        let tls = NodeTls::load(&ca, &cert, &key).expect("load");
        // The node certificate chains to the CA and names the node.
        let anchor = webpki::anchor_from_trusted_cert(&tls.ca).expect("anchor");
        let ee = webpki::EndEntityCert::try_from(&tls.chain[0]).expect("end entity");
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("chains to the cluster CA");
        let name = rustls_pki_types::ServerName::try_from("n1").expect("name");
        ee.verify_is_valid_for_subject_name(&name)
            .expect("valid for n1");
        let other = rustls_pki_types::ServerName::try_from("n2").expect("name");
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
