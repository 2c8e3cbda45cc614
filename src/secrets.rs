//! Server-side secrets and what is derived from them: the pepper keys client-secret hashes
//! (HMAC-SHA-256, so a leaked database yields nothing usable, yet a check takes microseconds),
//! the derivation of refresh-token successors, page tokens, and the default key-encryption key
//! of signing keys. The pepper is never stored in the database.
//!
//! Layer: uses [`crate::error`] only; the settings hold its [`KeyEncryptionKey`].

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use aws_lc_rs::{digest, hmac};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret as _, SecretString};

use crate::error::Error;

/// The prefix of refresh tokens, so secret scanners and humans can tell them apart.
pub const REFRESH_TOKEN_PREFIX: &str = "ksr_";
/// The prefix of client secrets.
pub const CLIENT_SECRET_PREFIX: &str = "kss_";

/// Keys derived from the pepper; cheap to clone.
#[derive(Clone)]
pub struct Pepper {
    client_secrets: hmac::Key,
    refresh_successors: hmac::Key,
    page_tokens: hmac::Key,
    key_encryption: [u8; 32],
}

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper([REDACTED])")
    }
}

impl Pepper {
    /// `pepper` (`secrets.pepper`), or else the one in `pepper_file` (`secrets.pepper_file`,
    /// created if absent).
    pub fn load(pepper: Option<&SecretString>, pepper_file: &Path) -> anyhow::Result<Self> {
        let pepper = match pepper {
            Some(pepper) => pepper.clone(),
            None => read_or_create(pepper_file)?,
        };
        Ok(Self::from_secret(&pepper))
    }

    /// As [`Self::load`], but never a new pepper file: for commands that must use the servers'
    /// pepper.
    pub fn load_existing(
        pepper: Option<&SecretString>,
        pepper_file: &Path,
    ) -> anyhow::Result<Self> {
        if pepper.is_none() && !pepper_file.exists() {
            anyhow::bail!(
                "no secrets.pepper, and no pepper file at {}: give this command the servers' \
                 pepper",
                pepper_file.display()
            );
        }
        Self::load(pepper, pepper_file)
    }

    /// Keys derived from a pepper.
    pub fn from_secret(pepper: &SecretString) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, pepper.expose_secret().as_bytes());
        let derive = |purpose: &str| {
            let tag = hmac::sign(&root, purpose.as_bytes());
            hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref())
        };
        let mut key_encryption = [0_u8; 32];
        key_encryption
            .copy_from_slice(hmac::sign(&root, b"keystone signing-key encryption v1").as_ref());
        Self {
            key_encryption,
            client_secrets: derive("keystone client secret v1"),
            refresh_successors: derive("keystone refresh successor v1"),
            page_tokens: derive("keystone page token v1"),
        }
    }

    /// The key-encryption key of signing keys when `secrets.key_encryption_key` is not set.
    pub fn key_encryption_key(&self) -> KeyEncryptionKey {
        KeyEncryptionKey(self.key_encryption)
    }

    /// The stored form of a client secret.
    pub fn hash_client_secret(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.client_secrets, secret.as_bytes())
            .as_ref()
            .to_vec()
    }

    /// Whether `secret` is the one `stored` was made from, compared in constant time.
    pub fn verify_client_secret(&self, secret: &str, stored: &[u8]) -> bool {
        hmac::verify(&self.client_secrets, secret.as_bytes(), stored).is_ok()
    }

    /// The successor of a refresh token: derived from it with a keyed hash, so a retry of the
    /// same token gets the same successor without the successor ever being stored.
    pub fn refresh_successor(&self, token: &str) -> SecretString {
        let tag = hmac::sign(&self.refresh_successors, token.as_bytes());
        SecretString::from(format!(
            "{REFRESH_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// The tag that makes a page token unforgeable (HMAC-SHA256 of its payload).
    pub fn sign_page_token(&self, payload: &[u8]) -> Vec<u8> {
        hmac::sign(&self.page_tokens, payload).as_ref().to_vec()
    }

    /// Whether `tag` is the tag of `payload`, compared in constant time.
    pub fn verify_page_token(&self, payload: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.page_tokens, payload, tag).is_ok()
    }
}

/// A key that seals private signing keys at rest (32 bytes): `secrets.key_encryption_key`,
/// decoded once, when the settings are read, from standard base64 (`openssl rand -base64 32`).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEncryptionKey([u8; 32]);

impl KeyEncryptionKey {
    /// Decodes the setting's text; the error names the rule, never the value.
    pub fn decode(text: &str) -> Result<Self, &'static str> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| "must be base64 (e.g. `openssl rand -base64 32`)")?;
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| "must decode to exactly 32 bytes (e.g. `openssl rand -base64 32`)")
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey([REDACTED])")
    }
}

