//! Service clients as the services see them. Never a secret.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A service client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The internal id.
    pub id: Uuid,
    /// The public identifier callers send.
    pub client_id: super::ClientId,
    /// A display name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Scopes it may be granted.
    pub allowed_scopes: super::ScopeSet,
    /// Audiences it may ask for, sorted.
    pub allowed_audiences: Vec<String>,
    /// Its access tokens' lifetime; `None`: the server default.
    pub access_token_ttl: Option<Duration>,
    /// Whether it may get tokens.
    pub enabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Last secret rotation.
    pub secret_rotated_at: Option<DateTime<Utc>>,
    /// Last use of one of its secrets.
    pub secret_last_used_at: Option<DateTime<Utc>>,
    /// What its TLS client certificate must show; when set, it authenticates by certificate
    /// and holds no secret.
    pub certificate: super::CertificateIdentity,
    /// Whether its tokens are bound to the certificate it presents (`cnf.x5t#S256`).
    pub certificate_bound_tokens: bool,
    /// Whether it may exchange a token it received for one on the same subject's behalf
    /// (RFC 8693 token exchange).
    pub token_exchange: bool,
    /// The public keys it signs its client assertions with (`private_key_jwt`), as a JWK Set;
    /// when set, it authenticates by assertion and holds no secret.
    pub jwks_json: Option<String>,
    /// The workload identities it proves itself with (a trusted issuer's token naming one of
    /// them); when any, it holds no secret. Sorted.
    pub federated_identities: Vec<FederatedIdentity>,
    /// Its live secrets, the newest first (never the secret or its hash).
    pub secrets: Vec<ClientSecretInfo>,
}

/// One live secret of a client, as admins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSecretInfo {
    /// A short id: the first [`SECRET_ID_LENGTH`] hex digits of the SHA-256 of the secret's
    /// keyed hash (it tells nothing of the secret, nor of the hash the secret is checked
    /// against).
    pub id: String,
    /// Issued.
    pub created_at: DateTime<Utc>,
    /// Ends; `None`: at the next rotation.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last used (kept to the minute); `None`: never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The hex digits of a secret's id.
pub const SECRET_ID_LENGTH: usize = 12;

impl ClientSecretInfo {
    /// The short id of a secret with this keyed hash.
    pub fn id_of(hash: &[u8]) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, hash);
        let mut id = String::with_capacity(SECRET_ID_LENGTH);
        for byte in digest.as_ref().iter().take(SECRET_ID_LENGTH / 2) {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }

    /// Checks a secret id as given by a caller: [`SECRET_ID_LENGTH`] lowercase hex digits.
    pub fn parse_id(value: &str) -> Result<String, super::ParseError> {
        let value = value.trim().to_ascii_lowercase();
        if value.len() != SECRET_ID_LENGTH || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(super::ParseError::new(format!(
                "must be a secret id: {SECRET_ID_LENGTH} hex digits, as `Client.secrets[].id` shows"
            )));
        }
        Ok(value)
    }
}

/// A client to create; its secret is already hashed.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// The public identifier.
    pub client_id: String,
    /// A display name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Scopes it may be granted; each must exist.
    pub allowed_scopes: Vec<String>,
    /// Audiences it may ask for.
    pub allowed_audiences: Vec<String>,
    /// Its access tokens' lifetime.
    pub access_token_ttl: Option<Duration>,
    /// Whether it may get tokens.
    pub enabled: bool,
    /// What its TLS client certificate must show (set: no secret).
    pub certificate: super::CertificateIdentity,
    /// Whether its tokens are bound to its certificate.
    pub certificate_bound_tokens: bool,
    /// Whether it may exchange tokens (RFC 8693).
    pub token_exchange: bool,
    /// Its public keys (set: no secret).
    pub jwks_json: Option<String>,
    /// Its workload identities (any: no secret).
    pub federated_identities: Vec<FederatedIdentity>,
}

/// A workload identity: a trusted issuer's name (`[[federation.issuers]].name`) and the `sub`
/// of its tokens, e.g. `system:serviceaccount:payments:api` from a Kubernetes cluster or
/// `spiffe://example.org/ns/payments/sa/api` from SPIRE.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FederatedIdentity {
    /// The trusted issuer's name.
    pub issuer_name: String,
    /// The `sub` its tokens carry.
    pub subject: String,
}

impl FederatedIdentity {
    /// Checks an identity as given: an issuer name as `[[federation.issuers]].name` allows (1
    /// to 64 lowercase letters, digits, `-`, `_`, `.`), a subject of 1 to 256 bytes without
    /// control characters or surrounding spaces.
    pub fn parse(issuer_name: &str, subject: &str) -> Result<Self, super::ParseError> {
        if !Self::is_issuer_name(issuer_name) {
            return Err(super::ParseError::new(
                "issuer_name must name one of [[federation.issuers]]: 1 to 64 lowercase \
                 letters, digits, `-`, `_` or `.`",
            ));
        }
        if subject.is_empty()
            || subject.len() > 256
            || subject.chars().any(char::is_control)
            || subject.trim() != subject
        {
            return Err(super::ParseError::new(
                "subject must be the sub of the issuer's tokens: 1 to 256 bytes, no control \
                 characters or surrounding spaces",
            ));
        }
        Ok(Self {
            issuer_name: issuer_name.to_owned(),
            subject: subject.to_owned(),
        })
    }

    /// Whether `name` may name a trusted issuer: 1 to 64 lowercase letters, digits, `-`, `_`
    /// or `.`.
    pub fn is_issuer_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
    }
}

impl Client {
    /// Whether it proves itself without a secret: by its TLS certificate, its own keys or a
    /// workload identity.
    pub fn secretless(&self) -> bool {
        self.certificate.is_set()
            || self.jwks_json.is_some()
            || !self.federated_identities.is_empty()
    }
}
