//! The in-memory revocation set: three maps behind read-mostly locks. Lookups take a read lock
//! and do no I/O.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use chrono::{DateTime, Utc};

use super::{Revocation, RevocationKind, TokenFacts};

#[derive(Debug, Default)]
struct Sets {
    /// jti → expiry (seconds).
    tokens: HashMap<String, i64>,
    /// sid → expiry.
    sessions: HashMap<String, i64>,
    /// sub → (not before in milliseconds, expiry).
    subjects: HashMap<String, (i64, i64)>,
}

/// The revocation set of this process.
#[derive(Debug, Clone, Default)]
pub struct MemoryRevocations {
    sets: Arc<RwLock<Sets>>,
}

impl MemoryRevocations {
    /// Adds (or widens) an entry.
    pub fn insert(&self, revocation: &Revocation) {
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        let expires = revocation.expires_at.timestamp();
        match revocation.kind {
            RevocationKind::Token => {
                let entry = sets.tokens.entry(revocation.key.clone()).or_insert(expires);
                *entry = (*entry).max(expires);
            }
            RevocationKind::Session => {
                let entry = sets
                    .sessions
                    .entry(revocation.key.clone())
                    .or_insert(expires);
                *entry = (*entry).max(expires);
            }
            RevocationKind::Subject => {
                let not_before = revocation.not_before.timestamp_millis();
                let entry = sets
                    .subjects
                    .entry(revocation.key.clone())
                    .or_insert((not_before, expires));
                *entry = (entry.0.max(not_before), entry.1.max(expires));
            }
        }
    }

    /// Whether the token is covered by an entry.
    pub fn is_revoked(&self, token: TokenFacts<'_>) -> bool {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.contains_key(token.token_id)
            || token
                .session_id
                .is_some_and(|sid| sets.sessions.contains_key(sid))
            || sets
                .subjects
                .get(token.subject)
                .is_some_and(|(not_before, _)| token.issued_at_millis() <= *not_before)
    }

    /// Drops entries that expired before `now`.
    pub fn prune(&self, now: DateTime<Utc>) {
        let now = now.timestamp();
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.retain(|_, expires| *expires > now);
        sets.sessions.retain(|_, expires| *expires > now);
        sets.subjects.retain(|_, (_, expires)| *expires > now);
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.len() + sets.sessions.len() + sets.subjects.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    fn facts<'a>(jti: &'a str, sid: Option<&'a str>, sub: &'a str, iat: i64) -> TokenFacts<'a> {
        TokenFacts {
            token_id: jti,
            session_id: sid,
            subject: sub,
            issued_at: iat,
        }
    }

    #[test]
    fn each_kind_of_entry_covers_its_tokens() {
        let set = MemoryRevocations::default();
        set.insert(&Revocation {
            kind: RevocationKind::Token,
            key: "t1".into(),
            not_before: at(0),
            expires_at: at(1000),
        });
        set.insert(&Revocation {
            kind: RevocationKind::Session,
            key: "s1".into(),
            not_before: at(0),
            expires_at: at(1000),
        });
        set.insert(&Revocation {
            kind: RevocationKind::Subject,
            key: "u1".into(),
            not_before: at(500),
            expires_at: at(1000),
        });
        assert!(set.is_revoked(facts("t1", None, "u9", 100)));
        assert!(set.is_revoked(facts("t2", Some("s1"), "u9", 100)));
        assert!(set.is_revoked(facts("t2", None, "u1", 500)));
        assert!(
            !set.is_revoked(facts("t2", None, "u1", 501)),
            "issued after the cut-off"
        );
        assert!(!set.is_revoked(facts("t2", Some("s2"), "u9", 100)));
        set.prune(at(1000));
        assert!(set.is_empty());
    }

    #[test]
    fn a_subject_cut_off_is_kept_to_the_millisecond_of_the_jti() {
        let v7 = |millis: u64| {
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                millis / 1000,
                u32::try_from(millis % 1000).unwrap() * 1_000_000,
            ))
            .to_string()
        };
        let set = MemoryRevocations::default();
        set.insert(&Revocation {
            kind: RevocationKind::Subject,
            key: "u1".into(),
            not_before: Utc.timestamp_millis_opt(500_700).unwrap(),
            expires_at: at(1000),
        });
        let before = v7(500_200);
        let after = v7(500_900);
        assert!(set.is_revoked(facts(&before, None, "u1", 500)));
        assert!(!set.is_revoked(facts(&after, None, "u1", 500)));
        // A jti that is no v7 UUID, or whose stamp disagrees with `iat`, counts as issued at
        // the start of its second: refused.
        assert!(set.is_revoked(facts("not-a-uuid", None, "u1", 500)));
        assert!(set.is_revoked(facts(&v7(100_000), None, "u1", 500)));
        assert!(!set.is_revoked(facts("not-a-uuid", None, "u1", 501)));
    }
}
