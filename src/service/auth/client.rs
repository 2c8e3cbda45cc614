//! Service clients: their credentials checked (for the client credentials grant, HTTP Basic
//! and introspection), and the client credentials grant.
//!
//! A client proves itself with a secret; or, when it registered what its TLS client
//! certificate shows (RFC 8705 section 2), with that certificate on its own connection; or,
//! when it registered public keys (`private_key_jwt`, RFC 7523 section 2.2), with an assertion
//! signed by one of them, used once; or, when it is known by workload identities, with a
//! token of a trusted issuer naming one of them (a Kubernetes service-account token, a SPIRE
//! JWT-SVID: RFC 7523 section 2.2 too), as often as the workload likes until it expires. A
//! client of the last three kinds has no secret, and a secret sent along proves nothing.

use secrecy::{ExposeSecret as _, SecretString};

use super::{
    AuthService, CallContext, IssuedToken, TokenRequest, invalid_credentials,
    mint::{MintRequest, count_issued, grant},
};
use crate::{
    domain::{AuditRecord, Outcome, PresentedCertificate, ScopeSet},
    error::{Error, Reason},
    federation::WorkloadRefusal,
    service::{limits::Key, proofs::Kind},
    store::CachedClient,
    token::{
        Confirmation, Kind as TokenKind,
        assertion::{self, ClientKeys, Expected, JWT_BEARER_ASSERTION, VerifiedAssertion},
    },
};

/// How a client proved itself.
#[derive(Debug, Clone)]
enum Proof {
    /// With this live secret.
    Secret(uuid::Uuid),
    /// With the TLS certificate it registered.
    Certificate,
    /// With an assertion signed by a key it registered (its `jti` yet to be used up).
    Assertion(VerifiedAssertion),
    /// With a trusted issuer's token naming one of its workload identities.
    Workload,
}

