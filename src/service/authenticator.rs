//! The Authenticator: whether a bearer token may be trusted, and for what. It verifies the
//! signature and claims, asks the revocation set (memory only), checks that whoever presents
//! a bound token holds what it is bound to, checks the scopes and audience asked for, and
//! writes the audit event of a refused admin call. The admin adapters, server
//! reflection, Envoy's `Check` and the HTTP endpoints hold it rather than the whole
//! [`AuthService`](super::auth::AuthService).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    clock::SharedClock,
    cluster::Redis,
    domain::{AuditRecord, Outcome, Revocation, RoleName, Scope, ScopeSet, Thumbprint, TokenFacts},
    error::{Error, Reason},
    revocation::Revocations,
    service::{
        auth::{PASSWORD_CHANGE_SCOPE, Principal},
        limits::{Key, RateLimits},
        proofs::UsedProofs,
        refusals::RefusalLog,
    },
    store::Store,
    token::{
        Claims, TokenVerifier, VerifyError,
        dpop::{self, ProofRequest, ProofWindow, VerifiedProof},
    },
};

/// What came with a bearer token: what a bound token must be presented with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented {
    /// The thumbprint of the presenter's TLS client certificate (its own connection's, or
    /// one a trusted proxy forwarded).
    pub certificate: Option<Thumbprint>,
}

