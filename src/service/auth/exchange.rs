//! Token exchange (RFC 8693): a service client trades a Keystone access token it received for
//! one it sends on, on the same subject's behalf, with the chain of actors in `act`.
//!
//! The rules, each a refusal when broken:
//! - the client proves itself (secret or certificate) and was allowed `token_exchange` by an
//!   admin;
//! - the subject token (and the actor token, if any) is a live Keystone access token meant for
//!   this client: its `aud` holds the client's id;
//! - the new token is for one of the client's `allowed_audiences`, never Keystone's own;
//! - its scopes are held by both the subject token and the client, Keystone's own never;
//! - it expires no later than the subject token, and lives no longer than the client's tokens;
//! - its `act` chain is at most `federation.max_delegation_depth` long.
//!
//! The new token keeps the subject's `sub`, kind, roles and `sid`: ending the session ends
//! it, and so does revoking the subject or any client in the chain (the revocation set checks
//! the actors). Every exchange is an audit event naming the whole chain.

use std::time::Duration;

use super::{
    AuthService, CallContext, IssuedToken, PASSWORD_CHANGE_SCOPE, TokenRequest,
    client::{ClientCredential, binding},
    mint::{MintRequest, count_issued},
};
use crate::{
    domain::{AuditRecord, Outcome, ScopeSet},
    error::{Error, Reason},
    token::{ActClaim, Claims, MAX_TOKEN_BYTES},
};

/// The token type of an access token (RFC 8693 section 3): what exchanges take and issue.
pub const ACCESS_TOKEN_TYPE_URN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A JWT (RFC 8693 section 3): Keystone's access tokens are JWTs, so it is taken too.
const JWT_TYPE_URN: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A token exchange request, beside the scopes and audience of [`TokenRequest`]. Its `Debug`
/// shows no token: they are bearer credentials.
#[derive(Default)]
pub struct TokenExchange {
    /// The access token to exchange.
    pub subject_token: String,
    /// Its type.
    pub subject_token_type: String,
    /// The acting party's access token, if any.
    pub actor_token: String,
    /// Its type (with an actor token only).
    pub actor_token_type: String,
    /// The exchanging client.
    pub client_id: String,
    /// What it proves itself with: a secret, an assertion, or (nothing) its certificate.
    pub credential: ClientCredential,
    /// The lifetime asked for; `None`: as long as allowed.
    pub ttl: Option<Duration>,
}

