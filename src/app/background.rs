//! What runs beside the listeners until shutdown: following the cluster, key upkeep, retention,
//! and the database watch that turns health off while the database does not answer.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{
    clock::SharedClock,
    cluster::{self, Bus, Event, Subscriber},
    config::Settings,
    grpc::Health,
    revocation::{self, Revocations},
    service::{
        auth::AuthService,
        limits::{RateLimits, SETTLE_EVERY},
    },
    store::{RetentionPolicy, Store},
    tls::Tls,
    token::{KeyManager, KeyReloads},
};

/// The background tasks of a running server; aborted at shutdown.
#[derive(Debug)]
pub struct Background {
    /// Aborted as soon as draining begins.
    early: Vec<JoinHandle<()>>,
    /// Following the others: kept until the last call is served, so that tokens are checked
    /// against a fresh set while draining.
    follower: Option<JoinHandle<()>>,
}

/// What the background tasks work on.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The settings (intervals, retention, cluster).
    pub settings: Settings,
    /// The server's clock.
    pub clock: SharedClock,
    /// The database.
    pub store: Store,
    /// The signing keys, refreshed and rotated.
    pub keys: KeyManager,
    /// The revocation set, kept in step.
    pub revocations: Revocations,
    /// The cluster's bus.
    pub bus: Bus,
    /// The auth service (rate-limit state, refused calls).
    pub auth: AuthService,
    /// Health, turned off while the database does not answer.
    pub health: Health,
    /// TLS, whose files are read again on an interval.
    pub tls: Option<Tls>,
}

impl Background {
    /// Starts every task.
    pub fn start(parts: Parts) -> Self {
        let Parts {
            settings,
            clock,
            store,
            keys,
            revocations,
            bus,
            auth,
            health,
            tls,
        } = parts;
        let monitor = tokio::spawn(watch_database(
            store.clone(),
            health,
            settings.database.health_check_interval,
        ));
        // A single node writes every revocation itself; a cluster follows the others.
        let follower = settings.cluster.enabled.then(|| {
            tokio::spawn(follow_cluster(
                &settings,
                bus.clone(),
                revocations.clone(),
                keys.clone(),
                store.clone(),
                clock.clone(),
            ))
        });
        let retention = tokio::spawn(retain(
            store,
            clock.clone(),
            RetentionPolicy {
                login_failures_kept: crate::store::FORGET_FAILURES_AFTER,
                audit_events_kept: chrono::Duration::from_std(settings.retention.audit_events)
                    .unwrap_or(chrono::Duration::MAX),
                batch_size: settings.retention.batch_size,
                max_batches: 100,
            },
            settings.retention.interval,
        ));
        let limits = auth.authenticator().limits().clone();
        let upkeep = tokio::spawn(upkeep(
            keys,
            revocations,
            auth,
            bus,
            clock,
            settings.keys.reload_interval,
        ));
        let mut early = vec![monitor, upkeep, retention];
        if limits.is_shared() {
            early.push(tokio::spawn(settle_limits(limits)));
        }
        if let Some(tls) = tls {
            early.push(tokio::spawn(tls.follow_files()));
        }
        Self { early, follower }
    }

    /// Stops what is not needed while draining.
    pub fn stop_early(&mut self) {
        for task in self.early.drain(..) {
            task.abort();
        }
    }

    /// Stops the rest, once the last call is served.
    pub fn stop(mut self) {
        self.stop_early();
        if let Some(follower) = self.follower.take() {
            follower.abort();
        }
    }
}

/// Follows the other replicas until aborted: the cluster's bus (revocations, key changes,
/// client changes), the database's revocations, and key reloads when announced.
fn follow_cluster(
    settings: &Settings,
    bus: Bus,
    revocations: Revocations,
    keys: KeyManager,
    store: Store,
    clock: SharedClock,
) -> impl Future<Output = ()> + Send + 'static {
    let reloads = KeyReloads::default();
    let subscribers: Vec<Arc<dyn Subscriber>> = vec![
        Arc::new(revocations.clone()),
        Arc::new(reloads.clone()),
        Arc::new(ClientCaches(store)),
    ];
    let database = revocation::follow_database(
        revocations,
        clock,
        settings.revocation.poll_interval,
        settings.revocation.max_staleness,
    );
    async move {
        // Each on a task of its own: one that fails leaves the others following. Dropping the
        // set (when this is aborted, at shutdown) aborts them.
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(cluster::follow(bus, subscribers));
        tasks.spawn(database);
        tasks.spawn(reloads.run(keys));
        while let Some(ended) = tasks.join_next().await {
            if let Err(error) = ended {
                tracing::error!(error = %error, "a task following the cluster failed");
            }
        }
    }
}

