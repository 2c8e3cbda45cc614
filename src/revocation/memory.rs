//! The in-memory revocation set: three maps behind read-mostly locks. Lookups take a read lock
//! and do no I/O. Token and session ids are UUIDs in their canonical text form (Keystone makes
//! them so): those are kept as 16 bytes, any other key as a string. An entry of a million
//! revoked tokens then takes about 50 bytes (`cargo bench --bench hot_paths -- revocation`
//! prints the measured figure).

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use chrono::{DateTime, Utc};

use super::{Revocation, RevocationKind, TokenFacts};

/// Ids → expiry (seconds since the epoch).
#[derive(Debug, Default)]
struct Expiries {
    /// Canonical UUIDs, as bytes.
    uuids: HashMap<[u8; 16], i64>,
    /// Anything else.
    others: HashMap<String, i64>,
}

/// The 16 bytes of `key` when it is a UUID written the way Keystone writes them (lowercase,
/// hyphenated), so that the key reads back the same.
fn canonical_uuid(key: &str) -> Option<[u8; 16]> {
    let id = uuid::Uuid::try_parse(key).ok()?;
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    (id.hyphenated().encode_lower(&mut text) == key).then(|| id.into_bytes())
}

impl Expiries {
    fn entry(&mut self, key: &str) -> Option<&mut i64> {
        match canonical_uuid(key) {
            Some(bytes) => self.uuids.get_mut(&bytes),
            None => self.others.get_mut(key),
        }
    }

    /// Adds or widens; returns whether anything changed.
    fn insert(&mut self, key: &str, expires: i64) -> bool {
        if let Some(entry) = self.entry(key) {
            let changed = expires > *entry;
            *entry = (*entry).max(expires);
            return changed;
        }
        match canonical_uuid(key) {
            Some(bytes) => self.uuids.insert(bytes, expires),
            None => self.others.insert(key.to_owned(), expires),
        };
        true
    }

    fn contains(&self, key: &str) -> bool {
        match canonical_uuid(key) {
            Some(bytes) => self.uuids.contains_key(&bytes),
            None => self.others.contains_key(key),
        }
    }

    fn retain_unexpired(&mut self, now: i64) {
        self.uuids.retain(|_, expires| *expires > now);
        self.others.retain(|_, expires| *expires > now);
    }

    fn len(&self) -> usize {
        self.uuids.len() + self.others.len()
    }

    fn iter(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        let uuids = self
            .uuids
            .iter()
            .map(|(bytes, expires)| (uuid::Uuid::from_bytes(*bytes).to_string(), *expires));
        let others = self
            .others
            .iter()
            .map(|(key, expires)| (key.clone(), *expires));
        uuids.chain(others)
    }
}

#[derive(Debug, Default)]
struct Sets {
    /// jti → expiry (seconds).
    tokens: Expiries,
    /// sid → expiry.
    sessions: Expiries,
    /// sub → (not before in milliseconds, expiry).
    subjects: HashMap<String, (i64, i64)>,
}

/// The revocation set of this process.
#[derive(Debug, Clone, Default)]
pub struct MemoryRevocations {
    sets: Arc<RwLock<Sets>>,
}

impl MemoryRevocations {
    /// Adds (or widens) an entry. Returns whether the set changed.
    pub fn insert(&self, revocation: &Revocation) -> bool {
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        let expires = revocation.expires_at.timestamp();
        let widen = |entry: &mut i64, value: i64| {
            let changed = value > *entry;
            *entry = (*entry).max(value);
            changed
        };
        match revocation.kind {
            RevocationKind::Token => sets.tokens.insert(&revocation.key, expires),
            RevocationKind::Session => sets.sessions.insert(&revocation.key, expires),
            RevocationKind::Subject => {
                let not_before = revocation.not_before.timestamp_millis();
                match sets.subjects.get_mut(&revocation.key) {
                    Some((entry_not_before, entry_expires)) => {
                        let moved = widen(entry_not_before, not_before);
                        widen(entry_expires, expires) || moved
                    }
                    None => {
                        sets.subjects
                            .insert(revocation.key.clone(), (not_before, expires));
                        true
                    }
                }
            }
        }
    }