/// What a client sends to prove itself, besides its TLS certificate. Its `Debug` shows which,
/// never the credential.
#[derive(Default)]
pub enum ClientCredential {
    /// Nothing: a client that authenticates by its TLS certificate.
    #[default]
    None,
    /// A secret.
    Secret(SecretString),
    /// A JWT client assertion (`client_assertion_type`
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`).
    Assertion(String),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Secret(_) => "Secret([REDACTED])",
            Self::Assertion(_) => "Assertion([REDACTED])",
        })
    }
}

impl ClientCredential {
    /// The credential of a request's `client_secret`, `client_assertion` and
    /// `client_assertion_type` (empty: not sent); `field` names the request's grant. An
    /// assertion of another type, or a secret and an assertion both, are refused.
    pub fn from_request(
        secret: String,
        assertion: String,
        assertion_type: &str,
        field: &str,
    ) -> Result<Self, Error> {
        match (secret.is_empty(), assertion.is_empty()) {
            (_, true) if !assertion_type.is_empty() => Err(Error::invalid_argument(
                format!("{field}.client_assertion"),
                "client_assertion_type needs a client_assertion",
            )),
            (true, true) => Ok(Self::None),
            (false, true) => Ok(Self::Secret(SecretString::from(secret))),
            (true, false) if assertion_type == JWT_BEARER_ASSERTION => {
                Ok(Self::Assertion(assertion))
            }
            (true, false) => Err(Error::invalid_argument(
                format!("{field}.client_assertion_type"),
                format!("must be `{JWT_BEARER_ASSERTION}`"),
            )),
            (false, false) => Err(Error::invalid_argument(
                format!("{field}.client_secret"),
                "send a client_secret or a client_assertion, not both",
            )),
        }
    }

    /// The client id to look up: `client_id` as sent, or, when empty, the `sub` an assertion
    /// of a client's own key claims (RFC 7521 section 4.2, `iss` = `sub`); it is checked with
    /// the rest. A workload's token leaves it empty: the identity it proves names the client.
    pub fn client_id_or_claimed(&self, client_id: String) -> String {
        match self {
            Self::Assertion(assertion) if client_id.is_empty() => {
                assertion::claimed_client(assertion).unwrap_or_default()
            }
            _ => client_id,
        }
    }
}

impl AuthService {
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
        credential: &ClientCredential,
        purpose: &'static str,
        context: &CallContext,
    ) -> Result<crate::domain::Client, Error> {
        self.limits.check(&[Key::Ip(&context.peer)]).await?;
        let client = self
            .check_client(client_id, credential, purpose, context)
            .await?;
        self.limits
            .check(&[Key::Client(client.client_id.as_str())])
            .await?;
        Ok(client)
    }

    /// Checks a client's credential; `client_id` may be empty when a workload's token names
    /// the client by its identity.
    pub(super) async fn check_client(
        &self,
        client_id: &str,
        credential: &ClientCredential,
        purpose: &'static str,
        context: &CallContext,
    ) -> Result<crate::domain::Client, Error> {
        let now = self.clock.now();
        let leeway = i64::try_from(self.policy.leeway.as_secs()).unwrap_or(i64::MAX);
        let assertion = match credential {
            ClientCredential::Assertion(assertion) => Some(assertion.as_str()),
            _ => None,
        };
        let refusal = |client_id: &str, outcome: Outcome, why: &str| {
            AuditRecord::new(
                client_id.to_owned(),
                "client.authenticate",
                client_id.to_owned(),
                outcome,
            )
            .from_peer(&context.peer)
            .with_detail("purpose", purpose)
            .with_detail("reason", why)
        };
        // A workload's token (its `iss` a trusted issuer) is checked first: its issuer's keys
        // may have to be fetched, and, with no client id sent, the identity it proves names
        // the client.
        let trusted = assertion.and_then(|token| Some((token, self.federation.issuer_of(token)?)));
        let workload = match trusted {
            None => None,
            Some((token, issuer)) => match issuer.verify(token, leeway, now).await {
                Ok(identity) => Some(Ok(identity)),
                Err(WorkloadRefusal::Refused(refusal)) => Some(Err(refusal)),
                Err(WorkloadRefusal::Unavailable(source)) => {
                    let why = format!("trusted issuer `{}` unavailable", issuer.name());
                    self.record(refusal(client_id, Outcome::Failure, &why), now)
                        .await;
                    return Err(Error::Unavailable {
                        reason: Reason::Unavailable,
                        what: "a trusted issuer's key set",
                        source: Some(source),
                    });
                }
            },
        };
        let client_id = match (client_id.is_empty(), &workload) {
            (false, _) => client_id.to_owned(),
            // An assertion that names no client: neither a trusted issuer's token nor one of a
            // client's own key (`iss` = `sub`).
            (true, None) if assertion.is_some() => {
                self.record(
                    refusal("", Outcome::Failure, "assertion names no client"),
                    now,
                )
                .await;
                return Err(invalid_credentials());
            }
            (true, None) => client_id.to_owned(),
            (true, Some(Ok(identity))) => {
                match self.store.client_id_for_identity(identity).await? {
                    Some(client_id) => client_id,
                    None => {
                        let why = format!(
                            "no client is known by `{}` of `{}`",
                            identity.subject, identity.issuer_name
                        );
                        self.record(refusal("", Outcome::Failure, &why), now).await;
                        return Err(Error::Unauthenticated {
                            reason: Reason::InvalidCredentials,
                            message: format!("invalid client assertion: {why}"),
                        });
                    }
                }
            }
            (true, Some(Err(refused))) => {
                self.record(refusal("", Outcome::Failure, &refused.why.to_string()), now)
                    .await;
                return Err(assertion_error(refused.signed, &refused.why.to_string()));
            }
        };
        let client_id = client_id.as_str();
        if client_id.is_empty() || client_id.len() > 128 || client_id.chars().any(char::is_control)
        {
            return Err(Error::invalid_argument(
                "client_credentials.client_id",
                "must hold 1 to 128 bytes and no control characters",
            ));
        }
        let audit = |outcome: Outcome, why: &str| refusal(client_id, outcome, why);
        let secret = match credential {
            ClientCredential::Secret(secret) if !secret.expose_secret().is_empty() => Some(secret),
            _ => None,
        };
        if secret.is_some_and(|secret| secret.expose_secret().len() > 256) {
            return Err(invalid_credentials());
        }
        // The certificate of the caller's own connection (one a proxy forwarded is known by
        // its hash alone, which proves no name).
        let certificate = match &context.certificate {
            Some(PresentedCertificate::Connection(certificate)) => Some(certificate),
            _ => None,
        };
        // The proof a copy of the client accepts, or why none, for the audit trail, and whether
        // the caller may be told (only once an assertion's signature checked out: its holder
        // needs to know what to fix, and a stranger learns nothing of which clients have which
        // keys).
        let plain = || (false, "invalid credentials".to_owned());
        let matching = |entry: &CachedClient| -> Result<Proof, (bool, String)> {
            if entry.client.certificate.is_set() {
                return certificate
                    .filter(|certificate| entry.client.certificate.matched_by(certificate))
                    .map(|_| Proof::Certificate)
                    .ok_or_else(plain);
            }
            if !entry.client.federated_identities.is_empty() {
                return match &workload {
                    Some(Ok(identity))
                        if entry.client.federated_identities.iter().any(|known| {
                            known.issuer_name == identity.issuer_name
                                && known.subject == identity.subject
                        }) =>
                    {
                        Ok(Proof::Workload)
                    }
                    Some(Ok(identity)) => Err((
                        true,
                        format!(
                            "the client is not known by `{}` of `{}`",
                            identity.subject, identity.issuer_name
                        ),
                    )),
                    Some(Err(refused)) => Err((refused.signed, refused.why.to_string())),
                    None => Err(plain()),
                };
            }
            if let Some(jwks) = &entry.client.jwks_json {
                let Some(assertion) = assertion else {
                    return Err(plain());
                };
                let keys = ClientKeys::parse(jwks)
                    .map_err(|error| (false, format!("the client's keys: {error}")))?;
                let expected = Expected {
                    client_id,
                    audiences: &self.policy.assertion_audiences,
                    leeway,
                };
                return assertion::verify(assertion, &keys, expected, now)
                    .map(Proof::Assertion)
                    .map_err(|refusal| (refusal.signed, refusal.why.to_string()));
            }
            let secret = secret.ok_or_else(plain)?;
            // Every live secret is checked, so the time does not tell which one matched.
            entry
                .secrets
                .iter()
                .fold(None, |matched, candidate| {
                    let ok = self
                        .pepper
                        .verify_client_secret(secret.expose_secret(), &candidate.hash)
                        && candidate.expires_at.is_none_or(|at| at > now);
                    matched.or(ok.then_some(candidate.id))
                })
                .map(Proof::Secret)
                .ok_or_else(plain)
        };
        let mut found = self.store.client_for_login(client_id, now, false).await?;
        // Checked once per copy read: a signature is not verified twice.
        let mut matched = found.as_ref().map(|(entry, _)| matching(entry));
        // A remembered copy is read again when the client was revoked after it was read
        // (disabled, deleted, its tokens revoked: on any replica), or when it knows no secret
        // that matches (one rotated in on another replica). A wrong secret does not evict the
        // copy: the fresh read replaces it, so a flood of wrong secrets cannot empty the cache.
        if let Some((entry, true)) = &found
            && (self
                .revocations
                .subject_revoked_since(client_id, entry.read_at)
                || matches!(matched, Some(Err(_))))
        {
            found = self.store.client_for_login(client_id, now, true).await?;
            matched = found.as_ref().map(|(entry, _)| matching(entry));
        }
        let (entry, proof) = match (found, matched) {
            (Some((entry, _)), Some(Ok(proof))) => (entry, proof),
            (_, Some(Err((tell, why)))) => {
                self.record(audit(Outcome::Failure, &why), now).await;
                return Err(assertion_error(tell, &why));
            }
            _ => {
                self.record(audit(Outcome::Failure, "invalid credentials"), now)
                    .await;
                return Err(invalid_credentials());
            }
        };
        let client = &entry.client;
        if !client.enabled {
            self.record(audit(Outcome::Denied, "disabled"), now).await;
            return Err(Error::PermissionDenied {
                reason: Reason::AccountDisabled,
                message: "the client is disabled".to_owned(),
            });
        }
        match proof {
            Proof::Secret(secret_id) if entry.last_use_due(secret_id, now) => {
                self.store
                    .touch_client_secret(client.id, secret_id, now)
                    .await?;
            }
            // Used once, on every replica: a replayed assertion proves nothing.
            Proof::Assertion(verified) => {
                let first = self
                    .authenticator
                    .used_proofs()
                    .first_use(
                        Kind::ClientAssertion,
                        &[client_id, &verified.jti],
                        verified.expires_at,
                        now,
                    )
                    .await?;
                if !first {
                    self.record(audit(Outcome::Failure, "assertion used before"), now)
                        .await;
                    return Err(Error::Unauthenticated {
                        reason: Reason::InvalidCredentials,
                        message: "invalid client assertion: its jti was used before; sign a new \
                                  one for each request"
                            .to_owned(),
                    });
                }
            }
            _ => {}
        }
        Ok(client.clone())
    }

    /// The client credentials grant (RFC 6749 section 4.4). No refresh token. An unknown client
    /// and a wrong secret give the same answer; a secret is checked against each live secret
    /// of the client (at most two during a rotation) with constant-time comparison.
    pub async fn client_credentials_grant(
        &self,
        client_id: &str,
        credential: ClientCredential,
        request: TokenRequest,
        context: &CallContext,
    ) -> Result<IssuedToken, Error> {
        let requested = ScopeSet::parse(request.scopes.iter().map(String::as_str))
            .map_err(|e| e.on("scopes"))?;
        // A bad proof is refused before the credentials are looked at: it tells nothing of them.
        let proof = self.checked_dpop_proof(&request)?;
        // Taken before the client is read: a token stamped before a revocation of its client
        // is refused, whatever it read.
        let now = self.clock.now();
        let client = self
            .verify_client(client_id, &credential, "client_credentials", context)
            .await?;
        // The client as it proved itself (a workload's token may have named it).
        let client_id = client.client_id.as_str();
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
        let scopes = grant(&client.allowed_scopes, requested)?;
        let audience = if request.audience.is_empty() {
            if scopes.first_keystones().is_some() {
                // Keystone's own scopes, asked for by name, are for Keystone.
                vec![self.policy.keystone_audience.clone()]
            } else if client.allowed_audiences.is_empty() {
                vec![self.policy.default_audience.clone()]
            } else {
                client.allowed_audiences.clone()
            }
        } else if client.allowed_audiences.contains(&request.audience)
            || request.audience == self.policy.keystone_audience
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
        let dpop_jkt = match self.claim_dpop_proof(proof).await {
            Ok(jkt) => jkt,
            Err(error) => {
                self.record(audit(Outcome::Denied, "DPoP proof used before"), now)
                    .await;
                return Err(error);
            }
        };
        let confirmation = match binding(&client, context, dpop_jkt) {
            Ok(confirmation) => confirmation,
            Err(error) => {
                self.record(audit(Outcome::Denied, "no certificate to bind to"), now)
                    .await;
                return Err(error);
            }
        };
        let ttl = self.client_ttl(&client);
        let token = self.mint(
            MintRequest {
                subject: client.client_id.as_str().to_owned(),
                kind: TokenKind::Service,
                client_id: client.client_id.as_str().to_owned(),
                username: None,
                roles: Vec::new(),
                scopes,
                audience,
                session_id: None,
                ttl,
                confirmation,
                act: None,
            },
            now,
        )?;
        // The token leaves only once its event is committed (with others: group commit).
        if self.policy.audit_service_tokens {
            let event =
                audit(Outcome::Success, "client credentials").with_detail("jti", token.jti.clone());
            self.store.record_audit(event, now).await?;
        }
        count_issued("client_credentials");
        Ok(token)
    }
}

/// An assertion refused: why, when its signature checked out (`tell`), else no more than
/// any wrong credential.
fn assertion_error(tell: bool, why: &str) -> Error {
    if tell {
        Error::Unauthenticated {
            reason: Reason::InvalidCredentials,
            message: format!("invalid client assertion: {why}"),
        }
    } else {
        invalid_credentials()
    }
}

impl AuthService {
    /// How long a client's access tokens live: its own lifetime, else the server default,
    /// never past `tokens.max_access_ttl`.
    pub(super) fn client_ttl(&self, client: &crate::domain::Client) -> std::time::Duration {
        client
            .access_token_ttl
            .unwrap_or(self.policy.access_ttl)
            .min(self.policy.max_access_ttl)
    }
}

/// What a client's new token is bound to: the certificate the client presents now, when its
/// tokens are bound to it (RFC 8705 section 3.1), and the DPoP key it proved (RFC 9449).
pub(super) fn binding(
    client: &crate::domain::Client,
    context: &CallContext,
    dpop_jkt: Option<String>,
) -> Result<Option<Confirmation>, Error> {
    let x5t_s256 = if client.certificate_bound_tokens {
        let Some(certificate) = &context.certificate else {
            return Err(Error::Unauthenticated {
                reason: Reason::InvalidCredentials,
                message: "this client's tokens are bound to its TLS client certificate: \
                          present one"
                    .to_owned(),
            });
        };
        Some(certificate.thumbprint().to_base64url())
    } else {
        None
    };
    Ok(
        (x5t_s256.is_some() || dpop_jkt.is_some()).then_some(Confirmation {
            x5t_s256,
            jkt: dpop_jkt,
        }),
    )
}
