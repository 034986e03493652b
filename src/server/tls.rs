//! TLS for the front door (rustls, TLS 1.2 and 1.3, HTTP/1.1 and h2 by
//! ALPN), with the certificate reloadable while the server runs.
//!
//! Two sources of a certificate:
//! - an operator's PEM files (`--tls-cert`, `--tls-key`): read at start and
//!   again on every [`TlsServer::reload`] (the server calls it on SIGHUP).
//!   A reload that fails keeps the old certificate, so a half-copied file
//!   never takes the endpoint down;
//! - `--tls-self-signed`: a private CA and a certificate it signs for the
//!   names the server is reached by, made on first start and kept in
//!   `DATA/tls/` (keys mode 0600). Clients trust `DATA/tls/ca.pem`. A CA
//!   rather than one self-signed leaf because webpki-based clients (strato's
//!   own) do not accept an end-entity certificate as its own trust anchor.
//!   When the names change (another listen address) a new leaf is issued by
//!   the same CA, so clients keep trusting the same file.
//!
//! Connections in flight keep the certificate they were accepted with; only
//! new handshakes see a reloaded one.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("making the self-signed certificate: {0}")]
    Generate(String),
    #[error("{0:?} is not a host name or IP address")]
    BadName(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The server side: the acceptor's configuration and what can reload it.
pub struct TlsServer {
    config: Arc<rustls::ServerConfig>,
    current: Arc<Current>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// The certificate new handshakes get; swapped by a reload.
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current(certified key)")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

impl TlsServer {
    /// Load a PEM certificate chain (leaf first) and its private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsServer, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsServer {
            config: Arc::new(config),
            current,
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        })
    }

    /// Read the files again; on success new handshakes use them. Returns the
    /// new certificate's fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        *self.current.0.write() = Arc::new(key);
        Ok(self.fingerprint())
    }

    /// SHA-256 of the leaf certificate now served, as `AB:CD:...`.
    pub fn fingerprint(&self) -> String {
        let key = self.current.0.read().clone();
        key.cert.first().map(|c| fingerprint(c)).unwrap_or_default()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert_path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE block in the file".into()));
    }
    let key_err = |reason: String| TlsError::Key {
        path: key_path.to_path_buf(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    // A key that does not belong to the certificate would fail every
    // handshake; refuse it here, with the file names.
    certified
        .keys_match()
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

/// SHA-256 of a certificate's DER bytes, as `AB:CD:...` (what
/// `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where `--tls-self-signed` keeps its files.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The CA certificate clients trust (`--ca`, `AWS_CA_BUNDLE`, `--ca-certs`).
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when this call made a new leaf (first start, or new names).
    pub issued: bool,
}

/// Make (or reuse) the private CA and a certificate for `names` (DNS names
/// or IP addresses) under `dir`.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<SelfSigned, TlsError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let files = SelfSigned {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        issued: false,
    };
    let names_path = dir.join("names");
    let wanted = names.join("\n");
    let same_names = std::fs::read_to_string(&names_path).is_ok_and(|n| n == wanted);
    if same_names && files.cert.exists() && files.key.exists() && files.ca.exists() {
        return Ok(files);
    }
    let ca = PrivateCa::load_or_make(dir)?;
    let (leaf_key, leaf) = ca.issue(names, &[rcgen::ExtendedKeyUsagePurpose::ServerAuth])?;
    let ca_pem = &ca.pem;
    write_private(&files.key, &leaf_key.serialize_pem())?;
    std::fs::write(&files.cert, format!("{}{}", leaf.pem(), ca_pem))
        .map_err(io("writing", &files.cert))?;
    std::fs::write(&names_path, wanted).map_err(io("writing", &names_path))?;
    Ok(SelfSigned {
        issued: true,
        ..files
    })
}

/// A private CA kept in a directory (`ca.pem`, `ca-key.pem` 0600), made on
/// first use and reused after, so everyone keeps trusting the same file.
struct PrivateCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    pem: String,
}

