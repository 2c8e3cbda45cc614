//! DPoP proofs used once (RFC 9449 section 11.1): each proof's `jti` is remembered for as long
//! as the proof could be accepted, so the same proof is refused the second time, on any
//! replica: marked in Redis when clustered (`SET NX`), and always in this process. While Redis
//! fails, the mark is this process's alone (as rate limits are), which the README says.

use std::{
    collections::HashMap,
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

/// The proofs used so far; cheap to clone.
#[derive(Debug, Clone)]
pub struct UsedProofs {
    redis: Option<Redis>,
    /// `jkt:jti` to when it may be forgotten.
    local: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    /// How long a proof stays acceptable (its `iat` window).
    horizon: chrono::Duration,
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
    /// before.
    pub async fn claim(&self, proof: &VerifiedProof, now: DateTime<Utc>) -> Result<(), Error> {
        let key = format!("{}:{}", proof.jkt, proof.jti);
        // Remembered until the proof's own window has passed.
        let until = proof.issued_at + self.horizon;
        if !self.claim_locally(&key, until, now)? {
            return Err(replayed());
        }
        if let Some(redis) = &self.redis {
            let ttl = (until - now)
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(1));
            match redis.first_use(&key, ttl).await {
                Ok(true) => {}
                Ok(false) => return Err(replayed()),
                Err(error) => {
                    ::metrics::counter!("keystone_dpop_replay_checks_local_total").increment(1);
                    tracing::debug!(error = %error, "a DPoP proof was marked used in this process only");
                }
            }
        }
        Ok(())
    }

    /// Marks `key` in this process; `false` when it was marked already.
    fn claim_locally(
        &self,
        key: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(expires) = local.get(key)
            && *expires > now
        {
            return Ok(false);
        }
        if local.len() >= MAX_REMEMBERED {
            local.retain(|_, expires| *expires > now);
            if local.len() >= MAX_REMEMBERED {
                return Err(Error::ResourceExhausted {
                    reason: Reason::Overloaded,
                    message: "too many DPoP proofs in flight; retry later".to_owned(),
                    retry_after: Some(std::time::Duration::from_secs(1)),
                });
            }
        }
        local.insert(key.to_owned(), until);
        Ok(true)
    }

    /// Forgets proofs whose window has passed (bounded memory).
    pub fn forget_expired(&self, now: DateTime<Utc>) {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, expires| *expires > now);
    }
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
        let other_key = VerifiedProof {
            jkt: "other".to_owned(),
            ..proof.clone()
        };
        proofs.claim(&other_key, now).await.unwrap();
        let later = now + chrono::Duration::seconds(71);
        proofs.forget_expired(later);
        assert!(proofs.local.lock().unwrap().is_empty());
    }
}
