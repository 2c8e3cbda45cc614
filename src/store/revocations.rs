//! Revocations as rows: the system of record behind the in-memory set.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _, Set,
    sea_query::OnConflict,
};

use super::{Store, db_error, entity::revocation};
use crate::{
    error::Error,
    revocation::{Revocation, RevocationKind},
};

impl Store {
    /// Every revocation still covering live tokens.
    pub async fn live_revocations(&self, now: DateTime<Utc>) -> Result<Vec<Revocation>, Error> {
        Ok(revocation::Entity::find()
            .filter(revocation::Column::ExpiresAt.gt(now))
            .all(self.db())
            .await
            .map_err(db_error)?
            .into_iter()
            .filter_map(|row| {
                Some(Revocation {
                    kind: RevocationKind::parse(&row.kind)?,
                    key: row.key,
                    not_before: row.not_before,
                    expires_at: row.expires_at,
                })
            })
            .collect())
    }

    /// Records a revocation, widening an existing entry for the same key.
    pub async fn upsert_revocation(&self, entry: &Revocation) -> Result<(), Error> {
        upsert(self.db(), entry).await
    }

    /// Deletes entries whose tokens have all expired.
    pub async fn delete_expired_revocations(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        Ok(revocation::Entity::delete_many()
            .filter(revocation::Column::ExpiresAt.lte(now))
            .exec(self.db())
            .await
            .map_err(db_error)?
            .rows_affected)
    }
}

/// Inserts or widens a revocation on any connection (a transaction included).
pub(crate) async fn upsert<C: ConnectionTrait>(db: &C, entry: &Revocation) -> Result<(), Error> {
    let existing = revocation::Entity::find()
        .filter(revocation::Column::Kind.eq(entry.kind.as_str()))
        .filter(revocation::Column::Key.eq(entry.key.as_str()))
        .one(db)
        .await
        .map_err(db_error)?;
    let (not_before, expires_at) = match &existing {
        Some(row) => (
            row.not_before.max(entry.not_before),
            row.expires_at.max(entry.expires_at),
        ),
        None => (entry.not_before, entry.expires_at),
    };
    let model = revocation::ActiveModel {
        kind: Set(entry.kind.as_str().to_owned()),
        key: Set(entry.key.clone()),
        not_before: Set(not_before),
        expires_at: Set(expires_at),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    revocation::Entity::insert(model)
        .on_conflict(
            OnConflict::columns([revocation::Column::Kind, revocation::Column::Key])
                .update_columns([
                    revocation::Column::NotBefore,
                    revocation::Column::ExpiresAt,
                    revocation::Column::CreatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map_err(db_error)?;
    Ok(())
}
