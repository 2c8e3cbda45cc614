//! The revocation set: token ids, sessions and subjects whose tokens are refused although their
//! signatures are good. The database is the system of record (written first, so a revocation
//! is never acknowledged and then lost); every entry is also held in memory, so
//! `Authenticate` asks only memory. Entries expire with the tokens they cover.
//!
//! Several replicas keep their sets in step (see [`sync`]): each change is published on Redis
//! and every replica also follows the database by `seq`. In a cluster, a set that neither
//! Redis nor the database has confirmed for `revocation.max_staleness` is not trusted:
//! [`Revocations::check_fresh`] fails, and `Authenticate` answers UNAVAILABLE rather than OK.

mod memory;
pub mod redis;
pub mod sync;

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

pub use self::memory::MemoryRevocations;
use self::{redis::Redis, sync::Event};
use crate::{
    error::{Error, Reason},
    store::Store,
};

/// How far back each poll of the database looks again, by write time, for rows whose `seq`
/// was taken before one already seen but committed after it.
const LOOKBACK: chrono::Duration = chrono::Duration::seconds(10);

/// The most revocations kept for publishing later (older ones still reach the others from the
/// database).
const MAX_UNPUBLISHED: usize = 10_000;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// One token, by `jti`.
    Token,
    /// Every token of a session, by `sid`.
    Session,
    /// Every token of a user or client (by `sub`) issued before `not_before`.
    Subject,
}

impl RevocationKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "token",
            RevocationKind::Session => "session",
            RevocationKind::Subject => "subject",
        }
    }

    /// From the stored form.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "token" => Some(RevocationKind::Token),
            "session" => Some(RevocationKind::Session),
            "subject" => Some(RevocationKind::Subject),
            _ => None,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What it covers.
    pub kind: RevocationKind,
    /// The `jti`, `sid` or `sub`.
    pub key: String,
    /// For subjects: tokens issued before this are refused.
    pub not_before: DateTime<Utc>,
    /// When every token it covers has expired; the entry can go then.
    pub expires_at: DateTime<Utc>,
}

impl Revocation {
    /// Every token of `subject` (a user id or client id) issued up to `now`, kept for
    /// `token_lifetime` (the longest a token issued now can be accepted).
    pub fn of_subject(subject: &str, now: DateTime<Utc>, token_lifetime: Duration) -> Self {
        Self {
            kind: RevocationKind::Subject,
            key: subject.to_owned(),
            not_before: now,
            expires_at: now
                + chrono::Duration::from_std(token_lifetime).unwrap_or(chrono::Duration::days(1)),
        }
    }
}

/// The facts of a token that revocation is decided on.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    /// `jti`.
    pub token_id: &'a str,
    /// `sid`, for user tokens.
    pub session_id: Option<&'a str>,
    /// `sub`.
    pub subject: &'a str,
    /// `iat`, seconds.
    pub issued_at: i64,
}

impl TokenFacts<'_> {
    /// When the token was issued, to the millisecond: Keystone's `jti` is a UUIDv7 stamped
    /// with the issuing instant (and signed with the rest), which `iat` rounds down to the
    /// second. A subject revoked at 12:00:00.700 then rejects a token of 12:00:00.200 but
    /// accepts the one issued right after, at 12:00:00.900. A `jti` without a usable stamp
    /// counts as issued at the start of its `iat` second (refused rather than let through).
    pub fn issued_at_millis(&self) -> i64 {
        let second_start = self.issued_at.saturating_mul(1000);
        let second_end = second_start.saturating_add(999);
        uuid::Uuid::parse_str(self.token_id)
            .ok()
            .filter(|id| id.get_version_num() == 7)
            .and_then(|id| id.get_timestamp())
            .map(|stamp| {
                let (seconds, nanos) = stamp.to_unix();
                i64::try_from(seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000)
                    .saturating_add(i64::from(nanos / 1_000_000))
            })
            .filter(|millis| (second_start..=second_end).contains(millis))
            .unwrap_or(second_start)
    }
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
    redis: Option<Redis>,
    /// Revocations this replica could not publish yet; retried before each heartbeat, and
    /// while any wait, heartbeats say this replica is behind.
    unpublished: Arc<std::sync::Mutex<std::collections::VecDeque<Revocation>>>,
    /// A client change could not be published: the others must forget every client.
    clients_unpublished: Arc<std::sync::atomic::AtomicBool>,
    /// Revocations asked for while the database could not record them, with their audit
    /// events: refused on this replica at once, and written when the database is back.
    unrecorded: Arc<std::sync::Mutex<std::collections::VecDeque<Unrecorded>>>,
}