    /// Every entry, as revocations (tokens and sessions carry no `not_before`: the epoch).
    pub fn snapshot(&self) -> Vec<Revocation> {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        let at = |seconds: i64| DateTime::from_timestamp(seconds, 0).unwrap_or_default();
        let plain = |kind: RevocationKind, map: &Expiries| {
            map.iter()
                .map(|(key, expires)| Revocation {
                    kind,
                    key,
                    not_before: DateTime::UNIX_EPOCH,
                    expires_at: at(expires),
                })
                .collect::<Vec<_>>()
        };
        let mut all = plain(RevocationKind::Token, &sets.tokens);
        all.extend(plain(RevocationKind::Session, &sets.sessions));
        all.extend(
            sets.subjects
                .iter()
                .map(|(key, (not_before, expires))| Revocation {
                    kind: RevocationKind::Subject,
                    key: key.clone(),
                    not_before: DateTime::from_timestamp_millis(*not_before).unwrap_or_default(),
                    expires_at: at(*expires),
                }),
        );
        all
    }

    /// Whether the token is covered by an entry.
    pub fn is_revoked(&self, token: TokenFacts<'_>) -> bool {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.contains(token.token_id)
            || token
                .session_id
                .is_some_and(|sid| sets.sessions.contains(sid))
            || std::iter::once(token.subject)
                .chain(token.actors.iter().copied())
                .any(|subject| {
                    sets.subjects
                        .get(subject)
                        .is_some_and(|(not_before, _)| token.issued_at_millis() <= *not_before)
                })
    }

    /// Whether `subject` was revoked at or after `at`.
    pub fn subject_revoked_since(&self, subject: &str, at: DateTime<Utc>) -> bool {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.subjects
            .get(subject)
            .is_some_and(|(not_before, _)| at.timestamp_millis() <= *not_before)
    }

    /// Drops entries that expired before `now`.
    pub fn prune(&self, now: DateTime<Utc>) {
        let now = now.timestamp();
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.retain_unexpired(now);
        sets.sessions.retain_unexpired(now);
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
            actors: &[],
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
        assert_eq!(set.snapshot().len(), 3);
        set.prune(at(1000));
        assert!(set.is_empty());
    }

    #[test]
    fn a_revoked_actor_ends_the_tokens_it_acted_in() {
        let set = MemoryRevocations::default();
        set.insert(&Revocation {
            kind: RevocationKind::Subject,
            key: "orders".into(),
            not_before: at(500),
            expires_at: at(1000),
        });
        let delegated = |iat: i64, actors: &'static [&'static str]| TokenFacts {
            actors,
            ..facts("t1", Some("s1"), "u1", iat)
        };
        assert!(set.is_revoked(delegated(100, &["orders"])));
        assert!(
            set.is_revoked(delegated(100, &["gateway", "orders"])),
            "an earlier hop"
        );
        assert!(!set.is_revoked(delegated(100, &["gateway"])));
        assert!(
            !set.is_revoked(delegated(501, &["orders"])),
            "exchanged after"
        );
        assert!(
            !set.is_revoked(facts("t1", Some("s1"), "u1", 100)),
            "not delegated"
        );
    }

    #[test]
    fn uuid_keys_read_back_as_written_and_others_as_they_are() {
        let set = MemoryRevocations::default();
        let canonical = uuid::Uuid::now_v7().to_string();
        let upper = uuid::Uuid::now_v7().to_string().to_uppercase();
        for key in [canonical.as_str(), upper.as_str(), "opaque"] {
            assert!(set.insert(&Revocation {
                kind: RevocationKind::Token,
                key: key.to_owned(),
                not_before: DateTime::UNIX_EPOCH,
                expires_at: at(1000),
            }));
            assert!(set.is_revoked(facts(key, None, "u", 1)), "{key}");
        }
        assert!(!set.is_revoked(facts(&canonical.to_uppercase(), None, "u", 1)));
        assert!(!set.is_revoked(facts(&uuid::Uuid::now_v7().to_string(), None, "u", 1)));
        let mut keys: Vec<String> = set.snapshot().into_iter().map(|r| r.key).collect();
        keys.sort();
        let mut expected = vec![canonical, upper, "opaque".to_owned()];
        expected.sort();
        assert_eq!(keys, expected);
        assert!(
            !set.insert(&Revocation {
                kind: RevocationKind::Token,
                key: expected[0].clone(),
                not_before: DateTime::UNIX_EPOCH,
                expires_at: at(999),
            }),
            "narrower"
        );
    }

    #[test]
    fn inserting_says_whether_the_set_changed() {
        let set = MemoryRevocations::default();
        let entry = |not_before: i64, expires: i64| Revocation {
            kind: RevocationKind::Subject,
            key: "u1".into(),
            not_before: at(not_before),
            expires_at: at(expires),
        };
        assert!(set.insert(&entry(10, 100)));
        assert!(!set.insert(&entry(10, 100)), "the same again");
        assert!(!set.insert(&entry(5, 50)), "narrower");
        assert!(set.insert(&entry(20, 100)), "a later cut-off");
        assert!(set.insert(&entry(20, 200)), "a later expiry");
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
