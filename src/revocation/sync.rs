//! Keeping replicas in step. Each replica:
//! - publishes every revocation it makes, and every key change made from the command line, on
//!   Redis (`keystone:events`);
//! - applies what it receives from there (its own messages too: they change nothing);
//! - polls the database every `revocation.poll_interval` for revocations by `seq`, which
//!   catches whatever Redis dropped (a reconnection, a lag, a flush, an outage) and resyncs at
//!   once after a reconnection;
//! - publishes a heartbeat every second: receiving any message proves the bus works, and
//!   together with a successful poll confirms the set fresh.
//!
//! Messages are small JSON objects, so that other tools can read the channel too.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
    /// A replica is alive (and the bus works).
    Heartbeat,
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

/// Follows the database and Redis until dropped (the task is aborted at shutdown).
pub async fn follow(
    revocations: Revocations,
    keys: KeyManager,
    clock: SharedClock,
    poll_every: Duration,
) {
    let (events_tx, mut events) = mpsc::channel::<Option<String>>(1024);
    let redis = revocations.redis().cloned();
    if let Some(redis) = redis.clone() {
        tokio::spawn(async move { redis.follow(events_tx).await });
    } else {
        drop(events_tx);
    }
    let mut poll = tokio::time::interval(poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut database_down = false;
    loop {
        tokio::select! {
            _ = poll.tick() => poll_once(&revocations, &clock, &mut database_down).await,
            _ = heartbeat.tick(), if redis.is_some() => {
                if let Some(redis) = &redis
                    && let Err(error) = redis.publish(Event::Heartbeat.to_payload()).await
                {
                    tracing::debug!(error = %error, "cannot publish a heartbeat on Redis");
                }
            }
            event = events.recv(), if redis.is_some() => match event {
                Some(Some(payload)) => {
                    revocations.confirm();
                    match Event::parse(&payload) {
                        Some(Event::Revocation(event)) => {
                            if let Some(revocation) = event.to_revocation() {
                                revocations.learn(&revocation);
                            }
                        }
                        Some(Event::Keys) => {
                            if let Err(error) = keys.refresh().await {
                                tracing::warn!(
                                    error = format!("{:#}", anyhow::Error::from(error)),
                                    "cannot reload the signing keys"
                                );
                            }
                        }
                        Some(Event::Heartbeat) | None => {}
                    }
                }
                // Reconnected, or messages were lost: catch up from the database now.
                Some(None) => poll_once(&revocations, &clock, &mut database_down).await,
                None => return,
            },
        }
    }
}

/// One poll of the database; says once when it stops and starts answering.
async fn poll_once(revocations: &Revocations, clock: &SharedClock, database_down: &mut bool) {
    match revocations.poll_database(clock.now()).await {
        Ok(news) => {
            if *database_down {
                tracing::info!("the database answers again; revocations followed from it");
                *database_down = false;
            }
            if news > 0 {
                tracing::debug!(news, "revocations learnt from the database");
            }
        }
        Err(error) => {
            if !*database_down {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "cannot poll the database for revocations"
                );
                *database_down = true;
            }
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
