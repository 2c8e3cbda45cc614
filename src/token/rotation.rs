//! Signing keys over time: kept in the database, rotated here, loaded into the [`KeyRing`].
//!
//! A key moves through `next` (published in the JWKS, not yet signing) → `active` (signing) →
//! `retired` (published until the last token it signed has expired) → `removed`. A new key is
//! published `keys.publish_ahead` before it signs, longer than the time a mesh caches a JWKS
//! (Istio: 20 minutes), so no verifier meets a `kid` it has not fetched. A compromised key is
//! withdrawn at once (`keystone keys revoke KID`): it leaves the ring and its tokens fail.
//!
//! [`KeyManager::refresh`] reloads the ring from the database and takes the lifecycle steps
//! that are due; the server runs it on an interval, and at once when another replica or the
//! command line announces a change on the cluster's bus ([`KeyReloads`]).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{
    ring::{KeyRing, build_key_set, new_key},
    sealing::KeySealer,
};
use crate::{
    clock::SharedClock,
    cluster::{Event, Subscriber},
    config::KeyAlgorithm,
    domain::{AuditRecord, Outcome},
    error::Error,
    store::{KeyTransition, ReplicaLock, Store, StoredKey},
};

/// Keeps the ring in step with the database and takes lifecycle steps.
#[derive(Debug, Clone)]
pub struct KeyManager {
    store: Store,
    ring: KeyRing,
    clock: SharedClock,
    sealer: KeySealer,
    algorithm: KeyAlgorithm,
    publish_ahead: chrono::Duration,
    rotate_every: chrono::Duration,
    /// How long a retired key stays published: the longest token life plus the leeway.
    retire_for: chrono::Duration,
}

