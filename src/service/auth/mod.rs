//! The auth use cases: issuing tokens, checking them, introspecting and revoking them, and the
//! public keys. Every decision is made here; the gRPC adapter only translates.
//!
//! Credential failures are indistinguishable: an unknown name and a wrong password both answer
//! `INVALID_CREDENTIALS` after the same argon2 work (a dummy hash for unknown names), and
//! failures are counted per name whether or not a user has it, so a lockout reveals nothing.
//! `ACCOUNT_DISABLED` is said only to a caller who gave the right password.
//!
//! One room per grant: [`password`] (sign-up, the password grant, password change),
//! [`client`] (client credentials), [`refresh`] (rotation, logout), [`exchange`] (token
//! exchange), [`check`] (introspection, revocation) and [`mint`] (what a token holds, and
//! signing it). Token checks are the
//! [`Authenticator`]'s; the rules from settings are one [`AuthPolicy`].

mod check;
mod client;
mod exchange;
mod mint;
mod password;
mod refresh;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::{
    client_ip::CallerCertificate,
    clock::SharedClock,
    config::Settings,
    domain::{
        AuditRecord, ClientCertificate, PasswordPolicy, PresentedCertificate, ScopeSet, Thumbprint,
    },
    error::{Error, Reason},
    federation::Federation,
    password::PasswordHasher,
    revocation::Revocations,
    secrets::Pepper,
    service::{Authenticator, Presented, limits::RateLimits},
    store::{LockoutPolicy, Store},
    token::{Claims, KeyRing, PublicJwk, TokenIssuer, dpop::VerifiedProof},
};

/// The scope of the restricted token a user with a generated or reset password gets.
pub const PASSWORD_CHANGE_SCOPE: &str = "keystone:password.change";

/// The scope `Introspect` and `WatchRevocations` need.
pub const INTROSPECT_SCOPE: &str = "keystone:introspect";

/// The `client_id` of tokens from the password grant, which names no client: Keystone's own
/// first-party login (RFC 9068 requires the claim).
pub const FIRST_PARTY_CLIENT_ID: &str = "keystone";

/// Longest username or email accepted at login, in bytes.
const MAX_LOGIN_NAME: usize = 320;
/// Longest password accepted at login, in bytes (the policy allows 128 code points).
const MAX_LOGIN_PASSWORD: usize = 1024;

/// Who is asking, as far as the transport knows.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The client's IP: the peer's, or the one a trusted proxy forwarded.
    pub peer: String,
    /// The client certificate that came with the call: its own TLS connection's, or the one
    /// a trusted proxy forwarded.
    pub certificate: Option<PresentedCertificate>,
    /// The caller's `user-agent`, truncated to [`MAX_USER_AGENT`] characters, control
    /// characters dropped: what a person recognises a session's device by.
    pub user_agent: Option<String>,
}

/// The most of a `user-agent` a session keeps, in characters.
pub const MAX_USER_AGENT: usize = 256;

impl CallContext {
    /// The context of a call from `peer` (its client IP) with the certificate the transport
    /// established, if any.
    pub fn new(peer: String, certificate: Option<&CallerCertificate>) -> Self {
        let certificate = certificate.map(|certificate| match certificate {
            CallerCertificate::Connection {
                chain,
                issued_by_client_ca,
                thumbprint,
            } => PresentedCertificate::Connection(ClientCertificate {
                chain: chain.clone(),
                issued_by_client_ca: *issued_by_client_ca,
                thumbprint: Thumbprint::from_bytes(*thumbprint),
            }),
            CallerCertificate::Forwarded(hash) => {
                PresentedCertificate::Forwarded(Thumbprint::from_bytes(*hash))
            }
        });
        Self {
            peer,
            certificate,
            user_agent: None,
        }
    }

    /// The context with the call's `user-agent` (any length: it is truncated).
    pub fn with_user_agent(mut self, user_agent: Option<&str>) -> Self {
        self.user_agent = user_agent
            .map(|agent| {
                agent
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_USER_AGENT)
                    .collect::<String>()
            })
            .filter(|agent| !agent.trim().is_empty());
        self
    }

    /// What came with a bearer token in this call.
    pub fn presented(&self) -> Presented {
        Presented {
            certificate: self
                .certificate
                .as_ref()
                .map(PresentedCertificate::thumbprint),
        }
    }
}

/// Who calls `Introspect`.
#[derive(Debug)]
pub enum IntrospectionCaller {
    /// A bearer token, which must hold `keystone:introspect`.
    Bearer(String),
    /// A client's credentials (HTTP Basic); the client must be allowed `keystone:introspect`.
    Client {
        /// The client id.
        client_id: String,
        /// Its secret.
        secret: SecretString,
    },
}

