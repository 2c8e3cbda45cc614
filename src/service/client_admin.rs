//! Managing service clients and their secrets. As with users: nobody gives a client scopes
//! they do not hold, nor changes a client holding a scope they lack; disabling,
//! deleting and `RevokeClientTokens` revoke the client's tokens at once. A secret is shown
//! once, when it is made; only its keyed hash is kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};

use super::{Actor, paging::Pager, user_admin::Page};
use crate::{
    clock::SharedClock,
    cluster::{Bus, Event},
    domain::{
        CertificateIdentity, Client, ClientId, ClientSecretInfo, DistinguishedName,
        FederatedIdentity, NewClient, Outcome, Revocation, Scope, SubjectAltName, Thumbprint,
        check_description,
    },
    error::{Error, Reason},
    revocation::Revocations,
    secrets::{CLIENT_SECRET_PREFIX, Pepper, random_token},
    store::{ChangeGuard, ClientChanges, Holdings, Store},
    token::assertion::ClientKeys,
};

/// Longest client name, in characters.
const MAX_NAME: usize = 256;
/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 1024;
/// Most allowed scopes or audiences of a client.
const MAX_ENTRIES: usize = 100;
/// Longest audience, in bytes.
const MAX_AUDIENCE: usize = 512;

/// The settings client administration follows.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// The longest access-token lifetime a client may have.
    pub max_access_ttl: Duration,
    /// The longest grace a rotated-out secret may keep working.
    pub max_secret_grace: Duration,
    /// How long a token issued now can live (max access lifetime plus leeway).
    pub token_lifetime: Duration,
}

/// Client administration.
#[derive(Debug, Clone)]
pub struct ClientAdminService {
    store: Store,
    clock: SharedClock,
    revocations: Revocations,
    bus: Bus,
    pepper: Pepper,
    pager: Pager,
    limits: ClientLimits,
    /// The audiences a caller without `keystone:admin` may give and manage
    /// (`clients.delegable_audiences`).
    delegable_audiences: std::sync::Arc<[String]>,
    /// The names of the trusted issuers (`[[federation.issuers]]`) identities may name.
    trusted_issuers: std::sync::Arc<[String]>,
}

/// A client's fields as the caller sent them (create or update).
#[derive(Debug, Clone, Default)]
pub struct ClientFields {
    /// The client id; empty on create: generated.
    pub client_id: String,
    /// A display name.
    pub name: Option<String>,
    /// What it is for.
    pub description: Option<String>,
    /// Allowed scopes.
    pub allowed_scopes: Option<Vec<String>>,
    /// Allowed audiences.
    pub allowed_audiences: Option<Vec<String>>,
    /// Access-token lifetime: `Some(None)` the server default.
    pub access_token_ttl: Option<Option<Duration>>,
    /// Enabled.
    pub enabled: Option<bool>,
    /// `tls_client_auth`: the subject DN its certificate must show (empty: none).
    pub tls_client_auth_subject_dn: Option<String>,
    /// `tls_client_auth`: names (DNS, URI such as SPIFFE IDs, IP, email) of which its
    /// certificate must carry one.
    pub tls_client_auth_sans: Option<Vec<String>>,
    /// `self_signed_tls_client_auth`: SHA-256 thumbprints of its self-signed certificates.
    pub tls_client_certificate_sha256: Option<Vec<String>>,
    /// Whether its tokens are bound to its certificate.
    pub certificate_bound_tokens: Option<bool>,
    /// Whether it may exchange tokens (RFC 8693); only `keystone:admin` may set it.
    pub token_exchange: Option<bool>,
    /// Its public keys for `private_key_jwt`, a JWK Set (empty: none); only `keystone:admin`
    /// may set them.
    pub jwks_json: Option<String>,
    /// Its workload identities as (issuer name, subject) (empty: none); only `keystone:admin`
    /// may set them.
    pub federated_identities: Option<Vec<(String, String)>>,
}

/// A rotated secret.
#[derive(Debug)]
pub struct RotatedSecret {
    /// The new secret, shown once.
    pub secret: SecretString,
    /// Until when the previous one works.
    pub previous_expires_at: Option<DateTime<Utc>>,
}

