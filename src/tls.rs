//! TLS for every listener, with rustls on aws-lc-rs: TLS 1.2 and 1.3, ALPN `h2` on gRPC and
//! `http/1.1` on HTTP, client certificates checked against `tls.client_ca_file` (and, with
//! `tls.self_signed_client_certificates`, lone self-signed ones taken for what they are), and
//! sessions resumed with stateless tickets. Each connection learns whether its client's chain
//! leads to the client CA ([`Handshake::issued_by_client_ca`]): only such a certificate can
//! prove a name (RFC 8705 `tls_client_auth`).
//!
//! The files are read again every `tls.reload_interval`. When any changed (cert-manager or a
//! Kubernetes Secret rotating them), new handshakes use the new certificate, key and client CA
//! from then on; open connections keep theirs. A change that cannot be used (a key that does
//! not match, a file half written) is logged and the previous files stay in use. At start, the
//! same faults stop the process with a message naming the file.
//!
//! Layer: foundation of the adapters. Uses [`crate::config`], [`crate::domain`] and
//! [`crate::clock`]; the listeners use it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

use crate::{
    config::{ClientAuth, TlsSettings},
    domain::is_self_signed_and_current,
};

/// Why TLS cannot be set up from the files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {setting} `{path}`: {source}")]
    Unreadable {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind the setting needs.
    #[error("{setting} `{path}`: {why}")]
    Invalid {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Which protocol a listener speaks, for ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: `h2`.
    Grpc,
    /// HTTP/1.1: `http/1.1`.
    Http,
}

/// The TLS configurations of the listeners, replaced when the files change; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tls {
    settings: Arc<TlsSettings>,
    current: Arc<RwLock<Configs>>,
}

/// What a listener's handshakes use: the configuration, and the client CA to tell a
/// certificate that chains to it from an accepted self-signed one.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The server configuration.
    pub config: Arc<ServerConfig>,
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// `tls.self_signed_client_certificates`.
    self_signed: bool,
}

impl Handshake {
    /// What a client chain the handshake took is, checked now: `Some(true)` when it leads to
    /// `tls.client_ca_file`, `Some(false)` for a lone, current, self-signed certificate
    /// taken with `tls.self_signed_client_certificates`, `None` when it is neither (a session
    /// resumed from a ticket brings its certificate back unchecked: it may have expired
    /// since, or the setting changed).
    pub fn client_certificate(&self, chain: &[CertificateDer<'static>]) -> Option<bool> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = unix_now();
        if self.client_ca.as_ref().is_some_and(|client_ca| {
            client_ca
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
        }) {
            return Some(true);
        }
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        (self.self_signed
            && intermediates.is_empty()
            && is_self_signed_and_current(end_entity.as_ref(), seconds))
        .then_some(false)
    }
}

/// One configuration per protocol, built from the same files.
#[derive(Debug)]
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// The SHA-256 of each file as read, to tell when they change (never the bytes: one is
    /// the private key).
    digests: Vec<[u8; 32]>,
}

impl Tls {
    /// TLS from `settings`, or `None` when the listeners speak plaintext. Fails, naming the
    /// file, when a file cannot be read or used.
    pub fn load(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let files = read_files(settings)?;
        let configs = build(settings, files)?;
        Ok(Some(Self {
            settings: Arc::new(settings.clone()),
            current: Arc::new(RwLock::new(configs)),
        }))
    }

    /// What new handshakes of `protocol` use.
    pub fn handshake(&self, protocol: Protocol) -> Handshake {
        let configs = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Handshake {
            config: match protocol {
                Protocol::Grpc => configs.grpc.clone(),
                Protocol::Http => configs.http.clone(),
            },
            client_ca: configs.client_ca.clone(),
            self_signed: self.settings.self_signed_client_certificates,
        }
    }

    /// Reads the files again; when they changed and can be used, new handshakes use them.
    /// Returns whether the configuration changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read_files(&self.settings)?;
        if self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .digests
            == digests(&files)
        {
            return Ok(false);
        }
        let configs = build(&self.settings, files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = configs;
        Ok(true)
    }

    /// Reloads every `tls.reload_interval` until aborted (at shutdown).
    pub async fn follow_files(self) {
        let mut ticker = tokio::time::interval(self.settings.reload_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        // The last failure logged: a different one is logged again.
        let mut failing: Option<String> = None;
        loop {
            ticker.tick().await;
            let tls = self.clone();
            let reloaded = tokio::task::spawn_blocking(move || tls.reload()).await;
            match reloaded {
                Ok(Ok(changed)) => {
                    if changed {
                        tracing::info!(
                            "the TLS certificate files changed: new connections use them"
                        );
                        ::metrics::counter!("keystone_tls_reloads_total").increment(1);
                    }
                    failing = None;
                }
                Ok(Err(error)) => {
                    let error = error.to_string();
                    if failing.as_ref() != Some(&error) {
                        tracing::warn!(
                            error = %error,
                            "cannot use the TLS files as they are now; the previous ones stay in use"
                        );
                        failing = Some(error);
                    }
                }
                Err(error) => tracing::warn!(error = %error, "the TLS reload task failed"),
            }
        }
    }
}

/// The bytes of every file, in a fixed order: certificate, key, client CA.
fn read_files(settings: &TlsSettings) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut files = Vec::with_capacity(3);
    for (setting, path) in [
        ("tls.cert_file", &settings.cert_file),
        ("tls.key_file", &settings.key_file),
        ("tls.client_ca_file", &settings.client_ca_file),
    ] {
        if let Some(path) = path {
            files.push(read(setting, path)?);
        }
    }
    Ok(files)
}

