//! Private signing keys are sealed before they reach the database (AES-256-GCM, the key id as
//! associated data) with a key-encryption key that never does: `secrets.key_encryption_key`
//! (32 random bytes, base64), or, without one, a key derived from the pepper. A sealed key
//! names the key-encryption key that sealed it (a fingerprint), so keys sealed under
//! `secrets.previous_key_encryption_key`, or under the pepper's key before an explicit one was
//! set, are still read. New keys are sealed under the current key; existing ones are never
//! sealed again behind the operator's back (a replica that does not know the new key would
//! lose them): `keystone keys reseal` does it, once every replica knows the new key.

use crate::{
    config::SecretSettings,
    error::Error,
    secrets::{KeyEncryptionKey, Pepper},
};
use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
    rand::{SecureRandom as _, SystemRandom},
};

/// What a sealed key starts with (PKCS#8 DER starts with 0x30, so the clear form differs).
const MAGIC: &[u8; 4] = b"KSE1";
const FINGERPRINT_LEN: usize = 8;

/// One key-encryption key and its fingerprint.
struct Kek {
    fingerprint: [u8; FINGERPRINT_LEN],
    key: LessSafeKey,
}

impl Kek {
    fn new(kek: &KeyEncryptionKey) -> Result<Self, Error> {
        let bytes = kek.bytes();
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::internal(anyhow::anyhow!("cannot use the key-encryption key")))?;
        let digest = digest::digest(
            &digest::SHA256,
            &[b"keystone kek fingerprint v1".as_slice(), bytes].concat(),
        );
        let mut fingerprint = [0_u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&digest.as_ref()[..FINGERPRINT_LEN]);
        Ok(Self {
            fingerprint,
            key: LessSafeKey::new(key),
        })
    }
}

/// Seals and opens private signing keys; cheap to clone.
#[derive(Clone)]
pub struct KeySealer {
    keks: std::sync::Arc<Vec<Kek>>,
}

impl std::fmt::Debug for KeySealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySealer([REDACTED])")
    }
}

/// A stored private key, opened.
pub struct Opened {
    /// PKCS#8 DER.
    pub private_key: Vec<u8>,
    /// Stored in the clear or under another key-encryption key than the current one.
    pub reseal: bool,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("private_key", &"[REDACTED]")
            .field("reseal", &self.reseal)
            .finish()
    }
}

impl KeySealer {
    /// The sealer of the settings: the explicit key-encryption key (and the previous one),
    /// else the pepper's; the pepper's is always known, so keys sealed before an explicit key
    /// was set stay readable.
    pub fn from_settings(settings: &SecretSettings, pepper: &Pepper) -> Result<Self, Error> {
        let by_pepper = Kek::new(&pepper.key_encryption_key())?;
        // The first is the current one: the explicit key, else the pepper's (a previous key
        // alone never becomes current).
        let mut keks = match &settings.key_encryption_key {
            Some(kek) => vec![Kek::new(kek)?, by_pepper],
            None => vec![by_pepper],
        };
        if let Some(kek) = &settings.previous_key_encryption_key {
            keks.push(Kek::new(kek)?);
        }
        Ok(Self {
            keks: std::sync::Arc::new(keks),
        })
    }