impl PrivateCa {
    fn load_or_make(dir: &Path) -> Result<PrivateCa, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let (ca_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        // Its parameters are fixed (ca_params), so re-signing them with the
        // stored key gives an issuer with the same subject and key
        // identifier as the certificate clients hold.
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) if ca_path.exists() => rcgen::KeyPair::from_pem(&pem).map_err(gen)?,
            _ => {
                let key = rcgen::KeyPair::generate().map_err(gen)?;
                let cert = ca_params()?.self_signed(&key).map_err(gen)?;
                write_private(&key_path, &key.serialize_pem())?;
                std::fs::write(&ca_path, cert.pem()).map_err(|source| TlsError::Io {
                    what: "writing",
                    path: ca_path.clone(),
                    source,
                })?;
                key
            }
        };
        let cert = ca_params()?.self_signed(&key).map_err(gen)?;
        let pem = std::fs::read_to_string(&ca_path).map_err(|source| TlsError::Io {
            what: "reading",
            path: ca_path.clone(),
            source,
        })?;
        Ok(PrivateCa { key, cert, pem })
    }

    /// A new key and a certificate for `names` (DNS names or IP addresses)
    /// good for `usages`.
    fn issue(
        &self,
        names: &[String],
        usages: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> Result<(rcgen::KeyPair, rcgen::Certificate), TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "strato".into()),
        );
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(gen)?;
        Ok((key, cert))
    }
}

/// Files of one migration agent's identity, from [`migration_certs`].
#[derive(Debug, Clone)]
pub struct AgentCert {
    pub name: String,
    /// The chain (leaf, then the CA): `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`, mode 0600.
    pub key: PathBuf,
}

/// A migration CA in `dir` (made on first use, reused after) and, for each
/// host name or IP address, a certificate good as both TLS server
/// (receiver) and client (sender): `dir/NAME.pem` and `dir/NAME-key.pem`.
/// Names are checked to be host names or addresses first, so none becomes
/// a path elsewhere.
pub fn migration_certs(
    dir: &Path,
    names: &[String],
) -> Result<(PathBuf, Vec<AgentCert>), TlsError> {
    for n in names {
        let ok = !n.is_empty()
            && n.len() <= 253
            && !n.starts_with('.')
            && !n.contains("..")
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !ok {
            return Err(TlsError::BadName(n.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = PrivateCa::load_or_make(dir)?;
    let usages = [
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut out = Vec::new();
    for n in names {
        let (key, cert) = ca.issue(std::slice::from_ref(n), &usages)?;
        let files = AgentCert {
            name: n.clone(),
            cert: dir.join(format!("{}.pem", n.replace(':', "_"))),
            key: dir.join(format!("{}-key.pem", n.replace(':', "_"))),
        };
        write_private(&files.key, &key.serialize_pem())?;
        std::fs::write(&files.cert, format!("{}{}", cert.pem(), ca.pem)).map_err(|source| {
            TlsError::Io {
                what: "writing",
                path: files.cert.clone(),
                source,
            }
        })?;
        out.push(files);
    }
    Ok((dir.join("ca.pem"), out))
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "strato private CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    Ok(params)
}

/// Write a secret: created 0600 before any byte is in it.
fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The names a self-signed certificate should carry for a listen address:
/// the address itself (unless it is the unspecified address), localhost and
/// its loopback addresses, and this machine's host name.
pub fn names_for(listen: std::net::SocketAddr) -> Vec<String> {
    let mut names = Vec::new();
    let ip = listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|x| x == h) {
            names.push(h.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(a.issued);
        let ca1 = std::fs::read(&a.ca).unwrap();
        let mode = std::fs::metadata(&a.key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let again = self_signed(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(!again.issued, "same names reuse the certificate");
        let other = self_signed(dir.path(), &["10.1.2.3".into()]).unwrap();
        assert!(other.issued);
        assert_eq!(
            std::fs::read(&other.ca).unwrap(),
            ca1,
            "the CA stays the same"
        );
        let server = TlsServer::load(&other.cert, &other.key).unwrap();
        assert_eq!(server.fingerprint().len(), 32 * 3 - 1);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_with_the_file_name() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = self_signed(d1.path(), &["localhost".into()]).unwrap();
        let b = self_signed(d2.path(), &["localhost".into()]).unwrap();
        let err = TlsServer::load(&a.cert, &b.key)
            .err()
            .expect("mismatch refused");
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = TlsServer::load(&d1.path().join("missing.pem"), &a.key)
            .err()
            .expect("missing file refused");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
