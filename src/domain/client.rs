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
}
