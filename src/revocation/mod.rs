//! The revocation set: token ids, sessions and subjects whose tokens are refused although their
//! signatures are good. The database is the system of record (written first, so a revocation
//! is never acknowledged and then lost); every entry is also held in memory, so
//! `Authenticate` asks only memory. Entries expire with the tokens they cover.
//!
//! Several replicas keep their sets in step: each change is published on the cluster's bus
//! ([`crate::cluster`]), and every replica also follows the database by `seq` ([`follow`]).
//! In a cluster, a set that neither Redis nor the database has confirmed for
//! `revocation.max_staleness` is not trusted: [`Revocations::check_fresh`] fails, and
//! `Authenticate` answers UNAVAILABLE rather than OK.
//!
//! Layer: uses [`crate::store`], [`crate::cluster`], [`crate::domain`] and [`crate::clock`];
//! [`crate::service`] and the adapters use it.

mod follow;
mod memory;

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

pub use self::{follow::follow_database, memory::MemoryRevocations};
use crate::{
    cluster::{Bus, Event},
    domain::{AuditRecord, Revocation, RevocationKind, TokenFacts},
    error::{Error, Reason},
    store::Store,
};

/// How far back each poll of the database looks again, by write time, for rows whose `seq`
/// was taken before one already seen but committed after it.
const LOOKBACK: chrono::Duration = chrono::Duration::seconds(10);

/// The most revocations kept for recording later.
const MAX_UNRECORDED: usize = 10_000;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a replica keeps its set in step with the others.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Whether other replicas share the database: then the set must be confirmed fresh.
    pub clustered: bool,
    /// How long the set may go unconfirmed before it is not trusted.
    pub max_staleness: Duration,
}

/// Records revocations in the database and in memory, answers from memory, and keeps memory
/// in step with the other replicas.
#[derive(Debug, Clone)]
pub struct Revocations {
    store: Store,
    memory: MemoryRevocations,
    changes: broadcast::Sender<Revocation>,
    freshness: Arc<Freshness>,
    /// The newest database `seq` applied.
    watermark: Arc<AtomicI64>,
    /// When the last successful poll started (milliseconds since the epoch): the next one
    /// looks back from there, however long the database was away.
    polled_from_ms: Arc<AtomicI64>,
    bus: Bus,
    /// Woken when the database must be polled at once (Redis may have dropped something).
    poll_now: Arc<tokio::sync::Notify>,
    /// Revocations asked for while the database could not record them, with their audit
    /// events: refused on this replica at once, and written when the database is back.
    unrecorded: Arc<std::sync::Mutex<std::collections::VecDeque<Unrecorded>>>,
}

/// A revocation the database could not record when it was asked for.
#[derive(Debug, Clone)]
struct Unrecorded {
    revocation: Revocation,
    event: AuditRecord,
}

impl Revocations {
    /// Loads the live set from the database.
    pub async fn load(
        store: Store,
        bus: Bus,
        now: DateTime<Utc>,
        settings: SyncSettings,
    ) -> Result<Self, Error> {
        let memory = MemoryRevocations::default();
        let loaded_from = crate::clock::system_now();
        let (live, newest) = store.live_revocations(now).await?;
        for revocation in &live {
            memory.insert(revocation);
        }
        let (changes, _) = broadcast::channel(4096);
        let revocations = Self {
            store,
            memory,
            changes,
            freshness: Arc::new(Freshness::new(settings)),
            watermark: Arc::new(AtomicI64::new(newest)),
            polled_from_ms: Arc::new(AtomicI64::new(loaded_from.timestamp_millis())),
            bus,
            poll_now: Arc::default(),
            unrecorded: Arc::default(),
        };
        revocations.freshness.confirm_database();
        Ok(revocations)
    }

