//! Keeping the set in step with the other replicas: it subscribes to the cluster's bus
//! (revocations as they are made, and whether Redis is in step), and it polls the database
//! every `revocation.poll_interval` by `seq`, which catches whatever Redis dropped (a
//! reconnection, a lag, a flush, an outage) and catches up at once after a gap.

use std::time::Duration;

use super::Revocations;
use crate::{
    clock::SharedClock,
    cluster::{Event, Subscriber},
};

impl Subscriber for Revocations {
    /// Revocations are applied. Every message confirms the set fresh while Redis is in step
    /// (since the last successful poll: no reconnection, no lag, no replica saying it is
    /// behind); a replica that is behind means a poll at once.
    fn deliver(&self, event: &Event) {
        match event {
            Event::Revocation(event) => {
                if let Some(revocation) = event.to_revocation() {
                    self.learn(&revocation);
                }
                self.confirm_by_redis();
            }
            Event::Heartbeat { behind: true } => self.redis_gap(),
            Event::Heartbeat { behind: false }
            | Event::Keys
            | Event::Client { .. }
            | Event::AllClients => self.confirm_by_redis(),
        }
    }

    fn gap(&self) {
        self.redis_gap();
    }
}

/// Polls the database until aborted (at shutdown): every `every`, and at once after a gap on
/// Redis. A poll that takes longer than `budget` counts as failed.
pub async fn follow_database(
    revocations: Revocations,
    clock: SharedClock,
    every: Duration,
    budget: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut database_down = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = revocations.poll_now.notified() => {}
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
