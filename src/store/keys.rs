//! Signing keys as rows: the key ring in `token::keys` reads and changes them only through here.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    Set,
};
use uuid::Uuid;

use super::{Store, audit, db_error, entity::signing_key};
use crate::{domain::AuditRecord, error::Error};

/// A stored signing key.
#[derive(Clone)]
pub struct StoredKey {
    /// The key id published as `kid`.
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub algorithm: String,
    /// `next`, `active`, `retired` or `removed`.
    pub state: String,
    /// The private key as stored: sealed (see `token::sealing`), PKCS#8 DER once opened;
    /// empty once removed.
    pub private_key: Vec<u8>,
    /// The raw public key.
    pub public_key: Vec<u8>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a `next` key starts signing.
    pub activates_at: DateTime<Utc>,
    /// When it started signing.
    pub activated_at: Option<DateTime<Utc>>,
    /// When it stopped signing.
    pub retired_at: Option<DateTime<Utc>>,
    /// When a retired key leaves the JWKS.
    pub remove_after: Option<DateTime<Utc>>,
    /// When it was withdrawn as compromised.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .field("private_key", &"[REDACTED]")
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

impl From<signing_key::Model> for StoredKey {
    fn from(model: signing_key::Model) -> Self {
        Self {
            kid: model.kid,
            algorithm: model.algorithm,
            state: model.state,
            private_key: model.private_key,
            public_key: model.public_key,
            created_at: model.created_at,
            activates_at: model.activates_at,
            activated_at: model.activated_at,
            retired_at: model.retired_at,
            remove_after: model.remove_after,
            revoked_at: model.revoked_at,
        }
    }
}

/// A change of state for one key.
#[derive(Debug, Clone)]
pub struct KeyTransition {
    /// Which key.
    pub kid: String,
    /// Its state now (checked, so two replicas cannot both move it).
    pub from: &'static str,
    /// Its new state.
    pub to: &'static str,
    /// The time of the step.
    pub at: DateTime<Utc>,
    /// For retiring: when it leaves the JWKS.
    pub remove_after: Option<DateTime<Utc>>,
}

impl Store {
    /// Every key not yet removed, oldest first.
    pub async fn live_keys(&self) -> Result<Vec<StoredKey>, Error> {
        Ok(signing_key::Entity::find()
            .filter(signing_key::Column::State.ne("removed"))
            .order_by_asc(signing_key::Column::CreatedAt)
            .all(self.db())
            .await
            .map_err(db_error)?
            .into_iter()
            .map(StoredKey::from)
            .collect())
    }

    /// Every key, removed ones included (without private material), oldest first.
    pub async fn all_keys(&self) -> Result<Vec<StoredKey>, Error> {
        Ok(signing_key::Entity::find()
            .order_by_asc(signing_key::Column::CreatedAt)
            .all(self.db())
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|model| {
                let mut key = StoredKey::from(model);
                key.private_key.clear();
                key
            })
            .collect())
    }

    /// Replaces a key's stored private key, if it is still `old` (another replica may have
    /// sealed it first). Returns whether this call replaced it.
    pub async fn reseal_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, Error> {
        let updated = signing_key::Entity::update_many()
            .col_expr(
                signing_key::Column::PrivateKey,
                sea_orm::sea_query::Expr::value(new.to_vec()),
            )
            .filter(signing_key::Column::Kid.eq(kid))
            .filter(signing_key::Column::PrivateKey.eq(old.to_vec()))
            .exec(self.db())
            .await
            .map_err(db_error)?;
        Ok(updated.rows_affected == 1)
    }

    /// Stores a new key and its audit event.
    pub async fn insert_key(
        &self,
        key: &StoredKey,
        audit_record: &AuditRecord,
    ) -> Result<(), Error> {
        let (_turn, txn) = self.begin_write().await?;
        signing_key::ActiveModel {
            id: Set(Uuid::now_v7()),
            kid: Set(key.kid.clone()),
            algorithm: Set(key.algorithm.clone()),
            state: Set(key.state.clone()),
            private_key: Set(key.private_key.clone()),
            public_key: Set(key.public_key.clone()),
            created_at: Set(key.created_at),
            activates_at: Set(key.activates_at),
            activated_at: Set(key.activated_at),
            retired_at: Set(key.retired_at),
            remove_after: Set(key.remove_after),
            revoked_at: Set(key.revoked_at),
        }
        .insert(&txn)
        .await
        .map_err(db_error)?;
        audit::insert(&txn, audit_record, key.created_at).await?;
        txn.commit().await.map_err(db_error)
    }

    /// Moves keys between states in one transaction, each only if it is still in its `from`
    /// state; returns whether every step applied (else nothing is changed).
    pub async fn transition_keys(
        &self,
        steps: &[KeyTransition],
        audit_records: &[AuditRecord],
    ) -> Result<bool, Error> {
        let (_turn, txn) = self.begin_write().await?;
        for step in steps {
            let mut update = signing_key::Entity::update_many()
                .col_expr(signing_key::Column::State, step.to.into())
                .filter(signing_key::Column::Kid.eq(step.kid.as_str()))
                .filter(signing_key::Column::State.eq(step.from));
            update = match step.to {
                "active" => update.col_expr(signing_key::Column::ActivatedAt, Some(step.at).into()),
                "retired" => update
                    .col_expr(signing_key::Column::RetiredAt, Some(step.at).into())
                    .col_expr(signing_key::Column::RemoveAfter, step.remove_after.into()),
                "removed" => {
                    update.col_expr(signing_key::Column::PrivateKey, Vec::<u8>::new().into())
                }
                _ => update,
            };
            let result = update.exec(&txn).await.map_err(db_error)?;
            if result.rows_affected != 1 {
                txn.rollback().await.map_err(db_error)?;
                return Ok(false);
            }
        }
        for record in audit_records {
            audit::insert(
                &txn,
                record,
                steps
                    .first()
                    .map_or_else(crate::clock::system_now, |s| s.at),
            )
            .await?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(true)
    }

    /// Withdraws a key at once (compromise): it leaves the JWKS and its tokens are refused.
    /// Returns whether a live key had that kid.
    pub async fn revoke_key(
        &self,
        kid: &str,
        at: DateTime<Utc>,
        audit_record: &AuditRecord,
    ) -> Result<bool, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let result = signing_key::Entity::update_many()
            .col_expr(signing_key::Column::State, "removed".into())
            .col_expr(signing_key::Column::RevokedAt, Some(at).into())
            .col_expr(signing_key::Column::PrivateKey, Vec::<u8>::new().into())
            .filter(signing_key::Column::Kid.eq(kid))
            .filter(signing_key::Column::State.ne("removed"))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        if result.rows_affected == 0 {
            txn.rollback().await.map_err(db_error)?;
            return Ok(false);
        }
        audit::insert(&txn, audit_record, at).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(true)
    }
}
