//! Signing keys: kept in the database, held in memory, rotated here.
//!
//! A key moves through `next` (published in the JWKS, not yet signing) → `active` (signing) →
//! `retired` (published until the last token it signed has expired) → `removed`. A new key is
//! published `keys.publish_ahead` before it signs, longer than the time a mesh caches a JWKS
//! (Istio: 20 minutes), so no verifier meets a `kid` it has not fetched. A compromised key is
//! withdrawn at once (`keystone keys revoke KID`): it leaves the ring and its tokens fail.
//!
//! [`KeyRing`] is what the hot path reads: an immutable snapshot behind a lock that is only
//! written when the keys change. [`KeyManager::refresh`] reloads it from the database and
//! takes the lifecycle steps that are due; the server runs it on an interval, so every replica
//! picks up changes without a restart.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Serialize;

use super::sealing::KeySealer;
use crate::{
    clock::SharedClock,
    config::KeyAlgorithm,
    domain::{AuditRecord, Outcome},
    error::Error,
    store::{KeyTransition, ReplicaLock, Store, StoredKey},
};

/// A public key as published in the JWKS (RFC 7517; RFC 8037 for Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    /// `OKP` or `EC`.
    pub kty: &'static str,
    /// The key id.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// `EdDSA` or `ES256`.
    pub alg: &'static str,
    /// `Ed25519` or `P-256`.
    pub crv: &'static str,
    /// The public key (Ed25519) or x coordinate (P-256), base64url.
    pub x: String,
    /// The y coordinate (P-256), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// The key that signs new tokens.
#[derive(Clone)]
pub struct SigningKey {
    /// Its id, sent as the `kid` header.
    pub kid: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Since when it signs.
    pub since: Option<DateTime<Utc>>,
    pub(crate) encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("encoding", &"[REDACTED]")
            .finish()
    }
}

/// A key tokens may be verified with.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The algorithm the key is pinned to: a token naming another is refused.
    pub algorithm: Algorithm,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// One consistent view of the keys.
#[derive(Debug, Default)]
pub struct KeySet {
    /// The key that signs, if any.
    pub signing: Option<SigningKey>,
    /// Every published key by kid.
    pub verifying: HashMap<String, VerifyingKey>,
    /// The published keys, oldest first.
    pub jwks: Vec<PublicJwk>,
}

/// The keys in memory, shared by the issuer, the verifier and the JWKS.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    current: Arc<RwLock<Arc<KeySet>>>,
}

impl KeySet {
    /// Since when the signing key signs.
    pub fn signing_since(&self) -> Option<DateTime<Utc>> {
        self.signing.as_ref().and_then(|key| key.since)
    }
}

impl KeyRing {
    /// The current keys.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A ring holding one fresh active key and nothing else, in memory only: for benchmarks
    /// and tests of the token code, never for serving.
    pub fn ephemeral(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        let now = Utc::now();
        let ring = Self::default();
        ring.replace(build_key_set(&[new_key(algorithm, "active", now, now)?])?);
        Ok(ring)
    }

    fn replace(&self, keys: KeySet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }
}

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

/// A freshly generated key in `state`, its kid derived from the public key.
fn new_key(
    algorithm: KeyAlgorithm,
    state: &str,
    now: DateTime<Utc>,
    activates_at: DateTime<Utc>,
) -> Result<StoredKey, Error> {
    let (private_key, public_key) = generate(algorithm)?;
    Ok(StoredKey {
        kid: kid_for(&public_key),
        algorithm: algorithm_name(algorithm).to_owned(),
        state: state.to_owned(),
        private_key,
        public_key,
        created_at: now,
        activates_at,
        activated_at: (state == "active").then_some(now),
        retired_at: None,
        remove_after: None,
        revoked_at: None,
    })
}

fn key_event(action: &'static str, kid: &str) -> AuditRecord {
    AuditRecord::new("system", action, kid, Outcome::Success)
}

fn algorithm_name(algorithm: KeyAlgorithm) -> &'static str {
    match algorithm {
        KeyAlgorithm::EdDSA => "EdDSA",
        KeyAlgorithm::ES256 => "ES256",
    }
}