impl ClientAdminService {
    /// The service over its dependencies.
    pub fn new(
        store: Store,
        clock: SharedClock,
        revocations: Revocations,
        bus: Bus,
        pepper: Pepper,
        limits: ClientLimits,
        delegable_audiences: Vec<String>,
    ) -> Self {
        Self {
            pager: Pager::new(pepper.clone()),
            store,
            clock,
            revocations,
            bus,
            pepper,
            limits,
            delegable_audiences: delegable_audiences.into(),
            trusted_issuers: std::sync::Arc::default(),
        }
    }

    /// The service letting clients name the issuers called `names` in their workload
    /// identities.
    pub fn with_trusted_issuers(mut self, names: Vec<String>) -> Self {
        self.trusted_issuers = names.into();
        self
    }

    /// `CreateClient`: generates the id when none is given (never a user's id or username)
    /// and a secret, returned this once; a client that authenticates by certificate gets
    /// none.
    pub async fn create_client(
        &self,
        actor: &Actor,
        fields: ClientFields,
    ) -> Result<(Client, Option<SecretString>), Error> {
        let client_id = if fields.client_id.is_empty() {
            generated_client_id()?
        } else {
            ClientId::parse(&fields.client_id).map_err(|e| e.on("client.client_id"))?
        };
        let changes = self.check_fields(&fields)?;
        let allowed_scopes = changes.allowed_scopes.clone().unwrap_or_default();
        if let Err(error) = actor
            .check_may_grant(allowed_scopes.iter().map(String::as_str))
            .and_then(|()| self.check_may_give(actor, changes.allowed_audiences.as_deref()))
            .and_then(|()| check_may_give_certificate(actor, &changes))
        {
            return Err(self
                .denied(actor, "client.create", client_id.as_str(), error)
                .await);
        }
        if self.store.is_user_id_or_name(client_id.as_str()).await? {
            return Err(Error::AlreadyExists {
                message: "a user has this id or username; a client_id must differ".to_owned(),
            });
        }
        let certificate = CertificateIdentity {
            subject_dn: changes.subject_dn.clone().flatten(),
            sans: changes.sans.clone().unwrap_or_default(),
            thumbprints: changes.thumbprints.clone().unwrap_or_default(),
        };
        let jwks_json = changes.jwks_json.clone().flatten();
        let federated_identities = changes.federated_identities.clone().unwrap_or_default();
        let ways = [
            (certificate.is_set(), "certificate"),
            (jwks_json.is_some(), "private_key_jwt"),
            (!federated_identities.is_empty(), "workload_identity"),
        ];
        if ways.iter().filter(|(set, _)| *set).count() > 1 {
            return Err(Error::invalid_argument(
                if federated_identities.is_empty() {
                    "client.jwks_json"
                } else {
                    "client.federated_identities"
                },
                "a client authenticates by one of its TLS certificate, its keys (jwks_json) or \
                 its workload identities (federated_identities)",
            ));
        }
        let authentication = ways
            .iter()
            .find_map(|(set, way)| set.then_some(*way))
            .unwrap_or("secret");
        let secret = if authentication != "secret" {
            None
        } else {
            Some(random_token(CLIENT_SECRET_PREFIX)?)
        };
        let audit = actor
            .event("client.create", client_id.as_str(), Outcome::Success)
            .with_detail("allowed_scopes", allowed_scopes.join(","))
            .with_detail("authentication", authentication);
        let client = self
            .store
            .insert_client(
                NewClient {
                    client_id: client_id.as_str().to_owned(),
                    name: changes.name.unwrap_or_default(),
                    description: changes.description.unwrap_or_default(),
                    allowed_scopes,
                    allowed_audiences: changes.allowed_audiences.unwrap_or_default(),
                    access_token_ttl: changes.access_token_ttl.flatten(),
                    enabled: changes.enabled.unwrap_or(true),
                    certificate,
                    certificate_bound_tokens: changes.certificate_bound_tokens.unwrap_or(false),
                    token_exchange: changes.token_exchange.unwrap_or(false),
                    jwks_json,
                    federated_identities,
                },
                secret
                    .as_ref()
                    .map(|secret| self.pepper.hash_client_secret(secret.expose_secret())),
                &audit,
                self.clock.now(),
            )
            .await?;
        Ok((client, secret))
    }

