//! Revocations as facts: what one covers, and the facts of a token it is decided on. The
//! revocation set that holds them lives in [`crate::revocation`]; the rows in
//! [`crate::store`]; the messages between replicas in [`crate::cluster`].

use std::time::Duration;

use chrono::{DateTime, Utc};

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

    /// Ends a session (a refresh family) and every access token carrying its `sid`: once
    /// ended, a session mints no token, so it lasts as long as a token issued now can.
    pub fn of_session(session: uuid::Uuid, now: DateTime<Utc>, token_lifetime: Duration) -> Self {
        Self {
            kind: RevocationKind::Session,
            key: session.to_string(),
            ..Self::of_subject("", now, token_lifetime)
        }
    }
}

/// A session id as a caller gives it: the UUID of a refresh family (`sid`).
pub fn parse_session_id(value: &str) -> Result<uuid::Uuid, crate::error::Error> {
    if value.is_empty() {
        return Err(crate::error::Error::invalid_argument(
            "session_id",
            "name the session by id",
        ));
    }
    uuid::Uuid::parse_str(value).map_err(|_| {
        crate::error::Error::invalid_argument("session_id", "is not a session id (a UUID)")
    })
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
    /// The subjects and clients acting for `sub` in a delegated token (`act`): a revocation of
    /// any of them as a subject ends the token too.
    pub actors: &'a [&'a str],
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
