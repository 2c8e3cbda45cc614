//! TLS for the load generator: channels that trust the server's CA, and the handshake
//! scenarios (`tls-handshake`: full handshakes; `tls-resumed`: resumed ones), each a TCP
//! connection, a TLS handshake on it, and a close.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

/// How the bench speaks TLS to the server.
pub(crate) struct TlsClient {
    /// The server's CA, PEM (for tonic's channels).
    pub(crate) ca_pem: String,
    /// The name the server's certificate is checked against.
    pub(crate) name: ServerName<'static>,
    /// Where the handshake scenarios connect.
    addr: SocketAddr,
    /// The CA to trust.
    roots: rustls::RootCertStore,
    /// No session resumption: every handshake is a full one.
    full: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting the CA in `ca_file`, checking the server's certificate against
    /// `name`, connecting to `addr` for the handshake scenarios.
    pub(crate) fn new(ca_file: &Path, name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let ca_pem = std::fs::read_to_string(ca_file)
            .with_context(|| format!("cannot read --ca-file {}", ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(certificate.context("--ca-file holds no PEM certificate")?)?;
        }
        Ok(Self {
            ca_pem,
            name: ServerName::try_from(name.to_owned()).context("--tls-name")?,
            addr,
            full: connector(&roots, false)?,
            roots,
        })
    }

    /// A connector that resumes the sessions of its own earlier handshakes (one per worker,
    /// so that workers do not take each other's tickets).
    pub(crate) fn resuming(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        connector(&self.roots, true)
    }

    /// One handshake, full or resumed, on a new connection, then the HTTP/2 client preface and
    /// an empty SETTINGS frame, until the server's first frame arrives: the connection is ready
    /// for calls then, and the session tickets the server sent with the handshake have been
    /// read (a later handshake resumes with one).
    /// With `resuming` (see [`Self::resuming`]), a handshake that was not resumed is an error
    /// (`FailedPrecondition`).
    pub(crate) async fn handshake(
        &self,
        resuming: Option<&tokio_rustls::TlsConnector>,
    ) -> Result<(), tonic::Code> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        const OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let _ = stream.set_nodelay(true);
        let connector = resuming.unwrap_or(&self.full);
        let mut tls = connector
            .connect(self.name.clone(), stream)
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(OPENING)
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let mut frame = [0_u8; 9];
        match tokio::time::timeout(std::time::Duration::from_secs(2), tls.read(&mut frame)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return Err(tonic::Code::Unavailable),
        }
        let resumed = kind == Some(rustls::HandshakeKind::Resumed);
        if resuming.is_some() != resumed {
            return Err(tonic::Code::FailedPrecondition);
        }
        Ok(())
    }
}

impl TlsClient {
    /// A TLS connection for HTTP/1.1 on `stream` (the DPoP scenario's token request).
    pub(crate) async fn http_connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(self.name.clone(), stream)
            .await?)
    }
}

fn connector(
    roots: &rustls::RootCertStore,
    resume: bool,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