/// This process's copies of clients ([`Store::client_for_login`]), forgotten when another
/// replica changes a client, or when messages may have been lost.
#[derive(Debug)]
struct ClientCaches(Store);

impl Subscriber for ClientCaches {
    fn deliver(&self, event: &Event) {
        match event {
            Event::Client { client_id } => self.0.forget_client(client_id),
            // A replica that is behind may have failed to announce a client change.
            Event::AllClients | Event::Heartbeat { behind: true } => self.0.forget_all_clients(),
            Event::Revocation(_) | Event::Keys | Event::Heartbeat { behind: false } => {}
        }
    }

    fn gap(&self) {
        self.0.forget_all_clients();
    }
}

/// Periodic upkeep: key lifecycle steps and reloads every `keys.reload_interval` (so key
/// changes made elsewhere arrive without a restart), revocations the database could not record
/// when asked written, and, every minute, revocations whose tokens have all expired dropped
/// from memory, idle rate-limit state forgotten and refused admin calls counted.
async fn upkeep(
    keys: KeyManager,
    revocations: Revocations,
    auth: AuthService,
    bus: Bus,
    clock: SharedClock,
    every: Duration,
) {
    const PRUNE_EVERY: Duration = Duration::from_secs(60);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_prune = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if let Err(error) = keys.refresh().await {
            tracing::warn!(error = error.chain(), "cannot refresh the signing keys");
        }
        revocations.record_pending(clock.now()).await;
        record_gauges(&keys, &revocations, &bus, &clock);
        crate::metrics::run_upkeep();
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            auth.forget_idle_limits();
            auth.authenticator()
                .used_proofs()
                .forget_expired(clock.now());
            auth.authenticator().write_ended_refusals().await;
            revocations.prune(clock.now());
        }
    }
}

/// Tells Redis, every [`SETTLE_EVERY`], the calls this replica admitted on its own views of
/// the rate limits (see [`crate::service::limits`]).
async fn settle_limits(limits: RateLimits) {
    let mut ticker = tokio::time::interval(SETTLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        limits.settle().await;
    }
}

/// Retention (see [`crate::store::retention`]): every `every`, one replica deletes what has
/// expired, and the rows deleted are counted in `keystone_retention_deleted_total{table}`.
async fn retain(store: Store, clock: SharedClock, policy: RetentionPolicy, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Not at start: the first pass comes one interval after it.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match store.delete_expired(policy, clock.now()).await {
            Ok(Some(deleted)) => {
                for (table, rows) in deleted {
                    ::metrics::counter!("keystone_retention_deleted_total", "table" => table.name())
                        .increment(rows);
                    if rows > 0 {
                        tracing::debug!(table = table.name(), rows, "deleted expired rows");
                    }
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = error.chain(), "cannot delete expired rows"),
        }
    }
}

/// The gauges nothing else moves: revocation set size and staleness, Redis, key age.
#[allow(clippy::cast_precision_loss)]
fn record_gauges(keys: &KeyManager, revocations: &Revocations, bus: &Bus, clock: &SharedClock) {
    ::metrics::gauge!("keystone_revocations").set(revocations.len() as f64);
    ::metrics::gauge!("keystone_revocation_staleness_seconds")
        .set(revocations.staleness().as_secs_f64());
    if let Some(redis) = bus.redis() {
        ::metrics::gauge!("keystone_redis_up").set(if redis.is_up() { 1.0 } else { 0.0 });
    }
    if let Some(since) = keys.ring().snapshot().signing_since() {
        ::metrics::gauge!("keystone_signing_key_age_seconds")
            .set((clock.now() - since).num_seconds().max(0) as f64);
    }
}

/// Pings the database on an interval and turns health NOT_SERVING while it does not answer.
async fn watch_database(store: Store, health: Health, every: Duration) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let answers = match tokio::time::timeout(every, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                if serving {
                    tracing::warn!(error = error.chain(), "the database does not answer");
                }
                false
            }
            Err(_) => {
                if serving {
                    tracing::warn!("the database did not answer in time");
                }
                false
            }
        };
        ::metrics::gauge!("keystone_database_up").set(if answers { 1.0 } else { 0.0 });
        if answers != serving {
            serving = answers;
            health.set(serving).await;
            tracing::info!(serving, "health changed with the database");
        }
    }
}
