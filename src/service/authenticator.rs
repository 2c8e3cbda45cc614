//! The Authenticator: whether a bearer token may be trusted, and for what. It verifies the
//! signature and claims, asks the revocation set (memory only), checks the scopes and audience
//! asked for, and writes the audit event of a refused admin call. The admin adapters, server
//! reflection, Envoy's `Check` and the HTTP endpoints hold it rather than the whole
//! [`AuthService`](super::auth::AuthService).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    clock::SharedClock,
    domain::{AuditRecord, Outcome, Revocation, Scope, ScopeSet, TokenFacts},
    error::{Error, Reason},
    revocation::Revocations,
    service::{
        auth::{PASSWORD_CHANGE_SCOPE, Principal},
        limits::{Key, RateLimits},
        refusals::RefusalLog,
    },
    store::Store,
    token::{Claims, TokenVerifier, VerifyError},
};

/// Checks bearer tokens; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    verifier: TokenVerifier,
    revocations: Revocations,
    clock: SharedClock,
    store: Store,
    limits: RateLimits,
    /// `tokens.keystone_audience`.
    keystone_audience: Arc<str>,
    /// Refused admin calls, written at most once a minute per address.
    refusals: Arc<RefusalLog>,
}

impl Authenticator {
    /// An authenticator of the tokens `verifier` accepts; Keystone's own calls need
    /// `keystone_audience`. Refusals of admin calls are written to `store` and counted by
    /// `limits`.
    pub fn new(
        verifier: TokenVerifier,
        keystone_audience: &str,
        store: Store,
        clock: SharedClock,
        revocations: Revocations,
        limits: RateLimits,
    ) -> Self {
        Self {
            verifier,
            revocations,
            clock,
            store,
            limits,
            keystone_audience: keystone_audience.into(),
            refusals: Arc::default(),
        }
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
    /// from one address, one a minute and then their count: see [`crate::service::refusals`]) and
    /// counts against the address's quota (`limits.per_ip`): past it, RATE_LIMITED.
    pub async fn admin_actor(
        &self,
        token: Result<String, Error>,
        scope: &str,
        action: &'static str,
        peer: &str,
    ) -> Result<crate::service::Actor, Error> {
        let required = ScopeSet::parse([scope]).map_err(|e| e.on("scope"))?;
        let refused = |error: Error, subject: String| async move {
            let event = AuditRecord::new(subject, action, "", Outcome::Denied)
                .from_peer(peer)
                .with_detail("required_scope", scope)
                .with_detail("reason", error.reason().as_str());
            let now = self.clock.now();
            for event in self.refusals.refused(event, now) {
                self.store.record_refusal(event, now).await;
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
        Ok(crate::service::Actor {
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

    /// The clock tokens are checked on.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The revocation set.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The rate limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// The signature and lifetime at `now` only, revoked or not (for revoking a token again).
    pub(crate) fn verify_signature(&self, token: &str, now: DateTime<Utc>) -> Option<Claims> {
        self.verifier.verify(token, now).ok()
    }

    /// Writes how many admin calls were refused from each address in the minutes that ended.
    pub async fn write_ended_refusals(&self) {
        let now = self.clock.now();
        for event in self.refusals.ended(now) {
            self.store.record_refusal(event, now).await;
        }
    }
}

/// Counts a refused `Authenticate` by reason.
fn count_failure(error: &Error) {
    ::metrics::counter!("keystone_authentication_failures_total", "reason" => error.reason().as_str())
        .increment(1);
}

fn insufficient_scope(missing: &Scope) -> Error {
    Error::PermissionDenied {
        reason: Reason::InsufficientScope,
        message: format!("the token lacks the scope `{missing}`"),
    }
}
