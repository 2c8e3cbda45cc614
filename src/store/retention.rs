//! Retention: rows that can no longer matter are deleted, in small batches (each its own
//! short transaction, so logins never wait long behind one), by one replica at a time.
//!
//! - `refresh_tokens`: every row of a session that has ended, whether by its absolute
//!   lifetime, by idleness or by revocation: no row of it can ever be used again. While a
//!   session lives, its used tokens stay (a replayed one is how a theft shows).
//! - `revocations`: those past their `expires_at` (every token they covered has expired).
//! - `login_failures`: names whose failures are settled: quiet for longer than the counts are
//!   kept and not locked.
//! - `audit_events`: those older than `retention.audit_events`.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait as _, Statement};

use super::{ReplicaLock, Store, db_error};
use crate::error::Error;

/// The tables retention keeps small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Refresh tokens of ended sessions.
    RefreshTokens,
    /// Expired revocations.
    Revocations,
    /// Settled login failures.
    LoginFailures,
    /// Audit events past their retention.
    AuditEvents,
}

impl Table {
    /// Every table, in the order retention visits them.
    pub const ALL: [Table; 4] = [
        Table::RefreshTokens,
        Table::Revocations,
        Table::LoginFailures,
        Table::AuditEvents,
    ];

    /// The table's name, as the metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Table::RefreshTokens => "refresh_tokens",
            Table::Revocations => "revocations",
            Table::LoginFailures => "login_failures",
            Table::AuditEvents => "audit_events",
        }
    }

    /// One batch: a `DELETE` of at most `$2` rows (sessions, for refresh tokens) that were
    /// due at `$1`: now, or the table's cut-off.
    fn batch_sql(self) -> &'static str {
        match self {
            Table::RefreshTokens => {
                "DELETE FROM refresh_tokens WHERE family_id IN ( \
                   SELECT DISTINCT t.family_id FROM refresh_tokens t \
                   WHERE (t.family_expires_at <= $1 OR t.expires_at <= $1 OR t.revoked_at IS NOT NULL) \
                     AND NOT EXISTS (SELECT 1 FROM refresh_tokens l \
                       WHERE l.family_id = t.family_id AND l.used_at IS NULL \
                         AND l.revoked_at IS NULL AND l.expires_at > $1 \
                         AND l.family_expires_at > $1) \
                   LIMIT $2)"
            }
            Table::Revocations => {
                "DELETE FROM revocations WHERE seq IN ( \
                   SELECT seq FROM revocations WHERE expires_at <= $1 LIMIT $2)"
            }
            // Quiet since the cut-off, and any lock over by then.
            Table::LoginFailures => {
                "DELETE FROM login_failures WHERE name IN ( \
                   SELECT name FROM login_failures WHERE last_failure_at < $1 \
                     AND (locked_until IS NULL OR locked_until < $1) LIMIT $2)"
            }
            Table::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN ( \
                   SELECT id FROM audit_events WHERE occurred_at < $1 LIMIT $2)"
            }
        }
    }
}

/// What a retention pass deletes.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// How long login failures are counted (a quiet name starts again at zero).
    pub login_failures_kept: chrono::Duration,
    /// How long audit events are kept.
    pub audit_events_kept: chrono::Duration,
    /// Rows per batch.
    pub batch_size: u32,
    /// Batches per table and pass, at most (the rest waits for the next pass).
    pub max_batches: u32,
}

impl Store {
    /// One retention pass at `now`, unless another replica is running one: the rows deleted
    /// per table (`None`: another replica holds the turn).
    pub async fn delete_expired(
        &self,
        policy: RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<(Table, u64)>>, Error> {
        let Some(lock) = self.try_lock_replicas(ReplicaLock::Retention).await? else {
            return Ok(None);
        };
        let mut deleted = Vec::with_capacity(Table::ALL.len());
        let mut failure = None;
        for table in Table::ALL {
            match self.delete_expired_in(table, policy, now).await {
                Ok(rows) => deleted.push((table, rows)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        lock.release().await;
        match failure {
            Some(error) => Err(error),
            None => Ok(Some(deleted)),
        }
    }

    async fn delete_expired_in(
        &self,
        table: Table,
        policy: RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<u64, Error> {
        let cutoff = match table {
            Table::LoginFailures => now - policy.login_failures_kept,
            Table::AuditEvents => now - policy.audit_events_kept,
            Table::RefreshTokens | Table::Revocations => now,
        };
        let mut total = 0;
        for _ in 0..policy.max_batches {
            let rows = {
                // On SQLite, a batch takes its turn among the writers like any write.
                let _turn = self.write_turn().await;
                self.db()
                    .execute_raw(Statement::from_sql_and_values(
                        self.db().get_database_backend(),
                        table.batch_sql(),
                        [cutoff.into(), i64::from(policy.batch_size).into()],
                    ))
                    .await
                    .map_err(db_error)?
                    .rows_affected()
            };
            total += rows;
            if rows < u64::from(policy.batch_size) {
                break;
            }
        }
        Ok(total)
    }
}