/// A password grant.
#[derive(Debug)]
pub struct PasswordLogin {
    /// Username or email.
    pub username: String,
    /// The password.
    pub password: SecretString,
}

/// What was asked besides the grant.
#[derive(Debug, Default)]
pub struct TokenRequest {
    /// Scopes asked for; empty: the default.
    pub scopes: Vec<String>,
    /// Audience asked for; empty: the default.
    pub audience: String,
    /// The DPoP proof that came with the request (RFC 9449): the token is bound to its key.
    pub dpop: Option<crate::service::DpopPresented>,
}

/// An issued token.
#[derive(Debug)]
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// The refresh token, if one was issued.
    pub refresh_token: Option<SecretString>,
    /// The scopes granted.
    pub scopes: ScopeSet,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// Its lifetime in seconds.
    pub expires_in: i64,
    /// The access token's id (`jti`), for the audit trail.
    pub jti: String,
    /// `Bearer`, or `DPoP` for a token bound to a DPoP key.
    pub token_type: &'static str,
    /// The type of the token a token exchange issued (RFC 8693 section 2.2.1); `None` for
    /// other grants.
    pub issued_token_type: Option<&'static str>,
}

/// A verified, unrevoked token's principal.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The claims.
    pub claims: Claims,
}

/// The rules of issuing, from the settings, read once.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// `issuer`: the `iss` of every token.
    pub issuer: String,
    /// `tokens.access_ttl`.
    pub access_ttl: Duration,
    /// `tokens.max_access_ttl`: no access token lives longer.
    pub max_access_ttl: Duration,
    /// `tokens.leeway`: how far past `exp` a token is still accepted.
    pub leeway: Duration,
    /// The longest an access token issued now can be accepted: `max_access_ttl` plus leeway.
    pub token_lifetime: chrono::Duration,
    /// `tokens.default_audience`.
    pub default_audience: String,
    /// `tokens.user_audiences`: what else users may ask for.
    pub user_audiences: Vec<String>,
    /// `tokens.keystone_audience`: Keystone's own.
    pub keystone_audience: String,
    /// `tokens.refresh_ttl`.
    pub refresh_ttl: chrono::Duration,
    /// `tokens.refresh_idle_ttl`.
    pub refresh_idle_ttl: chrono::Duration,
    /// `tokens.refresh_retry_grace`.
    pub refresh_retry_grace: chrono::Duration,
    /// The password rules (`auth.password_min_length`).
    pub password: PasswordPolicy,
    /// The lockout after failed logins (`auth.lockout_*`).
    pub lockout: LockoutPolicy,
    /// `auth.registration`: whether anyone may sign up.
    pub registration: bool,
    /// `clients.audit_tokens`: whether every service token is an audit event.
    pub audit_service_tokens: bool,
    /// `federation.max_delegation_depth`: the most actors an exchanged token may name.
    pub max_delegation_depth: usize,
    /// What a client assertion may be addressed to (RFC 7523 section 3): the issuer, and the
    /// token endpoint.
    pub assertion_audiences: Vec<String>,
}

impl AuthPolicy {
    /// The policy of `settings`.
    pub fn from_settings(settings: &Settings) -> Self {
        let to_chrono =
            |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self {
            issuer: settings.issuer.clone(),
            access_ttl: settings.tokens.access_ttl,
            max_access_ttl: settings.tokens.max_access_ttl,
            leeway: settings.tokens.leeway,
            token_lifetime: to_chrono(settings.tokens.max_access_ttl + settings.tokens.leeway),
            default_audience: settings.tokens.default_audience.clone(),
            user_audiences: settings.tokens.user_audiences.clone(),
            keystone_audience: settings.tokens.keystone_audience.clone(),
            refresh_ttl: to_chrono(settings.tokens.refresh_ttl),
            refresh_idle_ttl: to_chrono(settings.tokens.refresh_idle_ttl),
            refresh_retry_grace: to_chrono(settings.tokens.refresh_retry_grace),
            password: PasswordPolicy::new(
                settings.auth.password_min_length,
                settings.auth.password_min_strength,
            ),
            lockout: LockoutPolicy {
                threshold: settings.auth.lockout_threshold,
                base: to_chrono(settings.auth.lockout_duration),
                max: to_chrono(settings.auth.lockout_max_duration),
                forget_after: crate::store::FORGET_FAILURES_AFTER,
            },
            registration: settings.auth.registration,
            audit_service_tokens: settings.clients.audit_tokens,
            max_delegation_depth: usize::try_from(settings.federation.max_delegation_depth)
                .unwrap_or(usize::MAX),
            assertion_audiences: {
                let issuer = settings.issuer.trim_end_matches('/');
                let mut audiences = vec![
                    settings.issuer.clone(),
                    issuer.to_owned(),
                    format!("{issuer}/oauth2/token"),
                ];
                audiences.dedup();
                audiences
            },
        }
    }
}

