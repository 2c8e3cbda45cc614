//! The auth use cases: issuing tokens, checking them, introspecting and revoking them, and the
//! public keys. Every decision is made here; the gRPC adapter only translates.
//!
//! Credential failures are indistinguishable: an unknown name and a wrong password both answer
//! `INVALID_CREDENTIALS` after the same argon2 work (a dummy hash for unknown names), and
//! failures are counted per name whether or not a user has it, so a lockout reveals nothing.
//! `ACCOUNT_DISABLED` is said only to a caller who gave the right password.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use uuid::Uuid;

use crate::{
    clock::SharedClock,
    config::Settings,
    domain::{AuditRecord, Outcome, Scope, ScopeSet, normalize},
    error::{Error, Reason},
    password::{PasswordHasher, Verification},
    revocation::{Revocation, RevocationKind, Revocations, TokenFacts},
    store::{LockoutPolicy, Store},
    token::{
        Audience, Claims, Kind, TokenIssuer, TokenVerifier, VerifyError,
        keys::{KeyRing, PublicJwk},
    },
};

/// The scope of the restricted token a user with a generated or reset password gets.
pub const PASSWORD_CHANGE_SCOPE: &str = "keystone:password.change";

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
    /// The peer's address.
    pub peer: String,
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
}

/// A verified, unrevoked token's principal.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The claims.
    pub claims: Claims,
}

/// The auth service.
#[derive(Debug, Clone)]
pub struct AuthService {
    store: Store,
    hasher: PasswordHasher,
    clock: SharedClock,
    ring: KeyRing,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    revocations: Revocations,
    lockout: LockoutPolicy,
    issuer_url: String,
    access_ttl: Duration,
    max_access_ttl: Duration,
    default_audience: String,
}

