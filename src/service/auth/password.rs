//! Users signing in and looking after their password: self-service sign-up, the password
//! grant (with lockout), and the change of one's own password.

use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use super::{
    AuthService, CallContext, IssuedToken, MAX_LOGIN_NAME, MAX_LOGIN_PASSWORD,
    PASSWORD_CHANGE_SCOPE, PasswordLogin, Principal, Registration, TokenRequest, account_locked,
    invalid_credentials,
    mint::{count_issued, grant},
    to_the_end,
};
use crate::{
    domain::{AuditRecord, Outcome, ScopeSet, normalize},
    error::{Error, Reason},
    password::Verification,
    secrets::{REFRESH_TOKEN_PREFIX, hash_refresh_token, random_token},
    service::limits::Key,
    store::{NewRefreshToken, SessionOrigin},
    token::Kind,
};

/// The longest username or email the strength estimator takes as the account's names.
const MAX_ESTIMATE_NAME: usize = 320;

/// A name given to the strength estimator: normalized as usernames and emails are (NFKC,
/// lowercase), none when empty.
fn estimate_name(value: &str, field: &str) -> Result<Option<String>, Error> {
    if value.len() > MAX_ESTIMATE_NAME {
        return Err(Error::invalid_argument(
            field,
            format!("must be at most {MAX_ESTIMATE_NAME} bytes long"),
        ));
    }
    let value = value.trim();
    Ok((!value.is_empty()).then(|| crate::domain::normalize(value)))
}

impl AuthService {
    /// `EstimatePasswordStrength`: the zxcvbn estimate of a password and whether the policy
    /// takes it, with the username and email (as typed so far, not yet valid perhaps) as the
    /// account's names. Counted per client IP; the password goes nowhere else.
    pub async fn estimate_password_strength(
        &self,
        candidate: &Registration,
        context: &CallContext,
    ) -> Result<crate::domain::Assessment, Error> {
        self.limits.check(&[Key::Ip(&context.peer)]).await?;
        let username = estimate_name(&candidate.username, "username")?;
        let email = estimate_name(&candidate.email, "email")?;
        let policy = self.policy.password;
        let password = candidate.password.clone();
        // A few milliseconds of matching at worst: off the async runtime, like argon2.
        tokio::task::spawn_blocking(move || {
            let names = crate::domain::AccountNames {
                username: username.as_deref(),
                email: email.as_deref(),
            };
            policy.assess(&password, names)
        })
        .await
        .map_err(|error| Error::internal(anyhow::anyhow!("the estimate failed: {error}")))?
        .map_err(|e| e.on("password"))
    }

    /// Self-service sign-up, when `auth.registration` is on: a user with the default roles
    /// (`Role.default_for_new_users`) and an unverified email. Rate limited per client IP.
    pub async fn register(
        &self,
        registration: Registration,
        context: &CallContext,
    ) -> Result<crate::domain::User, Error> {
        if !self.policy.registration {
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
            .password
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
                    default_roles: true,
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

    pub(super) async fn settled_password_grant(
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
        // A bad proof is refused before the password is looked at: it tells nothing of it.
        let proof = self.checked_dpop_proof(&request)?;
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
            .begin_login_attempt(&lockout_name, self.policy.lockout, now)
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
                        self.policy.lockout,
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
        let dpop_jkt = match self.claim_dpop_proof(proof).await {
            Ok(jkt) => jkt,
            Err(error) => {
                self.record(audit(Outcome::Denied, "DPoP proof used before"), now)
                    .await;
                return Err(error);
            }
        };
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
                vec![self.policy.keystone_audience.clone()],
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
            let family_expires_at = now + self.policy.refresh_ttl;
            let stored = NewRefreshToken {
                token_hash: hash_refresh_token(refresh_token.expose_secret()),
                family_id: session_id,
                user_id: user.id,
                scopes: scopes.to_space_separated(),
                audience: audience.join(" "),
                issued_at: now,
                expires_at: (now + self.policy.refresh_idle_ttl).min(family_expires_at),
                family_expires_at,
                // Bound with the access token: only the same key refreshes the session.
                dpop_jkt: dpop_jkt.clone(),
                session: SessionOrigin {
                    ip: (!context.peer.is_empty()).then(|| context.peer.clone()),
                    user_agent: context.user_agent.clone(),
                    started_at: Some(now),
                },
            };
            Some((refresh_token, stored))
        };
        let mut token = self.mint_for_user(&user, scopes, audience, session_id, dpop_jkt, now)?;
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

    pub(super) async fn settled_change_password(
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
            .begin_login_attempt(name, self.policy.lockout, now)
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
                    self.policy.lockout,
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
        self.policy
            .password
            .check(&new, Some(&login.user.username), Some(&login.user.email))
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
}
