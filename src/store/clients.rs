//! Service clients, their allowed scopes and audiences, and their secrets (keyed hashes).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, Set, TransactionTrait as _, sea_query::Expr,
};
use uuid::Uuid;

use super::{Store, audit, db_error, db_error_or_exists, entity};
use crate::{
    domain::{AuditRecord, Client, NewClient},
    error::Error,
};

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
    /// Creates a client with its first secret, in one transaction with its audit event.
    pub async fn insert_client(
        &self,
        new: NewClient,
        secret_hash: Vec<u8>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Client, Error> {
        let txn = self.db().begin().await.map_err(db_error)?;
        let id = Uuid::now_v7();
        entity::client::ActiveModel {
            id: Set(id),
            client_id: Set(new.client_id.clone()),
            name: Set(new.name),
            description: Set(new.description),
            access_token_ttl_seconds: Set(new
                .access_token_ttl
                .map(|ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))),
            enabled: Set(new.enabled),
            tokens_not_before: Set(None),
            secret_rotated_at: Set(None),
            secret_last_used_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await
        .map_err(db_error_or_exists(format!(
            "a client `{}` already exists",
            new.client_id
        )))?;
        for scope in &new.allowed_scopes {
            let found = entity::scope::Entity::find()
                .filter(entity::scope::Column::Name.eq(scope.as_str()))
                .one(&txn)
                .await
                .map_err(db_error)?
                .ok_or_else(|| Error::NotFound {
                    message: format!("scope `{scope}` does not exist"),
                })?;
            entity::client_scope::ActiveModel {
                client_id: Set(id),
                scope_id: Set(found.id),
            }
            .insert(&txn)
            .await
            .map_err(db_error)?;
        }
        for audience in &new.allowed_audiences {
            entity::client_audience::ActiveModel {
                client_id: Set(id),
                audience: Set(audience.clone()),
            }
            .insert(&txn)
            .await
            .map_err(db_error)?;
        }
        entity::client_secret::ActiveModel {
            id: Set(Uuid::now_v7()),
            client_id: Set(id),
            secret_hash: Set(secret_hash),
            created_at: Set(now),
            expires_at: Set(None),
            last_used_at: Set(None),
        }
        .insert(&txn)
        .await
        .map_err(db_error)?;
        audit::insert(&txn, audit_record, now).await?;
        let client = client_of(&txn, id).await?;
        txn.commit().await.map_err(db_error)?;
        client.ok_or_else(|| Error::internal(anyhow::anyhow!("the new client vanished")))
    }

    /// A client by its public id, with its secrets still live at `now`.
    pub async fn find_client_with_secrets(
        &self,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(Client, Vec<ClientSecretRecord>)>, Error> {
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
            .map(|secret| ClientSecretRecord {
                id: secret.id,
                hash: secret.secret_hash,
                expires_at: secret.expires_at,
            })
            .collect();
        let client = client_of(self.db(), model.id).await?;
        Ok(client.map(|client| (client, secrets)))
    }

    /// Records that a secret was used.
    pub async fn touch_client_secret(
        &self,
        client: Uuid,
        secret: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
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

/// The domain client with this internal id.
pub(crate) async fn client_of<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
) -> Result<Option<Client>, Error> {
    let Some(model) = entity::client::Entity::find_by_id(id)
        .one(db)
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let mut allowed_scopes: Vec<String> = entity::scope::Entity::find()
        .inner_join(entity::client_scope::Entity)
        .filter(entity::client_scope::Column::ClientId.eq(id))
        .select_only()
        .column(entity::scope::Column::Name)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)?;
    allowed_scopes.sort();
    let mut allowed_audiences: Vec<String> = entity::client_audience::Entity::find()
        .filter(entity::client_audience::Column::ClientId.eq(id))
        .select_only()
        .column(entity::client_audience::Column::Audience)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)?;
    allowed_audiences.sort();
    Ok(Some(Client {
        id: model.id,
        client_id: model.client_id,
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
    }))
}
