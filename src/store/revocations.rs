//! Revocations as rows: the system of record behind every replica's in-memory set. `seq`
//! orders changes: a new entry, and an entry widened, get a new `seq`, so a replica that
//! follows `seq` sees both.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait as _, Condition, ConnectionTrait, DatabaseBackend, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, Statement,
};

use super::{Store, db_error, entity::revocation};
use crate::{
    domain::{AuditRecord, Revocation, RevocationKind},
    error::Error,
};

impl Store {
    /// Every revocation still covering live tokens, and the newest `seq` (0 when none).
    pub async fn live_revocations(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Revocation>, i64), Error> {
        // The newest seq first: a row committed between the two reads comes again at the next
        // poll rather than being skipped.
        let newest = self.newest_revocation_seq().await?;
        let rows = revocation::Entity::find()
            .filter(revocation::Column::ExpiresAt.gt(now))
            .all(self.db())
            .await
            .map_err(db_error)?;
        Ok((rows.into_iter().filter_map(from_row).collect(), newest))
    }

    /// Revocations changed after `seq`, or written since `recent` (by this database's writers'
    /// clocks): a row whose `seq` was taken before a row already seen, but committed after it,
    /// is caught by the second condition. Returns them with the newest `seq` seen.
    pub async fn revocations_since(
        &self,
        seq: i64,
        recent: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Revocation>, i64), Error> {
        let rows = revocation::Entity::find()
            .filter(
                Condition::any()
                    .add(revocation::Column::Seq.gt(seq))
                    .add(revocation::Column::CreatedAt.gte(recent)),
            )
            .filter(revocation::Column::ExpiresAt.gt(now))
            .order_by_asc(revocation::Column::Seq)
            .limit(100_000)
            .all(self.db())
            .await
            .map_err(db_error)?;
        let newest = rows.iter().map(|row| row.seq).max().unwrap_or(seq).max(seq);
        Ok((rows.into_iter().filter_map(from_row).collect(), newest))
    }

    /// Records a revocation (widening an existing entry for the same key) and its audit event
    /// in one transaction.
    pub async fn upsert_revocation_audited(
        &self,
        entry: &Revocation,
        event: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let (_turn, txn) = self.begin_write().await?;
        upsert(&txn, entry).await?;
        super::audit::insert(&txn, event, now).await?;
        txn.commit().await.map_err(db_error)
    }

    async fn newest_revocation_seq(&self) -> Result<i64, Error> {
        let newest: Option<Option<i64>> = revocation::Entity::find()
            .select_only()
            .column_as(revocation::Column::Seq.max(), "newest")
            .into_tuple()
            .one(self.db())
            .await
            .map_err(db_error)?;
        Ok(newest.flatten().unwrap_or(0))
    }
}

fn from_row(row: revocation::Model) -> Option<Revocation> {
    Some(Revocation {
        kind: RevocationKind::parse(&row.kind)?,
        key: row.key,
        not_before: row.not_before,
        expires_at: row.expires_at,
    })
}

/// Inserts or widens a revocation on any connection (a transaction included), in one
/// statement, giving the row a new `seq` either way.
pub(crate) async fn upsert<C: ConnectionTrait>(db: &C, entry: &Revocation) -> Result<(), Error> {
    let backend = db.get_database_backend();
    let sql = match backend {
        // A new sequence value on update, so followers see the widened entry.
        DatabaseBackend::Postgres => {
            "INSERT INTO revocations (kind, key, not_before, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, key) DO UPDATE SET \
               not_before = GREATEST(revocations.not_before, EXCLUDED.not_before), \
               expires_at = GREATEST(revocations.expires_at, EXCLUDED.expires_at), \
               created_at = EXCLUDED.created_at, \
               seq = nextval(pg_get_serial_sequence('revocations', 'seq'))"
        }
        // REPLACE deletes the old row and inserts a new one, with a new AUTOINCREMENT `seq`.
        _ => {
            "INSERT OR REPLACE INTO revocations (kind, key, not_before, expires_at, created_at) \
             VALUES ($1, $2, \
               MAX($3, COALESCE((SELECT not_before FROM revocations WHERE kind = $1 AND key = $2), $3)), \
               MAX($4, COALESCE((SELECT expires_at FROM revocations WHERE kind = $1 AND key = $2), $4)), \
               $5)"
        }
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            entry.kind.as_str().into(),
            entry.key.clone().into(),
            entry.not_before.into(),
            entry.expires_at.into(),
            crate::clock::system_now().into(),
        ],
    ))
    .await
    .map_err(db_error)?;
    Ok(())
}
