//! The auth use cases: issuing tokens, checking them, introspecting and revoking them, and the
//! public keys. Every decision is made here; the gRPC adapter only translates.
//!
//! Credential failures are indistinguishable: an unknown name and a wrong password both answer
//! `INVALID_CREDENTIALS` after the same argon2 work (a dummy hash for unknown names), and
//! failures are counted per name whether or not a user has it, so a lockout reveals nothing.
//! `ACCOUNT_DISABLED` is said only to a caller who gave the right password.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use crate::{
    clock::SharedClock,
    config::Settings,
    domain::{AuditRecord, Outcome, PasswordPolicy, Scope, ScopeSet, normalize},
    error::{Error, Reason},
    password::{PasswordHasher, Verification},
    revocation::{Revocation, RevocationKind, Revocations, TokenFacts},
    secrets::{Pepper, REFRESH_TOKEN_PREFIX, hash_refresh_token, random_token},
    service::limits::{Key, RateLimits},
    store::{CachedClient, LockoutPolicy, NewRefreshToken, RefreshRecord, Rotation, Store},
    token::{
        Audience, Claims, Kind, TokenIssuer, TokenVerifier, VerifyError,
        keys::{KeyRing, PublicJwk},
    },
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
    /// The longest an access token issued now can be accepted: `max_access_ttl` plus leeway.
    token_lifetime: chrono::Duration,
    default_audience: String,
    user_audiences: Vec<String>,
    keystone_audience: String,
    pepper: Pepper,
    policy: PasswordPolicy,
    refresh_ttl: chrono::Duration,
    refresh_idle_ttl: chrono::Duration,
    refresh_retry_grace: chrono::Duration,
    registration: bool,
    limits: RateLimits,
    audit_service_tokens: bool,
    /// Refused admin calls, written at most once a minute per address.
    refusals: std::sync::Arc<super::refusals::RefusalLog>,
}