/// A new key pair: PKCS#8 DER of the private key, and the raw public key.
fn generate(algorithm: KeyAlgorithm) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let rng = SystemRandom::new();
    let failed = |what: &str| Error::internal(anyhow::anyhow!("cannot generate {what} key"));
    match algorithm {
        KeyAlgorithm::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| failed("an Ed25519"))?;
            let pair =
                Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| failed("an Ed25519"))?;
            Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
        }
        KeyAlgorithm::ES256 => {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| failed("a P-256"))?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .map_err(|_| failed("a P-256"))?;
            Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
        }
    }
}

/// A key id derived from the public key (its SHA-256, base64url, cut to 16 characters): the
/// same key always has the same id, and ids reveal nothing.
fn kid_for(public_key: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    URL_SAFE_NO_PAD.encode(digest.as_ref())[..16].to_owned()
}

/// The in-memory view of stored keys. Keys that cannot be read are left out and logged:
/// tokens they signed then fail, which is the safe side.
fn build_key_set(keys: &[StoredKey]) -> Result<KeySet, Error> {
    let mut set = KeySet::default();
    for key in keys {
        let (algorithm, jwk, decoding) = match public_parts(key) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::error!(kid = %key.kid, %error, "a stored signing key cannot be read");
                continue;
            }
        };
        if key.state == "active" && !key.private_key.is_empty() {
            let encoding = match algorithm {
                Algorithm::EdDSA => EncodingKey::from_ed_der(&key.private_key),
                _ => EncodingKey::from_ec_der(&key.private_key),
            };
            set.signing = Some(SigningKey {
                kid: key.kid.clone(),
                algorithm,
                since: key.activated_at.or(Some(key.created_at)),
                encoding,
            });
        }
        set.verifying.insert(
            key.kid.clone(),
            VerifyingKey {
                algorithm,
                decoding,
            },
        );
        set.jwks.push(jwk);
    }
    Ok(set)
}

fn public_parts(key: &StoredKey) -> Result<(Algorithm, PublicJwk, DecodingKey), String> {
    match key.algorithm.as_str() {
        "EdDSA" => {
            if key.public_key.len() != 32 {
                return Err("an Ed25519 public key has 32 bytes".into());
            }
            let x = URL_SAFE_NO_PAD.encode(&key.public_key);
            let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
            let jwk = PublicJwk {
                kty: "OKP",
                kid: key.kid.clone(),
                use_: "sig",
                alg: "EdDSA",
                crv: "Ed25519",
                x,
                y: None,
            };
            Ok((Algorithm::EdDSA, jwk, decoding))
        }
        "ES256" => {
            // An uncompressed point: 0x04, then x and y of 32 bytes each.
            if key.public_key.len() != 65 || key.public_key[0] != 4 {
                return Err("a P-256 public key is an uncompressed point".into());
            }
            let x = URL_SAFE_NO_PAD.encode(&key.public_key[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&key.public_key[33..]);
            let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
            let jwk = PublicJwk {
                kty: "EC",
                kid: key.kid.clone(),
                use_: "sig",
                alg: "ES256",
                crv: "P-256",
                x,
                y: Some(y),
            };
            Ok((Algorithm::ES256, jwk, decoding))
        }
        other => Err(format!("unknown algorithm {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_publish_only_public_parts() {
        for algorithm in [KeyAlgorithm::EdDSA, KeyAlgorithm::ES256] {
            let now = Utc::now();
            let stored = new_key(algorithm, "active", now, now).unwrap();
            let set = build_key_set(&[stored]).unwrap();
            assert!(set.signing.is_some());
            assert_eq!(set.jwks.len(), 1);
            let json = serde_json::to_value(&set.jwks[0]).unwrap();
            for private_member in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(
                    json.get(private_member).is_none(),
                    "{private_member} is published"
                );
            }
            assert_eq!(json["use"], "sig");
            assert_eq!(json["kid"].as_str().unwrap().len(), 16);
        }
    }
}