/// A DPoP proof that came with a token, and the request it must be for.
#[derive(Debug, Clone)]
pub struct DpopPresented {
    /// The proof (the `DPoP` header).
    pub proof: String,
    /// The request's method.
    pub method: String,
    /// The request's URI.
    pub uri: String,
}

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
    /// DPoP proofs used so far.
    proofs: UsedProofs,
    /// How old a DPoP proof may be.
    proof_window: ProofWindow,
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
        let proof_window = ProofWindow {
            max_age: chrono::Duration::seconds(60),
            leeway: chrono::Duration::seconds(verifier.leeway_seconds()),
        };
        Self {
            verifier,
            revocations,
            clock,
            store,
            limits,
            keystone_audience: keystone_audience.into(),
            refusals: Arc::default(),
            proofs: UsedProofs::new(None, proof_window.replay_horizon()),
            proof_window,
        }
    }

    /// DPoP proofs may be `max_age` old, and are remembered (used once) through `redis` when
    /// there is one.
    pub fn with_dpop(mut self, max_age: std::time::Duration, redis: Option<Redis>) -> Self {
        self.proof_window.max_age =
            chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::seconds(60));
        self.proofs = UsedProofs::new(redis, self.proof_window.replay_horizon());
        self
    }

    /// The DPoP proofs used so far.
    pub fn used_proofs(&self) -> &UsedProofs {
        &self.proofs
    }

    /// Checks a DPoP proof made for `method` and `uri` (and `access_token`, unless at the
    /// token endpoint), and uses it up: the key thumbprint it proves. A bad or used proof is
    /// `reason` with a sentence saying why.
    pub async fn use_proof(
        &self,
        proof: &DpopPresented,
        access_token: Option<&str>,
        reason: Reason,
    ) -> Result<String, Error> {
        let verified = self.check_proof(proof, access_token, reason)?;
        self.claim_proof(&verified, reason).await?;
        Ok(verified.jkt)
    }

    /// Checks a DPoP proof for its request (and `access_token`), storing nothing: what a
    /// caller not yet authenticated may be told. [`Self::claim_proof`] uses it up.
    pub fn check_proof(
        &self,
        proof: &DpopPresented,
        access_token: Option<&str>,
        reason: Reason,
    ) -> Result<VerifiedProof, Error> {
        dpop::verify(
            &proof.proof,
            ProofRequest {
                method: &proof.method,
                uri: &proof.uri,
                access_token,
            },
            self.proof_window,
            self.clock.now(),
        )
        .map_err(|error| Error::Unauthenticated {
            reason,
            message: error.to_string(),
        })
    }

    /// Uses up a checked proof: refused (`reason`) when it was used before.
    pub async fn claim_proof(&self, proof: &VerifiedProof, reason: Reason) -> Result<(), Error> {
        self.proofs
            .claim(proof, self.clock.now())
            .await
            .map_err(|error| match error {
                Error::Unauthenticated { message, .. } => {
                    Error::Unauthenticated { reason, message }
                }
                other => other,
            })
    }

    /// Checks a token: signature, claims, revocation, its binding to what was `presented`,
    /// then the scopes and audience asked for. Memory only: no database round trip.
    pub fn authenticate(
        &self,
        token: &str,
        presented: &Presented,
        required_scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<Principal, Error> {
        let principal = self.verify(token, presented).inspect_err(count_failure)?;
        self.authorize(principal, required_scopes, audience)
    }

    /// As [`Self::authenticate`], and a token bound to a DPoP key (`cnf.jkt`) must come with
    /// `proof`: a fresh proof by that key for this request and token, used once (RFC 9449
    /// section 7). `Authenticate` and Envoy's `Check` take proofs; elsewhere a DPoP-bound
    /// token is refused.
    /// The token's subject must also hold every one of `required_roles` (as the token says:
    /// roles at issuance), else PERMISSION_DENIED with MISSING_ROLE.
    pub async fn authenticate_with_proof(
        &self,
        token: &str,
        presented: &Presented,
        proof: Option<&DpopPresented>,
        required_scopes: &ScopeSet,
        required_roles: &[RoleName],
        audience: Option<&str>,
    ) -> Result<Principal, Error> {
        let principal = async {
            let principal = self.verify_issued(token)?;
            check_certificate(&principal.claims, presented)?;
            if let Some(jkt) = principal
                .claims
                .cnf
                .as_ref()
                .and_then(|cnf| cnf.jkt.as_deref())
            {
                let proof = proof.ok_or_else(|| {
                    binding_mismatch("the token is bound to a DPoP key: send a DPoP proof")
                })?;
                let proved = self
                    .use_proof(proof, Some(token), Reason::TokenBindingMismatch)
                    .await?;
                if proved != jkt {
                    return Err(binding_mismatch(
                        "the DPoP proof is signed by another key than the token is bound to",
                    ));
                }
            }
            Ok(principal)
        }
        .await
        .inspect_err(count_failure)?;
        let principal = self.authorize(principal, required_scopes, audience)?;
        if let Some(missing) = required_roles.iter().find(|role| {
            !principal
                .claims
                .roles
                .iter()
                .any(|held| held == role.as_str())
        }) {
            let error = Error::PermissionDenied {
                reason: Reason::MissingRole,
                message: format!("the token's subject lacks the role `{}`", missing.as_str()),
            };
            count_failure(&error);
            return Err(error);
        }
        Ok(principal)
    }

    /// The audience and scopes asked of a verified token.
    fn authorize(
        &self,
        principal: Principal,
        required_scopes: &ScopeSet,
        audience: Option<&str>,
    ) -> Result<Principal, Error> {
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
        presented: &Presented,
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
        let principal = match self.authenticate_for_keystone(&token, presented, &required) {
            Ok(principal) => principal,
            Err(error) => {
                // A valid token without the scope names who was refused; others name no one.
                let subject = match error {
                    Error::PermissionDenied { .. } => self
                        .verify(&token, presented)
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
        presented: &Presented,
        required_scopes: &ScopeSet,
    ) -> Result<Principal, Error> {
        self.authenticate(
            token,
            presented,
            required_scopes,
            Some(&self.keystone_audience),
        )
    }

    /// Verifies a token, checks it is not revoked, and that a bound token came with what it
    /// is bound to.
    pub fn verify(&self, token: &str, presented: &Presented) -> Result<Principal, Error> {
        let principal = self.verify_issued(token)?;
        check_binding(&principal.claims, presented)?;
        Ok(principal)
    }

    /// Verifies a token and checks it is not revoked, whoever holds it: for introspection,
    /// which shows a binding (`cnf`) to the resource server rather than checking it.
    pub fn verify_issued(&self, token: &str) -> Result<Principal, Error> {
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
        // Whoever acted in a delegated token: revoking any of them ends it.
        let actors: Vec<&str> = claims
            .actors()
            .flat_map(|actor| {
                let client = actor.client_id.as_deref().filter(|id| *id != actor.sub);
                std::iter::once(actor.sub.as_str()).chain(client)
            })
            .collect();
        if self.revocations.is_revoked(TokenFacts {
            token_id: &claims.jti,
            session_id: claims.sid.as_deref(),
            subject: &claims.sub,
            issued_at: claims.iat,
            actors: &actors,
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

/// A bound token is good only with what it is bound to; a DPoP proof is taken only where
/// [`Authenticator::authenticate_with_proof`] is used.
fn check_binding(claims: &Claims, presented: &Presented) -> Result<(), Error> {
    check_certificate(claims, presented)?;
    if claims.cnf.as_ref().is_some_and(|cnf| cnf.jkt.is_some()) {
        return Err(binding_mismatch(
            "the token is bound to a DPoP key, and this call takes no DPoP proof",
        ));
    }
    Ok(())
}

/// A token bound to a certificate (`cnf.x5t#S256`) is good only with that certificate.
fn check_certificate(claims: &Claims, presented: &Presented) -> Result<(), Error> {
    let Some(bound) = claims.cnf.as_ref().and_then(|cnf| cnf.x5t_s256.as_deref()) else {
        return Ok(());
    };
    match presented.certificate {
        Some(certificate) if certificate.to_base64url() == bound => Ok(()),
        Some(_) => Err(binding_mismatch(
            "the token is bound to another TLS client certificate",
        )),
        None => Err(binding_mismatch(
            "the token is bound to a TLS client certificate: present it",
        )),
    }
}

fn binding_mismatch(message: &str) -> Error {
    Error::Unauthenticated {
        reason: Reason::TokenBindingMismatch,
        message: message.to_owned(),
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
