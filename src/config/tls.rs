//! The `[tls]` section: certificates for every listener, and client certificates.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Never asked.
    Off,
    /// Asked; a connection without one is served, one with a certificate that does not chain
    /// to `tls.client_ca_file` (and is not an accepted self-signed one) is refused.
    Optional,
    /// Required: a connection without a certificate chaining to `tls.client_ca_file` (or an
    /// accepted self-signed one) is refused in the handshake.
    Required,
}

/// TLS on every listener (gRPC, HTTP, and the admin ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain (PEM), the server's own first. With `key_file`, every listener
    /// speaks TLS only.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA certificates (PEM) client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// `off`, `optional` or `required`; unset: `optional` with a client CA or self-signed
    /// client certificates, else `off`.
    pub client_auth: Option<ClientAuth>,
    /// Whether the handshake also takes self-signed client certificates (current, and alone:
    /// no chain). Such a certificate proves nothing but itself: it authenticates only a
    /// client that registered its thumbprint (RFC 8705 `self_signed_tls_client_auth`).
    pub self_signed_client_certificates: bool,
    /// How often the files are read again: a changed certificate, key or client CA is used
    /// for new connections from then on (open ones keep theirs).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: None,
            self_signed_client_certificates: false,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsSettings {
    /// Whether the listeners speak TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Whether client certificates are asked for, and how.
    pub fn client_auth(&self) -> ClientAuth {
        match self.client_auth {
            Some(mode) => mode,
            None if self.client_ca_file.is_some() || self.self_signed_client_certificates => {
                ClientAuth::Optional
            }
            None => ClientAuth::Off,
        }
    }
}