/// A self-service sign-up.
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
    /// The service over its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        store: Store,
        hasher: PasswordHasher,
        clock: SharedClock,
        ring: KeyRing,
        revocations: Revocations,
        pepper: Pepper,
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
            lockout: LockoutPolicy {
                threshold: settings.auth.lockout_threshold,
                base: to_chrono(settings.auth.lockout_duration),
                max: to_chrono(settings.auth.lockout_max_duration),
                forget_after: crate::store::FORGET_FAILURES_AFTER,
            },
            issuer_url: settings.issuer.clone(),
            access_ttl: settings.tokens.access_ttl,
            max_access_ttl: settings.tokens.max_access_ttl,
            token_lifetime: to_chrono(settings.tokens.max_access_ttl + settings.tokens.leeway),
            default_audience: settings.tokens.default_audience.clone(),
            user_audiences: settings.tokens.user_audiences.clone(),
            keystone_audience: settings.tokens.keystone_audience.clone(),
            pepper,
            policy: PasswordPolicy::new(settings.auth.password_min_length),
            refresh_ttl: to_chrono(settings.tokens.refresh_ttl),
            refresh_idle_ttl: to_chrono(settings.tokens.refresh_idle_ttl),
            refresh_retry_grace: to_chrono(settings.tokens.refresh_retry_grace),
            audit_service_tokens: settings.clients.audit_tokens,
            refusals: std::sync::Arc::default(),
            registration: settings.auth.registration,
            limits: RateLimits::new(
                &settings.limits,
                settings.auth.registration_per_minute,
                revocations.clone(),
            ),
            revocations,
        }
    }

    /// Forgets rate-limit state of keys that have been quiet (bounded memory).
    pub fn forget_idle_limits(&self) {
        self.limits.forget_idle();
    }

    /// Writes how many admin calls were refused from each address in the minutes that ended.
    pub async fn write_ended_refusals(&self) {
        let now = self.clock.now();
        for event in self.refusals.ended(now) {
            self.record(event, now).await;
        }
    }

    /// Self-service sign-up, when `auth.registration` is on: a user with no roles and an
    /// unverified email. Rate limited per client IP.
    pub async fn register(
        &self,
        registration: Registration,
        context: &CallContext,
    ) -> Result<crate::domain::User, Error> {
        if !self.registration {
            return Err(Error::FailedPrecondition {
                reason: Reason::RegistrationDisabled,
                message: "self-service registration is switched off".to_owned(),
            });
        }
        self.limits
            .check(&[Key::Ip(&context.peer), Key::Registration(&context.peer)])
            .await?;
        let username =
            crate::domain::Username::parse(&registration.username).map_err(|e| e.on("username"))?;
        let email = crate::domain::Email::parse(&registration.email).map_err(|e| e.on("email"))?;
        self.policy
            .check(&registration.password, Some(&username), Some(&email))
            .map_err(|e| Error::InvalidArgument {
                field: "password".to_owned(),
                reason: Reason::WeakPassword,
                message: e.0,
            })?;
        let password_hash = self.hasher.hash(&registration.password).await?;
        let now = self.clock.now();
        let event = AuditRecord::new(username.as_str(), "user.register", "", Outcome::Success)
            .from_peer(&context.peer);
        self.store
            .insert_user(
                crate::domain::NewUser {
                    username,
                    email,
                    password_hash,
                    enabled: true,
                    email_verified: false,
                    password_change_required: false,
                    roles: Vec::new(),
                },
                &event,
                now,
            )
            .await
    }

    /// The resource owner password grant (RFC 6749 section 4.3).
    ///
    /// A login runs to its end on a task of its own, even when its caller goes away (a
    /// deadline, a cancelled call, a dropped connection): an attempt counted toward the lock
    /// is always settled as a failure or a success, so abandoned calls cannot pile up counts
    /// that lock a name with no password ever checked.
    pub async fn password_grant(
        &self,
        login: PasswordLogin,
        request: TokenRequest,
        context: &CallContext,
    ) -> Result<IssuedToken, Error> {
        let service = self.clone();
        let context = context.clone();
        to_the_end(async move {
            service
                .settled_password_grant(login, request, &context)
                .await
        })
        .await
    }

    async fn settled_password_grant(
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
        // No username or email holds one, and a database may not even store it.
        if login.username.chars().any(char::is_control) {
            return Err(Error::invalid_argument(
                "password.username",
                "must not contain control characters",
            ));
        }
        if login.password.expose_secret().len() > MAX_LOGIN_PASSWORD {
            return Err(Error::invalid_argument(
                "password.password",
                format!("must be at most {MAX_LOGIN_PASSWORD} bytes"),
            ));
        }
        let requested = ScopeSet::parse(request.scopes.iter().map(String::as_str))
            .map_err(|e| e.on("scopes"))?;
        let name = normalize(&login.username);
        self.limits
            .check(&[Key::Ip(&context.peer), Key::Username(&name)])
            .await?;
        let now = self.clock.now();
        let audit = |outcome: Outcome, reason: &str| {
            AuditRecord::new(name.clone(), "login", name.clone(), outcome)
                .from_peer(&context.peer)
                .with_detail("reason", reason)
        };

        // Names that normalize beyond any stored username or email cannot log in.
        if name.chars().count() > MAX_LOGIN_NAME {
            return Err(invalid_credentials());
        }
        // A place in the hashing queue first: a login turned away for overload is recorded
        // nowhere and counts toward no lock.
        let admission = self.hasher.admit()?;
        let record = self.store.find_login(&name).await?;
        // A user's failures count under the username, whichever of username and email was
        // typed; unknown names count under themselves, so a lock reveals nothing.
        let lockout_name = record
            .as_ref()
            .map_or_else(|| name.clone(), |r| r.lockout_name.clone());
        // The attempt is counted before the password is checked: a locked name (or one with
        // more attempts in flight than the threshold) is refused without checking it.
        if !self
            .store
            .begin_login_attempt(&lockout_name, self.lockout, now)
            .await?
        {
            self.record(audit(Outcome::Denied, "locked"), now).await;
            return Err(account_locked());
        }
        let verification = match self
            .hasher
            .verify_admitted(
                admission,
                &login.password,
                record.as_ref().map(|r| r.password_hash.as_str()),
            )
            .await
        {
            Ok(verification) => verification,
            Err(error) => {
                // The password was not checked (the hashing failed): the attempt does not
                // count.
                self.cancel_attempt(&lockout_name).await;
                return Err(error);
            }
        };
        let (record, needs_rehash) = match (record, verification) {
            (Some(record), Verification::Valid { needs_rehash }) => (record, needs_rehash),
            _ => {
                let locked = self
                    .store
                    .record_login_failure(
                        &lockout_name,
                        self.lockout,
                        audit(Outcome::Failure, "invalid credentials"),
                        now,
                    )
                    .await?;
                if locked.is_some() {
                    tracing::warn!("a name was locked after repeated failed logins");
                }
                return Err(invalid_credentials());
            }
        };
        // The password was right: the attempt is settled (and earlier failures forgotten)
        // whatever is decided next, so that a disabled or admin-locked account does not pile
        // up counted attempts that lock its name after it is let back in.
        self.store
            .clear_login_failures(&record.lockout_name)
            .await?;
        let mut user = record.user;
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
        user.roles = self.store.role_names_of(user.id).await?;
        let new_hash = if needs_rehash {
            Some(self.hasher.hash(&login.password).await?)
        } else {
            None
        };

        // A user whose password was generated or reset gets one scope, good for
        // ChangePassword only, and no refresh token.
        // The restricted token carries no roles and only Keystone's own audience: it is good
        // for ChangePassword and nothing else.
        let (scopes, audience) = if user.password_change_required {
            user.roles.clear();
            (
                ScopeSet::parse([PASSWORD_CHANGE_SCOPE]).map_err(|e| e.on("scopes"))?,
                vec![self.keystone_audience.clone()],
            )
        } else {
            let scopes = grant(&self.scopes_of(user.id).await?, requested)?;
            let audience = self.audience_for_user(&request.audience, &scopes)?;
            self.check_keystone_scopes(&scopes, &audience)?;
            (scopes, audience)
        };
        let session_id = Uuid::now_v7();
        let refresh_token = if user.password_change_required {
            None
        } else {
            let refresh_token = random_token(REFRESH_TOKEN_PREFIX)?;
            let family_expires_at = now + self.refresh_ttl;
            let stored = NewRefreshToken {
                token_hash: hash_refresh_token(refresh_token.expose_secret()),
                family_id: session_id,
                user_id: user.id,
                scopes: scopes.to_space_separated(),
                audience: audience.join(" "),
                issued_at: now,
                expires_at: (now + self.refresh_idle_ttl).min(family_expires_at),
                family_expires_at,
            };
            Some((refresh_token, stored))
        };
        let mut token = self.mint_for_user(&user, scopes, audience, session_id, now)?;
        let event = audit(Outcome::Success, "password")
            .with_detail("user_id", user.id.to_string())
            .with_detail("session_id", session_id.to_string())
            .with_detail("jti", token.jti.clone());
        // The login's time, the session and the event in one transaction, before the token
        // leaves: nothing is handed out that the audit trail does not show.
        self.store
            .record_login_success(
                user.id,
                new_hash,
                refresh_token.as_ref().map(|(_, stored)| stored),
                &event,
                now,
            )
            .await?;
        token.refresh_token = refresh_token.map(|(token, _)| token);
        count_issued("password");
        Ok(token)
    }

    /// Checks a client's id and secret (HTTP Basic or form credentials, or the client
    /// credentials grant): the client must exist, be enabled and hold a live secret equal to
    /// `secret` (each live secret is compared, in constant time). Every failure but "disabled"
    /// answers `INVALID_CREDENTIALS`; each is an audit event (`purpose` names the use).
    ///
    /// Rate limited: per client IP before the secret is checked (client ids are no secret,
    /// so failures cannot be charged to the client without letting anyone lock it out), and
    /// per client once it proved itself.
    pub async fn verify_client(
        &self,
        client_id: &str,
        secret: &SecretString,
        purpose: &'static str,
        context: &CallContext,
    ) -> Result<crate::domain::Client, Error> {
        self.limits.check(&[Key::Ip(&context.peer)]).await?;
        let client = self
            .check_client(client_id, secret, purpose, context)
            .await?;
        self.limits.check(&[Key::Client(client_id)]).await?;
        Ok(client)
    }

    async fn check_client(
        &self,
        client_id: &str,
        secret: &SecretString,
        purpose: &'static str,
        context: &CallContext,
    ) -> Result<crate::domain::Client, Error> {
        if client_id.is_empty() || client_id.len() > 128 || client_id.chars().any(char::is_control)
        {
            return Err(Error::invalid_argument(
                "client_credentials.client_id",
                "must hold 1 to 128 bytes and no control characters",
            ));
        }
        let now = self.clock.now();
        let audit = |outcome: Outcome, reason: &str| {
            AuditRecord::new(
                client_id.to_owned(),
                "client.authenticate",
                client_id.to_owned(),
                outcome,
            )
            .from_peer(&context.peer)
            .with_detail("purpose", purpose)
            .with_detail("reason", reason)
        };
        if secret.expose_secret().is_empty() || secret.expose_secret().len() > 256 {
            return Err(invalid_credentials());
        }
        // Every live secret is checked, so the time does not tell which one matched.
        let matching = |entry: &CachedClient| {
            entry.secrets.iter().fold(None, |matched, candidate| {
                let ok = self
                    .pepper
                    .verify_client_secret(secret.expose_secret(), &candidate.hash)
                    && candidate.expires_at.is_none_or(|at| at > now);
                matched.or(ok.then_some(candidate.id))
            })
        };
        let mut found = self.store.client_for_login(client_id, now, false).await?;
        // A remembered copy is read again when the client was revoked after it was read
        // (disabled, deleted, its tokens revoked: on any replica), or when it knows no secret
        // that matches (one rotated in on another replica). A wrong secret does not evict the
        // copy: the fresh read replaces it, so a flood of wrong secrets cannot empty the cache.
        if let Some((entry, true)) = &found
            && (self
                .revocations
                .subject_revoked_since(client_id, entry.read_at)
                || matching(entry).is_none())
        {
            found = self.store.client_for_login(client_id, now, true).await?;
        }
        let matched = found.as_ref().and_then(|(entry, _)| matching(entry));
        let (Some((entry, _)), Some(secret_id)) = (found, matched) else {
            self.record(audit(Outcome::Failure, "invalid credentials"), now)
                .await;
            return Err(invalid_credentials());
        };
        let client = &entry.client;
        if !client.enabled {
            self.record(audit(Outcome::Denied, "disabled"), now).await;
            return Err(Error::PermissionDenied {
                reason: Reason::AccountDisabled,
                message: "the client is disabled".to_owned(),
            });
        }
        if entry.last_use_due(secret_id, now) {
            self.store
                .touch_client_secret(client.id, secret_id, now)
                .await?;
        }
        Ok(client.clone())
    }

    /// The client credentials grant (RFC 6749 section 4.4). No refresh token. An unknown client
    /// and a wrong secret give the same answer; a secret is checked against each live secret
    /// of the client (at most two during a rotation) with constant-time comparison.
    pub async fn client_credentials_grant(
        &self,
        client_id: &str,
        secret: SecretString,
        request: TokenRequest,
        context: &CallContext,
    ) -> Result<IssuedToken, Error> {
        let requested = ScopeSet::parse(request.scopes.iter().map(String::as_str))
            .map_err(|e| e.on("scopes"))?;
        // Taken before the client is read: a token stamped before a revocation of its client
        // is refused, whatever it read.
        let now = self.clock.now();
        let client = self
            .verify_client(client_id, &secret, "client_credentials", context)
            .await?;
        let audit = |outcome: Outcome, reason: &str| {
            AuditRecord::new(
                client_id.to_owned(),
                "token.issue",
                client_id.to_owned(),
                outcome,
            )
            .from_peer(&context.peer)
            .with_detail("grant", "client_credentials")
            .with_detail("reason", reason)
        };
        let allowed = ScopeSet::parse(client.allowed_scopes.iter().map(String::as_str))
            .map_err(|e| Error::internal(anyhow::anyhow!("a stored scope is invalid: {e}")))?;
        let scopes = grant(&allowed, requested)?;
        let audience = if request.audience.is_empty() {
            if scopes.first_keystones().is_some() {
                // Keystone's own scopes, asked for by name, are for Keystone.
                vec![self.keystone_audience.clone()]
            } else if client.allowed_audiences.is_empty() {
                vec![self.default_audience.clone()]
            } else {
                client.allowed_audiences.clone()
            }
        } else if client.allowed_audiences.contains(&request.audience)
            || request.audience == self.keystone_audience
        {
            vec![request.audience.clone()]
        } else {
            self.record(audit(Outcome::Denied, "audience not allowed"), now)
                .await;
            return Err(Error::PermissionDenied {
                reason: Reason::InvalidAudience,
                message: format!(
                    "the audience `{}` is not allowed for this client",
                    request.audience
                ),
            });
        };
        if let Err(error) = self.check_keystone_scopes(&scopes, &audience) {
            self.record(
                audit(Outcome::Denied, "keystone scope for another audience"),
                now,
            )
            .await;
            return Err(error);
        }
        let ttl = client
            .access_token_ttl
            .unwrap_or(self.access_ttl)
            .min(self.max_access_ttl);
        let token = self.mint(
            MintRequest {
                subject: client.client_id.clone(),
                kind: Kind::Service,
                client_id: client.client_id.clone(),
                username: None,
                roles: Vec::new(),
                scopes,
                audience,
                session_id: None,
                ttl,
            },
            now,
        )?;
        // The token leaves only once its event is committed (with others: group commit).
        if self.audit_service_tokens {
            let event =
                audit(Outcome::Success, "client credentials").with_detail("jti", token.jti.clone());
            self.store.record_audit(event, now).await?;
        }
        count_issued("client_credentials");
        Ok(token)
    }

    /// The refresh token grant (RFC 6749 section 6), with rotation: every use returns a new
    /// refresh token. A retry of the token just rotated, within `tokens.refresh_retry_grace`,
    /// gets the same successor (a lost response must not end the session); any other reuse
    /// ends the whole session and answers `REFRESH_TOKEN_REUSED`.
    pub async fn refresh_grant(
        &self,
        refresh_token: SecretString,
        request: TokenRequest,
        context: &CallContext,
    ) -> Result<IssuedToken, Error> {
        self.limits.check(&[Key::Ip(&context.peer)]).await?;
        let presented = refresh_token.expose_secret();
        if !is_refresh_token_shaped(presented) {
            return Err(invalid_refresh_token());
        }
        let requested = ScopeSet::parse(request.scopes.iter().map(String::as_str))
            .map_err(|e| e.on("scopes"))?;
        let now = self.clock.now();
        let token_hash = hash_refresh_token(presented);
        // Everything that can refuse a live token is decided before the token is consumed:
        // a refused refresh must leave the token usable, or the client's next try would look
        // like a reuse and end the session.
        if let Some(record) = self.store.find_refresh_token(&token_hash).await?
            && record.used_at.is_none()
            && record.revoked_at.is_none()
            && record.expires_at > now
        {
            self.refresh_grant_for(&record, &requested, &request.audience, now)
                .await?;
        }
        let successor = self.pepper.refresh_successor(presented);
        let rotation = self
            .store
            .rotate_refresh_token(
                &token_hash,
                hash_refresh_token(successor.expose_secret()),
                now,
                self.refresh_idle_ttl,
            )
            .await?;
        let record = match rotation {
            Rotation::Rotated(record) => record,
            Rotation::NotRotated(None) => return Err(invalid_refresh_token()),
            Rotation::NotRotated(Some(record)) => {
                self.refresh_not_rotated(record, now, context).await?
            }
        };
        // A session ended while this refresh was under way stays ended.
        if self.revocations.is_revoked(TokenFacts {
            token_id: "",
            session_id: Some(&record.family_id.to_string()),
            subject: "",
            issued_at: now.timestamp(),
        }) {
            return Err(invalid_refresh_token());
        }
        let (user, scopes, audience) = self
            .refresh_grant_for(&record, &requested, &request.audience, now)
            .await?;
        let mut token = self.mint_for_user(&user, scopes, audience, record.family_id, now)?;
        token.refresh_token = Some(successor);
        count_issued("refresh_token");
        Ok(token)
    }

    /// What a refresh of `record` grants: the user (still enabled and unlocked), the scopes of
    /// the original grant less any the user no longer holds (a refresh may ask for fewer, never
    /// more: RFC 6749 section 6), and the original audience.
    async fn refresh_grant_for(
        &self,
        record: &RefreshRecord,
        requested: &ScopeSet,
        requested_audience: &str,
        now: DateTime<Utc>,
    ) -> Result<(crate::domain::User, ScopeSet, Vec<String>), Error> {
        let Some(user_id) = record.user_id else {
            return Err(invalid_refresh_token());
        };
        let Some(login) = self.store.find_login_by_id(user_id).await? else {
            return Err(invalid_refresh_token());
        };
        let user = login.user;
        if !user.enabled || (user.locked && user.locked_until.is_none_or(|until| until > now)) {
            return Err(invalid_refresh_token());
        }
        let original = ScopeSet::parse_space_separated(&record.scopes)
            .map_err(|e| Error::internal(anyhow::anyhow!("a stored scope is invalid: {e}")))?;
        let held = self.scopes_of(user.id).await?;
        let still_held: ScopeSet = original
            .iter()
            .filter(|s| held.satisfies(s))
            .cloned()
            .collect();
        let audience: Vec<String> = record.audience.split(' ').map(str::to_owned).collect();
        if !requested_audience.is_empty() && !audience.iter().any(|a| a == requested_audience) {
            return Err(Error::PermissionDenied {
                reason: Reason::InvalidAudience,
                message: "a refresh cannot change the audience".to_owned(),
            });
        }
        // A refresh keeps the scopes of its grant (fewer if asked); Keystone's own scopes only
        // ever for Keystone's audience (a session begun before that rule loses them).
        let scopes = if requested.is_empty() {
            if audience.contains(&self.keystone_audience) {
                still_held
            } else {
                still_held.without_keystones()
            }
        } else {
            let scopes = narrow(&still_held, requested.clone())?;
            self.check_keystone_scopes(&scopes, &audience)?;
            scopes
        };
        Ok((user, scopes, audience))
    }

    /// A refresh token that this call did not rotate: a retry within the grace gets the same
    /// successor; anything else is refused, and a reuse ends the session.
    async fn refresh_not_rotated(
        &self,
        record: RefreshRecord,
        now: DateTime<Utc>,
        context: &CallContext,
    ) -> Result<RefreshRecord, Error> {
        if record.revoked_at.is_some() {
            return Err(invalid_refresh_token());
        }
        let Some(used_at) = record.used_at else {
            // Unused, so it was refused for its age.
            return Err(invalid_refresh_token());
        };
        if now - used_at <= self.refresh_retry_grace
            && let Some(successor_id) = record.successor_id
            && let Some(successor) = self.store.find_refresh_token_by_id(successor_id).await?
            && successor.used_at.is_none()
            && successor.revoked_at.is_none()
        {
            return Ok(record);
        }
        self.end_session_of(&record, "refresh_token.reuse", Outcome::Denied, context)
            .await?;
        tracing::warn!(session_id = %record.family_id, "a refresh token was reused; its session is ended");
        Err(Error::PermissionDenied {
            reason: Reason::RefreshTokenReused,
            message: "this refresh token was already used; the session is ended".to_owned(),
        })
    }

    /// Ends the session of a refresh token, recording `action` by the token's user.
    async fn end_session_of(
        &self,
        record: &RefreshRecord,
        action: &'static str,
        outcome: Outcome,
        context: &CallContext,
    ) -> Result<(), Error> {
        let actor = record.user_id.map(|id| id.to_string()).unwrap_or_default();
        let event = AuditRecord::new(actor, action, record.family_id.to_string(), outcome)
            .from_peer(&context.peer);
        self.end_session(record.family_id, event).await
    }

    /// Ends a session: its refresh tokens and every access token carrying its `sid`.
    async fn end_session(&self, family_id: Uuid, event: AuditRecord) -> Result<(), Error> {
        let now = self.clock.now();
        let revocation = Revocation {
            kind: RevocationKind::Session,
            key: family_id.to_string(),
            not_before: now,
            // Once ended, a session mints no token: the revocation lasts as long as an access
            // token issued now can (not the session's 30 days, held in every replica's memory).
            expires_at: now + self.token_lifetime,
        };
        self.store
            .revoke_family(family_id, &revocation, &event, now)
            .await?;
        self.revocations.applied(&revocation);
        Ok(())
    }

    /// Ends the caller's session (or the session of `refresh_token`, which must be the
    /// caller's).
    pub async fn logout(
        &self,
        caller: &Principal,
        refresh_token: Option<SecretString>,
        context: &CallContext,
    ) -> Result<(), Error> {
        let family = match refresh_token {
            Some(token) => {
                let record = self
                    .store
                    .find_refresh_token(&hash_refresh_token(token.expose_secret()))
                    .await?
                    .filter(|r| {
                        r.user_id.map(|id| id.to_string()).as_deref()
                            == Some(caller.claims.sub.as_str())
                    })
                    .ok_or_else(invalid_refresh_token)?;
                Some(record.family_id)
            }
            None => None,
        };
        let family_id = match family {
            Some(family) => family,
            None => caller
                .claims
                .sid
                .as_deref()
                .and_then(|sid| Uuid::parse_str(sid).ok())
                .ok_or_else(|| Error::FailedPrecondition {
                    reason: Reason::FailedPrecondition,
                    message: "this token belongs to no session".to_owned(),
                })?,
        };
        self.end_session(
            family_id,
            AuditRecord::new(
                caller.claims.sub.clone(),
                "session.logout",
                family_id.to_string(),
                Outcome::Success,
            )
            .from_peer(&context.peer),
        )
        .await
    }

    /// Changes the caller's own password and ends the user's other sessions. A wrong current
    /// password counts toward the lock like a failed login; like a login, the change runs to
    /// its end on a task of its own, so an abandoned call cannot leave its attempt counted.
    pub async fn change_password(
        &self,
        caller: &Principal,
        current: SecretString,
        new: SecretString,
        context: &CallContext,
    ) -> Result<(), Error> {
        let service = self.clone();
        let (caller, context) = (caller.clone(), context.clone());
        to_the_end(async move {
            service
                .settled_change_password(&caller, current, new, &context)
                .await
        })
        .await
    }

    async fn settled_change_password(
        &self,
        caller: &Principal,
        current: SecretString,
        new: SecretString,
        context: &CallContext,
    ) -> Result<(), Error> {
        if caller.claims.kind != Kind::User {
            return Err(Error::PermissionDenied {
                reason: Reason::InsufficientScope,
                message: "only users have passwords".to_owned(),
            });
        }
        let user_id = Uuid::parse_str(&caller.claims.sub).map_err(|_| Error::Unauthenticated {
            reason: Reason::TokenInvalid,
            message: "the token's subject is not a user".to_owned(),
        })?;
        let login = self
            .store
            .find_login_by_id(user_id)
            .await?
            .ok_or_else(invalid_credentials)?;
        let now = self.clock.now();
        let name = login.lockout_name.as_str();
        let event = |outcome: Outcome, reason: &str| {
            AuditRecord::new(
                user_id.to_string(),
                "user.change_password",
                user_id.to_string(),
                outcome,
            )
            .from_peer(&context.peer)
            .with_detail("reason", reason)
        };
        if !self
            .store
            .begin_login_attempt(name, self.lockout, now)
            .await?
        {
            self.record(event(Outcome::Denied, "locked"), now).await;
            return Err(account_locked());
        }
        let verification = match self
            .hasher
            .verify(&current, Some(&login.password_hash))
            .await
        {
            Ok(verification) => verification,
            Err(error) => {
                self.cancel_attempt(name).await;
                return Err(error);
            }
        };
        if verification == Verification::Invalid {
            // A wrong current password counts towards the lockout like a failed login.
            self.store
                .record_login_failure(
                    name,
                    self.lockout,
                    event(Outcome::Failure, "invalid current password"),
                    now,
                )
                .await?;
            return Err(Error::InvalidArgument {
                field: "current_password".to_owned(),
                reason: Reason::InvalidCredentials,
                message: "is not the current password".to_owned(),
            });
        }
        // The current password was right: the failures before it are forgotten, as after a
        // login.
        self.store.clear_login_failures(name).await?;
        let username = crate::domain::Username::parse(&login.user.username).ok();
        let email = crate::domain::Email::parse(&login.user.email).ok();
        self.policy
            .check(&new, username.as_ref(), email.as_ref())
            .map_err(|e| Error::InvalidArgument {
                field: "new_password".to_owned(),
                reason: Reason::WeakPassword,
                message: e.0,
            })?;
        let hash = self.hasher.hash(&new).await?;
        self.store
            .set_own_password(
                user_id,
                hash,
                &AuditRecord::new(
                    user_id.to_string(),
                    "user.change_password",
                    user_id.to_string(),
                    Outcome::Success,
                )
                .from_peer(&context.peer),
                now,
            )
            .await?;
        let current_session = caller
            .claims
            .sid
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok());
        for family_id in self.store.live_families_of_user(user_id, now).await? {
            if Some(family_id) == current_session {
                continue;
            }
            self.end_session(
                family_id,
                AuditRecord::new(
                    user_id.to_string(),
                    "session.end",
                    family_id.to_string(),
                    Outcome::Success,
                )
                .with_detail("because", "password changed"),
            )
            .await?;
        }
        Ok(())
    }

    async fn scopes_of(&self, user_id: Uuid) -> Result<ScopeSet, Error> {
        ScopeSet::parse(
            self.store
                .scopes_of_user(user_id)
                .await?
                .iter()
                .map(String::as_str),
        )
        .map_err(|e| Error::internal(anyhow::anyhow!("a stored scope is invalid: {e}")))
    }

    fn mint_for_user(
        &self,
        user: &crate::domain::User,
        scopes: ScopeSet,
        audience: Vec<String>,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, Error> {
        self.mint(
            MintRequest {
                subject: user.id.to_string(),
                kind: Kind::User,
                client_id: FIRST_PARTY_CLIENT_ID.to_owned(),
                username: Some(user.username.clone()),
                roles: user.roles.clone(),
                scopes,
                audience,
                session_id: Some(session_id.to_string()),
                ttl: self.access_ttl.min(self.max_access_ttl),
            },
            now,
        )
    }

    /// Checks a token: signature, claims, revocation, then the scopes and audience asked for.
    /// Memory only: no database round trip.
    pub fn authenticate(
        &self,
        token: &str,
        required_scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<Principal, Error> {
        let principal = self.verify(token).inspect_err(count_failure)?;
        if let Some(audience) = audience
            && !principal.claims.aud.contains(audience)
        {
            let error = Error::PermissionDenied {
                reason: Reason::AudienceMismatch,
                message: format!("the token is not meant for `{audience}`"),
            };
            count_failure(&error);
            return Err(error);
        }
        let held = ScopeSet::parse_space_separated(&principal.claims.scope).map_err(|_| {
            Error::Unauthenticated {
                reason: Reason::TokenInvalid,
                message: "the token's scopes are malformed".to_owned(),
            }
        })?;
        if let Some(missing) = held.first_missing(required_scopes) {
            let error = insufficient_scope(missing);
            count_failure(&error);
            return Err(error);
        }
        // A password-change token proves nothing else, even where no scope is required.
        if held.len() == 1
            && held.iter().all(|s| s.as_str() == PASSWORD_CHANGE_SCOPE)
            && !required_scopes
                .iter()
                .any(|s| s.as_str() == PASSWORD_CHANGE_SCOPE)
        {
            return Err(Error::PermissionDenied {
                reason: Reason::InsufficientScope,
                message: "this token is only good for ChangePassword".to_owned(),
            });
        }
        Ok(principal)
    }

    /// Establishes the caller of an admin RPC before anything else is looked at: `token` (the
    /// bearer credential, or why none could be read) must be valid, unrevoked, for Keystone's
    /// audience, and hold `scope`. A refusal is an audit event (`action`, outcome `denied`;
    /// from one address, one a minute and then their count: see [`super::refusals`]) and
    /// counts against the address's quota (`limits.per_ip`): past it, RATE_LIMITED.
    pub async fn admin_actor(
        &self,
        token: Result<String, Error>,
        scope: &str,
        action: &'static str,
        peer: &str,
    ) -> Result<super::Actor, Error> {
        let required = ScopeSet::parse([scope]).map_err(|e| e.on("scope"))?;
        let refused = |error: Error, subject: String| async move {
            let event = AuditRecord::new(subject, action, "", Outcome::Denied)
                .from_peer(peer)
                .with_detail("required_scope", scope)
                .with_detail("reason", error.reason().as_str());
            let now = self.clock.now();
            for event in self.refusals.refused(event, now) {
                self.record(event, now).await;
            }
            match self.limits.check(&[Key::Ip(peer)]).await {
                Ok(()) => error,
                Err(limited) => limited,
            }
        };
        let token = match token {
            Ok(token) => token,
            Err(error) => return Err(refused(error, String::new()).await),
        };
        let principal = match self.authenticate_for_keystone(&token, &required) {
            Ok(principal) => principal,
            Err(error) => {
                // A valid token without the scope names who was refused; others name no one.
                let subject = match error {
                    Error::PermissionDenied { .. } => self
                        .verify(&token)
                        .map(|principal| principal.claims.sub)
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                return Err(refused(error, subject).await);
            }
        };
        let scopes = ScopeSet::parse_space_separated(&principal.claims.scope).map_err(|_| {
            Error::Unauthenticated {
                reason: Reason::TokenInvalid,
                message: "the token's scopes are malformed".to_owned(),
            }
        })?;
        Ok(super::Actor {
            subject: principal.claims.sub,
            scopes,
            peer: peer.to_owned(),
        })
    }

    /// Checks a token presented to Keystone itself (admin RPCs, bearer callers of `Introspect`,
    /// `WatchRevocations`, admin reflection): as [`Self::authenticate`], and its `aud` must
    /// include `tokens.keystone_audience` (else PERMISSION_DENIED, `AUDIENCE_MISMATCH`), so a
    /// token meant for another service cannot be replayed here.
    pub fn authenticate_for_keystone(
        &self,
        token: &str,
        required_scopes: &ScopeSet,
    ) -> Result<Principal, Error> {
        self.authenticate(token, required_scopes, Some(&self.keystone_audience))
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
        // A set nobody has confirmed lately may miss revocations: refuse rather than guess.
        self.revocations.check_fresh()?;
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

    /// RFC 7662: the claims of `token` if it is active *for this caller*, `None` for anything
    /// else. The caller must hold `keystone:introspect` (a token for Keystone's audience with
    /// it, or a client allowed it). A live token is active only to a caller it was meant for
    /// (RFC 7662 section 4): a client whose id or `allowed_audiences` meets the token's `aud`,
    /// or a caller holding `keystone:admin`. Calls are counted per client IP and per caller; a
    /// client's quota only once its secret checked out. A revocation set nobody confirms is no
    /// ground for "inactive": that is UNAVAILABLE, as for `Authenticate`.
    pub async fn introspect(
        &self,
        caller: IntrospectionCaller,
        token: &str,
        context: &CallContext,
    ) -> Result<Option<Claims>, Error> {
        let required = ScopeSet::parse([INTROSPECT_SCOPE]).map_err(|e| e.on("scope"))?;
        let admin = Scope::parse(super::ADMIN_SCOPE).map_err(|e| e.on("scope"))?;
        let audience = match caller {
            IntrospectionCaller::Bearer(caller) => {
                // Checking a signature is cheap: the caller is known before it is counted.
                let principal = self.authenticate_for_keystone(&caller, &required)?;
                let claims = principal.claims;
                self.limits
                    .check(&[Key::Ip(&context.peer), Key::Client(&claims.sub)])
                    .await?;
                let held = ScopeSet::parse_space_separated(&claims.scope).unwrap_or_default();
                if held.satisfies(&admin) {
                    TokenAudience::Any
                } else if claims.kind == Kind::Service {
                    let client = self
                        .store
                        .client_for_login(&claims.client_id, self.clock.now(), false)
                        .await?
                        .map(|(entry, _)| entry.client.clone());
                    TokenAudience::of_client(&claims.client_id, client.as_ref())
                } else {
                    // A user is no resource server: only an admin sees users' tokens.
                    TokenAudience::None
                }
            }
            IntrospectionCaller::Client { client_id, secret } => {
                let client = self
                    .verify_client(&client_id, &secret, "introspect", context)
                    .await?;
                let allowed = ScopeSet::parse(client.allowed_scopes.iter().map(String::as_str))
                    .unwrap_or_default();
                if let Some(missing) = required.iter().find(|scope| !allowed.satisfies(scope)) {
                    return Err(Error::PermissionDenied {
                        reason: Reason::InsufficientScope,
                        message: format!("the client is not allowed `{missing}`"),
                    });
                }
                if allowed.satisfies(&admin) {
                    TokenAudience::Any
                } else {
                    TokenAudience::of_client(&client.client_id, Some(&client))
                }
            }
        };
        self.revocations_fresh()?;
        Ok(self
            .verify(token)
            .ok()
            .map(|principal| principal.claims)
            .filter(|claims| audience.meets(&claims.aud)))
    }

    /// RFC 7009: revokes the token if it is one of Keystone's live access tokens or refresh
    /// tokens; anything else is accepted and ignored, so the answer reveals nothing. It never
    /// answers OK without the revocation recorded: when it cannot be (the database is down, or
    /// the revocation set is not confirmed fresh), UNAVAILABLE (`REVOCATION_UNAVAILABLE`).
    /// Counted per client IP.
    pub async fn revoke(&self, token: &str, context: &CallContext) -> Result<(), Error> {
        self.limits.check(&[Key::Ip(&context.peer)]).await?;
        self.record_revocation(token, context)
            .await
            .map_err(revocation_unavailable)?;
        // Recorded; but a set nobody confirms may not reach every replica in time.
        self.revocations_fresh()
    }

    async fn record_revocation(&self, token: &str, context: &CallContext) -> Result<(), Error> {
        if is_refresh_token_shaped(token) {
            if let Some(record) = self
                .store
                .find_refresh_token(&hash_refresh_token(token))
                .await?
                && record.revoked_at.is_none()
            {
                self.end_session_of(&record, "refresh_token.revoke", Outcome::Success, context)
                    .await?;
            }
            return Ok(());
        }
        // The signature and lifetime only: a token already revoked is revoked again (no harm),
        // and a stale set must not keep a live token from being revoked.
        let now = self.clock.now();
        let Ok(claims) = self.verifier.verify(token, now) else {
            return Ok(());
        };
        let expires_at = DateTime::<Utc>::from_timestamp(claims.exp, 0).unwrap_or(now);
        let event = AuditRecord::new(
            claims.sub.clone(),
            "token.revoke",
            claims.jti.clone(),
            Outcome::Success,
        )
        .from_peer(&context.peer);
        self.revocations
            .revoke_audited(
                Revocation {
                    kind: RevocationKind::Token,
                    key: claims.jti.clone(),
                    not_before: now,
                    expires_at: expires_at + chrono::Duration::minutes(5),
                },
                &event,
                now,
            )
            .await
    }

    /// The revocation set and every change after it (see `Revocations::watch`).
    pub fn watch_revocations(
        &self,
    ) -> (
        Vec<Revocation>,
        tokio::sync::broadcast::Receiver<Revocation>,
    ) {
        self.revocations.watch()
    }

    /// Fails with UNAVAILABLE when, in a cluster, the revocation set is not confirmed fresh.
    pub fn revocations_fresh(&self) -> Result<(), Error> {
        self.revocations.check_fresh()
    }

    /// The published keys.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.ring.snapshot().jwks.clone()
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer_url
    }

    /// Users may ask for the default audience, Keystone's own or one of
    /// `tokens.user_audiences`; asking none, a grant of Keystone's own scopes is for Keystone,
    /// any other for the default audience.
    fn audience_for_user(&self, requested: &str, scopes: &ScopeSet) -> Result<Vec<String>, Error> {
        if requested.is_empty() {
            return Ok(vec![if scopes.first_keystones().is_some() {
                self.keystone_audience.clone()
            } else {
                self.default_audience.clone()
            }]);
        }
        if requested == self.default_audience
            || requested == self.keystone_audience
            || self
                .user_audiences
                .iter()
                .any(|allowed| allowed == requested)
        {
            return Ok(vec![requested.to_owned()]);
        }
        Err(Error::PermissionDenied {
            reason: Reason::InvalidAudience,
            message: "this audience is not allowed for user tokens".to_owned(),
        })
    }

    /// Keystone's own scopes go only into tokens for Keystone: a token another service
    /// receives must never be able to administer Keystone.
    fn check_keystone_scopes(&self, scopes: &ScopeSet, audience: &[String]) -> Result<(), Error> {
        match scopes.first_keystones() {
            Some(scope) if !audience.contains(&self.keystone_audience) => {
                Err(Error::PermissionDenied {
                    reason: Reason::InvalidScope,
                    message: format!(
                        "`{scope}` is granted only in a token for Keystone's audience `{}`",
                        self.keystone_audience
                    ),
                })
            }
            _ => Ok(()),
        }
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
            // Stamped with the issuing instant from the clock: revocation of a subject compares
            // it to the millisecond (`TokenFacts::issued_at_millis`).
            jti: Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                u64::try_from(now.timestamp()).unwrap_or(0),
                now.timestamp_subsec_nanos(),
            ))
            .to_string(),
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
            jti: claims.jti,
            refresh_token: None,
            scopes: request.scopes,
            expires_at,
            expires_in: ttl.num_seconds(),
        })
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