/// A revocation the database could not record when it was asked for.
#[derive(Debug, Clone)]
struct Unrecorded {
    revocation: Revocation,
    event: crate::domain::AuditRecord,
}

impl Revocations {
    /// Loads the live set from the database.
    pub async fn load(
        store: Store,
        now: DateTime<Utc>,
        settings: SyncSettings,
    ) -> Result<Self, Error> {
        let memory = MemoryRevocations::default();
        let loaded_from = Utc::now();
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
            redis: None,
            unpublished: Arc::default(),
            clients_unpublished: Arc::default(),
            unrecorded: Arc::default(),
        };
        revocations.freshness.confirm_database();
        Ok(revocations)
    }

    /// Publishes every change this replica makes on Redis, for the others.
    pub fn with_redis(mut self, redis: Redis) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Records a revocation with its audit event: the database first (one transaction), then
    /// memory and the other replicas.
    pub async fn revoke_audited(
        &self,
        revocation: Revocation,
        event: &crate::domain::AuditRecord,
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
                if unrecorded.len() >= MAX_UNPUBLISHED {
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
        if let Some(redis) = &self.redis {
            let redis = redis.clone();
            let unpublished = self.unpublished.clone();
            let revocation = revocation.clone();
            tokio::spawn(async move {
                let payload = Event::Revocation((&revocation).into()).to_payload();
                if let Err(error) = redis.publish(payload).await {
                    // The others learn it from the database within a poll; until it is
                    // published, this replica's heartbeats say it is behind.
                    tracing::debug!(error = %error, "cannot publish a revocation on Redis yet");
                    let mut unpublished = lock(&unpublished);
                    if unpublished.len() >= MAX_UNPUBLISHED {
                        unpublished.pop_front();
                    }
                    unpublished.push_back(revocation);
                }
            });
        }
    }

    /// Tells the other replicas that a client changed (`None`: any client may have), so
    /// that they forget their copy (see [`crate::store::Store::client_for_login`]). When it
    /// cannot be published, this replica says it is `behind` in its heartbeats (the others
    /// then forget every copy) until a "forget every client" message gets through; without
    /// Redis at all, copies age out within `clients.cache_ttl`. A disabled or deleted client
    /// is forgotten through the revocation set in any case.
    pub fn announce_client_change(&self, client_id: Option<&str>) {
        if let Some(redis) = &self.redis {
            let redis = redis.clone();
            let unpublished = self.clients_unpublished.clone();
            let payload = match client_id {
                Some(client_id) => Event::Client {
                    client_id: client_id.to_owned(),
                },
                None => Event::AllClients,
            }
            .to_payload();
            tokio::spawn(async move {
                if let Err(error) = redis.publish(payload).await {
                    tracing::debug!(error = %error, "cannot publish a client change on Redis yet");
                    unpublished.store(true, Ordering::Release);
                }
            });
        }
    }

    /// Another replica changed a client (`None`: any client): forget this process's copies.
    pub fn client_changed_elsewhere(&self, client_id: Option<&str>) {
        match client_id {
            Some(client_id) => self.store.forget_client(client_id),
            None => self.store.forget_all_clients(),
        }
    }

    /// Publishes what could not be published before; returns whether none is left.
    pub async fn publish_pending(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        if self.clients_unpublished.load(Ordering::Acquire) {
            if redis.publish(Event::AllClients.to_payload()).await.is_err() {
                return false;
            }
            self.clients_unpublished.store(false, Ordering::Release);
        }
        loop {
            let Some(next) = lock(&self.unpublished).front().cloned() else {
                return true;
            };
            if redis
                .publish(Event::Revocation((&next).into()).to_payload())
                .await
                .is_err()
            {
                return false;
            }
            let mut unpublished = lock(&self.unpublished);
            if unpublished.front() == Some(&next) {
                unpublished.pop_front();
            }
        }
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
    /// of the database succeeds, Redis confirms nothing.
    pub fn redis_gap(&self) {
        self.freshness.redis_gap();
        // Client changes may have been among what was dropped.
        self.store.forget_all_clients();
    }

    /// Applies what changed in the database since the last poll, and confirms the set.
    /// Returns how many entries were news.
    pub async fn poll_database(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let started = Utc::now();
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

    /// The Redis connection, when there is one.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
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
            started: Instant::now(),
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