impl<'de> serde::Deserialize<'de> for KeyEncryptionKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = SecretString::deserialize(deserializer)?;
        Self::decode(text.expose_secret()).map_err(serde::de::Error::custom)
    }
}

/// The stored form of a refresh token: its SHA-256 (the token carries 256 random bits, so a
/// plain hash cannot be reversed).
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// A new random token: the prefix and 256 random bits, base64url.
pub fn random_token(prefix: &str) -> Result<SecretString, Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::internal(anyhow::anyhow!("no randomness: {error}")))?;
    Ok(SecretString::from(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes)
    )))
}

fn read_or_create(path: &Path) -> anyhow::Result<SecretString> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().chars().count() >= 32 => {
            return Ok(SecretString::from(text.trim().to_owned()));
        }
        Ok(_) => anyhow::bail!(
            "the pepper file {} holds fewer than 32 characters",
            path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot read the pepper file {}", path.display()));
        }
    }
    let pepper = random_token("")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(pepper.expose_secret().as_bytes())
                .with_context(|| format!("cannot write the pepper file {}", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                "created a pepper file; a cluster must set secrets.pepper instead"
            );
            Ok(pepper)
        }
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_or_create(path),
        Err(error) => {
            Err(error).with_context(|| format!("cannot create the pepper file {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_secrets_verify_only_against_their_own_hash_and_pepper() {
        let pepper = Pepper::from_secret(&SecretString::from("p".repeat(32)));
        let other = Pepper::from_secret(&SecretString::from("q".repeat(32)));
        let stored = pepper.hash_client_secret("kss_secret");
        assert!(pepper.verify_client_secret("kss_secret", &stored));
        assert!(!pepper.verify_client_secret("kss_secreT", &stored));
        assert!(!other.verify_client_secret("kss_secret", &stored));
    }

    #[test]
    fn successors_are_deterministic_and_keyed() {
        let pepper = Pepper::from_secret(&SecretString::from("p".repeat(32)));
        let other = Pepper::from_secret(&SecretString::from("q".repeat(32)));
        let a = pepper.refresh_successor("ksr_token");
        assert_eq!(
            a.expose_secret(),
            pepper.refresh_successor("ksr_token").expose_secret()
        );
        assert_ne!(
            a.expose_secret(),
            other.refresh_successor("ksr_token").expose_secret()
        );
        assert!(a.expose_secret().starts_with(REFRESH_TOKEN_PREFIX));
    }

    #[test]
    fn a_key_encryption_key_is_32_bytes_of_base64_and_never_shown() {
        for bad in ["", "not base64!", "AAEC", &"A".repeat(64)] {
            assert!(KeyEncryptionKey::decode(bad).is_err(), "{bad}");
        }
        let good = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let key = KeyEncryptionKey::decode(good).unwrap();
        assert_eq!(key.bytes()[31], 31);
        assert_eq!(
            KeyEncryptionKey::decode(good.trim_end_matches('=')),
            Ok(key.clone())
        );
        assert_eq!(format!("{key:?}"), "KeyEncryptionKey([REDACTED])");
    }

    #[test]
    fn the_pepper_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystone.pepper");
        let first = read_or_create(&path).unwrap();
        let second = read_or_create(&path).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