    fn current(&self) -> Result<&Kek, Error> {
        self.keks
            .first()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("no key-encryption key")))
    }

    /// The stored form of `private_key` (PKCS#8 DER) of the key `kid`.
    pub fn seal(&self, kid: &str, private_key: &[u8]) -> Result<Vec<u8>, Error> {
        let kek = self.current()?;
        let mut nonce = [0_u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::internal(anyhow::anyhow!("no randomness for a nonce")))?;
        let mut sealed = private_key.to_vec();
        kek.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| Error::internal(anyhow::anyhow!("cannot seal a signing key")))?;
        Ok([MAGIC.as_slice(), &kek.fingerprint, &nonce, &sealed].concat())
    }

    /// Whether a stored private key is sealed (rather than in the clear, or removed).
    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(MAGIC)
    }

    /// The private key of the stored form, and whether it should be sealed again. A key in
    /// the clear is refused: whoever can write the database could otherwise make Keystone
    /// sign, and accept, with a key of their own. (`keystone keys reseal` seals keys of an
    /// installation that stored them in the clear: [`Self::open_clear_too`].)
    pub fn open(&self, kid: &str, stored: &[u8]) -> Result<Opened, Error> {
        if !Self::is_sealed(stored) {
            return Err(Error::internal(anyhow::anyhow!(
                "the private key of `{kid}` is stored in the clear: refused (if this \
                 installation stored keys in the clear, seal them with `keystone keys reseal`)"
            )));
        }
        self.open_clear_too(kid, stored)
    }

    /// As [`Self::open`], but a key in the clear is taken as it is (and is to be sealed):
    /// for the operator's `keystone keys reseal` only.
    pub fn open_clear_too(&self, kid: &str, stored: &[u8]) -> Result<Opened, Error> {
        let Some(rest) = stored.strip_prefix(MAGIC.as_slice()) else {
            return Ok(Opened {
                private_key: stored.to_vec(),
                reseal: !stored.is_empty(),
            });
        };
        let unreadable = |why: &str| {
            Error::internal(anyhow::anyhow!(
                "the private key of `{kid}` cannot be opened: {why}"
            ))
        };
        if rest.len() < FINGERPRINT_LEN + NONCE_LEN {
            return Err(unreadable("it is cut short"));
        }
        let (fingerprint, rest) = rest.split_at(FINGERPRINT_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let Some(position) = self
            .keks
            .iter()
            .position(|kek| kek.fingerprint.as_slice() == fingerprint)
        else {
            return Err(unreadable(
                "it was sealed with a key-encryption key this server does not have \
                 (set it as secrets.previous_key_encryption_key)",
            ));
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unreadable("bad nonce"))?;
        let mut buffer = sealed.to_vec();
        let opened = self.keks[position]
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buffer)
            .map_err(|_| unreadable("it does not authenticate"))?;
        Ok(Opened {
            private_key: opened.to_vec(),
            reseal: position != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn settings(current: Option<&str>, previous: Option<&str>) -> SecretSettings {
        SecretSettings {
            key_encryption_key: current.map(|k| KeyEncryptionKey::decode(k).unwrap()),
            previous_key_encryption_key: previous.map(|k| KeyEncryptionKey::decode(k).unwrap()),
            ..SecretSettings::default()
        }
    }

    fn pepper() -> Pepper {
        Pepper::from_secret(&SecretString::from("p".repeat(40)))
    }

    const A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn a_sealed_key_opens_only_for_its_kid_and_intact() {
        let sealer = KeySealer::from_settings(&settings(Some(A), None), &pepper()).unwrap();
        let secret = b"\x30\x2e private key bytes";
        let sealed = sealer.seal("kid-1", secret).unwrap();
        assert!(sealed.starts_with(MAGIC));
        assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        let opened = sealer.open("kid-1", &sealed).unwrap();
        assert_eq!(opened.private_key, secret);
        assert!(!opened.reseal);
        assert!(sealer.open("kid-2", &sealed).is_err(), "bound to its kid");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(sealer.open("kid-1", &tampered).is_err());
        assert!(sealer.open("kid-1", &sealed[..10]).is_err());
    }

    #[test]
    fn keys_in_the_clear_are_refused_but_for_resealing() {
        let der = b"\x30\x2e clear";
        let sealer = KeySealer::from_settings(&settings(None, None), &pepper()).unwrap();
        assert!(sealer.open("k", der).is_err());
        let clear = sealer.open_clear_too("k", der).unwrap();
        assert_eq!(clear.private_key, der);
        assert!(clear.reseal);
    }

    #[test]
    fn keys_under_an_older_kek_are_read_and_marked_for_resealing() {
        let der = b"\x30\x2e clear";
        let by_pepper = KeySealer::from_settings(&settings(None, None), &pepper()).unwrap();
        let by_a = KeySealer::from_settings(&settings(Some(A), None), &pepper()).unwrap();
        let by_b_after_a =
            KeySealer::from_settings(&settings(Some(B), Some(A)), &pepper()).unwrap();
        let by_b = KeySealer::from_settings(&settings(Some(B), None), &pepper()).unwrap();

        // Sealed under the pepper's key, then an explicit key set: still read.
        let opened = by_a.open("k", &by_pepper.seal("k", der).unwrap()).unwrap();
        assert!(opened.reseal);
        // Rotated from A to B, A given as previous: read and resealed.
        let sealed_a = by_a.seal("k", der).unwrap();
        let opened = by_b_after_a.open("k", &sealed_a).unwrap();
        assert_eq!(opened.private_key, der);
        assert!(opened.reseal);
        // Without A, a clear refusal.
        let error = by_b.open("k", &sealed_a).unwrap_err().to_string();
        assert!(!error.contains(A));
    }

    #[test]
    fn a_previous_key_alone_is_only_read_never_used_to_seal() {
        let der = b"\x30\x2e clear";
        let by_pepper = KeySealer::from_settings(&settings(None, None), &pepper()).unwrap();
        let previous_only = KeySealer::from_settings(&settings(None, Some(A)), &pepper()).unwrap();
        let by_a = KeySealer::from_settings(&settings(Some(A), None), &pepper()).unwrap();
        let sealed = previous_only.seal("k", der).unwrap();
        assert!(
            !by_pepper.open("k", &sealed).unwrap().reseal,
            "sealed under the pepper's"
        );
        assert!(
            previous_only
                .open("k", &by_a.seal("k", der).unwrap())
                .unwrap()
                .reseal
        );
    }
}