fn digests(files: &[Vec<u8>]) -> Vec<[u8; 32]> {
    files
        .iter()
        .map(|file| {
            let mut bytes = [0_u8; 32];
            bytes.copy_from_slice(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, file).as_ref(),
            );
            bytes
        })
        .collect()
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        setting,
        path: path.to_owned(),
        source,
    })
}

fn build(settings: &TlsSettings, files: Vec<Vec<u8>>) -> Result<Configs, TlsError> {
    let invalid = |setting: &'static str, path: &Option<PathBuf>, why: String| TlsError::Invalid {
        setting,
        path: path.clone().unwrap_or_default(),
        why,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (Some(cert_pem), Some(key_pem)) = (files.first(), files.get(1)) else {
        return Err(invalid(
            "tls.cert_file",
            &settings.cert_file,
            "not set".to_owned(),
        ));
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid("tls.cert_file", &settings.cert_file, error.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            "tls.cert_file",
            &settings.cert_file,
            "holds no PEM certificate".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| {
        invalid(
            "tls.key_file",
            &settings.key_file,
            format!("holds no usable PEM private key ({error})"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|error| {
        invalid(
            "tls.key_file",
            &settings.key_file,
            format!("does not go with tls.cert_file ({error})"),
        )
    })?;
    let certified = Arc::new(certified);
    let client_ca: Option<Arc<dyn ClientCertVerifier>> =
        match (settings.client_auth(), files.get(2)) {
            (ClientAuth::Off, _) | (_, None) => None,
            (_, Some(ca_pem)) => {
                let mut roots = RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(ca_pem) {
                    let ca = ca.map_err(|error| {
                        invalid(
                            "tls.client_ca_file",
                            &settings.client_ca_file,
                            error.to_string(),
                        )
                    })?;
                    roots.add(ca).map_err(|error| {
                        invalid(
                            "tls.client_ca_file",
                            &settings.client_ca_file,
                            error.to_string(),
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| {
                            invalid(
                                "tls.client_ca_file",
                                &settings.client_ca_file,
                                error.to_string(),
                            )
                        })?;
                Some(verifier)
            }
        };
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match settings.client_auth() {
        ClientAuth::Off => None,
        mode => Some(Arc::new(ClientCertificates {
            client_ca: client_ca.clone(),
            self_signed: settings.self_signed_client_certificates,
            mandatory: mode == ClientAuth::Required,
            algorithms: provider.signature_verification_algorithms,
        })),
    };
    // Stateless session tickets (keys random per process, rotated every 6 hours): a client
    // reconnecting resumes its session without the server keeping any, however many clients.
    let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|error| invalid("tls.cert_file", &settings.cert_file, error.to_string()))?;
    let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| invalid("tls.cert_file", &settings.cert_file, error.to_string()))?;
        let builder = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(
            rustls::sign::SingleCertAndKey::from(certified.clone()),
        ));
        config.alpn_protocols = vec![alpn.to_vec()];
        config.ticketer = ticketer.clone();
        Ok(Arc::new(config))
    };
    Ok(Configs {
        grpc: config(b"h2")?,
        http: config(b"http/1.1")?,
        client_ca,
        digests: digests(&files),
    })
}

/// The time now, as rustls takes it.
fn unix_now() -> UnixTime {
    let now = crate::clock::system_now();
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now.timestamp()).unwrap_or(0),
    ))
}

/// The client certificates a handshake takes: those chaining to `tls.client_ca_file` and,
/// with `tls.self_signed_client_certificates`, a lone self-signed certificate that is current
/// (proving nothing but itself). Anything else, an expired certificate or one from another
/// CA, is refused in the handshake. The client proves it holds the certificate's key either
/// way (its handshake signature is checked against the certificate).
#[derive(Debug)]
struct ClientCertificates {
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    self_signed: bool,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientCertificates {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints when self-signed certificates are taken: a client must not leave its
        // certificate out because its issuer is not among them.
        match &self.client_ca {
            Some(client_ca) if !self.self_signed => client_ca.root_hint_subjects(),
            _ => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let refused = match &self.client_ca {
            Some(client_ca) => match client_ca.verify_client_cert(end_entity, intermediates, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => error,
            },
            None => rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        };
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if self.self_signed
            && intermediates.is_empty()
            && is_self_signed_and_current(end_entity.as_ref(), now)
        {
            return Ok(ClientCertVerified::assertion());
        }
        Err(refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
