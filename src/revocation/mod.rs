//! The revocation set: token ids, sessions and subjects whose tokens are refused although their
//! signatures are good. The database is the system of record (written first, so a revocation
//! is never acknowledged and then lost); every entry is also held in memory, so
//! `Authenticate` asks only memory. Entries expire with the tokens they cover.
//!
//! Single node for now: this process's memory is the only copy in use. Sharing the set
//! between replicas (Redis) plugs in here.

mod memory;

use chrono::{DateTime, Utc};

pub use self::memory::MemoryRevocations;
use crate::{error::Error, store::Store};

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

/// Records revocations in the database and in memory, and answers from memory.
#[derive(Debug, Clone)]
pub struct Revocations {
    store: Store,
    memory: MemoryRevocations,
}

impl Revocations {
    /// Loads the live set from the database.
    pub async fn load(store: Store, now: DateTime<Utc>) -> Result<Self, Error> {
        let memory = MemoryRevocations::default();
        for revocation in store.live_revocations(now).await? {
            memory.insert(&revocation);
        }
        Ok(Self { store, memory })
    }

    /// Records a revocation: the database first, then memory.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), Error> {
        self.store.upsert_revocation(&revocation).await?;
        self.memory.insert(&revocation);
        Ok(())
    }

    /// Records a revocation written by the caller inside its own transaction (memory only).
    pub fn applied(&self, revocation: &Revocation) {
        self.memory.insert(revocation);
    }

    /// Whether a token is revoked. Memory only: no I/O.
    pub fn is_revoked(&self, token: TokenFacts<'_>) -> bool {
        self.memory.is_revoked(token)
    }

    /// Drops entries whose tokens have all expired, in memory and in the database.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        self.memory.prune(now);
        self.store.delete_expired_revocations(now).await
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