    /// Records a revocation with its audit event: the database first (one transaction), then
    /// memory and the other replicas.
    pub async fn revoke_audited(
        &self,
        revocation: Revocation,
        event: &AuditRecord,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Error> {
        match self
            .store
            .upsert_revocation_audited(&revocation, event, now)
            .await
        {
            Ok(()) => {
                self.applied(&revocation);
                Ok(())
            }
            Err(error @ Error::Unavailable { .. }) => {
                // Not recorded, and the caller is told so; but what was asked is not dropped:
                // refused here at once, and written (then known everywhere) once the database
                // answers again.
                self.learn(&revocation);
                let mut unrecorded = lock(&self.unrecorded);
                if unrecorded.len() >= MAX_UNRECORDED {
                    unrecorded.pop_front();
                }
                unrecorded.push_back(Unrecorded {
                    revocation,
                    event: event.clone(),
                });
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Writes the revocations the database could not record when they were asked for (see
    /// [`Self::revoke_audited`]), until one fails again.
    pub async fn record_pending(&self, now: DateTime<Utc>) {
        loop {
            let Some(next) = lock(&self.unrecorded).front().cloned() else {
                return;
            };
            if let Err(error) = self
                .store
                .upsert_revocation_audited(&next.revocation, &next.event, now)
                .await
            {
                tracing::debug!(error = %error, "cannot record a revocation yet");
                return;
            }
            self.applied(&next.revocation);
            let mut unrecorded = lock(&self.unrecorded);
            if unrecorded
                .front()
                .is_some_and(|front| front.revocation == next.revocation)
            {
                unrecorded.pop_front();
            }
        }
    }

    /// Records a revocation the caller wrote inside its own transaction: memory, watchers and
    /// the other replicas.
    pub fn applied(&self, revocation: &Revocation) {
        self.learn(revocation);
        self.bus.publish(Event::Revocation(revocation.into()));
    }

    /// Takes in a revocation learnt from elsewhere (another replica, the database): memory,
    /// and the watchers when it is news.
    pub fn learn(&self, revocation: &Revocation) {
        if self.memory.insert(revocation) {
            self.forget_revoked_client(revocation);
            // No watcher is no error.
            let _ = self.changes.send(revocation.clone());
        }
    }

    /// A subject revoked (a client disabled, deleted or its tokens revoked) is read again
    /// at its next use: the revocation arrives after the change committed.
    fn forget_revoked_client(&self, revocation: &Revocation) {
        if revocation.kind == RevocationKind::Subject {
            self.store.forget_client(&revocation.key);
        }
    }

    /// Whether a token is revoked. Memory only: no I/O.
    pub fn is_revoked(&self, token: TokenFacts<'_>) -> bool {
        self.memory.is_revoked(token)
    }

    /// Whether `subject` (a user id or client id) was revoked at or after `at`: what was read
    /// of it before then may be out of date.
    pub fn subject_revoked_since(&self, subject: &str, at: DateTime<Utc>) -> bool {
        self.memory.subject_revoked_since(subject, at)
    }

    /// Fails with UNAVAILABLE (`REVOCATION_UNAVAILABLE`) when, in a cluster, neither Redis nor
    /// the database has confirmed the set for longer than `revocation.max_staleness`.
    pub fn check_fresh(&self) -> Result<(), Error> {
        if self.freshness.is_fresh() {
            return Ok(());
        }
        Err(Error::Unavailable {
            reason: Reason::RevocationUnavailable,
            what: "the revocation set (neither Redis nor the database confirms it)",
            source: None,
        })
    }

    /// A message on Redis: it confirms the set, unless Redis may have dropped something since
    /// the database last confirmed it.
    pub fn confirm_by_redis(&self) {
        self.freshness.confirm_redis();
    }

    /// Redis may have dropped messages (a reconnection, a lag, a replica behind): until a poll
    /// of the database succeeds, Redis confirms nothing; the poll comes at once.
    pub fn redis_gap(&self) {
        self.freshness.redis_gap();
        self.poll_now.notify_one();
    }

    /// Applies what changed in the database since the last poll, and confirms the set.
    /// Returns how many entries were news.
    pub async fn poll_database(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let started = crate::clock::system_now();
        let seen = self.watermark.load(Ordering::Acquire);
        let from =
            DateTime::<Utc>::from_timestamp_millis(self.polled_from_ms.load(Ordering::Acquire))
                .unwrap_or(started);
        let (rows, newest) = self
            .store
            .revocations_since(seen, from - LOOKBACK, now)
            .await?;
        let mut news = 0;
        for revocation in &rows {
            if self.memory.insert(revocation) {
                news += 1;
                self.forget_revoked_client(revocation);
                let _ = self.changes.send(revocation.clone());
            }
        }
        self.watermark.fetch_max(newest, Ordering::AcqRel);
        self.polled_from_ms
            .fetch_max(started.timestamp_millis(), Ordering::AcqRel);
        self.freshness.confirm_database();
        Ok(news)
    }

    /// The set as it stands and every change after it, for a watcher. Subscribes before
    /// taking the snapshot, so nothing falls between the two (an entry may come twice).
    pub fn watch(&self) -> (Vec<Revocation>, broadcast::Receiver<Revocation>) {
        let changes = self.changes.subscribe();
        (self.memory.snapshot(), changes)
    }

    /// Drops entries whose tokens have all expired from memory (retention deletes them from
    /// the database: [`crate::store::retention`]).
    pub fn prune(&self, now: DateTime<Utc>) {
        self.memory.prune(now);
    }

    /// How long since the set was last confirmed complete.
    pub fn staleness(&self) -> Duration {
        Duration::from_millis(
            self.freshness
                .now_ms()
                .saturating_sub(self.freshness.confirmed_ms.load(Ordering::Relaxed)),
        )
    }

    /// How many entries are held in memory.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// When the set was last confirmed complete. Only a cluster can fall behind: a single node
/// writes every revocation itself.
#[derive(Debug)]
struct Freshness {
    clustered: bool,
    max_staleness_ms: u64,
    started: Instant,
    confirmed_ms: AtomicU64,
    /// Whether Redis has delivered everything since the database last confirmed the set.
    redis_in_step: std::sync::atomic::AtomicBool,
}

impl Freshness {
    fn new(settings: SyncSettings) -> Self {
        Self {
            clustered: settings.clustered,
            max_staleness_ms: u64::try_from(settings.max_staleness.as_millis()).unwrap_or(u64::MAX),
            started: crate::clock::monotonic(),
            confirmed_ms: AtomicU64::new(0),
            redis_in_step: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn confirm_database(&self) {
        self.redis_in_step.store(true, Ordering::Release);
        self.confirmed_ms
            .fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    fn confirm_redis(&self) {
        if self.redis_in_step.load(Ordering::Acquire) {
            self.confirmed_ms
                .fetch_max(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn redis_gap(&self) {
        self.redis_in_step.store(false, Ordering::Release);
    }

    fn is_fresh(&self) -> bool {
        !self.clustered
            || self
                .now_ms()
                .saturating_sub(self.confirmed_ms.load(Ordering::Relaxed))
                <= self.max_staleness_ms
    }
}
