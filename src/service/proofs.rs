//! DPoP proofs (RFC 9449 section 11.1) and client assertions (RFC 7523 section 3) used once:
//! each is remembered for as long as it could be accepted, so the same one is refused the
//! second time, on any replica: marked in Redis when clustered (`SET NX`), and always in this
//! process. When Redis cannot say whether one is new, it is refused (`UNAVAILABLE`): "used
//! once" is not weakened to "used once per replica".
//!
//! In memory, they are kept by the SHA-256 of their kind and names (a proof's key thumbprint
//! and `jti`, an assertion's client and `jti`: 32 bytes each, whatever the `jti`), in buckets by the second they may be forgotten, so that forgetting
//! drops whole buckets and no call scans the set.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use chrono::{DateTime, Utc};

use crate::{
    cluster::Redis,
    error::{Error, Reason},
    token::dpop::VerifiedProof,
};

/// The most proofs remembered in this process; past it, proofs are refused (`OVERLOADED`)
/// rather than a used one forgotten.
const MAX_REMEMBERED: usize = 1_000_000;

/// How many seconds of expiries share a bucket.
const BUCKET_SECONDS: i64 = 10;

/// The proofs used so far; cheap to clone.
#[derive(Debug, Clone)]
pub struct UsedProofs {
    redis: Option<Redis>,
    local: Arc<Mutex<Buckets>>,
    /// How long a proof stays acceptable (its `iat` window).
    horizon: chrono::Duration,
}

/// Remembered proofs, by the bucket of the time they may be forgotten, oldest first.
#[derive(Debug, Default)]
struct Buckets {
    buckets: VecDeque<(i64, HashSet<[u8; 32]>)>,
    count: usize,
}

impl Buckets {
    /// Drops the buckets whose every proof may be forgotten at `now`.
    fn forget_expired(&mut self, now: DateTime<Utc>) {
        let current = now.timestamp().div_euclid(BUCKET_SECONDS);
        while let Some((bucket, proofs)) = self.buckets.front() {
            if *bucket >= current {
                break;
            }
            self.count -= proofs.len();
            self.buckets.pop_front();
        }
    }

    /// Marks `key`, kept until `until`; `Ok(false)` when it was marked already.
    fn mark(
        &mut self,
        key: [u8; 32],
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.forget_expired(now);
        if self.buckets.iter().any(|(_, proofs)| proofs.contains(&key)) {
            return Ok(false);
        }
        if self.count >= MAX_REMEMBERED {
            return Err(Error::ResourceExhausted {
                reason: Reason::Overloaded,
                message: "too many one-time credentials (DPoP proofs, client assertions) in \
                          flight; retry later"
                    .to_owned(),
                retry_after: Some(std::time::Duration::from_secs(1)),
            });
        }
        // Kept to the end of the bucket of `until`: a little longer, never shorter.
        let bucket = until.timestamp().div_euclid(BUCKET_SECONDS);
        let at = self
            .buckets
            .partition_point(|(existing, _)| *existing < bucket);
        match self.buckets.get_mut(at) {
            Some((existing, proofs)) if *existing == bucket => {
                proofs.insert(key);
            }
            _ => self.buckets.insert(at, (bucket, HashSet::from([key]))),
        }
        self.count += 1;
        Ok(true)
    }
}

impl UsedProofs {
    /// Proofs remembered for `horizon`, shared through `redis` when there is one.
    pub fn new(redis: Option<Redis>, horizon: chrono::Duration) -> Self {
        Self {
            redis,
            local: Arc::default(),
            horizon,
        }
    }

    /// Uses `proof`: fails with `UNAUTHENTICATED` (`TOKEN_BINDING_MISMATCH`) when it was used
    /// before, `UNAVAILABLE` when Redis cannot tell.
    pub async fn claim(&self, proof: &VerifiedProof, now: DateTime<Utc>) -> Result<(), Error> {
        // Remembered until the proof's own window has passed.
        let until = proof.issued_at + self.horizon;
        match self
            .first_use(Kind::DpopProof, &[&proof.jkt, &proof.jti], until, now)
            .await?
        {
            true => Ok(()),
            false => Err(replayed()),
        }
    }

