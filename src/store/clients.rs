//! Service clients, their allowed scopes and audiences, and their secrets (keyed hashes).

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait, DatabaseTransaction,
    EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _, Set,
    sea_query::{Expr, ExprTrait as _},
};
use uuid::Uuid;

use super::{ChangeGuard, Store, audit, db_error, db_error_or_exists, entity, roles};
use crate::{
    domain::{
        AuditRecord, CertificateIdentity, Client, ClientId, ClientSecretInfo, DistinguishedName,
        FederatedIdentity, NewClient, Revocation, SubjectAltName, Thumbprint,
    },
    error::Error,
};

/// What a client update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ClientChanges {
    /// A display name.
    pub name: Option<String>,
    /// A description.
    pub description: Option<String>,
    /// The scopes it may be granted (each must exist).
    pub allowed_scopes: Option<Vec<String>>,
    /// The audiences it may ask for.
    pub allowed_audiences: Option<Vec<String>>,
    /// Its tokens' lifetime (`Some(None)`: the server default).
    pub access_token_ttl: Option<Option<Duration>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// The subject DN its certificate must show (`Some(None)`: none). Any certificate field
    /// that leaves the client authenticating by certificate deletes its secrets.
    pub subject_dn: Option<Option<DistinguishedName>>,
    /// The names of which its certificate must carry one.
    pub sans: Option<Vec<SubjectAltName>>,
    /// The thumbprints of its self-signed certificates.
    pub thumbprints: Option<Vec<Thumbprint>>,
    /// Whether its tokens are bound to its certificate.
    pub certificate_bound_tokens: Option<bool>,
    /// Whether it may exchange tokens (RFC 8693).
    pub token_exchange: Option<bool>,
    /// Its public keys for `private_key_jwt` (`Some(None)`: none).
    pub jwks_json: Option<Option<String>>,
    /// Its workload identities (sorted; empty: none).
    pub federated_identities: Option<Vec<FederatedIdentity>>,
}

impl ClientChanges {
    /// The certificate identity `current` has after the change, when the change touches it.
    fn certificate_of(&self, current: &Client) -> Option<CertificateIdentity> {
        if self.subject_dn.is_none() && self.sans.is_none() && self.thumbprints.is_none() {
            return None;
        }
        Some(CertificateIdentity {
            subject_dn: self
                .subject_dn
                .clone()
                .unwrap_or_else(|| current.certificate.subject_dn.clone()),
            sans: self
                .sans
                .clone()
                .unwrap_or_else(|| current.certificate.sans.clone()),
            thumbprints: self
                .thumbprints
                .clone()
                .unwrap_or_else(|| current.certificate.thumbprints.clone()),
        })
    }
}

/// What a client's secret rotation did.
#[derive(Debug, Clone)]
pub struct SecretRotation {
    /// The client after it.
    pub client: Client,
    /// Until when the previous secret works; `None`: it ended at once (or there was none).
    pub previous_expires_at: Option<DateTime<Utc>>,
}

/// A live secret of a client: its id and keyed hash.
#[derive(Clone)]
pub struct ClientSecretRecord {
    /// The secret's row id.
    pub id: Uuid,
    /// HMAC of the secret under the pepper.
    pub hash: Vec<u8>,
    /// Until when it works; `None`: until rotated out.
    pub expires_at: Option<DateTime<Utc>>,
}

/// How fresh a secret's recorded last use is kept: a secret used again and again is written
/// once a minute, not on every call.
const LAST_USE_RESOLUTION_MS: i64 = 60_000;

/// A client and its live secrets as read at `read_at`, for checking client credentials.
#[derive(Debug)]
pub struct CachedClient {
    /// The client.
    pub client: Client,
    /// Its secrets that were live at `read_at`.
    pub secrets: Vec<ClientSecretRecord>,
    /// When the read began: a revocation of the client stamped later means this copy may be
    /// older than the client's state.
    pub read_at: DateTime<Utc>,
    /// When each secret's last use was last written, in milliseconds (same order as `secrets`).
    last_use_written_ms: Vec<AtomicI64>,
}

