//! Sessions after sign-in: the refresh grant with rotation and reuse detection, logout, and a
//! user's own view of their sessions (list, end one).

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use super::{
    AuthService, CallContext, IssuedToken, Principal, TokenRequest,
    check::is_refresh_token_shaped,
    mint::{count_issued, narrow},
};
use crate::{
    domain::{AuditRecord, Outcome, Revocation, ScopeSet, Session, TokenFacts},
    error::{Error, Reason},
    secrets::hash_refresh_token,
    service::limits::Key,
    store::{RefreshRecord, Rotation, UserGrants},
};

impl AuthService {
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
        let proof = self.checked_dpop_proof(&request)?;
        let now = self.clock.now();
        let token_hash = hash_refresh_token(presented);
        // A token Keystone never issued is refused before its proof is used up: nobody fills
        // the set of used proofs without a refresh token.
        let Some((found, grants)) = self
            .store
            .find_refresh_token_with_grants(&token_hash)
            .await?
        else {
            return Err(invalid_refresh_token());
        };
        let dpop_jkt = self.claim_dpop_proof(proof).await?;
        // Everything that can refuse a live token is decided before the token is consumed:
        // a refused refresh must leave the token usable, or the client's next try would look
        // like a reuse and end the session.
        let mut granted = None;
        if found.used_at.is_none() && found.revoked_at.is_none() && found.expires_at > now {
            granted = Some(self.refresh_grant_for(
                &found,
                grants,
                &requested,
                &request,
                dpop_jkt.as_deref(),
                now,
            )?);
        }
        let successor = self.pepper.refresh_successor(presented);
        let rotation = self
            .store
            .rotate_refresh_token(
                &token_hash,
                hash_refresh_token(successor.expose_secret()),
                now,
                self.policy.refresh_idle_ttl,
            )
            .await?;
        let record = match rotation {
            Rotation::Rotated(record) => record,
            Rotation::NotRotated(None) => return Err(invalid_refresh_token()),
            Rotation::NotRotated(Some(record)) => {
                // A retry within the grace: what it grants is decided again below.
                granted = None;
                self.refresh_not_rotated(record, now, context).await?
            }
        };
        // A session ended while this refresh was under way stays ended.
        if self.revocations.is_revoked(TokenFacts {
            token_id: "",
            session_id: Some(&record.family_id.to_string()),
            subject: "",
            issued_at: now.timestamp(),
            actors: &[],
        }) {
            return Err(invalid_refresh_token());
        }
        // This call rotated the token it checked: what the check granted stands (the user,
        // scopes and audience of the same session, read moments ago).
        let (user, scopes, audience) = match granted {
            Some(granted) => granted,
            None => {
                let grants = match record.user_id {
                    Some(user_id) => self.store.user_grants(user_id).await?,
                    None => None,
                };
                self.refresh_grant_for(
                    &record,
                    grants,
                    &requested,
                    &request,
                    dpop_jkt.as_deref(),
                    now,
                )?
            }
        };
        let mut token =
            self.mint_for_user(&user, scopes, audience, record.family_id, dpop_jkt, now)?;
        token.refresh_token = Some(successor);
        count_issued("refresh_token");
        Ok(token)
    }

    /// What a refresh of `record` grants, `grants` being its user as read with it: the user
    /// (still enabled and unlocked), the scopes of the original grant less any the user no
    /// longer holds (a refresh may ask for fewer, never more: RFC 6749 section 6), and the
    /// original audience. A session bound to a DPoP key is refreshed only by a request proving
    /// that key (RFC 9449 section 5).
    pub(super) fn refresh_grant_for(
        &self,
        record: &RefreshRecord,
        grants: Option<UserGrants>,
        requested: &ScopeSet,
        request: &TokenRequest,
        dpop_jkt: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(crate::domain::User, ScopeSet, Vec<String>), Error> {
        if let Some(bound) = &record.dpop_jkt
            && dpop_jkt != Some(bound.as_str())
        {
            return Err(Error::Unauthenticated {
                reason: Reason::InvalidDpopProof,
                message: "this session is bound to a DPoP key: refresh it with a proof by \
                          that key"
                    .to_owned(),
            });
        }
        let requested_audience = request.audience.as_str();
        let Some(UserGrants { user, scopes: held }) = grants else {
            return Err(invalid_refresh_token());
        };
        if !user.enabled || (user.locked && user.locked_until.is_none_or(|until| until > now)) {
            return Err(invalid_refresh_token());
        }
        let original = ScopeSet::parse_space_separated(&record.scopes)
            .map_err(|e| Error::internal(anyhow::anyhow!("a stored scope is invalid: {e}")))?;
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
            if audience.contains(&self.policy.keystone_audience) {
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
    pub(super) async fn refresh_not_rotated(
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
        if now - used_at <= self.policy.refresh_retry_grace
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
    pub(super) async fn end_session_of(
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
    pub(super) async fn end_session(
        &self,
        family_id: Uuid,
        event: AuditRecord,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        // Once ended, a session mints no token: the revocation lasts as long as an access
        // token issued now can (not the session's 30 days, held in every replica's memory).
        let revocation = Revocation::of_session(
            family_id,
            now,
            self.policy.token_lifetime.to_std().unwrap_or_default(),
        );
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
}

impl AuthService {
    /// `ListSessions`: the caller's live sessions, the newest first, the caller's own marked.
    /// At most [`MAX_OWN_SESSIONS`].
    pub async fn list_sessions(&self, caller: &Principal) -> Result<Vec<(Session, bool)>, Error> {
        let user_id = session_owner(caller)?;
        let current = caller.claims.sid.as_deref();
        let sessions = self
            .store
            .sessions_of_user(user_id, None, MAX_OWN_SESSIONS, self.clock.now())
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| {
                let own = current == Some(session.id.to_string().as_str());
                (session, own)
            })
            .collect())
    }

    /// `RevokeSession`: ends one of the caller's own sessions, as `Logout` does; another
    /// user's, an ended or an unknown one is NOT_FOUND alike.
    pub async fn revoke_session(
        &self,
        caller: &Principal,
        session_id: &str,
        context: &CallContext,
    ) -> Result<(), Error> {
        let user_id = session_owner(caller)?;
        let session = crate::domain::parse_session_id(session_id)?;
        let now = self.clock.now();
        if self
            .store
            .session_of_user(user_id, session, now)
            .await?
            .is_none()
        {
            return Err(Error::NotFound {
                message: "you have no live session with this id".to_owned(),
            });
        }
        self.end_session(
            session,
            AuditRecord::new(
                caller.claims.sub.clone(),
                "session.revoke",
                session.to_string(),
                Outcome::Success,
            )
            .from_peer(&context.peer),
        )
        .await
    }
}

/// The most sessions `ListSessions` shows (the newest).
pub const MAX_OWN_SESSIONS: u64 = 500;

/// The user a token speaks for, whose sessions it may see and end.
fn session_owner(caller: &Principal) -> Result<Uuid, Error> {
    if caller.claims.kind != crate::token::Kind::User {
        return Err(Error::FailedPrecondition {
            reason: Reason::FailedPrecondition,
            message: "a service token has no sessions: sessions are users' logins".to_owned(),
        });
    }
    Uuid::parse_str(&caller.claims.sub)
        .map_err(|_| Error::internal(anyhow::anyhow!("a user token's subject is not a UUID")))
}

pub(super) fn invalid_refresh_token() -> Error {
    Error::Unauthenticated {
        reason: Reason::InvalidCredentials,
        message: "the refresh token is invalid, expired or revoked".to_owned(),
    }
}
