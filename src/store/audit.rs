//! Writing audit events, inside the caller's transaction so an action and its record stand or
//! fall together.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, Set,
};
use uuid::Uuid;

use super::{db_error, entity::audit_event};
use crate::{
    domain::{AuditEvent, AuditRecord},
    error::Error,
};

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

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only by this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only on this target.
    pub target: Option<String>,
    /// Only at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl super::Store {
    /// Audit events newest first, before the event `before` (ids are UUIDv7, so they order by
    /// time of writing), at most `limit`.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<AuditEvent>, Error> {
        let mut query = audit_event::Entity::find().order_by_desc(audit_event::Column::Id);
        if let Some(before) = before {
            query = query.filter(audit_event::Column::Id.lt(before));
        }
        if let Some(actor) = &filter.actor {
            query = query.filter(audit_event::Column::Actor.eq(actor.as_str()));
        }
        if let Some(action) = &filter.action {
            query = query.filter(audit_event::Column::Action.eq(action.as_str()));
        }
        if let Some(target) = &filter.target {
            query = query.filter(audit_event::Column::Target.eq(target.as_str()));
        }
        if let Some(since) = filter.since {
            query = query.filter(audit_event::Column::OccurredAt.gte(since));
        }
        Ok(query
            .limit(limit)
            .all(self.db())
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|row| AuditEvent {
                id: row.id,
                time: row.occurred_at,
                actor: row.actor,
                action: row.action,
                target: row.target,
                outcome: row.outcome,
                peer: row.peer,
                details: serde_json::from_str(&row.details).unwrap_or_default(),
            })
            .collect())
    }
}