    /// Uses the one-time credential named by `parts` (of `kind`), remembered until `until`:
    /// `Ok(false)` when it was used before, here or (through Redis) on another replica;
    /// `UNAVAILABLE` when Redis cannot tell.
    pub async fn first_use(
        &self,
        kind: Kind,
        parts: &[&str],
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let key = key_of(kind, parts);
        let first = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mark(key, until, now)?;
        if !first {
            return Ok(false);
        }
        if let Some(redis) = &self.redis {
            let ttl = (until - now)
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(1));
            let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
            match redis
                .first_use(&format!("{}:{hex}", kind.prefix()), ttl)
                .await
            {
                Ok(first) => return Ok(first),
                Err(error) => {
                    ::metrics::counter!(kind.unconfirmed_metric()).increment(1);
                    return Err(Error::Unavailable {
                        reason: Reason::Unavailable,
                        what: kind.what(),
                        source: Some(anyhow::Error::new(error)),
                    });
                }
            }
        }
        Ok(true)
    }

    /// Forgets proofs whose window has passed (bounded memory).
    pub fn forget_expired(&self, now: DateTime<Utc>) {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_expired(now);
    }
}

/// What is used once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A DPoP proof, by its key's thumbprint and `jti`.
    DpopProof,
    /// A client assertion (`private_key_jwt`), by its client and `jti`.
    ClientAssertion,
}

impl Kind {
    /// The prefix of its keys on Redis.
    fn prefix(self) -> &'static str {
        match self {
            Kind::DpopProof => "dpop",
            Kind::ClientAssertion => "assertion",
        }
    }

    /// The counter of those refused because Redis could not tell.
    fn unconfirmed_metric(self) -> &'static str {
        match self {
            Kind::DpopProof => "keystone_dpop_proofs_unconfirmed_total",
            Kind::ClientAssertion => "keystone_client_assertions_unconfirmed_total",
        }
    }

    /// What is unavailable when Redis cannot tell.
    fn what(self) -> &'static str {
        match self {
            Kind::DpopProof => "the cluster's record of used DPoP proofs",
            Kind::ClientAssertion => "the cluster's record of used client assertions",
        }
    }
}

/// What a credential is remembered by: the SHA-256 of its parts (a DPoP proof's key
/// thumbprint and `jti`; an assertion's client and `jti`) joined by NULs, an assertion's
/// after its kind. A DPoP proof's is what it was before assertions came, so that replicas of
/// either version agree on a proof during a rolling upgrade.
fn key_of(kind: Kind, parts: &[&str]) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    if kind != Kind::DpopProof {
        context.update(kind.prefix().as_bytes());
        context.update(b"\0");
    }
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            context.update(b"\0");
        }
        context.update(part.as_bytes());
    }
    let mut key = [0_u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

fn replayed() -> Error {
    Error::Unauthenticated {
        reason: Reason::TokenBindingMismatch,
        message: "this DPoP proof was used before: make a new one for each request".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_kept_by_the_key_replicas_before_assertions_use_and_kinds_never_meet() {
        let before = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"thumbprint\0jti-1");
        assert_eq!(
            key_of(Kind::DpopProof, &["thumbprint", "jti-1"]).as_slice(),
            before.as_ref()
        );
        assert_ne!(
            key_of(Kind::ClientAssertion, &["thumbprint", "jti-1"]),
            key_of(Kind::DpopProof, &["thumbprint", "jti-1"])
        );
    }

    #[tokio::test]
    async fn a_proof_is_good_once_and_forgotten_after_its_window() {
        let proofs = UsedProofs::new(None, chrono::Duration::seconds(70));
        let now = crate::clock::system_now();
        let proof = VerifiedProof {
            jkt: "key".to_owned(),
            jti: "one".to_owned(),
            issued_at: now,
        };
        proofs.claim(&proof, now).await.unwrap();
        let again = proofs.claim(&proof, now).await.unwrap_err();
        assert_eq!(again.reason(), Reason::TokenBindingMismatch);
        // Still refused just before its window ends.
        let again = proofs
            .claim(&proof, now + chrono::Duration::seconds(69))
            .await
            .unwrap_err();
        assert_eq!(again.reason(), Reason::TokenBindingMismatch);
        let other_key = VerifiedProof {
            jkt: "other".to_owned(),
            ..proof.clone()
        };
        proofs.claim(&other_key, now).await.unwrap();
        proofs.forget_expired(now + chrono::Duration::seconds(70 + BUCKET_SECONDS + 1));
        let local = proofs.local.lock().unwrap();
        assert_eq!((local.count, local.buckets.len()), (0, 0));
    }
}
