//! Writing audit events. A change's event is written inside the change's transaction, so an
//! action and its record stand or fall together. Events that go with no change (refused
//! logins, client credentials tokens, refusals of admin calls) are queued and written by one
//! task in batches: whatever queued while the previous batch was being written goes in the
//! next one (group commit), so a busy server writes one statement for hundreds of events. A
//! call waits until its event is committed before it answers: a process killed at any moment
//! loses no event of a call that was answered.
//! What that costs: each such call waits for one batch write (often shared with hundreds of
//! others). While the database refuses writes, a batch is retried for a few seconds, then
//! given up: its events are counted as lost (`keystone_audit_events_lost_total`) and logged,
//! and the calls waiting on them are told (a token is then not issued). A call waits at most
//! [`PUSH_WAIT`] for room in a full queue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait, DatabaseConnection, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, Set,
};
use tokio::sync::{mpsc, oneshot};
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
    row(Uuid::now_v7(), record, now)?
        .insert(db)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The row of an event.
fn row(
    id: Uuid,
    record: &AuditRecord,
    now: DateTime<Utc>,
) -> Result<audit_event::ActiveModel, Error> {
    let details = serde_json::to_string(&record.details).map_err(Error::internal)?;
    Ok(audit_event::ActiveModel {
        id: Set(id),
        occurred_at: Set(now),
        actor: Set(truncate(&record.actor, 320)),
        action: Set(record.action.to_owned()),
        target: Set(truncate(&record.target, 320)),
        outcome: Set(record.outcome.as_str().to_owned()),
        peer: Set(truncate(&record.peer, 64)),
        details: Set(details),
    })
}

/// Events waiting for the writer; senders wait when it is full (nothing is dropped while the
/// database accepts writes).
const QUEUE_CAPACITY: usize = 8192;
/// The most events in one statement (8 parameters each: well under SQLite's and PostgreSQL's
/// limits).
const BATCH: usize = 512;
/// How often a batch is tried before it is given up (and counted as lost), with the pause
/// doubling from [`RETRY_PAUSE`] (3.1 s of pauses, plus each attempt's own wait for a
/// connection).
const ATTEMPTS: u32 = 6;
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The longest a call waits for room in a full queue.
const PUSH_WAIT: Duration = Duration::from_millis(100);

enum Queued {
    Event(Pending),
    Flush(oneshot::Sender<()>),
}

/// An event and the call waiting for it.
struct Pending {
    id: Uuid,
    record: Box<AuditRecord>,
    now: DateTime<Utc>,
    receipt: oneshot::Sender<Written>,
}

/// What became of a queued event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Committed.
    Yes,
    /// The database could not be reached for as long as the writer retried.
    Unreachable,
    /// The database refused it.
    Refused,
}

/// The queue in front of the audit writer; cheap to clone.
#[derive(Clone)]
pub(crate) struct AuditQueue {
    sender: mpsc::Sender<Queued>,
}

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditQueue")
            .field("queued", &(QUEUE_CAPACITY - self.sender.capacity()))
            .finish()
    }
}

impl AuditQueue {
    /// Starts the writer on the current runtime; it ends when the last queue is dropped.
    pub(crate) fn start(db: DatabaseConnection, writes: Option<super::WriteGate>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(write_loop(db, writes, receiver));
        Self { sender }
    }