    /// `GetClient`.
    pub async fn get_client(&self, client_id: &str) -> Result<Client, Error> {
        let client_id = ClientId::parse(client_id).map_err(|e| e.on("client_id"))?;
        self.store
            .find_client(client_id.as_str(), self.clock.now())
            .await?
            .ok_or_else(|| not_found(client_id.as_str()))
    }

    /// `ListClients`, by client id.
    pub async fn list_clients(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Client>, Error> {
        let page = self.pager.request(page_size, page_token, "clients")?;
        let clients = self
            .store
            .list_clients(page.after.as_deref(), page.size + 1, self.clock.now())
            .await?;
        let (items, next_page_token) = self.pager.finish(clients, &page, "clients", |c| {
            c.client_id.as_str().to_owned()
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// `UpdateClient`: the fields set in `fields`; disabling it, or changing what its
    /// certificate must show or whether its tokens are bound, revokes the client's tokens.
    pub async fn update_client(
        &self,
        actor: &Actor,
        fields: ClientFields,
    ) -> Result<Client, Error> {
        let client_id = ClientId::parse(&fields.client_id).map_err(|e| e.on("client.client_id"))?;
        let changes = self.check_fields(&fields)?;
        let action = "client.update";
        if let Err(error) = actor
            .check_may_grant(changes.allowed_scopes.iter().flatten().map(String::as_str))
            .and_then(|()| self.check_may_give(actor, changes.allowed_audiences.as_deref()))
            .and_then(|()| check_may_give_certificate(actor, &changes))
        {
            return Err(self.denied(actor, action, client_id.as_str(), error).await);
        }
        let mut audit = actor.event(action, client_id.as_str(), Outcome::Success);
        for (field, changed) in [
            ("name", changes.name.is_some()),
            ("description", changes.description.is_some()),
            ("allowed_scopes", changes.allowed_scopes.is_some()),
            ("allowed_audiences", changes.allowed_audiences.is_some()),
            ("access_token_ttl", changes.access_token_ttl.is_some()),
            ("tls_client_auth_subject_dn", changes.subject_dn.is_some()),
            ("tls_client_auth_sans", changes.sans.is_some()),
            ("jwks_json", changes.jwks_json.is_some()),
            (
                "federated_identities",
                changes.federated_identities.is_some(),
            ),
            (
                "tls_client_certificate_sha256",
                changes.thumbprints.is_some(),
            ),
        ] {
            if changed {
                audit = audit.with_detail(field, "changed");
            }
        }
        if let Some(enabled) = changes.enabled {
            audit = audit.with_detail("enabled", enabled.to_string());
        }
        if let Some(bound) = changes.certificate_bound_tokens {
            audit = audit.with_detail("certificate_bound_tokens", bound.to_string());
        }
        if let Some(exchange) = changes.token_exchange {
            audit = audit.with_detail("token_exchange", exchange.to_string());
        }
        let (permit, revocation) = (self.permit(actor), self.revocation_of(client_id.as_str()));
        let guard = ChangeGuard {
            permit: &permit,
            // Disabled, or who may act as it or how its tokens are bound changed: the tokens
            // it holds were given under the old terms.
            revoke: (changes.enabled == Some(false)
                || changes.subject_dn.is_some()
                || changes.sans.is_some()
                || changes.thumbprints.is_some()
                || changes.certificate_bound_tokens.is_some()
                || changes.token_exchange.is_some()
                || changes.jwks_json.is_some()
                || changes.federated_identities.is_some())
            .then_some(&revocation as _),
        };
        let result = self
            .store
            .update_client(
                client_id.as_str(),
                &changes,
                guard,
                &audit,
                self.clock.now(),
            )
            .await;
        self.settle(actor, action, client_id.as_str(), result).await
    }

    /// `DeleteClient`: its tokens are revoked with it.
    pub async fn delete_client(&self, actor: &Actor, client_id: &str) -> Result<(), Error> {
        let client_id = ClientId::parse(client_id).map_err(|e| e.on("client_id"))?;
        let action = "client.delete";
        let (permit, revocation) = (self.permit(actor), self.revocation_of(client_id.as_str()));
        let guard = ChangeGuard {
            permit: &permit,
            revoke: Some(&revocation),
        };
        let result = self
            .store
            .delete_client(
                client_id.as_str(),
                guard,
                &actor.event(action, client_id.as_str(), Outcome::Success),
                self.clock.now(),
            )
            .await
            .map(|revocation| ((), revocation));
        self.settle(actor, action, client_id.as_str(), result).await
    }

    /// `RevokeClientTokens`: every token issued to the client so far is rejected.
    pub async fn revoke_client_tokens(&self, actor: &Actor, client_id: &str) -> Result<(), Error> {
        let client_id = ClientId::parse(client_id).map_err(|e| e.on("client_id"))?;
        let action = "client.revoke_tokens";
        let (permit, revocation) = (self.permit(actor), self.revocation_of(client_id.as_str()));
        let guard = ChangeGuard {
            permit: &permit,
            revoke: Some(&revocation),
        };
        let result = self
            .store
            .update_client(
                client_id.as_str(),
                &ClientChanges::default(),
                guard,
                &actor.event(action, client_id.as_str(), Outcome::Success),
                self.clock.now(),
            )
            .await;
        self.settle(actor, action, client_id.as_str(), result)
            .await
            .map(|_| ())
    }

    /// `RotateClientSecret`: a new secret, shown once; the previous one works for `grace`
    /// (none: it ends now), at most `clients.max_secret_grace`. At most two are live.
    pub async fn rotate_client_secret(
        &self,
        actor: &Actor,
        client_id: &str,
        grace: Duration,
    ) -> Result<RotatedSecret, Error> {
        let client_id = ClientId::parse(client_id).map_err(|e| e.on("client_id"))?;
        if grace > self.limits.max_secret_grace {
            return Err(Error::invalid_argument(
                "grace_period",
                format!(
                    "must be at most {}s (clients.max_secret_grace)",
                    self.limits.max_secret_grace.as_secs()
                ),
            ));
        }
        let action = "client.rotate_secret";
        let now = self.clock.now();
        let previous_until = now
            + chrono::Duration::from_std(grace)
                .map_err(|_| Error::invalid_argument("grace_period", "is too long"))?;
        let secret = random_token(CLIENT_SECRET_PREFIX)?;
        let audit = actor
            .event(action, client_id.as_str(), Outcome::Success)
            .with_detail("grace_seconds", grace.as_secs().to_string());
        let permit = self.permit(actor);
        let guard = ChangeGuard {
            permit: &permit,
            revoke: None,
        };
        let result = self
            .store
            .rotate_client_secret(
                client_id.as_str(),
                self.pepper.hash_client_secret(secret.expose_secret()),
                previous_until,
                guard,
                &audit,
                now,
            )
            .await
            .map(|rotation| (rotation, None));
        let rotation = self
            .settle(actor, action, client_id.as_str(), result)
            .await?;
        Ok(RotatedSecret {
            secret,
            previous_expires_at: rotation.previous_expires_at,
        })
    }

    /// `RevokeClientSecret`: ends one live secret at once (a leaked previous secret, before its
    /// grace runs out), on every replica. The last live secret cannot go: rotate instead.
    /// Tokens already issued stay; `RevokeClientTokens` ends them.
    pub async fn revoke_client_secret(
        &self,
        actor: &Actor,
        client_id: &str,
        secret_id: &str,
    ) -> Result<Client, Error> {
        let client_id = ClientId::parse(client_id).map_err(|e| e.on("client_id"))?;
        let secret_id = ClientSecretInfo::parse_id(secret_id).map_err(|e| e.on("secret_id"))?;
        let action = "client.revoke_secret";
        let now = self.clock.now();
        let audit = actor
            .event(action, client_id.as_str(), Outcome::Success)
            .with_detail("secret_id", secret_id.as_str());
        let permit = self.permit(actor);
        let guard = ChangeGuard {
            permit: &permit,
            revoke: None,
        };
        let result = self
            .store
            .revoke_client_secret(client_id.as_str(), &secret_id, guard, &audit, now)
            .await
            .map(|client| (client, None));
        self.settle(actor, action, client_id.as_str(), result).await
    }

    /// What a change to a client checks inside its transaction: that the caller may manage
    /// the client (see [`Actor::check_may_manage`]: it holds every scope of the client, and
    /// may give each of its audiences and its certificate identity).
    fn permit<'a>(
        &'a self,
        actor: &'a Actor,
    ) -> impl Fn(&Holdings<'_>) -> Result<(), Error> + Sync + 'a {
        move |target: &Holdings<'_>| {
            actor.check_may_manage(target.scopes.iter().map(Scope::as_str))?;
            if let Some(audience) = self.first_undelegable(actor, target.audiences) {
                return Err(Error::PermissionDenied {
                    reason: Reason::InsufficientScope,
                    message: format!(
                        "the client holds the audience `{audience}`, which only a caller \
                         holding keystone:admin may manage (clients.delegable_audiences)"
                    ),
                });
            }
            if target.secretless && !actor.is_admin() {
                return Err(Error::PermissionDenied {
                    reason: Reason::InsufficientScope,
                    message: "the client authenticates by TLS certificate, by its keys or by \
                              a workload identity: only a caller holding keystone:admin may \
                              manage it"
                        .to_owned(),
                });
            }
            // Whoever holds its credentials acts on behalf of the users whose tokens reach it.
            if target.token_exchange && !actor.is_admin() {
                return Err(Error::PermissionDenied {
                    reason: Reason::InsufficientScope,
                    message: "the client may exchange tokens: only a caller holding \
                              keystone:admin may manage it"
                        .to_owned(),
                });
            }
            Ok(())
        }
    }

    /// The revocation of the client's tokens a change writes, stamped when made.
    fn revocation_of<'a>(&'a self, client_id: &'a str) -> impl Fn() -> Revocation + Sync + 'a {
        move || self.revocation(client_id, self.clock.now())
    }

    /// Audiences are a power: a caller without `keystone:admin` may give a client only the
    /// audiences of `clients.delegable_audiences`.
    fn check_may_give(&self, actor: &Actor, audiences: Option<&[String]>) -> Result<(), Error> {
        match self.first_undelegable(actor, audiences.unwrap_or_default()) {
            None => Ok(()),
            Some(audience) => Err(Error::PermissionDenied {
                reason: Reason::InsufficientScope,
                message: format!(
                    "you cannot give the audience `{audience}`: only a caller holding \
                     keystone:admin may give audiences beyond clients.delegable_audiences"
                ),
            }),
        }
    }

    /// The first of `audiences` the caller may not give; none for an admin.
    fn first_undelegable<'b>(&self, actor: &Actor, audiences: &'b [String]) -> Option<&'b str> {
        if actor.is_admin() {
            return None;
        }
        audiences
            .iter()
            .find(|audience| !self.delegable_audiences.contains(audience))
            .map(String::as_str)
    }

    /// Applies the revocation a change wrote and tells the other replicas that the client
    /// changed, or records the change's refusal.
    async fn settle<T>(
        &self,
        actor: &Actor,
        action: &'static str,
        target: &str,
        result: Result<(T, Option<Revocation>), Error>,
    ) -> Result<T, Error> {
        if result.is_ok() {
            // The others forget their copy of the client (see `Store::client_for_login`).
            self.bus.publish(Event::Client {
                client_id: target.to_owned(),
            });
        }
        super::settle(
            &self.store,
            &self.revocations,
            self.clock.now(),
            actor,
            action,
            target,
            result,
        )
        .await
    }

    /// Checks the fields that are set; scopes must exist.
    fn check_fields(&self, fields: &ClientFields) -> Result<ClientChanges, Error> {
        if let Some(name) = &fields.name {
            check_description(name, MAX_NAME).map_err(|e| e.on("client.name"))?;
        }
        if let Some(description) = &fields.description {
            check_description(description, MAX_DESCRIPTION)
                .map_err(|e| e.on("client.description"))?;
        }
        let allowed_scopes = fields
            .allowed_scopes
            .as_ref()
            .map(|scopes| {
                let mut parsed: Vec<String> = super::parse_names(
                    scopes,
                    "client.allowed_scopes",
                    "scopes",
                    MAX_ENTRIES,
                    Scope::parse,
                )?
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect();
                parsed.sort();
                Ok::<_, Error>(parsed)
            })
            .transpose()?;
        let allowed_audiences = fields
            .allowed_audiences
            .as_ref()
            .map(|audiences| {
                if audiences.len() > MAX_ENTRIES {
                    return Err(Error::invalid_argument(
                        "client.allowed_audiences",
                        format!("at most {MAX_ENTRIES} audiences"),
                    ));
                }
                let mut parsed: Vec<String> = Vec::with_capacity(audiences.len());
                for (i, audience) in audiences.iter().enumerate() {
                    if audience.is_empty()
                        || audience.len() > MAX_AUDIENCE
                        || audience
                            .chars()
                            .any(|c| c.is_control() || c.is_whitespace())
                    {
                        return Err(Error::invalid_argument(
                            format!("client.allowed_audiences[{i}]"),
                            format!(
                                "must hold 1 to {MAX_AUDIENCE} bytes with no spaces or control \
                                 characters"
                            ),
                        ));
                    }
                    if !parsed.contains(audience) {
                        parsed.push(audience.clone());
                    }
                }
                parsed.sort();
                Ok(parsed)
            })
            .transpose()?;
        let subject_dn = fields
            .tls_client_auth_subject_dn
            .as_ref()
            .map(|dn| {
                (!dn.is_empty())
                    .then(|| DistinguishedName::parse(dn))
                    .transpose()
                    .map_err(|e| e.on("client.tls_client_auth_subject_dn"))
            })
            .transpose()?;
        let sans = fields
            .tls_client_auth_sans
            .as_ref()
            .map(|names| {
                let mut parsed =
                    parse_list(names, "client.tls_client_auth_sans", SubjectAltName::parse)?;
                parsed.sort();
                Ok::<_, Error>(parsed)
            })
            .transpose()?;
        let thumbprints = fields
            .tls_client_certificate_sha256
            .as_ref()
            .map(|thumbprints| {
                let mut parsed = parse_list(
                    thumbprints,
                    "client.tls_client_certificate_sha256",
                    Thumbprint::parse,
                )?;
                parsed.sort();
                Ok::<_, Error>(parsed)
            })
            .transpose()?;
        // Registered as given, once checked: public signing keys only.
        let jwks_json = fields
            .jwks_json
            .as_ref()
            .map(|jwks| {
                let jwks = jwks.trim();
                if jwks.is_empty() {
                    return Ok(None);
                }
                ClientKeys::parse(jwks)
                    .map(|_| Some(jwks.to_owned()))
                    .map_err(|error| Error::invalid_argument("client.jwks_json", error.0))
            })
            .transpose()?;
        let federated_identities = fields
            .federated_identities
            .as_ref()
            .map(|identities| self.check_identities(identities))
            .transpose()?;
        if let Some(Some(ttl)) = fields.access_token_ttl
            && (ttl.is_zero() || ttl > self.limits.max_access_ttl)
        {
            return Err(Error::invalid_argument(
                "client.access_token_ttl",
                format!(
                    "must be above 0 and at most {}s (tokens.max_access_ttl)",
                    self.limits.max_access_ttl.as_secs()
                ),
            ));
        }
        Ok(ClientChanges {
            name: fields.name.clone(),
            description: fields.description.clone(),
            allowed_scopes,
            allowed_audiences,
            access_token_ttl: fields.access_token_ttl,
            enabled: fields.enabled,
            subject_dn,
            sans,
            thumbprints,
            certificate_bound_tokens: fields.certificate_bound_tokens,
            token_exchange: fields.token_exchange,
            jwks_json,
            federated_identities,
        })
    }

    /// Checks workload identities as given: each well formed and naming a trusted issuer, at
    /// most [`MAX_ENTRIES`], duplicates dropped, sorted.
    fn check_identities(
        &self,
        identities: &[(String, String)],
    ) -> Result<Vec<FederatedIdentity>, Error> {
        const FIELD: &str = "client.federated_identities";
        if identities.len() > MAX_ENTRIES {
            return Err(Error::invalid_argument(
                FIELD,
                format!("at most {MAX_ENTRIES} entries"),
            ));
        }
        let mut parsed = Vec::with_capacity(identities.len());
        for (i, (issuer_name, subject)) in identities.iter().enumerate() {
            let identity = FederatedIdentity::parse(issuer_name, subject)
                .map_err(|e| e.on(&format!("{FIELD}[{i}]")))?;
            if !self.trusted_issuers.contains(&identity.issuer_name) {
                return Err(Error::invalid_argument(
                    format!("{FIELD}[{i}].issuer_name"),
                    if self.trusted_issuers.is_empty() {
                        "no issuer is trusted: configure [[federation.issuers]] first".to_owned()
                    } else {
                        format!(
                            "must name one of [[federation.issuers]]: {}",
                            self.trusted_issuers.join(", ")
                        )
                    },
                ));
            }
            parsed.push(identity);
        }
        parsed.sort();
        parsed.dedup();
        Ok(parsed)
    }

    /// Records a refusal and hands the error back.
    async fn denied(
        &self,
        actor: &Actor,
        action: &'static str,
        target: &str,
        error: Error,
    ) -> Error {
        super::record_denial(&self.store, self.clock.now(), actor, action, target, error).await
    }

    /// A revocation of every token of the client issued up to `now`.
    fn revocation(&self, client_id: &str, now: DateTime<Utc>) -> Revocation {
        Revocation::of_subject(client_id, now, self.limits.token_lifetime)
    }
}

/// Who may act as a client is a power, as where it may go is: only a caller holding
/// `keystone:admin` gives or changes what a client's certificate must show (the same rule as
/// audiences beyond `clients.delegable_audiences`).
fn check_may_give_certificate(actor: &Actor, changes: &ClientChanges) -> Result<(), Error> {
    let touched = changes.subject_dn.as_ref().is_some_and(Option::is_some)
        || changes.sans.as_ref().is_some_and(|sans| !sans.is_empty())
        || changes
            .thumbprints
            .as_ref()
            .is_some_and(|thumbprints| !thumbprints.is_empty())
        || changes.jwks_json.as_ref().is_some_and(Option::is_some)
        || changes
            .federated_identities
            .as_ref()
            .is_some_and(|identities| !identities.is_empty());
    if touched && !actor.is_admin() {
        return Err(Error::PermissionDenied {
            reason: Reason::InsufficientScope,
            message: "only a caller holding keystone:admin may give a client a certificate \
                      identity (tls_client_auth_*, tls_client_certificate_sha256), keys \
                      (jwks_json) or workload identities (federated_identities)"
                .to_owned(),
        });
    }
    // Acting on users' behalf is a power over every user: an admin's to give (or take back).
    if changes.token_exchange.is_some() && !actor.is_admin() {
        return Err(Error::PermissionDenied {
            reason: Reason::InsufficientScope,
            message: "only a caller holding keystone:admin may change whether a client may \
                      exchange tokens (token_exchange)"
                .to_owned(),
        });
    }
    Ok(())
}

/// Parses each entry of a list field (at most [`MAX_ENTRIES`], duplicates dropped), naming the
/// entry that fails.
fn parse_list<T: PartialEq>(
    values: &[String],
    field: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::ParseError>,
) -> Result<Vec<T>, Error> {
    if values.len() > MAX_ENTRIES {
        return Err(Error::invalid_argument(
            field,
            format!("at most {MAX_ENTRIES} entries"),
        ));
    }
    let mut parsed: Vec<T> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let value = parse(value).map_err(|e| e.on(&format!("{field}[{i}]")))?;
        if !parsed.contains(&value) {
            parsed.push(value);
        }
    }
    Ok(parsed)
}

/// A generated client id: `kc_` and 16 lowercase letters and digits (82 bits).
fn generated_client_id() -> Result<ClientId, Error> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::internal(anyhow::anyhow!("no randomness: {error}")))?;
    // 256 is not a multiple of 36, so the first 4 letters are slightly likelier: no matter
    // for an identifier that is public anyway.
    let id: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    ClientId::parse(&format!("kc_{id}")).map_err(|e| Error::internal(anyhow::anyhow!("{e}")))
}

fn not_found(client_id: &str) -> Error {
    Error::NotFound {
        message: format!("no client has the id `{client_id}`"),
    }
}
