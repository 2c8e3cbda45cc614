//! Tokens looked at after issue: introspection (RFC 7662) and revocation (RFC 7009). The
//! checks themselves are the [`Authenticator`](crate::service::Authenticator)'s.

use chrono::{DateTime, Utc};

use super::{AuthService, CallContext, INTROSPECT_SCOPE, IntrospectionCaller};
use crate::{
    domain::{AuditRecord, Outcome, Revocation, RevocationKind, Scope, ScopeSet},
    error::{Error, Reason},
    secrets::{REFRESH_TOKEN_PREFIX, hash_refresh_token},
    service::limits::Key,
    token::{Audience, Claims, Kind},
};

impl AuthService {
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
        let admin = Scope::parse(crate::service::ADMIN_SCOPE).map_err(|e| e.on("scope"))?;
        let audience = match caller {
            IntrospectionCaller::Bearer(caller) => {
                // Checking a signature is cheap: the caller is known before it is counted.
                let principal = self.authenticator.authenticate_for_keystone(
                    &caller,
                    &context.presented(),
                    &required,
                )?;
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
                    .verify_client(
                        &client_id,
                        &super::ClientCredential::Secret(secret),
                        "introspect",
                        context,
                    )
                    .await?;
                let allowed = &client.allowed_scopes;
                if let Some(missing) = required.iter().find(|scope| !allowed.satisfies(scope)) {
                    return Err(Error::PermissionDenied {
                        reason: Reason::InsufficientScope,
                        message: format!("the client is not allowed `{missing}`"),
                    });
                }
                if allowed.satisfies(&admin) {
                    TokenAudience::Any
                } else {
                    TokenAudience::of_client(client.client_id.as_str(), Some(&client))
                }
            }
        };
        self.authenticator.revocations_fresh()?;
        Ok(self
            .authenticator
            .verify_issued(token)
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
        self.authenticator.revocations_fresh()
    }

    pub(super) async fn record_revocation(
        &self,
        token: &str,
        context: &CallContext,
    ) -> Result<(), Error> {
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
        let Some(claims) = self.authenticator.verify_signature(token, now) else {
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
}

/// Whether a string looks like a Keystone refresh token (prefix and 43 base64url characters).
pub(super) fn is_refresh_token_shaped(token: &str) -> bool {
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
