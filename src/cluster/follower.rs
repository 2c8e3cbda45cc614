//! Following the others: every message on Redis handed to every subscriber, and this
//! replica's heartbeat.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinSet};

use super::{Bus, Event};

/// How often a replica publishes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// What follows the cluster: the revocation set, the key ring, the client cache. Calls must
/// not block: a subscriber with slow work to do (reloading keys) wakes a task of its own.
pub trait Subscriber: Send + Sync + std::fmt::Debug {
    /// A message from a replica (this one included).
    fn deliver(&self, event: &Event);
    /// Messages may have been lost since the last one (a reconnection, a lag): catch up from
    /// the database.
    fn gap(&self);
}

/// Follows Redis until aborted (at shutdown): messages to `subscribers`, and a heartbeat
/// every second, preceded by what could not be published before. Without Redis there is
/// nothing to follow, and this waits forever.
pub async fn follow(bus: Bus, subscribers: Vec<Arc<dyn Subscriber>>) {
    let Some(redis) = bus.redis().cloned() else {
        return std::future::pending().await;
    };
    let mut tasks = JoinSet::new();
    let (events_tx, events) = mpsc::channel::<Option<String>>(1024);
    tasks.spawn({
        let redis = redis.clone();
        async move { redis.follow(events_tx).await }
    });
    tasks.spawn(deliver(events, subscribers));
    tasks.spawn(heartbeat(bus));
    // The loops run until aborted; dropping the set (when this task is aborted) aborts them.
    while tasks.join_next().await.is_some() {}
    std::future::pending::<()>().await;
}

async fn deliver(
    mut events: mpsc::Receiver<Option<String>>,
    subscribers: Vec<Arc<dyn Subscriber>>,
) {
    while let Some(event) = events.recv().await {
        match event {
            // Subscribed anew, or messages were lost.
            None => subscribers.iter().for_each(|subscriber| subscriber.gap()),
            Some(payload) => {
                if let Some(event) = Event::parse(&payload) {
                    for subscriber in &subscribers {
                        subscriber.deliver(&event);
                    }
                }
            }
        }
    }
}

async fn heartbeat(bus: Bus) {
    let Some(redis) = bus.redis().cloned() else {
        return;
    };
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let behind = !bus.publish_pending().await;
        if let Err(error) = redis
            .publish(Event::Heartbeat { behind }.to_payload())
            .await
        {
            tracing::debug!(error = %error, "cannot publish a heartbeat on Redis");
        }
    }
}