impl CachedClient {
    /// Whether the use of `secret` at `now` should be written: the first use in
    /// [`LAST_USE_RESOLUTION_MS`] says yes (once, whichever call gets there first).
    pub fn last_use_due(&self, secret: Uuid, now: DateTime<Utc>) -> bool {
        let Some(written) = self
            .secrets
            .iter()
            .position(|s| s.id == secret)
            .and_then(|index| self.last_use_written_ms.get(index))
        else {
            return false;
        };
        let now_ms = now.timestamp_millis();
        let before = written.load(Ordering::Relaxed);
        now_ms.saturating_sub(before) >= LAST_USE_RESOLUTION_MS
            && written
                .compare_exchange(before, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Clients with their secrets as last read, so that the client credentials grant needs no
/// database round trip. Bounded; a copy is used for at most `ttl`. Every change through this
/// store forgets the client (and bumps `generation`, so a read that raced the change is not
/// kept); other replicas learn of changes on Redis, and the service also rereads a client
/// revoked since its copy was read, or one whose copy does not know the presented secret.
#[derive(Debug)]
pub(crate) struct ClientCache {
    entries: quick_cache::sync::Cache<String, Arc<CachedClient>>,
    ttl: chrono::Duration,
    generation: AtomicU64,
}

/// The most clients remembered.
const CACHED_CLIENTS: usize = 4096;

impl ClientCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(if ttl.is_zero() { 1 } else { CACHED_CLIENTS }),
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            generation: AtomicU64::new(0),
        }
    }

    fn forget(&self, client_id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(client_id);
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }
}

