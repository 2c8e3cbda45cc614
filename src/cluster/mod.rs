//! The cluster: how replicas tell each other what changed. It is an event bus over Redis
//! (`<cluster.name>:events`), and the Redis connection that rate limits count on. It knows no
//! subscriber: the revocation set, the key ring and the client cache each implement
//! [`Subscriber`], and the app hands them to [`follow`].
//!
//! Each replica:
//! - publishes what it changes ([`Bus::publish`]); what Redis refuses is kept and published
//!   again before each heartbeat, and while any waits, heartbeats say this replica is behind;
//! - hands every message it receives to every subscriber (its own messages too: they change
//!   nothing), and tells them when messages may have been lost ([`Subscriber::gap`]);
//! - publishes a heartbeat every second.
//!
//! Redis is never the system of record (the database is), so losing it loses nothing:
//! subscribers catch up from the database.
//!
//! Layer: uses [`crate::domain`], [`crate::clock`] and fred, nothing else of Keystone's;
//! [`crate::revocation`], [`crate::token`] and [`crate::service`] use it.

mod events;
mod follower;
pub mod redis;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

pub use self::{
    events::{Event, RevocationEvent},
    follower::{Subscriber, follow},
    redis::{GcraAnswer, GcraLimit, Redis, RedisError},
};

/// The most events kept for publishing later (older revocations still reach the others from
/// the database).
const MAX_UNPUBLISHED: usize = 10_000;

/// Publishes this replica's changes to the others, when there is a Redis to publish on.
#[derive(Debug, Clone, Default)]
pub struct Bus {
    redis: Option<Redis>,
    unpublished: Arc<Mutex<Unpublished>>,
}

/// What Redis refused, kept for the next heartbeat.
#[derive(Debug, Default)]
struct Unpublished {
    /// Revocations, oldest first.
    revocations: VecDeque<Event>,
    /// A client change was lost: the others must forget every client.
    clients: bool,
}

impl Bus {
    /// A bus with no one to tell: a single replica, or a cluster without Redis (replicas then
    /// follow the database alone).
    pub fn local() -> Self {
        Self::default()
    }

    /// A bus over Redis.
    pub fn over(redis: Redis) -> Self {
        Self {
            redis: Some(redis),
            unpublished: Arc::default(),
        }
    }

    /// The Redis connection, when there is one (rate limits count on it).
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// Publishes `event` in the background. What fails is kept and published again before the
    /// next heartbeat (revocations and client changes; heartbeats and key changes are not
    /// worth keeping: the next heartbeat or key reload covers them).
    pub fn publish(&self, event: Event) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let unpublished = self.unpublished.clone();
        tokio::spawn(async move {
            if let Err(error) = redis.publish(event.to_payload()).await {
                tracing::debug!(error = %error, "cannot publish on Redis yet");
                keep(&unpublished, event);
            }
        });
    }

    /// Publishes what could not be published before; returns whether nothing is left.
    pub async fn publish_pending(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        if lock(&self.unpublished).clients {
            if redis.publish(Event::AllClients.to_payload()).await.is_err() {
                return false;
            }
            lock(&self.unpublished).clients = false;
        }
        loop {
            let Some(next) = lock(&self.unpublished).revocations.front().cloned() else {
                return true;
            };
            if redis.publish(next.to_payload()).await.is_err() {
                return false;
            }
            let mut unpublished = lock(&self.unpublished);
            if unpublished.revocations.front() == Some(&next) {
                unpublished.revocations.pop_front();
            }
        }
    }

    /// Closes the Redis connection.
    pub async fn quit(&self) {
        if let Some(redis) = &self.redis {
            redis.quit().await;
        }
    }
}

fn keep(unpublished: &Mutex<Unpublished>, event: Event) {
    let mut unpublished = lock(unpublished);
    match event {
        Event::Revocation(_) => {
            if unpublished.revocations.len() >= MAX_UNPUBLISHED {
                unpublished.revocations.pop_front();
            }
            unpublished.revocations.push_back(event);
        }
        Event::Client { .. } | Event::AllClients => unpublished.clients = true,
        Event::Keys | Event::Heartbeat { .. } => {}
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_for_later_is_bounded_and_client_changes_fold_into_one() {
        let unpublished = Mutex::new(Unpublished::default());
        let revocation = |key: &str| {
            Event::Revocation(RevocationEvent {
                kind: "token".to_owned(),
                key: key.to_owned(),
                not_before_ms: 0,
                expires_at: 0,
            })
        };
        for i in 0..=MAX_UNPUBLISHED {
            keep(&unpublished, revocation(&i.to_string()));
        }
        keep(
            &unpublished,
            Event::Client {
                client_id: "kc_a".to_owned(),
            },
        );
        keep(&unpublished, Event::Keys);
        keep(&unpublished, Event::Heartbeat { behind: false });
        let unpublished = lock(&unpublished);
        assert_eq!(unpublished.revocations.len(), MAX_UNPUBLISHED);
        assert_eq!(unpublished.revocations.front(), Some(&revocation("1")));
        assert!(unpublished.clients);
    }
}