impl KeyManager {
    /// A manager over `store`, filling `ring`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        ring: KeyRing,
        clock: SharedClock,
        sealer: KeySealer,
        algorithm: KeyAlgorithm,
        publish_ahead: Duration,
        rotate_every: Duration,
        max_token_life: Duration,
    ) -> Self {
        let to_chrono =
            |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self {
            store,
            sealer,
            ring,
            clock,
            algorithm,
            publish_ahead: to_chrono(publish_ahead),
            rotate_every: to_chrono(rotate_every),
            retire_for: to_chrono(max_token_life),
        }
    }

    /// The ring this manager fills.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Takes the lifecycle steps that are due, then reloads the ring from the database.
    pub async fn refresh(&self) -> Result<(), Error> {
        // Replicas take turns, so that two starting on an empty database (or rotating at the
        // same moment) do not both create a key.
        let lock = self.store.lock_replicas(ReplicaLock::Keys).await?;
        let result = self.refresh_locked().await;
        lock.release().await;
        result
    }

    async fn refresh_locked(&self) -> Result<(), Error> {
        let now = self.clock.now();
        let keys = self.store.live_keys().await?;
        if let Err(error) = self.check_sealer_fits(&keys) {
            // Verify with what is published, sign with nothing, change nothing: a key revoked
            // or retired elsewhere still leaves this ring.
            let public_only: Vec<StoredKey> = keys
                .into_iter()
                .map(|mut key| {
                    key.private_key.clear();
                    key
                })
                .collect();
            self.ring.replace(build_key_set(&public_only)?);
            return Err(error);
        }
        let active = keys.iter().find(|k| k.state == "active");
        let next = keys
            .iter()
            .filter(|k| k.state == "next")
            .min_by_key(|k| k.activates_at);

        let mut changed = false;
        match (active, next) {
            // First start, or the active key was revoked with nothing waiting: a key must sign
            // now. Nothing can have cached a JWKS without it, and there is no token to protect.
            (None, None) => {
                self.create_key("active", now, now).await?;
                changed = true;
            }
            (None, Some(next)) => {
                changed |= self.promote(next, None, now).await?;
            }
            (Some(active), Some(next)) if next.activates_at <= now => {
                changed |= self.promote(next, Some(active), now).await?;
            }
            (Some(active), None) => {
                let since = active.activated_at.unwrap_or(active.created_at);
                if now >= since + self.rotate_every - self.publish_ahead {
                    let activates_at = (since + self.rotate_every).max(now + self.publish_ahead);
                    self.create_key("next", now, activates_at).await?;
                    changed = true;
                }
            }
            (Some(_), Some(_)) => {}
        }
        for retired in keys.iter().filter(|k| k.state == "retired") {
            if retired.remove_after.is_some_and(|at| at <= now) {
                changed |= self
                    .store
                    .transition_keys(
                        &[KeyTransition {
                            kid: retired.kid.clone(),
                            from: "retired",
                            to: "removed",
                            at: now,
                            remove_after: None,
                        }],
                        &[key_event("key.remove", &retired.kid)],
                    )
                    .await?;
            }
        }
        let keys = if changed {
            self.store.live_keys().await?
        } else {
            keys
        };
        let keys = self.open_keys(keys).await?;
        self.ring.replace(build_key_set(&keys)?);
        Ok(())
    }

    /// The replicas' key lock, once it is clear that this process can open the stored keys
    /// (see [`Self::check_sealer_fits`]).
    async fn lock_fitting(&self) -> Result<crate::store::HeldLock, Error> {
        let lock = self.store.lock_replicas(ReplicaLock::Keys).await?;
        let fits = match self.store.live_keys().await {
            Ok(keys) => self.check_sealer_fits(&keys),
            Err(error) => Err(error),
        };
        match fits {
            Ok(()) => Ok(lock),
            Err(error) => {
                lock.release().await;
                Err(error)
            }
        }
    }

    /// Refuses to go on when a stored key is sealed with a key-encryption key this process
    /// does not have: it has another pepper or key-encryption key than the servers, and a key
    /// it made (or a step it took) could leave them with keys they cannot use.
    fn check_sealer_fits(&self, keys: &[StoredKey]) -> Result<(), Error> {
        if keys.iter().any(|key| {
            KeySealer::is_sealed(&key.private_key)
                && self.sealer.open(&key.kid, &key.private_key).is_err()
        }) {
            return Err(Error::FailedPrecondition {
                reason: crate::error::Reason::FailedPrecondition,
                message: "the stored signing keys are sealed with another key-encryption key: \
                          give this process the servers' secrets.pepper and \
                          secrets.key_encryption_key (or the previous one as \
                          secrets.previous_key_encryption_key)"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The private keys opened (see [`KeySealer`]). A key that cannot be opened is logged and
    /// kept for verifying only: it signs nothing. A key stored in the clear is left out
    /// altogether (it neither signs nor verifies): only a writer of the database, never
    /// Keystone, puts one there.
    async fn open_keys(&self, keys: Vec<StoredKey>) -> Result<Vec<StoredKey>, Error> {
        let mut opened_keys = Vec::with_capacity(keys.len());
        for mut key in keys {
            if !key.private_key.is_empty() && !KeySealer::is_sealed(&key.private_key) {
                tracing::error!(
                    kid = %key.kid,
                    "a signing key is stored in the clear: refused, it neither signs nor \
                     verifies (if this installation stored keys in the clear, seal them with \
                     `keystone keys reseal`)"
                );
                continue;
            }
            if !key.private_key.is_empty() {
                match self.sealer.open(&key.kid, &key.private_key) {
                    Ok(opened) => key.private_key = opened.private_key,
                    Err(error) => {
                        tracing::error!(
                            kid = %key.kid,
                            error = error.chain(),
                            "a signing key cannot be opened: it will not sign"
                        );
                        key.private_key.clear();
                    }
                }
            }
            opened_keys.push(key);
        }
        Ok(opened_keys)
    }

    /// Seals every live key under the current key-encryption key (those in the clear or under
    /// an older one; `keystone keys reseal`). Run it once every replica knows the current key.
    /// Returns the kids sealed again.
    pub async fn reseal(&self) -> Result<Vec<String>, Error> {
        let lock = self.lock_fitting().await?;
        let result = self.reseal_locked().await;
        lock.release().await;
        result
    }

    async fn reseal_locked(&self) -> Result<Vec<String>, Error> {
        let mut resealed = Vec::new();
        for key in self.store.live_keys().await? {
            if key.private_key.is_empty() {
                continue;
            }
            let opened = self.sealer.open_clear_too(&key.kid, &key.private_key)?;
            if opened.reseal {
                let sealed = self.sealer.seal(&key.kid, &opened.private_key)?;
                if self
                    .store
                    .reseal_key(&key.kid, &key.private_key, &sealed)
                    .await?
                {
                    resealed.push(key.kid);
                }
            }
        }
        Ok(resealed)
    }

    /// Starts a rotation now: a new key is published at once and signs after
    /// `keys.publish_ahead`. Returns its kid.
    pub async fn rotate(&self) -> Result<String, Error> {
        let lock = self.lock_fitting().await?;
        let now = self.clock.now();
        let result = match self.create_key("next", now, now + self.publish_ahead).await {
            Ok(kid) => self.refresh_locked().await.map(|()| kid),
            Err(error) => Err(error),
        };
        lock.release().await;
        result
    }

    /// Withdraws a key at once. Returns whether it was live. If it was the signing key, a new
    /// one signs immediately.
    pub async fn revoke(&self, kid: &str) -> Result<bool, Error> {
        let lock = self.lock_fitting().await?;
        let now = self.clock.now();
        let result = match self
            .store
            .revoke_key(kid, now, &key_event("key.revoke", kid))
            .await
        {
            Ok(revoked) => self.refresh_locked().await.map(|()| revoked),
            Err(error) => Err(error),
        };
        lock.release().await;
        result
    }

    async fn promote(
        &self,
        next: &StoredKey,
        active: Option<&StoredKey>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let mut steps = vec![KeyTransition {
            kid: next.kid.clone(),
            from: "next",
            to: "active",
            at: now,
            remove_after: None,
        }];
        let mut events = vec![key_event("key.activate", &next.kid)];
        if let Some(active) = active {
            steps.push(KeyTransition {
                kid: active.kid.clone(),
                from: "active",
                to: "retired",
                at: now,
                remove_after: Some(now + self.retire_for),
            });
            events.push(key_event("key.retire", &active.kid));
        }
        self.store.transition_keys(&steps, &events).await
    }

    async fn create_key(
        &self,
        state: &str,
        now: DateTime<Utc>,
        activates_at: DateTime<Utc>,
    ) -> Result<String, Error> {
        let mut key = new_key(self.algorithm, state, now, activates_at)?;
        key.private_key = self.sealer.seal(&key.kid, &key.private_key)?;
        let kid = key.kid.clone();
        self.store
            .insert_key(
                &key,
                &key_event("key.create", &kid).with_detail("state", state),
            )
            .await?;
        tracing::info!(kid = %kid, state, "created a signing key");
        Ok(kid)
    }
}

fn key_event(action: &'static str, kid: &str) -> AuditRecord {
    AuditRecord::new("system", action, kid, Outcome::Success)
}

/// Reloads the keys when the cluster says they changed (or messages may have been lost).
#[derive(Debug, Clone, Default)]
pub struct KeyReloads {
    wanted: Arc<Notify>,
}

impl Subscriber for KeyReloads {
    fn deliver(&self, event: &Event) {
        if matches!(event, Event::Keys) {
            self.wanted.notify_one();
        }
    }

    fn gap(&self) {
        self.wanted.notify_one();
    }
}

impl KeyReloads {
    /// Reloads `keys` each time a reload is wanted, until aborted (at shutdown).
    pub async fn run(self, keys: KeyManager) {
        loop {
            self.wanted.notified().await;
            if let Err(error) = keys.refresh().await {
                tracing::warn!(error = error.chain(), "cannot reload the signing keys");
            }
        }
    }
}