    /// Queues an event and waits until it is committed (its id, a UUIDv7, is taken now, so
    /// events list in the order they happened). An error means the event is lost: the queue
    /// stayed full, or the database could not take it.
    pub(crate) async fn push(&self, record: AuditRecord, now: DateTime<Utc>) -> Result<(), Error> {
        let action = record.action;
        let (receipt, written) = oneshot::channel();
        let pending = Pending {
            id: Uuid::now_v7(),
            record: Box::new(record),
            now,
            receipt,
        };
        match self
            .sender
            .send_timeout(Queued::Event(pending), PUSH_WAIT)
            .await
        {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                metrics::counter!("keystone_audit_events_lost_total").increment(1);
                return Err(Error::Unavailable {
                    reason: crate::error::Reason::Unavailable,
                    what: "the audit trail",
                    source: Some(anyhow::anyhow!(
                        "the audit queue is full (the database is slow or refuses writes): a `{action}` event is lost"
                    )),
                });
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                return Err(Error::internal(anyhow::anyhow!(
                    "the audit writer has stopped"
                )));
            }
        }
        match written.await {
            Ok(Written::Yes) => Ok(()),
            Ok(Written::Unreachable) => Err(Error::Unavailable {
                reason: crate::error::Reason::Unavailable,
                what: "the audit trail",
                source: Some(anyhow::anyhow!(
                    "the database could not be reached: a `{action}` event is lost"
                )),
            }),
            Ok(Written::Refused) => Err(Error::internal(anyhow::anyhow!(
                "the database refused a `{action}` event"
            ))),
            Err(_) => Err(Error::internal(anyhow::anyhow!(
                "the audit writer stopped before writing a `{action}` event"
            ))),
        }
    }

    /// Waits until every event queued before this call is written (or given up).
    pub(crate) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.sender.send(Queued::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

async fn write_loop(
    db: DatabaseConnection,
    writes: Option<super::WriteGate>,
    mut receiver: mpsc::Receiver<Queued>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushed = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Queued::Event(pending) => match row(pending.id, &pending.record, pending.now) {
                    Ok(row) => batch.push((row, pending.receipt)),
                    Err(error) => {
                        log_unwritten(pending.record.action, &error);
                        metrics::counter!("keystone_audit_events_lost_total").increment(1);
                        let _ = pending.receipt.send(Written::Refused);
                    }
                },
                // Everything queued before the flush is in this batch.
                Queued::Flush(done) => flushed.push(done),
            }
            if batch.len() < BATCH {
                next = receiver.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let (rows, receipts): (Vec<_>, Vec<_>) = std::mem::take(&mut batch).into_iter().unzip();
            let outcomes = write_batch(&db, writes.as_ref(), rows).await;
            for (receipt, outcome) in receipts.into_iter().zip(outcomes) {
                // A call that gave up waiting is gone; its event is written all the same.
                let _ = receipt.send(outcome);
            }
            batch.reserve(BATCH);
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes rows in one statement, retrying while the database cannot be reached or is busy;
/// when the database refuses the batch, writes them one by one so that one bad row does not
/// take the others with it. What became of each row, in order.
async fn write_batch(
    db: &DatabaseConnection,
    writes: Option<&super::WriteGate>,
    rows: Vec<audit_event::ActiveModel>,
) -> Vec<Written> {
    let count = rows.len();
    let mut pause = RETRY_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let turn = super::write_turn(writes).await;
        let written = audit_event::Entity::insert_many(rows.clone())
            .exec(db)
            .await;
        drop(turn);
        let error = match written {
            Ok(_) => {
                metrics::counter!("keystone_audit_events_written_total").increment(count as u64);
                return vec![Written::Yes; count];
            }
            Err(error) => error,
        };
        match classify(&error, attempt > 1) {
            Failure::AlreadyWritten => {
                metrics::counter!("keystone_audit_events_written_total").increment(count as u64);
                return vec![Written::Yes; count];
            }
            Failure::Refused if count > 1 => {
                tracing::warn!(
                    error = db_error(error).chain(),
                    count,
                    "audit events refused as a batch; writing them one by one"
                );
                let mut outcomes = Vec::with_capacity(count);
                for row in rows {
                    outcomes.extend(Box::pin(write_batch(db, writes, vec![row])).await);
                }
                return outcomes;
            }
            Failure::Refused => {
                metrics::counter!("keystone_audit_events_lost_total").increment(count as u64);
                tracing::error!(
                    error = db_error(error).chain(),
                    "an audit event is lost: the database refused it"
                );
                return vec![Written::Refused; count];
            }
            Failure::Transient if attempt == ATTEMPTS => {
                metrics::counter!("keystone_audit_events_lost_total").increment(count as u64);
                tracing::error!(
                    error = db_error(error).chain(),
                    count,
                    "audit events lost: the database could not take them"
                );
                return vec![Written::Unreachable; count];
            }
            Failure::Transient => {
                tracing::warn!(
                    error = db_error(error).chain(),
                    attempt,
                    count,
                    "cannot write audit events yet; retrying"
                );
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    vec![Written::Unreachable; count]
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The database could not be reached, or was busy: worth trying again as it is.
    Transient,
    /// An earlier attempt was committed, but its answer was lost with the connection: the
    /// rows' ids (fresh UUIDv7s, which collide with nothing else) are taken.
    AlreadyWritten,
    /// The database refused what was sent.
    Refused,
}

/// Sorts a failed write: `retried` when an earlier attempt of the same rows may have been
/// committed.
fn classify(error: &sea_orm::DbErr, retried: bool) -> Failure {
    if let Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) = error.sql_err() {
        return if retried {
            Failure::AlreadyWritten
        } else {
            Failure::Refused
        };
    }
    if super::is_transient(error) {
        Failure::Transient
    } else {
        Failure::Refused
    }
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
        // Read your writes: what this process queued is written first.
        self.audit.flush().await;
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
            .all(self.reports_db())
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

/// Says, once, that the event of `action` could not be written, and why.
pub(crate) fn log_unwritten(action: &str, error: &Error) {
    tracing::error!(error = error.chain(), action, "cannot write an audit event");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::*;
    use crate::store::passes;

    #[test]
    fn lost_connections_are_retried_and_refusals_are_not() {
        let io = || {
            DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            ))))
        };
        assert_eq!(classify(&io(), false), Failure::Transient);
        assert_eq!(
            classify(&DbErr::Conn(RuntimeErr::Internal("gone".into())), true),
            Failure::Transient
        );
        assert_eq!(
            classify(
                &DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::PoolTimedOut))),
                false
            ),
            Failure::Transient
        );
        assert_eq!(
            classify(&DbErr::Custom("bad row".into()), false),
            Failure::Refused
        );
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "55P03", "5", "517", "6",
        ] {
            assert!(passes(code), "{code}");
        }
        for code in [
            "22021", "23505", "42501", "42P01", "54000", "19", "2067", "18", "2314",
        ] {
            assert!(!passes(code), "{code}");
        }
    }
}