impl std::fmt::Debug for ClientSecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecretRecord")
            .field("id", &self.id)
            .field("hash", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Store {
    /// A client and its live secrets for checking its credentials: unless `fresh`, the
    /// remembered copy when there is one younger than the cache's time to live (then `true`),
    /// else read from the database (and remembered).
    pub async fn client_for_login(
        &self,
        client_id: &str,
        now: DateTime<Utc>,
        fresh: bool,
    ) -> Result<Option<(Arc<CachedClient>, bool)>, Error> {
        let cache = &self.clients;
        if !fresh
            && cache.ttl > chrono::Duration::zero()
            && let Some(entry) = cache.entries.get(client_id)
            && now.signed_duration_since(entry.read_at) < cache.ttl
            && now >= entry.read_at
        {
            return Ok(Some((entry, true)));
        }
        let generation = cache.generation.load(Ordering::Acquire);
        let Some((client, secrets)) = self.find_client_with_secrets(client_id, now).await? else {
            return Ok(None);
        };
        let last_use_written_ms = secrets
            .iter()
            .map(|(_, last_used)| {
                AtomicI64::new(last_used.map_or(i64::MIN, |at| at.timestamp_millis()))
            })
            .collect();
        let entry = Arc::new(CachedClient {
            client,
            secrets: secrets.into_iter().map(|(secret, _)| secret).collect(),
            read_at: now,
            last_use_written_ms,
        });
        if cache.ttl > chrono::Duration::zero()
            && cache.generation.load(Ordering::Acquire) == generation
        {
            cache.entries.insert(client_id.to_owned(), entry.clone());
            // A change that landed while this was being inserted wins.
            if cache.generation.load(Ordering::Acquire) != generation {
                cache.entries.remove(client_id);
            }
        }
        Ok(Some((entry, false)))
    }

    /// Forgets the remembered copy of a client (changed elsewhere).
    pub fn forget_client(&self, client_id: &str) {
        self.clients.forget(client_id);
    }

    /// Forgets every remembered client (a scope they may hold was deleted, or changes made
    /// elsewhere may have been missed).
    pub fn forget_all_clients(&self) {
        self.clients.forget_all();
    }

    /// Creates a client with its first secret (none for a client that authenticates by
    /// certificate), in one transaction with its audit event.
    pub async fn insert_client(
        &self,
        new: NewClient,
        secret_hash: Option<Vec<u8>>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Client, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let id = Uuid::now_v7();
        entity::client::ActiveModel {
            id: Set(id),
            client_id: Set(new.client_id.clone()),
            name: Set(new.name),
            description: Set(new.description),
            access_token_ttl_seconds: Set(new.access_token_ttl.map(ttl_seconds)),
            enabled: Set(new.enabled),
            tokens_not_before: Set(None),
            secret_rotated_at: Set(None),
            secret_last_used_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            tls_client_auth_subject_dn: Set(new
                .certificate
                .subject_dn
                .as_ref()
                .map(ToString::to_string)),
            certificate_bound_tokens: Set(new.certificate_bound_tokens),
            token_exchange: Set(new.token_exchange),
            jwks_json: Set(new.jwks_json.clone()),
        }
        .insert(&txn)
        .await
        .map_err(db_error_or_exists(format!(
            "a client `{}` already exists",
            new.client_id
        )))?;
        set_allowed_scopes(&txn, id, &new.allowed_scopes).await?;
        set_allowed_audiences(&txn, id, &new.allowed_audiences).await?;
        set_certificate_names(&txn, id, &new.certificate).await?;
        set_federated_identities(&txn, id, &new.federated_identities).await?;
        if let Some(secret_hash) = secret_hash {
            insert_secret(&txn, id, secret_hash, now).await?;
        }
        audit::insert(&txn, audit_record, now).await?;
        let client = client_of(&txn, id, now).await?;
        txn.commit().await.map_err(db_error)?;
        client.ok_or_else(|| Error::internal(anyhow::anyhow!("the new client vanished")))
    }

    /// The id of the client known by a workload identity, if any.
    pub async fn client_id_for_identity(
        &self,
        identity: &FederatedIdentity,
    ) -> Result<Option<String>, Error> {
        entity::client::Entity::find()
            .inner_join(entity::client_federated_identity::Entity)
            .filter(entity::client_federated_identity::Column::IssuerName.eq(&identity.issuer_name))
            .filter(entity::client_federated_identity::Column::Subject.eq(&identity.subject))
            .select_only()
            .column(entity::client::Column::ClientId)
            .into_tuple()
            .one(self.db())
            .await
            .map_err(db_error)
    }

    /// A client by its public id, with its secrets still live at `now` and their last use.
    async fn find_client_with_secrets(
        &self,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(Client, Vec<(ClientSecretRecord, Option<DateTime<Utc>>)>)>, Error> {
        let Some(model) = entity::client::Entity::find()
            .filter(entity::client::Column::ClientId.eq(client_id))
            .one(self.db())
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let secrets = entity::client_secret::Entity::find()
            .filter(entity::client_secret::Column::ClientId.eq(model.id))
            .order_by_desc(entity::client_secret::Column::CreatedAt)
            .all(self.db())
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|secret| secret.expires_at.is_none_or(|at| at > now))
            .map(|secret| {
                let record = ClientSecretRecord {
                    id: secret.id,
                    hash: secret.secret_hash,
                    expires_at: secret.expires_at,
                };
                (record, secret.last_used_at)
            })
            .collect();
        let client = client_of(self.db(), model.id, now).await?;
        Ok(client.map(|client| (client, secrets)))
    }

    /// Records that a secret was used.
    pub async fn touch_client_secret(
        &self,
        client: Uuid,
        secret: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let _turn = self.write_turn().await;
        entity::client_secret::Entity::update_many()
            .col_expr(
                entity::client_secret::Column::LastUsedAt,
                Expr::value(Some(now)),
            )
            .filter(entity::client_secret::Column::Id.eq(secret))
            .exec(self.db())
            .await
            .map_err(db_error)?;
        entity::client::Entity::update_many()
            .col_expr(
                entity::client::Column::SecretLastUsedAt,
                Expr::value(Some(now)),
            )
            .filter(entity::client::Column::Id.eq(client))
            .exec(self.db())
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

impl Store {
    /// A client by its public id.
    pub async fn find_client(
        &self,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Client>, Error> {
        let Some(id) = internal_id(self.db(), client_id).await? else {
            return Ok(None);
        };
        client_of(self.db(), id, now).await
    }

    /// Clients by public id after `after`, at most `limit`.
    pub async fn list_clients(
        &self,
        after: Option<&str>,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<Client>, Error> {
        let mut query = entity::client::Entity::find()
            .order_by_asc(entity::client::Column::ClientId)
            .select_only()
            .column(entity::client::Column::Id);
        if let Some(after) = after {
            query = query.filter(entity::client::Column::ClientId.gt(after));
        }
        let ids: Vec<Uuid> = query
            .limit(limit)
            .into_tuple()
            .all(self.reports_db())
            .await
            .map_err(db_error)?;
        let mut clients = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(client) = client_of(self.reports_db(), id, now).await? {
                clients.push(client);
            }
        }
        Ok(clients)
    }

    /// Changes a client in one transaction: `guard.permit` sees its allowed scopes and audiences
    /// once the
    /// row is locked, then the change, the audit event and, with `guard.revoke`, the
    /// revocation of its tokens (stamped right before the commit, and returned).
    pub async fn update_client(
        &self,
        client_id: &str,
        changes: &ClientChanges,
        guard: ChangeGuard<'_>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(Client, Option<Revocation>), Error> {
        let (_turn, txn) = self.begin_write().await?;
        let (id, current) = locked_client(&txn, client_id, &guard, now).await?;
        let certificate = changes.certificate_of(&current);
        let mut update = entity::client::Entity::update_many()
            .col_expr(entity::client::Column::UpdatedAt, Expr::value(now))
            .filter(entity::client::Column::Id.eq(id));
        if let Some(name) = &changes.name {
            update = update.col_expr(entity::client::Column::Name, Expr::value(name.clone()));
        }
        if let Some(description) = &changes.description {
            update = update.col_expr(
                entity::client::Column::Description,
                Expr::value(description.clone()),
            );
        }
        if let Some(ttl) = changes.access_token_ttl {
            update = update.col_expr(
                entity::client::Column::AccessTokenTtlSeconds,
                Expr::value(ttl.map(ttl_seconds)),
            );
        }
        if let Some(enabled) = changes.enabled {
            update = update.col_expr(entity::client::Column::Enabled, Expr::value(enabled));
        }
        if let Some(bound) = changes.certificate_bound_tokens {
            update = update.col_expr(
                entity::client::Column::CertificateBoundTokens,
                Expr::value(bound),
            );
        }
        if let Some(exchange) = changes.token_exchange {
            update = update.col_expr(entity::client::Column::TokenExchange, Expr::value(exchange));
        }
        if let Some(jwks) = &changes.jwks_json {
            update = update.col_expr(entity::client::Column::JwksJson, Expr::value(jwks.clone()));
        }
        // What the client authenticates by after the change: a certificate, its keys or its
        // workload identities, never two (which one would count?).
        let certificate_after = certificate
            .as_ref()
            .map_or(current.certificate.is_set(), CertificateIdentity::is_set);
        let keys_after = changes
            .jwks_json
            .as_ref()
            .map_or(current.jwks_json.is_some(), Option::is_some);
        let identities_after = changes
            .federated_identities
            .as_ref()
            .map_or(!current.federated_identities.is_empty(), |ids| {
                !ids.is_empty()
            });
        if [certificate_after, keys_after, identities_after]
            .into_iter()
            .filter(|after| *after)
            .count()
            > 1
        {
            return Err(Error::invalid_argument(
                if changes.federated_identities.is_some() {
                    "client.federated_identities"
                } else {
                    "client.jwks_json"
                },
                "a client authenticates by one of its TLS certificate, its keys (jwks_json) or \
                 its workload identities (federated_identities): clear the other first",
            ));
        }
        if let Some(certificate) = &certificate {
            update = update.col_expr(
                entity::client::Column::TlsClientAuthSubjectDn,
                Expr::value(certificate.subject_dn.as_ref().map(ToString::to_string)),
            );
        }
        if guard.revoke.is_some() {
            update = update.col_expr(
                entity::client::Column::TokensNotBefore,
                Expr::value(Some(now)),
            );
        }
        update.exec(&txn).await.map_err(db_error)?;
        if let Some(scopes) = &changes.allowed_scopes {
            entity::client_scope::Entity::delete_many()
                .filter(entity::client_scope::Column::ClientId.eq(id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            set_allowed_scopes(&txn, id, scopes).await?;
        }
        if let Some(audiences) = &changes.allowed_audiences {
            entity::client_audience::Entity::delete_many()
                .filter(entity::client_audience::Column::ClientId.eq(id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            set_allowed_audiences(&txn, id, audiences).await?;
        }
        if let Some(certificate) = &certificate {
            entity::client_certificate_name::Entity::delete_many()
                .filter(entity::client_certificate_name::Column::ClientId.eq(id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            set_certificate_names(&txn, id, certificate).await?;
        }
        if let Some(identities) = &changes.federated_identities {
            entity::client_federated_identity::Entity::delete_many()
                .filter(entity::client_federated_identity::Column::ClientId.eq(id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            set_federated_identities(&txn, id, identities).await?;
        }
        // A client that authenticates by certificate, keys or workload identity has no
        // secret: one left over could still be used, or come back to life when they are
        // taken off.
        if (certificate.is_some()
            || changes.jwks_json.is_some()
            || changes.federated_identities.is_some())
            && (certificate_after || keys_after || identities_after)
        {
            entity::client_secret::Entity::delete_many()
                .filter(entity::client_secret::Column::ClientId.eq(id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
        }
        audit::insert(&txn, audit_record, now).await?;
        let revocation = guard.write_revocation(&txn).await?;
        let client = client_of(&txn, id, now).await?;
        txn.commit().await.map_err(db_error)?;
        self.clients.forget(client_id);
        Ok((
            client.ok_or_else(|| client_not_found(client_id))?,
            revocation,
        ))
    }

    /// Deletes a client (`guard.permit` seeing its allowed scopes and audiences first) with the
    /// revocation
    /// of its tokens (`guard.revoke`, returned).
    pub async fn delete_client(
        &self,
        client_id: &str,
        guard: ChangeGuard<'_>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<Revocation>, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let (id, _) = locked_client(&txn, client_id, &guard, now).await?;
        entity::client::Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .map_err(db_error)?;
        audit::insert(&txn, audit_record, now).await?;
        let revocation = guard.write_revocation(&txn).await?;
        txn.commit().await.map_err(db_error)?;
        self.clients.forget(client_id);
        Ok(revocation)
    }

    /// Adds a new secret (its keyed hash) and lets the newest previous one live until
    /// `previous_until` (`now`: not at all); any older one ends now, so at most two are live.
    /// The client's row is locked first, so concurrent rotations take turns.
    pub async fn rotate_client_secret(
        &self,
        client_id: &str,
        secret_hash: Vec<u8>,
        previous_until: DateTime<Utc>,
        guard: ChangeGuard<'_>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<SecretRotation, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let (id, client) = locked_client(&txn, client_id, &guard, now).await?;
        if client.secretless() {
            return Err(Error::FailedPrecondition {
                reason: crate::error::Reason::FailedPrecondition,
                message: format!(
                    "the client `{client_id}` authenticates by its TLS certificate, its keys or \
                     its workload identities and holds no secret; clear its certificate \
                     fields, jwks_json or federated_identities first to give it one"
                ),
            });
        }
        let live: Vec<entity::client_secret::Model> = entity::client_secret::Entity::find()
            .filter(entity::client_secret::Column::ClientId.eq(id))
            .order_by_desc(entity::client_secret::Column::CreatedAt)
            .order_by_desc(entity::client_secret::Column::Id)
            .all(&txn)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|secret| secret.expires_at.is_none_or(|at| at > now))
            .collect();
        let mut previous_expires_at = None;
        for (index, secret) in live.iter().enumerate() {
            // The newest live secret keeps working for the grace (never longer than it
            // already would); every older one ends now.
            let until = if index == 0 {
                secret
                    .expires_at
                    .map_or(previous_until, |at| Ord::min(at, previous_until))
            } else {
                now
            };
            if index == 0 && until > now {
                previous_expires_at = Some(until);
            }
            entity::client_secret::Entity::update_many()
                .col_expr(
                    entity::client_secret::Column::ExpiresAt,
                    Expr::value(Some(until)),
                )
                .filter(entity::client_secret::Column::Id.eq(secret.id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
        }
        insert_secret(&txn, id, secret_hash, now).await?;
        entity::client::Entity::update_many()
            .col_expr(
                entity::client::Column::SecretRotatedAt,
                Expr::value(Some(now)),
            )
            .col_expr(entity::client::Column::UpdatedAt, Expr::value(now))
            .filter(entity::client::Column::Id.eq(id))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        audit::insert(&txn, audit_record, now).await?;
        let client = client_of(&txn, id, now).await?;
        txn.commit().await.map_err(db_error)?;
        self.clients.forget(client_id);
        Ok(SecretRotation {
            client: client.ok_or_else(|| client_not_found(client_id))?,
            previous_expires_at,
        })
    }
}

impl Store {
    /// Ends one live secret of a client now (its row goes), found by its short id. The current
    /// secret (the one without an end) stays: FAILED_PRECONDITION (rotate instead). The client's row is locked
    /// first, so a concurrent rotation or revocation takes its turn.
    pub async fn revoke_client_secret(
        &self,
        client_id: &str,
        secret_id: &str,
        guard: ChangeGuard<'_>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Client, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let (id, _) = locked_client(&txn, client_id, &guard, now).await?;
        let live: Vec<entity::client_secret::Model> = entity::client_secret::Entity::find()
            .filter(entity::client_secret::Column::ClientId.eq(id))
            .all(&txn)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter(|secret| secret.expires_at.is_none_or(|at| at > now))
            .collect();
        let mut matching = live
            .iter()
            .filter(|secret| ClientSecretInfo::id_of(&secret.secret_hash) == secret_id);
        let (Some(secret), None) = (matching.next(), matching.next()) else {
            return Err(Error::NotFound {
                message: format!(
                    "the client `{client_id}` has no live secret with the id `{secret_id}`"
                ),
            });
        };
        let lasting_left = live
            .iter()
            .any(|other| other.id != secret.id && other.expires_at.is_none());
        if !lasting_left {
            return Err(Error::FailedPrecondition {
                reason: crate::error::Reason::FailedPrecondition,
                message: "this is the client's current secret: without it the client would be \
                          left with none, or only one that ends; rotate instead (a grace of 0 \
                          ends the old one at once)"
                    .to_owned(),
            });
        }
        entity::client_secret::Entity::delete_by_id(secret.id)
            .exec(&txn)
            .await
            .map_err(db_error)?;
        entity::client::Entity::update_many()
            .col_expr(entity::client::Column::UpdatedAt, Expr::value(now))
            .filter(entity::client::Column::Id.eq(id))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        audit::insert(&txn, audit_record, now).await?;
        let client = client_of(&txn, id, now).await?;
        txn.commit().await.map_err(db_error)?;
        self.clients.forget(client_id);
        client.ok_or_else(|| client_not_found(client_id))
    }
}

/// Whether a client has this id, compared without case (usernames may not be one).
pub(crate) async fn is_client_id<C: ConnectionTrait>(
    db: &C,
    normalized_username: &str,
) -> Result<bool, Error> {
    let found: Option<Uuid> = entity::client::Entity::find()
        .filter(
            Expr::expr(sea_orm::sea_query::Func::lower(Expr::col((
                entity::client::Entity,
                entity::client::Column::ClientId,
            ))))
            .eq(normalized_username),
        )
        .select_only()
        .column(entity::client::Column::Id)
        .into_tuple()
        .one(db)
        .await
        .map_err(db_error)?;
    Ok(found.is_some())
}

fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

fn client_not_found(client_id: &str) -> Error {
    Error::NotFound {
        message: format!("no client has the id `{client_id}`"),
    }
}

/// Locks the client's row (PostgreSQL: `FOR UPDATE`; SQLite has a single writer), lets
/// `guard.permit` judge what it holds, and returns its internal id and the client.
async fn locked_client(
    txn: &DatabaseTransaction,
    client_id: &str,
    guard: &ChangeGuard<'_>,
    now: DateTime<Utc>,
) -> Result<(Uuid, Client), Error> {
    let id: Uuid = entity::client::Entity::find()
        .filter(entity::client::Column::ClientId.eq(client_id))
        .select_only()
        .column(entity::client::Column::Id)
        .lock_exclusive()
        .into_tuple()
        .one(txn)
        .await
        .map_err(db_error)?
        .ok_or_else(|| client_not_found(client_id))?;
    let client = client_of(txn, id, now)
        .await?
        .ok_or_else(|| client_not_found(client_id))?;
    (guard.permit)(&super::Holdings {
        scopes: &client.allowed_scopes,
        audiences: &client.allowed_audiences,
        secretless: client.secretless(),
        token_exchange: client.token_exchange,
    })?;
    Ok((id, client))
}

/// The internal id of the client with this public id.
async fn internal_id<C: ConnectionTrait>(db: &C, client_id: &str) -> Result<Option<Uuid>, Error> {
    entity::client::Entity::find()
        .filter(entity::client::Column::ClientId.eq(client_id))
        .select_only()
        .column(entity::client::Column::Id)
        .into_tuple()
        .one(db)
        .await
        .map_err(db_error)
}

/// Adds a live secret (its keyed hash) to a client.
async fn insert_secret<C: ConnectionTrait>(
    db: &C,
    client: Uuid,
    secret_hash: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    entity::client_secret::ActiveModel {
        id: Set(Uuid::now_v7()),
        client_id: Set(client),
        secret_hash: Set(secret_hash),
        created_at: Set(now),
        expires_at: Set(None),
        last_used_at: Set(None),
    }
    .insert(db)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Allows `scopes` (each must exist) to a client.
async fn set_allowed_scopes<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    scopes: &[String],
) -> Result<(), Error> {
    for scope in scopes {
        let scope_id = roles::scope_id(db, scope).await?;
        entity::client_scope::ActiveModel {
            client_id: Set(id),
            scope_id: Set(scope_id),
        }
        .insert(db)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Allows `audiences` to a client.
async fn set_allowed_audiences<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    audiences: &[String],
) -> Result<(), Error> {
    for audience in audiences {
        entity::client_audience::ActiveModel {
            client_id: Set(id),
            audience: Set(audience.clone()),
        }
        .insert(db)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Registers what a client's certificate may show: its names and self-signed thumbprints.
async fn set_certificate_names<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    certificate: &CertificateIdentity,
) -> Result<(), Error> {
    let names = certificate
        .sans
        .iter()
        .map(|san| (SAN, san.as_string()))
        .chain(
            certificate
                .thumbprints
                .iter()
                .map(|thumbprint| (SHA256, thumbprint.to_hex())),
        );
    for (kind, value) in names {
        entity::client_certificate_name::ActiveModel {
            client_id: Set(id),
            kind: Set(kind.to_owned()),
            value: Set(value),
        }
        .insert(db)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Gives a client workload identities; one another client has is `ALREADY_EXISTS`.
async fn set_federated_identities<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    identities: &[FederatedIdentity],
) -> Result<(), Error> {
    for identity in identities {
        entity::client_federated_identity::ActiveModel {
            issuer_name: Set(identity.issuer_name.clone()),
            subject: Set(identity.subject.clone()),
            client_id: Set(id),
        }
        .insert(db)
        .await
        .map_err(db_error_or_exists(format!(
            "another client is known by `{}` of `{}`: a workload identity names one client",
            identity.subject, identity.issuer_name
        )))?;
    }
    Ok(())
}

/// `client_certificate_names.kind` of a subject alternative name.
const SAN: &str = "san";
/// `client_certificate_names.kind` of a self-signed certificate's thumbprint.
const SHA256: &str = "sha256";

/// What a client's certificate must show, as stored. Each value was checked on its way in;
/// one that does not parse now is logged and left out (it then matches nothing).
async fn certificate_of<C: ConnectionTrait>(
    db: &C,
    model: &entity::client::Model,
) -> Result<CertificateIdentity, Error> {
    let names = entity::client_certificate_name::Entity::find()
        .filter(entity::client_certificate_name::Column::ClientId.eq(model.id))
        .all(db)
        .await
        .map_err(db_error)?;
    let mut certificate = CertificateIdentity {
        subject_dn: model.tls_client_auth_subject_dn.as_deref().and_then(|dn| {
            DistinguishedName::parse(dn)
                .inspect_err(|error| {
                    tracing::error!(client = %model.client_id, %error, "a stored subject DN is invalid: left out");
                })
                .ok()
        }),
        ..CertificateIdentity::default()
    };
    for name in names {
        let parsed = match name.kind.as_str() {
            SAN => SubjectAltName::parse(&name.value).map(|san| certificate.sans.push(san)),
            SHA256 => Thumbprint::parse(&name.value)
                .map(|thumbprint| certificate.thumbprints.push(thumbprint)),
            _ => Err(crate::domain::ParseError(format!(
                "unknown kind `{}`",
                name.kind
            ))),
        };
        if let Err(error) = parsed {
            tracing::error!(client = %model.client_id, %error, "a stored certificate name is invalid: left out");
        }
    }
    certificate.sans.sort();
    certificate.thumbprints.sort();
    Ok(certificate)
}

/// The domain client with this internal id.
pub(crate) async fn client_of<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Client>, Error> {
    let Some(model) = entity::client::Entity::find_by_id(id)
        .one(db)
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let allowed_scopes: Vec<String> = entity::scope::Entity::find()
        .inner_join(entity::client_scope::Entity)
        .filter(entity::client_scope::Column::ClientId.eq(id))
        .select_only()
        .column(entity::scope::Column::Name)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)?;
    let allowed_scopes = super::stored_scopes(&allowed_scopes);
    let mut allowed_audiences: Vec<String> = entity::client_audience::Entity::find()
        .filter(entity::client_audience::Column::ClientId.eq(id))
        .select_only()
        .column(entity::client_audience::Column::Audience)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)?;
    allowed_audiences.sort();
    let certificate = certificate_of(db, &model).await?;
    let mut federated_identities: Vec<FederatedIdentity> =
        entity::client_federated_identity::Entity::find()
            .filter(entity::client_federated_identity::Column::ClientId.eq(id))
            .all(db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|row| FederatedIdentity {
                issuer_name: row.issuer_name,
                subject: row.subject,
            })
            .collect();
    federated_identities.sort();
    let mut stored = entity::client_secret::Entity::find()
        .filter(entity::client_secret::Column::ClientId.eq(id))
        .all(db)
        .await
        .map_err(db_error)?;
    // The newest first (ids are UUIDv7: time-ordered too), sorted here, not by the text
    // SQLite keeps times in.
    stored.sort_by_key(|secret| std::cmp::Reverse((secret.created_at, secret.id)));
    let secrets = stored
        .into_iter()
        .filter(|secret| secret.expires_at.is_none_or(|at| at > now))
        .map(|secret| ClientSecretInfo {
            id: ClientSecretInfo::id_of(&secret.secret_hash),
            created_at: secret.created_at,
            expires_at: secret.expires_at,
            last_used_at: secret.last_used_at,
        })
        .collect();
    Ok(Some(Client {
        id: model.id,
        client_id: ClientId::stored(model.client_id),
        name: model.name,
        description: model.description,
        allowed_scopes,
        allowed_audiences,
        access_token_ttl: model
            .access_token_ttl_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
        enabled: model.enabled,
        created_at: model.created_at,
        updated_at: model.updated_at,
        secret_rotated_at: model.secret_rotated_at,
        secret_last_used_at: model.secret_last_used_at,
        certificate,
        certificate_bound_tokens: model.certificate_bound_tokens,
        token_exchange: model.token_exchange,
        jwks_json: model.jwks_json,
        federated_identities,
        secrets,
    }))
}
