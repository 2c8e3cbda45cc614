//! Keeping replicas in step. Each replica:
//! - publishes every revocation it makes, and every key change made from the command line, on
//!   Redis (`keystone:events`);
//! - applies what it receives from there (its own messages too: they change nothing);
//! - polls the database every `revocation.poll_interval` for revocations by `seq`, which
//!   catches whatever Redis dropped (a reconnection, a lag, a flush, an outage) and resyncs at
//!   once after a reconnection;
//! - publishes a heartbeat every second. Receiving messages confirms the set fresh while Redis
//!   is in step: since the last successful poll, no reconnection, no lag, and no replica
//!   saying it is behind (it could not publish a revocation). Otherwise only a poll does.
//!   A replica cut off from Redis entirely cannot say it is behind: the others learn its
//!   revocations from the database.
//!
//! Messages are small JSON objects, so that other tools can read the channel too.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinSet,
};

use super::{Revocation, RevocationKind, Revocations};
use crate::{clock::SharedClock, token::keys::KeyManager};

/// How often a replica publishes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// One message on the events channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A revocation was recorded.
    Revocation(RevocationEvent),
    /// The signing keys changed: reload them.
    Keys,
    /// A client changed (its secrets, scopes, audiences or state): forget its cached copy.
    Client {
        /// The client's public id.
        client_id: String,
    },
    /// Any client may have changed (a scope was deleted, or a change was not published):
    /// forget every cached copy.
    AllClients,
    /// A replica is alive (and the bus works). `behind`: it has revocations it could not
    /// publish yet, so Redis alone cannot vouch for anyone's set.
    Heartbeat {
        /// Whether the sender has unpublished revocations.
        #[serde(default)]
        behind: bool,
    },
}

/// A revocation as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// `token`, `session` or `subject`.
    pub kind: String,
    /// The `jti`, `sid` or `sub`.
    pub key: String,
    /// Not before, in milliseconds since the epoch.
    pub not_before_ms: i64,
    /// Expiry, in seconds since the epoch.
    pub expires_at: i64,
}

impl From<&Revocation> for RevocationEvent {
    fn from(revocation: &Revocation) -> Self {
        Self {
            kind: revocation.kind.as_str().to_owned(),
            key: revocation.key.clone(),
            not_before_ms: revocation.not_before.timestamp_millis(),
            expires_at: revocation.expires_at.timestamp(),
        }
    }
}

impl RevocationEvent {
    /// The revocation, if the message is well formed.
    pub fn to_revocation(&self) -> Option<Revocation> {
        Some(Revocation {
            kind: RevocationKind::parse(&self.kind)?,
            key: self.key.clone(),
            not_before: DateTime::<Utc>::from_timestamp_millis(self.not_before_ms)?,
            expires_at: DateTime::<Utc>::from_timestamp(self.expires_at, 0)?,
        })
    }
}

impl Event {
    /// The message's text.
    pub fn to_payload(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a message; `None` for anything else on the channel.
    pub fn parse(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }
}

/// Follows the database and Redis until aborted (at shutdown). Three loops, so that a slow
/// database never holds up what Redis delivers, nor the other way round:
/// - the database poll, every `poll_every` and at once when asked (after a gap on Redis);
/// - Redis events: revocations applied, heartbeats and everything else confirming the set
///   while Redis is in step, key changes handed to the key loop;
/// - the heartbeat (with what could not be published before), every second.
pub async fn follow(
    revocations: Revocations,
    keys: KeyManager,
    clock: SharedClock,
    poll_every: Duration,
    max_staleness: Duration,
) {
    let poll_now = Arc::new(Notify::new());
    let reload_keys = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    tasks.spawn(poll_loop(
        revocations.clone(),
        clock,
        poll_every,
        max_staleness,
        poll_now.clone(),
    ));
    tasks.spawn(keys_loop(keys, reload_keys.clone()));
    if let Some(redis) = revocations.redis().cloned() {
        let (events_tx, events) = mpsc::channel::<Option<String>>(1024);
        tasks.spawn({
            let redis = redis.clone();
            async move { redis.follow(events_tx).await }
        });
        tasks.spawn(events_loop(
            revocations.clone(),
            events,
            poll_now,
            reload_keys,
        ));
        tasks.spawn(heartbeat_loop(revocations));
    }
    // The loops run until aborted; dropping the set (when this task is aborted) aborts them.
    while tasks.join_next().await.is_some() {}
    std::future::pending::<()>().await;
}

async fn poll_loop(
    revocations: Revocations,
    clock: SharedClock,
    every: Duration,
    budget: Duration,
    poll_now: Arc<Notify>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut database_down = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = poll_now.notified() => {}
        }
        let polled = tokio::time::timeout(budget, revocations.poll_database(clock.now())).await;
        match polled {
            Ok(Ok(news)) => {
                if database_down {
                    tracing::info!("the database answers again; revocations followed from it");
                    database_down = false;
                }
                if news > 0 {
                    tracing::debug!(news, "revocations learnt from the database");
                }
            }
            Ok(Err(error)) => {
                if !database_down {
                    tracing::warn!(
                        error = error.chain(),
                        "cannot poll the database for revocations"
                    );
                    database_down = true;
                }
            }
            Err(_) => {
                if !database_down {
                    tracing::warn!("the database did not answer a revocation poll in time");
                    database_down = true;
                }
            }
        }
    }
}