impl std::fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchange")
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token_type", &self.actor_token_type)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl AuthService {
    /// The token exchange grant (RFC 8693 section 2): see the module doc for its rules.
    pub async fn token_exchange_grant(
        &self,
        exchange: TokenExchange,
        request: TokenRequest,
        context: &CallContext,
    ) -> Result<IssuedToken, Error> {
        check_token_type(
            &exchange.subject_token,
            &exchange.subject_token_type,
            "subject_token",
        )?;
        if exchange.actor_token.is_empty() {
            if !exchange.actor_token_type.is_empty() {
                return Err(Error::invalid_argument(
                    "token_exchange.actor_token_type",
                    "give it only with an actor_token (RFC 8693 section 2.1)",
                ));
            }
        } else {
            check_token_type(
                &exchange.actor_token,
                &exchange.actor_token_type,
                "actor_token",
            )?;
        }
        if exchange.ttl.is_some_and(|ttl| ttl.as_secs() == 0) {
            return Err(Error::invalid_argument(
                "token_exchange.ttl",
                "must be at least one second",
            ));
        }
        let requested = ScopeSet::parse(request.scopes.iter().map(String::as_str))
            .map_err(|e| e.on("scopes"))?;
        let proof = self.checked_dpop_proof(&request)?;
        let now = self.clock.now();
        let client = self
            .verify_client(
                &exchange.client_id,
                &exchange.credential,
                "token_exchange",
                context,
            )
            .await?;
        let client_id = client.client_id.as_str();
        let mut audit = AuditRecord::new(client_id, "token.exchange", "", Outcome::Denied)
            .from_peer(&context.peer)
            .with_detail("grant", "token_exchange");
        let decided = self.decide_exchange(&exchange, &client, requested, &request.audience, now);
        let exchanged = match decided {
            Ok(exchanged) => exchanged,
            Err((error, subject)) => {
                audit.target = subject;
                let audit = audit.with_detail("reason", error.to_string());
                self.record(audit, now).await;
                return Err(error);
            }
        };
        audit.target.clone_from(&exchanged.subject.sub);
        audit = audit
            .with_detail("act", chain_of(&exchanged.act))
            .with_detail("subject_jti", exchanged.subject.jti.clone())
            .with_detail("audience", exchanged.audience.join(" "));
        let dpop_jkt = match self.claim_dpop_proof(proof).await {
            Ok(jkt) => jkt,
            Err(error) => {
                self.record(audit.with_detail("reason", "DPoP proof used before"), now)
                    .await;
                return Err(error);
            }
        };
        let confirmation = match binding(&client, context, dpop_jkt) {
            Ok(confirmation) => confirmation,
            Err(error) => {
                self.record(
                    audit.with_detail("reason", "no certificate to bind to"),
                    now,
                )
                .await;
                return Err(error);
            }
        };
        let subject = exchanged.subject;
        let mut token = self.mint(
            MintRequest {
                subject: subject.sub,
                kind: subject.kind,
                client_id: client_id.to_owned(),
                username: subject.preferred_username,
                roles: subject.roles,
                scopes: exchanged.scopes,
                audience: exchanged.audience,
                session_id: subject.sid,
                ttl: exchanged.ttl,
                confirmation,
                act: Some(exchanged.act),
            },
            now,
        )?;
        // Every verifier refuses a token past 8 KiB: one that long is never handed out.
        if token.access_token.len() > MAX_TOKEN_BYTES {
            let error = Error::PermissionDenied {
                reason: Reason::DelegationTooDeep,
                message: "the exchanged token would be longer than 8 KiB: the chain is too long"
                    .to_owned(),
            };
            self.record(audit.with_detail("reason", error.to_string()), now)
                .await;
            return Err(error);
        }
        // Always audited, whatever `clients.audit_tokens` says: acting on someone's behalf is
        // what an audit trail is for. The token leaves only once its event is committed.
        audit.outcome = Outcome::Success;
        self.store
            .record_audit(audit.with_detail("jti", token.jti.clone()), now)
            .await?;
        count_issued("token_exchange");
        token.issued_token_type = Some(ACCESS_TOKEN_TYPE_URN);
        Ok(token)
    }

    /// Everything an exchange decides about the tokens, once the client proved itself (an
    /// assertion it proved itself with is used up by then), before a DPoP proof is used up or
    /// anything is signed. A refusal comes with the subject it was about (empty when the
    /// subject token did not verify).
    fn decide_exchange(
        &self,
        exchange: &TokenExchange,
        client: &crate::domain::Client,
        requested: ScopeSet,
        audience: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Exchanged, (Error, String)> {
        let client_id = client.client_id.as_str();
        if !client.token_exchange {
            return Err((
                Error::PermissionDenied {
                    reason: Reason::UnauthorizedClient,
                    message: "this client may not exchange tokens: an admin must set its \
                              `token_exchange`"
                        .to_owned(),
                },
                String::new(),
            ));
        }
        let subject = self
            .token_for(client_id, &exchange.subject_token, "subject")
            .map_err(|error| (error, String::new()))?;
        let about = subject.sub.clone();
        let refuse = |error: Error| (error, about.clone());
        let held = ScopeSet::parse_space_separated(&subject.scope).map_err(|_| {
            refuse(Error::Unauthenticated {
                reason: Reason::TokenInvalid,
                message: "the subject token's scopes are malformed".to_owned(),
            })
        })?;
        // A password-change token proves nothing else, and its exchange would not say so.
        if held
            .iter()
            .any(|scope| scope.as_str() == PASSWORD_CHANGE_SCOPE)
        {
            return Err(refuse(Error::PermissionDenied {
                reason: Reason::InsufficientScope,
                message: "the subject token is only good for ChangePassword".to_owned(),
            }));
        }
        // The new token ends no later than the subject token, nor than the actor's.
        let mut ends = subject.exp;
        let acting = if exchange.actor_token.is_empty() {
            client_id.to_owned()
        } else {
            let actor = self
                .token_for(client_id, &exchange.actor_token, "actor")
                .map_err(&refuse)?;
            if actor.act.is_some() {
                return Err(refuse(Error::invalid_argument(
                    "token_exchange.actor_token",
                    "an actor token must not itself be delegated (it carries `act`)",
                )));
            }
            ends = ends.min(actor.exp);
            actor.sub
        };
        let act = ActClaim {
            sub: acting,
            client_id: Some(client_id.to_owned()),
            act: subject.act.clone().map(Box::new),
        };
        let depth = act.chain().count();
        if depth > self.policy.max_delegation_depth {
            return Err(refuse(Error::PermissionDenied {
                reason: Reason::DelegationTooDeep,
                message: format!(
                    "the subject token is already delegated {} times; \
                     federation.max_delegation_depth allows {}",
                    depth - 1,
                    self.policy.max_delegation_depth
                ),
            }));
        }
        let audience = self.exchange_audience(client, audience).map_err(&refuse)?;
        let scopes = exchange_scopes(&held, &client.allowed_scopes, requested).map_err(&refuse)?;
        let ttl = self
            .exchange_ttl(client, ends, exchange.ttl, now)
            .map_err(&refuse)?;
        Ok(Exchanged {
            subject,
            act,
            audience,
            scopes,
            ttl,
        })
    }

    /// A live access token (`which`: subject or actor) meant for `client_id`.
    fn token_for(&self, client_id: &str, token: &str, which: &str) -> Result<Claims, Error> {
        let claims = self
            .authenticator
            .verify_issued(token)
            .map_err(|error| match error {
                Error::Unauthenticated { reason, message } => Error::Unauthenticated {
                    reason,
                    message: format!("the {which} token: {message}"),
                },
                other => other,
            })?
            .claims;
        if !claims.aud.contains(client_id) {
            return Err(Error::PermissionDenied {
                reason: Reason::AudienceMismatch,
                message: format!(
                    "the {which} token is not meant for this client: its `aud` must hold \
                     `{client_id}`"
                ),
            });
        }
        Ok(claims)
    }

    /// The audience of an exchanged token: the one asked for, which must be one of the
    /// client's `allowed_audiences`; none asked, all of them. Never Keystone's own: a token
    /// made on someone's behalf must not administer Keystone.
    fn exchange_audience(
        &self,
        client: &crate::domain::Client,
        requested: &str,
    ) -> Result<Vec<String>, Error> {
        let keystone = &self.policy.keystone_audience;
        let allowed: Vec<String> = client
            .allowed_audiences
            .iter()
            .filter(|audience| *audience != keystone)
            .cloned()
            .collect();
        if requested.is_empty() {
            if allowed.is_empty() {
                return Err(Error::PermissionDenied {
                    reason: Reason::InvalidAudience,
                    message: "the client has no allowed audience to exchange for".to_owned(),
                });
            }
            return Ok(allowed);
        }
        if requested == keystone {
            return Err(Error::PermissionDenied {
                reason: Reason::InvalidAudience,
                message: "no token for Keystone itself is made by exchange".to_owned(),
            });
        }
        if !allowed.iter().any(|audience| audience == requested) {
            return Err(Error::PermissionDenied {
                reason: Reason::InvalidAudience,
                message: format!("the audience `{requested}` is not allowed for this client"),
            });
        }
        Ok(vec![requested.to_owned()])
    }

    /// How long the exchanged token lives: what was asked, or the client's token lifetime,
    /// and in no case past `ends` (the subject token's expiry, or the actor token's if sooner).
    fn exchange_ttl(
        &self,
        client: &crate::domain::Client,
        ends: i64,
        asked: Option<Duration>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Duration, Error> {
        let longest = self.client_ttl(client);
        // Whole seconds: `exp` is in seconds, and must not pass the subject's.
        let left = u64::try_from(ends.saturating_sub(now.timestamp())).unwrap_or(0);
        if left == 0 {
            return Err(Error::Unauthenticated {
                reason: Reason::TokenExpired,
                message: "the subject (or actor) token has expired".to_owned(),
            });
        }
        let left = Duration::from_secs(left);
        match asked {
            None => Ok(longest.min(left)),
            Some(asked) if asked > left => Err(Error::invalid_argument(
                "token_exchange.ttl",
                format!(
                    "the subject (or actor) token expires in {}s: an exchanged token cannot \
                     outlive it",
                    left.as_secs()
                ),
            )),
            Some(asked) if asked > longest => Err(Error::invalid_argument(
                "token_exchange.ttl",
                format!("this client's tokens live at most {}s", longest.as_secs()),
            )),
            Some(asked) => Ok(Duration::from_secs(asked.as_secs())),
        }
    }
}

/// What an exchange decided.
struct Exchanged {
    /// The subject token's claims.
    subject: Claims,
    /// The new `act` chain, this client first.
    act: ActClaim,
    /// The new token's audiences.
    audience: Vec<String>,
    /// Its scopes.
    scopes: ScopeSet,
    /// Its lifetime.
    ttl: Duration,
}

/// The scopes of an exchanged token: those asked, each held by both the subject token and the
/// client; none asked, every scope both hold. Keystone's own are never delegated.
fn exchange_scopes(
    held: &ScopeSet,
    allowed: &ScopeSet,
    requested: ScopeSet,
) -> Result<ScopeSet, Error> {
    if let Some(scope) = requested.first_keystones() {
        return Err(Error::PermissionDenied {
            reason: Reason::InvalidScope,
            message: format!("`{scope}` is Keystone's own scope, which is never delegated"),
        });
    }
    if requested.is_empty() {
        return Ok(held.meet(allowed).without_keystones());
    }
    for (set, whose) in [(held, "the subject token"), (allowed, "this client")] {
        if let Some(missing) = set.first_missing(&requested) {
            return Err(Error::PermissionDenied {
                reason: Reason::InvalidScope,
                message: format!("the scope `{missing}` is not held by {whose}"),
            });
        }
    }
    Ok(requested)
}

/// A token type the exchange takes: an access token, or a JWT (Keystone's access tokens are
/// JWTs).
fn check_token_type(token: &str, token_type: &str, field: &str) -> Result<(), Error> {
    if token.is_empty() {
        return Err(Error::invalid_argument(
            format!("token_exchange.{field}"),
            "must not be empty",
        ));
    }
    if token_type != ACCESS_TOKEN_TYPE_URN && token_type != JWT_TYPE_URN {
        return Err(Error::invalid_argument(
            format!("token_exchange.{field}_type"),
            format!("must be `{ACCESS_TOKEN_TYPE_URN}` or `{JWT_TYPE_URN}`"),
        ));
    }
    Ok(())
}

/// The chain for the audit trail: each actor (`sub`, and `via client` when another client
/// exchanged), the nearest first, separated by ` < `.
fn chain_of(act: &ActClaim) -> String {
    act.chain()
        .map(|actor| match actor.client_id.as_deref() {
            Some(client) if client != actor.sub => format!("{} via {client}", actor.sub),
            _ => actor.sub.clone(),
        })
        .collect::<Vec<_>>()
        .join(" < ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(scopes: &str) -> ScopeSet {
        ScopeSet::parse_space_separated(scopes).unwrap()
    }

    #[test]
    fn scopes_are_those_both_hold() {
        let held = set("orders:admin invoices:read keystone:admin");
        let allowed = set("orders:read invoices:write keystone:admin");
        assert_eq!(
            exchange_scopes(&held, &allowed, ScopeSet::default())
                .unwrap()
                .to_space_separated(),
            "invoices:read orders:read"
        );
        assert_eq!(
            exchange_scopes(&held, &allowed, set("orders:read"))
                .unwrap()
                .to_space_separated(),
            "orders:read"
        );
        for wider in ["orders:write", "invoices:write", "payments:read"] {
            let error = exchange_scopes(&held, &allowed, set(wider)).unwrap_err();
            assert_eq!(error.reason(), Reason::InvalidScope, "{wider}");
        }
        let error = exchange_scopes(&held, &allowed, set("keystone:admin")).unwrap_err();
        assert_eq!(error.reason(), Reason::InvalidScope);
    }

    #[test]
    fn only_access_tokens_are_exchanged() {
        assert!(check_token_type("t", ACCESS_TOKEN_TYPE_URN, "subject_token").is_ok());
        assert!(check_token_type("t", JWT_TYPE_URN, "subject_token").is_ok());
        for bad in [
            "",
            "urn:ietf:params:oauth:token-type:refresh_token",
            "urn:ietf:params:oauth:token-type:id_token",
            "access_token",
        ] {
            let error = check_token_type("t", bad, "subject_token").unwrap_err();
            assert!(error.to_string().contains("subject_token_type"), "{bad}");
        }
        assert!(check_token_type("", ACCESS_TOKEN_TYPE_URN, "subject_token").is_err());
    }

    #[test]
    fn the_audit_trail_names_every_hop() {
        let act = ActClaim {
            sub: "payments".into(),
            client_id: Some("payments".into()),
            act: Some(Box::new(ActClaim {
                sub: "robot".into(),
                client_id: Some("orders".into()),
                act: None,
            })),
        };
        assert_eq!(chain_of(&act), "payments < robot via orders");
    }
}
