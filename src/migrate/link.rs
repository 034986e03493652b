//! The WAN link between two migration agents. Guest memory and disk blocks
//! cross it, so by default it is TLS 1.3 with mutual authentication: each
//! agent presents a certificate signed by the migration CA and accepts only
//! a peer whose certificate that CA signed (the sender also checks that the
//! receiver's certificate names the host it dialled). Plain TCP is for
//! `--insecure` only; the CLI refuses it otherwise.
//!
//! The agents read and write the link through [`WanReader`] and
//! [`WanWriter`], so the protocols are the same on either kind of link.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Config(String),
    #[error("{0:?} is not a host name or IP address the receiver's certificate can name")]
    BadName(String),
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake { peer: String, reason: String },
}

/// One agent's side of the link: plain TCP, or TLS over it.
pub enum WanStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

pub type WanReader = tokio::io::ReadHalf<WanStream>;
pub type WanWriter = tokio::io::WriteHalf<WanStream>;

impl WanStream {
    /// Reading and writing halves that can live in different tasks.
    pub fn split(self) -> (WanReader, WanWriter) {
        tokio::io::split(self)
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            WanStream::Plain(s) => s,
            WanStream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }

    /// Keep at most `bytes` not yet sent in the kernel's send buffer
    /// (`TCP_NOTSENT_LOWAT`; bytes in flight on the link do not count).
    /// An autotuned buffer otherwise holds megabytes the writer believes
    /// gone: the sender's read-ahead then measures the buffer, not the WAN,
    /// and that backlog still has to cross after QEMU stops the guest.
    pub fn limit_unsent(&self, bytes: u32) -> io::Result<()> {
        socket2::SockRef::from(self.tcp()).set_tcp_notsent_lowat(bytes)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, WanStream::Tls(_))
    }
}

impl AsyncRead for WanStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WanStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            WanStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WanStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WanStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WanStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WanStream::Plain(s) => Pin::new(s).poll_flush(cx),
            WanStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WanStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WanStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WanStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WanStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WanStream::Plain(s) => s.is_write_vectored(),
            WanStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// An agent's TLS identity and trust: its certificate chain and key, and
/// the CA its peers' certificates must chain to. The same files serve a
/// sender (TLS client) and a receiver (TLS server).
#[derive(Clone)]
pub struct LinkTls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls")
    }
}

impl LinkTls {
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<LinkTls, LinkError> {
        let chain = read_certs("certificate", cert)?;
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("CA file", ca)? {
                roots.add(c).map_err(|e| LinkError::File {
                    what: "CA file",
                    path: ca.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            Arc::new(roots)
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls13 = &[&rustls::version::TLS13];
        let config = |e: rustls::Error| LinkError::Config(e.to_string());
        let key_err = |e: rustls::Error| LinkError::File {
            what: "key",
            path: key.to_path_buf(),
            reason: e.to_string(),
        };

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| LinkError::Config(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), read_key(key)?)
            .map_err(key_err)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(tls13)
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, read_key(key)?)
            .map_err(key_err)?;
        Ok(LinkTls {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// The sender's side: `host` is what it dialled (`--to HOST:PORT`),
    /// which the receiver's certificate must name.
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> Result<WanStream, LinkError> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| LinkError::BadName(host.to_string()))?
            .to_owned();
        let peer = peer_of(&tcp);
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| handshake(peer, e))?;
        Ok(WanStream::Tls(Box::new(tls.into())))
    }

    /// The receiver's side: the sender must present a certificate the CA
    /// signed.
    pub async fn accept(&self, tcp: TcpStream) -> Result<WanStream, LinkError> {
        let peer = peer_of(&tcp);
        let tls = tokio_rustls::TlsAcceptor::from(self.server.clone())
            .accept(tcp)
            .await
            .map_err(|e| handshake(peer, e))?;
        Ok(WanStream::Tls(Box::new(tls.into())))
    }
}

fn peer_of(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map_or_else(|_| "the peer".to_string(), |a| a.to_string())
}

fn handshake(peer: String, e: io::Error) -> LinkError {
    let mut reason = e.to_string();
    if reason.contains("certificate") || reason.contains("Certificate") {
        reason.push_str(
            " (both agents need certificates signed by the same migration CA: \
             --tls-cert/--tls-key/--tls-ca, e.g. made by `strato migrate certs`)",
        );
    }
    LinkError::Handshake { peer, reason }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let bad = |reason: String| LinkError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, LinkError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| LinkError::File {
        what: "key",
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block in the file".into()
            }
            e => e.to_string(),
        },
    })
}