async fn events_loop(
    revocations: Revocations,
    mut events: mpsc::Receiver<Option<String>>,
    poll_now: Arc<Notify>,
    reload_keys: Arc<Notify>,
) {
    while let Some(event) = events.recv().await {
        let Some(payload) = event else {
            // Subscribed anew, or messages were lost: catch up from the database, keys too.
            revocations.redis_gap();
            poll_now.notify_one();
            reload_keys.notify_one();
            continue;
        };
        match Event::parse(&payload) {
            Some(Event::Revocation(event)) => {
                if let Some(revocation) = event.to_revocation() {
                    revocations.learn(&revocation);
                }
                revocations.confirm_by_redis();
            }
            Some(Event::Keys) => {
                reload_keys.notify_one();
                revocations.confirm_by_redis();
            }
            Some(Event::Client { client_id }) => {
                revocations.client_changed_elsewhere(Some(&client_id));
                revocations.confirm_by_redis();
            }
            Some(Event::AllClients) => {
                revocations.client_changed_elsewhere(None);
                revocations.confirm_by_redis();
            }
            Some(Event::Heartbeat { behind: true }) => {
                revocations.redis_gap();
                poll_now.notify_one();
            }
            Some(Event::Heartbeat { behind: false }) => revocations.confirm_by_redis(),
            None => {}
        }
    }
}

async fn heartbeat_loop(revocations: Revocations) {
    let Some(redis) = revocations.redis().cloned() else {
        return;
    };
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let behind = !revocations.publish_pending().await;
        if let Err(error) = redis
            .publish(Event::Heartbeat { behind }.to_payload())
            .await
        {
            tracing::debug!(error = %error, "cannot publish a heartbeat on Redis");
        }
    }
}

async fn keys_loop(keys: KeyManager, reload: Arc<Notify>) {
    loop {
        reload.notified().await;
        if let Err(error) = keys.refresh().await {
            tracing::warn!(error = error.chain(), "cannot reload the signing keys");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_as_written() {
        let revocation = Revocation {
            kind: RevocationKind::Subject,
            key: "user-1".into(),
            not_before: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            expires_at: DateTime::from_timestamp(1_700_000_900, 0).unwrap(),
        };
        let event = Event::Revocation((&revocation).into());
        let payload = event.to_payload();
        assert!(payload.contains("\"type\":\"revocation\""), "{payload}");
        let Some(Event::Revocation(read)) = Event::parse(&payload) else {
            panic!("{payload}");
        };
        assert_eq!(read.to_revocation(), Some(revocation));
        assert_eq!(Event::parse(&Event::Keys.to_payload()), Some(Event::Keys));
        let client = Event::Client {
            client_id: "kc_abc".to_owned(),
        };
        assert_eq!(Event::parse(&client.to_payload()), Some(client));
        assert_eq!(
            Event::parse(&Event::AllClients.to_payload()),
            Some(Event::AllClients)
        );
        assert_eq!(
            Event::parse(r#"{"type":"heartbeat"}"#),
            Some(Event::Heartbeat { behind: false })
        );
        assert_eq!(Event::parse("not json"), None);
        assert_eq!(
            Event::parse(
                r#"{"type":"revocation","kind":"nope","key":"k","not_before_ms":0,"expires_at":0}"#
            )
            .and_then(|e| match e {
                Event::Revocation(r) => r.to_revocation(),
                _ => None,
            }),
            None
        );
    }
}