/// The scopes a grant gets: those asked, each of which must be satisfied by a held scope; when
/// none were asked, every held scope but Keystone's own (`keystone:*` is never implied).
fn grant(held: &ScopeSet, requested: ScopeSet) -> Result<ScopeSet, Error> {
    if requested.is_empty() {
        return Ok(held.without_keystones());
    }
    narrow(held, requested)
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

/// Whether a string looks like a Keystone refresh token (prefix and 43 base64url characters).
fn is_refresh_token_shaped(token: &str) -> bool {
    token.len() == REFRESH_TOKEN_PREFIX.len() + 43
        && token.starts_with(REFRESH_TOKEN_PREFIX)
        && token[REFRESH_TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whom a token may be shown to as active by `Introspect` (RFC 7662 section 4).
enum TokenAudience {
    /// Any token: the caller holds `keystone:admin`.
    Any,
    /// Tokens whose `aud` names one of these: a client's id and allowed audiences.
    Of(Vec<String>),
    /// None: the caller is no resource server.
    None,
}

impl TokenAudience {
    fn of_client(client_id: &str, client: Option<&crate::domain::Client>) -> Self {
        let mut audiences = vec![client_id.to_owned()];
        if let Some(client) = client {
            audiences.extend(client.allowed_audiences.iter().cloned());
        }
        TokenAudience::Of(audiences)
    }

    fn meets(&self, aud: &Audience) -> bool {
        match self {
            TokenAudience::Any => true,
            TokenAudience::Of(audiences) => audiences.iter().any(|a| aud.contains(a)),
            TokenAudience::None => false,
        }
    }
}

/// What a revocation that could not be recorded answers: UNAVAILABLE, never OK.
fn revocation_unavailable(error: Error) -> Error {
    match error {
        Error::Unavailable { what, source, .. } => Error::Unavailable {
            reason: Reason::RevocationUnavailable,
            what,
            source,
        },
        other => other,
    }
}

/// Counts a refused `Authenticate` by reason.
fn count_failure(error: &Error) {
    ::metrics::counter!("keystone_authentication_failures_total", "reason" => error.reason().as_str())
        .increment(1);
}

/// Counts an issued token by grant.
fn count_issued(grant: &'static str) {
    ::metrics::counter!("keystone_tokens_issued_total", "grant" => grant).increment(1);
}

fn invalid_refresh_token() -> Error {
    Error::Unauthenticated {
        reason: Reason::InvalidCredentials,
        message: "the refresh token is invalid, expired or revoked".to_owned(),
    }
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
