//! The key ring: what the hot path reads. An immutable [`KeySet`] behind a lock that is only
//! written when the keys change; the issuer signs with its signing key, the verifier checks
//! with its published keys, and the JWKS shows their public halves. Nothing here touches the
//! database: [`super::rotation::KeyManager`] fills the ring.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use serde::Serialize;

use crate::{config::KeyAlgorithm, error::Error, store::StoredKey};

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
    /// The JOSE header of every token it signs (`alg`, `typ`, `kid`), base64url-encoded once.
    pub(crate) header: String,
    /// The private key, parsed once: parsing an Ed25519 PKCS#8 key derives its public half,
    /// which costs as much as a signature.
    pair: Arc<PrivateKey>,
}

enum PrivateKey {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

impl SigningKey {
    /// `claims` as a compact JWS (RFC 7515 §7.1): header, claims and signature, each
    /// base64url.
    pub(crate) fn compact<T: Serialize>(&self, claims: &T) -> Result<String, Error> {
        let claims = serde_json::to_vec(claims).map_err(Error::internal)?;
        let mut token = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 96);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// Signs `message` (the JWS signing input): the raw signature (for ES256, `r || s`).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        match self.pair.as_ref() {
            PrivateKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            PrivateKey::Es256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| Error::internal(anyhow::anyhow!("signing with ES256 failed"))),
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"[REDACTED]")
            .finish()
    }
}

/// Parses a stored private key and encodes the header its tokens carry.
fn signing_key(key: &StoredKey, algorithm: Algorithm) -> Result<SigningKey, String> {
    let pair = match algorithm {
        Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8(&key.private_key)
            .map(PrivateKey::Ed25519)
            .map_err(|error| format!("the Ed25519 private key cannot be read: {error}"))?,
        Algorithm::ES256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.private_key)
                .map(PrivateKey::Es256)
                .map_err(|error| format!("the P-256 private key cannot be read: {error}"))?
        }
        other => return Err(format!("Keystone does not sign with {other:?}")),
    };
    // Tokens are checked against the stored public key (and the JWKS publishes it): a private
    // key of another pair would sign tokens no one accepts.
    let public = match &pair {
        PrivateKey::Ed25519(pair) => pair.public_key().as_ref(),
        PrivateKey::Es256(pair) => pair.public_key().as_ref(),
    };
    if public != key.public_key.as_slice() {
        return Err("the private key does not match the stored public key".to_owned());
    }
    let mut header = Header::new(algorithm);
    header.typ = Some(super::ACCESS_TOKEN_TYPE.to_owned());
    header.kid = Some(key.kid.clone());
    let header = serde_json::to_vec(&header).map_err(|error| error.to_string())?;
    Ok(SigningKey {
        kid: key.kid.clone(),
        algorithm,
        since: key.activated_at.or(Some(key.created_at)),
        header: URL_SAFE_NO_PAD.encode(header),
        pair: Arc::new(pair),
    })
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
        let now = crate::clock::system_now();
        let ring = Self::default();
        ring.replace(build_key_set(&[new_key(algorithm, "active", now, now)?])?);
        Ok(ring)
    }

    pub(super) fn replace(&self, keys: KeySet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }
}

/// A freshly generated key in `state`, its kid derived from the public key.
pub(super) fn new_key(
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
pub(super) fn build_key_set(keys: &[StoredKey]) -> Result<KeySet, Error> {
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
            match signing_key(key, algorithm) {
                Ok(signing) => set.signing = Some(signing),
                // Nothing is signed until a key that can be read is active.
                Err(error) => {
                    tracing::error!(kid = %key.kid, %error, "the active signing key cannot be read")
                }
            }
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
            let now = crate::clock::system_now();
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

    #[test]
    fn an_eddsa_token_is_byte_for_byte_what_jsonwebtoken_signs() {
        let now = crate::clock::system_now();
        let stored = new_key(KeyAlgorithm::EdDSA, "active", now, now).unwrap();
        let set = build_key_set(std::slice::from_ref(&stored)).unwrap();
        let claims = serde_json::json!({"sub": "alice", "scope": "a:b", "exp": 1});
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(super::super::ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(stored.kid.clone());
        let expected = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&stored.private_key),
        )
        .unwrap();
        assert_eq!(set.signing.unwrap().compact(&claims).unwrap(), expected);
    }

    #[test]
    fn signed_tokens_verify_with_the_published_key() {
        for (algorithm, pinned) in [
            (KeyAlgorithm::EdDSA, Algorithm::EdDSA),
            (KeyAlgorithm::ES256, Algorithm::ES256),
        ] {
            let now = crate::clock::system_now();
            let stored = new_key(algorithm, "active", now, now).unwrap();
            let set = build_key_set(std::slice::from_ref(&stored)).unwrap();
            let claims = serde_json::json!({"sub": "alice"});
            let token = set.signing.as_ref().unwrap().compact(&claims).unwrap();
            let mut validation = jsonwebtoken::Validation::new(pinned);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            let decoded = jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &set.verifying[&stored.kid].decoding,
                &validation,
            )
            .unwrap();
            assert_eq!(decoded.claims, claims);
            assert_eq!(decoded.header.kid.as_deref(), Some(stored.kid.as_str()));
        }
    }

    #[test]
    fn a_private_key_of_another_pair_signs_nothing() {
        for algorithm in [KeyAlgorithm::EdDSA, KeyAlgorithm::ES256] {
            let now = crate::clock::system_now();
            let mut stored = new_key(algorithm, "active", now, now).unwrap();
            stored.private_key = new_key(algorithm, "active", now, now).unwrap().private_key;
            let set = build_key_set(std::slice::from_ref(&stored)).unwrap();
            assert!(set.signing.is_none());
            assert!(set.verifying.contains_key(&stored.kid));
        }
    }
}