impl AuthService {
    /// The service over its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        store: Store,
        hasher: PasswordHasher,
        clock: SharedClock,
        ring: KeyRing,
        revocations: Revocations,
    ) -> Self {
        let to_chrono =
            |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self {
            issuer: TokenIssuer::new(ring.clone()),
            verifier: TokenVerifier::new(
                ring.clone(),
                settings.issuer.clone(),
                settings.tokens.leeway,
            ),
            store,
            hasher,
            clock,
            ring,
            revocations,
            lockout: LockoutPolicy {
                threshold: settings.auth.lockout_threshold,
                base: to_chrono(settings.auth.lockout_duration),
                max: to_chrono(settings.auth.lockout_max_duration),
                forget_after: chrono::Duration::hours(24),
            },
            issuer_url: settings.issuer.clone(),
            access_ttl: settings.tokens.access_ttl,
            max_access_ttl: settings.tokens.max_access_ttl,
            default_audience: settings.tokens.default_audience.clone(),
        }
    }

    /// The resource owner password grant (RFC 6749 section 4.3).
    pub async fn password_grant(
        &self,
        login: PasswordLogin,
        request: TokenRequest,
        context: &CallContext,
    ) -> Result<IssuedToken, Error> {
        if login.username.is_empty() || login.username.len() > MAX_LOGIN_NAME {
            return Err(Error::invalid_argument(
                "password.username",
                format!("must hold 1 to {MAX_LOGIN_NAME} bytes"),
            ));
        }
        if secrecy::ExposeSecret::expose_secret(&login.password).len() > MAX_LOGIN_PASSWORD {
            return Err(Error::invalid_argument(
                "password.password",
                format!("must be at most {MAX_LOGIN_PASSWORD} bytes"),
            ));
        }
        let requested = ScopeSet::parse(request.scopes.iter().map(String::as_str))
            .map_err(|e| e.on("scopes"))?;
        let name = normalize(&login.username);
        let now = self.clock.now();
        let audit = |outcome: Outcome, reason: &str| {
            AuditRecord {
                peer: context.peer.clone(),
                ..AuditRecord::new(name.clone(), "login", name.clone(), outcome)
            }
            .with_detail("reason", reason)
        };

        // A locked name is refused without checking the password, right or wrong.
        if self.store.locked_until(&name, now).await?.is_some() {
            self.record(audit(Outcome::Denied, "locked"), now).await;
            return Err(account_locked());
        }

        let record = self.store.find_login(&name).await?;
        let verification = self
            .hasher
            .verify(
                &login.password,
                record.as_ref().map(|r| r.password_hash.as_str()),
            )
            .await?;
        let (record, needs_rehash) = match (record, verification) {
            (Some(record), Verification::Valid { needs_rehash }) => (record, needs_rehash),
            _ => {
                let locked = self
                    .store
                    .record_login_failure(&name, self.lockout, now)
                    .await?;
                let mut event = audit(Outcome::Failure, "invalid credentials");
                if let Some(until) = locked {
                    event = event.with_detail("locked_until", until.to_rfc3339());
                    tracing::warn!("a name was locked after repeated failed logins");
                }
                self.record(event, now).await;
                return Err(invalid_credentials());
            }
        };
        let user = record.user;
        if user.locked && user.locked_until.is_none_or(|until| until > now) {
            self.record(audit(Outcome::Denied, "locked by an admin"), now)
                .await;
            return Err(account_locked());
        }
        if !user.enabled {
            self.record(audit(Outcome::Denied, "disabled"), now).await;
            return Err(Error::PermissionDenied {
                reason: Reason::AccountDisabled,
                message: "the account is disabled".to_owned(),
            });
        }
        self.store.clear_login_failures(&name).await?;
        let new_hash = if needs_rehash {
            Some(self.hasher.hash(&login.password).await?)
        } else {
            None
        };
        self.store
            .record_login_success(user.id, new_hash, now)
            .await?;

        // A user whose password was generated or reset gets one scope, good for
        // ChangePassword only, and no refresh token.
        let scopes = if user.password_change_required {
            ScopeSet::parse([PASSWORD_CHANGE_SCOPE]).map_err(|e| e.on("scopes"))?
        } else {
            let held = ScopeSet::parse(
                self.store
                    .scopes_of_user(user.id)
                    .await?
                    .iter()
                    .map(String::as_str),
            )
            .map_err(|e| Error::internal(anyhow::anyhow!("a stored scope is invalid: {e}")))?;
            narrow(&held, requested)?
        };
        let audience = self.audience_for_user(&request.audience)?;
        let session_id = Uuid::now_v7().to_string();
        let token = self.mint(
            MintRequest {
                subject: user.id.to_string(),
                kind: Kind::User,
                client_id: FIRST_PARTY_CLIENT_ID.to_owned(),
                username: Some(user.username.clone()),
                roles: user.roles.clone(),
                scopes,
                audience,
                session_id: Some(session_id.clone()),
                ttl: self.access_ttl.min(self.max_access_ttl),
            },
            now,
        )?;
        let event = audit(Outcome::Success, "password")
            .with_detail("user_id", user.id.to_string())
            .with_detail("session_id", session_id);
        self.record(event, now).await;
        Ok(token)
    }

    /// Checks a token: signature, claims, revocation, then the scopes and audience asked for.
    /// Memory only: no database round trip.
    pub fn authenticate(
        &self,
        token: &str,
        required_scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<Principal, Error> {
        let principal = self.verify(token)?;
        if let Some(audience) = audience
            && !principal.claims.aud.contains(audience)
        {
            return Err(Error::PermissionDenied {
                reason: Reason::AudienceMismatch,
                message: format!("the token is not meant for `{audience}`"),
            });
        }
        let held = ScopeSet::parse_space_separated(&principal.claims.scope).map_err(|_| {
            Error::Unauthenticated {
                reason: Reason::TokenInvalid,
                message: "the token's scopes are malformed".to_owned(),
            }
        })?;
        if let Some(missing) = held.first_missing(required_scopes) {
            return Err(insufficient_scope(missing));
        }
        Ok(principal)
    }

    /// Verifies a token and checks it is not revoked.
    pub fn verify(&self, token: &str) -> Result<Principal, Error> {
        let now = self.clock.now();
        let claims = self.verifier.verify(token, now).map_err(|error| {
            let (reason, message) = match error {
                VerifyError::Malformed(why) => (Reason::TokenMalformed, why),
                VerifyError::Invalid(why) => (Reason::TokenInvalid, why),
                VerifyError::Expired => (Reason::TokenExpired, "the token has expired"),
            };
            Error::Unauthenticated {
                reason,
                message: message.to_owned(),
            }
        })?;
        if self.revocations.is_revoked(TokenFacts {
            token_id: &claims.jti,
            session_id: claims.sid.as_deref(),
            subject: &claims.sub,
            issued_at: claims.iat,
        }) {
            return Err(Error::Unauthenticated {
                reason: Reason::TokenRevoked,
                message: "the token has been revoked".to_owned(),
            });
        }
        Ok(Principal { claims })
    }

    /// RFC 7662: the claims of an active token, or `None` for anything else.
    pub fn introspect(&self, token: &str) -> Option<Claims> {
        self.verify(token).ok().map(|principal| principal.claims)
    }

    /// RFC 7009: revokes the token if it is one of Keystone's live access tokens; anything
    /// else is accepted and ignored, so the answer reveals nothing.
    pub async fn revoke(&self, token: &str, context: &CallContext) -> Result<(), Error> {
        let Ok(principal) = self.verify(token) else {
            return Ok(());
        };
        let claims = principal.claims;
        let expires_at =
            DateTime::<Utc>::from_timestamp(claims.exp, 0).unwrap_or_else(|| self.clock.now());
        self.revocations
            .revoke(Revocation {
                kind: RevocationKind::Token,
                key: claims.jti.clone(),
                not_before: self.clock.now(),
                expires_at: expires_at + chrono::Duration::minutes(5),
            })
            .await?;
        let event = AuditRecord {
            peer: context.peer.clone(),
            ..AuditRecord::new(
                claims.sub.clone(),
                "token.revoke",
                claims.jti.clone(),
                Outcome::Success,
            )
        };
        self.record(event, self.clock.now()).await;
        Ok(())
    }

    /// The published keys.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.ring.snapshot().jwks.clone()
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer_url
    }

    fn audience_for_user(&self, requested: &str) -> Result<Vec<String>, Error> {
        if requested.is_empty() {
            return Ok(vec![self.default_audience.clone()]);
        }
        if requested.len() > 256
            || requested
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::PermissionDenied {
                reason: Reason::InvalidAudience,
                message: "the audience must hold 1 to 256 characters and no spaces".to_owned(),
            });
        }
        Ok(vec![requested.to_owned()])
    }

    fn mint(&self, request: MintRequest, now: DateTime<Utc>) -> Result<IssuedToken, Error> {
        let ttl = chrono::Duration::from_std(request.ttl)
            .map_err(|e| Error::internal(anyhow::anyhow!("token lifetime out of range: {e}")))?;
        let expires_at = now + ttl;
        let claims = Claims {
            iss: self.issuer_url.clone(),
            sub: request.subject,
            aud: match request.audience.as_slice() {
                [one] => Audience::One(one.clone()),
                _ => Audience::Many(request.audience),
            },
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: Uuid::now_v7().to_string(),
            client_id: request.client_id,
            scope: request.scopes.to_space_separated(),
            kind: request.kind,
            roles: request.roles,
            sid: request.session_id,
            preferred_username: request.username,
        };
        let access_token = self.issuer.sign(&claims)?;
        Ok(IssuedToken {
            access_token,
            refresh_token: None,
            scopes: request.scopes,
            expires_at,
            expires_in: ttl.num_seconds(),
        })
    }

    /// Writes an audit event; a failure is logged and does not fail the call.
    async fn record(&self, event: AuditRecord, now: DateTime<Utc>) {
        if let Err(error) = self.store.record_audit(&event, now).await {
            tracing::error!(
                error = format!("{:#}", anyhow::Error::from(error)),
                action = event.action,
                "cannot write an audit event"
            );
        }
    }
}

struct MintRequest {
    subject: String,
    kind: Kind,
    client_id: String,
    username: Option<String>,
    roles: Vec<String>,
    scopes: ScopeSet,
    audience: Vec<String>,
    session_id: Option<String>,
    ttl: Duration,
}

/// The scopes to grant: all that are held when none were asked, else those asked, each of which
/// must be satisfied by a held scope.
fn narrow(held: &ScopeSet, requested: ScopeSet) -> Result<ScopeSet, Error> {
    if requested.is_empty() {
        return Ok(held.clone());
    }
    if let Some(missing) = held.first_missing(&requested) {
        return Err(Error::PermissionDenied {
            reason: Reason::InvalidScope,
            message: format!("the scope `{missing}` is not allowed"),
        });
    }
    Ok(requested)
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

fn insufficient_scope(missing: &Scope) -> Error {
    Error::PermissionDenied {
        reason: Reason::InsufficientScope,
        message: format!("the token lacks the scope `{missing}`"),
    }
}
