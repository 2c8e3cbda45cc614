//! One GET of an issuer's key set: HTTP/1.1 over TLS (the system's roots, or the issuer's
//! `ca_file`), or in the clear on loopback; a 200 answer of at most [`MAX_JWKS_BYTES`]; no
//! redirect followed. The caller bounds the time.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use crate::config::TrustedIssuerSettings;

/// The longest key set read from an issuer, in bytes. A Kubernetes cluster's or a SPIRE
/// server's holds a few keys: a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where an issuer's keys are fetched, and how.
pub(super) struct Endpoint {
    url: url::Url,
    tls: Option<tokio_rustls::TlsConnector>,
    bearer_token_file: Option<PathBuf>,
}

impl Endpoint {
    /// The endpoint of `configured.jwks_uri` (checked with the settings): its `ca_file` read
    /// now, or the system's roots, loaded once for all issuers into `system_roots`.
    pub(super) fn new(
        configured: &TrustedIssuerSettings,
        system_roots: &mut Option<Arc<rustls::RootCertStore>>,
    ) -> anyhow::Result<Self> {
        let url = url::Url::parse(&configured.jwks_uri)
            .with_context(|| format!("federation.issuers.jwks_uri of `{}`", configured.name))?;
        let tls = if url.scheme() == "https" {
            let roots = if configured.ca_file.is_empty() {
                match system_roots {
                    Some(roots) => Arc::clone(roots),
                    None => Arc::clone(system_roots.insert(Arc::new(load_system_roots()?))),
                }
            } else {
                Arc::new(read_ca_file(&configured.ca_file).with_context(|| {
                    format!(
                        "federation.issuers.ca_file of `{}` ({})",
                        configured.name, configured.ca_file
                    )
                })?)
            };
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            url,
            tls,
            bearer_token_file: (!configured.bearer_token_file.is_empty())
                .then(|| PathBuf::from(&configured.bearer_token_file)),
        })
    }

    /// The key set's bytes, as served.
    pub(super) async fn get(&self) -> anyhow::Result<Bytes> {
        let port = self
            .url
            .port_or_known_default()
            .context("jwks_uri has no port")?;
        let host = self.url.host().context("jwks_uri has no host")?;
        let stream = match &host {
            url::Host::Domain(name) => tokio::net::TcpStream::connect((*name, port)).await,
            url::Host::Ipv4(ip) => tokio::net::TcpStream::connect((*ip, port)).await,
            url::Host::Ipv6(ip) => tokio::net::TcpStream::connect((*ip, port)).await,
        }
        .with_context(|| format!("connecting to {}", self.url))?;
        let authority = match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let mut request =
            http::Request::get(&self.url[url::Position::BeforePath..url::Position::AfterQuery])
                .header(http::header::HOST, authority)
                .header(
                    http::header::ACCEPT,
                    "application/jwk-set+json, application/json",
                )
                .header(
                    http::header::USER_AGENT,
                    concat!("keystone/", env!("CARGO_PKG_VERSION")),
                );
        if let Some(path) = &self.bearer_token_file {
            // Read at every fetch: a projected token is renewed in place.
            let token = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("reading bearer_token_file {}", path.display()))?;
            let mut value = http::HeaderValue::try_from(format!("Bearer {}", token.trim()))
                .context("bearer_token_file does not hold a token")?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request.body(Empty::<Bytes>::new())?;
        match &self.tls {
            Some(connector) => {
                let name = match host {
                    url::Host::Domain(name) => ServerName::try_from(name.to_owned())?,
                    url::Host::Ipv4(ip) => ServerName::IpAddress(std::net::IpAddr::V4(ip).into()),
                    url::Host::Ipv6(ip) => ServerName::IpAddress(std::net::IpAddr::V6(ip).into()),
                };
                let stream = connector
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS with {}", self.url))?;
                exchange(TokioIo::new(stream), request).await
            }
            None => exchange(TokioIo::new(stream), request).await,
        }
    }
}

/// Sends `request` on a fresh HTTP/1.1 connection and reads a 200 answer's body, at most
/// [`MAX_JWKS_BYTES`].
async fn exchange<I>(io: I, request: http::Request<Empty<Bytes>>) -> anyhow::Result<Bytes>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // The connection is driven beside the exchange, and dropped with it (on a timeout too).
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != http::StatusCode::OK {
        anyhow::bail!("answered {status}, not 200");
    }
    let length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|length| length > MAX_JWKS_BYTES as u64) {
        anyhow::bail!("its key set is longer than {} KiB", MAX_JWKS_BYTES / 1024);
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                anyhow::anyhow!("its key set is longer than {} KiB", MAX_JWKS_BYTES / 1024)
            } else {
                anyhow::anyhow!("reading its key set: {error}")
            }
        })?
        .to_bytes();
    drop(connection);
    Ok(body)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn load_system_roots() -> anyhow::Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        anyhow::bail!(
            "no trusted root certificates on this system for federation.issuers.jwks_uri (give \
             the issuer a ca_file)"
        );
    }
    Ok(roots)
}

fn read_ca_file(path: &str) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        roots.add(certificate?)?;
    }
    if roots.is_empty() {
        anyhow::bail!("holds no PEM certificate");
    }
    Ok(roots)
}