/// The auth service; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthService {
    authenticator: Authenticator,
    store: Store,
    hasher: PasswordHasher,
    clock: SharedClock,
    ring: KeyRing,
    issuer: TokenIssuer,
    revocations: Revocations,
    pepper: Pepper,
    limits: RateLimits,
    policy: Arc<AuthPolicy>,
    /// The issuers whose workload tokens clients may prove themselves with.
    federation: Arc<Federation>,
}

pub use client::ClientCredential;
pub use exchange::{ACCESS_TOKEN_TYPE_URN, TokenExchange};

/// A self-service sign-up, or the form of one being filled in (`EstimatePasswordStrength`).
#[derive(Debug)]
pub struct Registration {
    /// The username.
    pub username: String,
    /// The email address.
    pub email: String,
    /// The password.
    pub password: SecretString,
}

impl AuthService {
    /// The service: tokens are checked by `authenticator`, signed with `ring`'s key, and
    /// issued by the rules of `policy`.
    pub fn new(
        authenticator: Authenticator,
        store: Store,
        hasher: PasswordHasher,
        ring: KeyRing,
        pepper: Pepper,
        policy: AuthPolicy,
    ) -> Self {
        Self {
            clock: authenticator.clock().clone(),
            revocations: authenticator.revocations().clone(),
            limits: authenticator.limits().clone(),
            authenticator,
            store,
            hasher,
            issuer: TokenIssuer::new(ring.clone()),
            ring,
            pepper,
            policy: Arc::new(policy),
            federation: Arc::default(),
        }
    }

    /// The service trusting `federation`'s issuers for clients' workload identities.
    pub fn with_federation(mut self, federation: Arc<Federation>) -> Self {
        self.federation = federation;
        self
    }

    /// What checks tokens.
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// Forgets rate-limit state of keys that have been quiet (bounded memory).
    pub fn forget_idle_limits(&self) {
        self.limits.forget_idle();
    }

    /// The published keys.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.ring.snapshot().jwks.clone()
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.policy.issuer
    }

    /// The request's DPoP proof (RFC 9449 section 5), checked but not yet used up: each grant
    /// checks it first, before any credential, so that a bad proof tells nothing of them.
    fn checked_dpop_proof(&self, request: &TokenRequest) -> Result<Option<VerifiedProof>, Error> {
        request
            .dpop
            .as_ref()
            .map(|proof| {
                self.authenticator
                    .check_proof(proof, None, Reason::InvalidDpopProof)
            })
            .transpose()
    }

    /// Uses up a checked proof, once the caller proved who it is (so that nobody can fill the
    /// set of used proofs without credentials): the key the token is bound to.
    async fn claim_dpop_proof(
        &self,
        proof: Option<VerifiedProof>,
    ) -> Result<Option<String>, Error> {
        let Some(proof) = proof else {
            return Ok(None);
        };
        self.authenticator
            .claim_proof(&proof, Reason::InvalidDpopProof)
            .await?;
        Ok(Some(proof.jkt))
    }

    /// Takes back a login attempt whose password was never checked.
    async fn cancel_attempt(&self, name: &str) {
        if let Err(cancel) = self.store.cancel_login_attempt(name).await {
            tracing::warn!(error = cancel.chain(), "cannot take back a login attempt");
        }
    }

    /// Records the audit event of a refusal and waits until it is committed; a failure is
    /// logged (and counted) and the refusal stands.
    async fn record(&self, event: AuditRecord, now: DateTime<Utc>) {
        self.store.record_refusal(event, now).await;
    }
}

/// Runs `work` to its end on a task of its own, even when the caller goes away, in the call's
/// span (so its logs and trace stay with the call).
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .map_err(Error::internal)?
}

fn invalid_credentials() -> Error {
    Error::Unauthenticated {
        reason: Reason::InvalidCredentials,
        message: "invalid credentials".to_owned(),
    }
}

fn account_locked() -> Error {
    Error::PermissionDenied {
        reason: Reason::AccountLocked,
        message: "the account is locked; try again later".to_owned(),
    }
}
