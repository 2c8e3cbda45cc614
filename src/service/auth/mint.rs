//! Making tokens: which scopes and audience a grant gets, and the signed JWT.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AuthService, FIRST_PARTY_CLIENT_ID, IssuedToken};
use crate::{
    domain::ScopeSet,
    error::{Error, Reason},
    token::{ActClaim, Audience, Claims, Confirmation, Kind},
};

impl AuthService {
    pub(super) async fn scopes_of(&self, user_id: Uuid) -> Result<ScopeSet, Error> {
        self.store.scopes_of_user(user_id).await
    }

    pub(super) fn mint_for_user(
        &self,
        user: &crate::domain::User,
        scopes: ScopeSet,
        audience: Vec<String>,
        session_id: Uuid,
        dpop_jkt: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, Error> {
        self.mint(
            MintRequest {
                subject: user.id.to_string(),
                kind: Kind::User,
                client_id: FIRST_PARTY_CLIENT_ID.to_owned(),
                username: Some(user.username.as_str().to_owned()),
                roles: user.roles.clone(),
                scopes,
                audience,
                session_id: Some(session_id.to_string()),
                ttl: self.policy.access_ttl.min(self.policy.max_access_ttl),
                confirmation: dpop_jkt.map(|jkt| Confirmation {
                    x5t_s256: None,
                    jkt: Some(jkt),
                }),
                act: None,
            },
            now,
        )
    }

    /// Users may ask for the default audience, Keystone's own or one of
    /// `tokens.user_audiences`; asking none, a grant of Keystone's own scopes is for Keystone,
    /// any other for the default audience.
    pub(super) fn audience_for_user(
        &self,
        requested: &str,
        scopes: &ScopeSet,
    ) -> Result<Vec<String>, Error> {
        if requested.is_empty() {
            return Ok(vec![if scopes.first_keystones().is_some() {
                self.policy.keystone_audience.clone()
            } else {
                self.policy.default_audience.clone()
            }]);
        }
        if requested == self.policy.default_audience
            || requested == self.policy.keystone_audience
            || self
                .policy
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
    pub(super) fn check_keystone_scopes(
        &self,
        scopes: &ScopeSet,
        audience: &[String],
    ) -> Result<(), Error> {
        match scopes.first_keystones() {
            Some(scope) if !audience.contains(&self.policy.keystone_audience) => {
                Err(Error::PermissionDenied {
                    reason: Reason::InvalidScope,
                    message: format!(
                        "`{scope}` is granted only in a token for Keystone's audience `{}`",
                        self.policy.keystone_audience
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn mint(
        &self,
        request: MintRequest,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, Error> {
        let ttl = chrono::Duration::from_std(request.ttl)
            .map_err(|e| Error::internal(anyhow::anyhow!("token lifetime out of range: {e}")))?;
        let expires_at = now + ttl;
        let claims = Claims {
            iss: self.policy.issuer.clone(),
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
            cnf: request.confirmation,
            act: request.act,
        };
        let access_token = self.issuer.sign(&claims)?;
        let token_type = if claims.cnf.as_ref().is_some_and(|cnf| cnf.jkt.is_some()) {
            "DPoP"
        } else {
            "Bearer"
        };
        Ok(IssuedToken {
            issued_token_type: None,
            access_token,
            token_type,
            jti: claims.jti,
            refresh_token: None,
            scopes: request.scopes,
            expires_at,
            expires_in: ttl.num_seconds(),
        })
    }
}

/// What a token is to say.
pub(super) struct MintRequest {
    /// `sub`: a user id or a client id.
    pub(super) subject: String,
    /// User or service.
    pub(super) kind: Kind,
    /// `client_id`.
    pub(super) client_id: String,
    /// `preferred_username`, for users.
    pub(super) username: Option<String>,
    /// `roles`, for users.
    pub(super) roles: Vec<String>,
    /// `scope`.
    pub(super) scopes: ScopeSet,
    /// `aud`.
    pub(super) audience: Vec<String>,
    /// `sid`, for user sessions.
    pub(super) session_id: Option<String>,
    /// How long it lives.
    pub(super) ttl: Duration,
    /// `cnf`: what it is bound to.
    pub(super) confirmation: Option<Confirmation>,
    /// `act`: who acts for the subject (token exchange).
    pub(super) act: Option<ActClaim>,
}

/// The scopes a grant gets: those asked, each of which must be satisfied by a held scope; when
/// none were asked, every held scope but Keystone's own (`keystone:*` is never implied).
pub(super) fn grant(held: &ScopeSet, requested: ScopeSet) -> Result<ScopeSet, Error> {
    if requested.is_empty() {
        return Ok(held.without_keystones());
    }
    narrow(held, requested)
}

/// The scopes to grant: all that are held when none were asked, else those asked, each of which
/// must be satisfied by a held scope.
pub(super) fn narrow(held: &ScopeSet, requested: ScopeSet) -> Result<ScopeSet, Error> {
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

/// Counts an issued token by grant.
pub(super) fn count_issued(grant: &'static str) {
    ::metrics::counter!("keystone_tokens_issued_total", "grant" => grant).increment(1);
}
