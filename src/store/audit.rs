//! Writing audit events, inside the caller's transaction so an action and its record stand or
//! fall together.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait as _, ConnectionTrait, Set};
use uuid::Uuid;

use super::{db_error, entity::audit_event};
use crate::{domain::AuditRecord, error::Error};

/// Inserts one audit event at `now`.
pub(crate) async fn insert<C: ConnectionTrait>(
    db: &C,
    record: &AuditRecord,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let details = serde_json::to_string(&record.details).map_err(Error::internal)?;
    audit_event::ActiveModel {
        id: Set(Uuid::now_v7()),
        occurred_at: Set(now),
        actor: Set(truncate(&record.actor, 320)),
        action: Set(record.action.to_owned()),
        target: Set(truncate(&record.target, 320)),
        outcome: Set(record.outcome.as_str().to_owned()),
        peer: Set(truncate(&record.peer, 64)),
        details: Set(details),
    }
    .insert(db)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Cuts a value to the column's length, on a character boundary.
fn truncate(value: &str, max_chars: usize) -> String {
    value.chars().take(max_chars).collect()
}
