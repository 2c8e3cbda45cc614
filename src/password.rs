//! Password hashing and verification with argon2id, off the async runtime.
//!
//! Hashes are PHC strings, so raising the parameters is picked up on the next successful login
//! (`Verification::Valid { needs_rehash: true }`). Work runs on the blocking pool behind a
//! semaphore sized from the cores and the memory cost; when too many calls wait, new ones are
//! refused with RESOURCE_EXHAUSTED instead of queueing without bound, so a login flood cannot
//! starve token validation. Unknown users are verified against a dummy hash made with the live
//! parameters, so they take the same time as wrong passwords. Passwords are NFKC-normalized at
//! set and at verify (NIST SP 800-63B-4 section 3.1.1.2).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::SaltString,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization as _;

use crate::{
    config::PasswordHashSettings,
    error::{Error, Reason},
};

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The password is wrong (or the user unknown).
    Invalid,
    /// The password is right; `needs_rehash` when the hash used older parameters.
    Valid {
        /// Whether the stored hash should be replaced with one made with the live parameters.
        needs_rehash: bool,
    },
}

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    permits: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("m_cost_kib", &self.inner.params.m_cost())
            .field("t_cost", &self.inner.params.t_cost())
            .field("p_cost", &self.inner.params.p_cost())
            .field("permits", &self.inner.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Builds the hasher and its dummy hash (one hash: call it off the async runtime or at
    /// start).
    pub fn new(settings: &PasswordHashSettings) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|error| anyhow::anyhow!("invalid argon2 parameters: {error}"))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        // Each hash holds `memory_kib` for its duration: cap the memory all of them may take.
        let by_memory = (settings.memory_budget_mib as usize * 1024)
            .checked_div(settings.memory_kib as usize)
            .unwrap_or(1)
            .max(1);
        let permits = if settings.concurrency == 0 {
            cores.min(by_memory).max(1)
        } else {
            settings.concurrency
        };
        let dummy_password = generate_password()?;
        let dummy_hash = hash_blocking(&params, dummy_password.expose_secret())
            .map_err(|error| anyhow::anyhow!("cannot make the dummy hash: {error}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                permits: Semaphore::new(permits),
                waiting: AtomicUsize::new(0),
                max_waiting: settings.max_queue,
                dummy_hash,
            }),
        })
    }

    /// How many hashes may run at once.
    pub fn concurrency(&self) -> usize {
        self.inner.permits.available_permits()
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: &SecretString) -> Result<String, Error> {
        let normalized = SecretString::from(password.expose_secret().nfkc().collect::<String>());
        let params = self.inner.params.clone();
        self.run(move || hash_blocking(&params, normalized.expose_secret()))
            .await?
            .map_err(|error| Error::internal(anyhow::anyhow!("hashing failed: {error}")))
    }

    /// Checks a password against a PHC string; with `None` (unknown user) it checks against the
    /// dummy hash, so the answer takes the same time, and is always `Invalid`.
    pub async fn verify(
        &self,
        password: &SecretString,
        phc: Option<&str>,
    ) -> Result<Verification, Error> {
        let known = phc.is_some();
        let phc = phc.unwrap_or(&self.inner.dummy_hash).to_owned();
        let normalized = SecretString::from(password.expose_secret().nfkc().collect::<String>());
        let params = self.inner.params.clone();
        let verification = self
            .run(move || verify_blocking(&params, normalized.expose_secret(), &phc))
            .await?;
        Ok(if known {
            verification
        } else {
            Verification::Invalid
        })
    }

    /// Runs argon2 work on the blocking pool once a permit is free; refuses when the queue is
    /// full. The caller's span follows the work.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let waiting = self.inner.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting_guard = WaitingGuard(&self.inner.waiting);
        ::metrics::gauge!("keystone_password_hash_queue").set(waiting as f64 + 1.0);
        if waiting >= self.inner.max_waiting && self.inner.permits.available_permits() == 0 {
            ::metrics::counter!("keystone_password_hash_refused_total").increment(1);
            return Err(Error::ResourceExhausted {
                reason: Reason::Overloaded,
                message: "too many logins at once; retry shortly".to_owned(),
                retry_after: Some(std::time::Duration::from_secs(1)),
            });
        }
        let queued = std::time::Instant::now();
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|error| Error::internal(anyhow::anyhow!("hash pool closed: {error}")))?;
        ::metrics::histogram!("keystone_password_hash_wait_seconds")
            .record(queued.elapsed().as_secs_f64());
        drop(waiting_guard);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|error| Error::internal(anyhow::anyhow!("hash task failed: {error}")))
    }
}

struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        ::metrics::gauge!("keystone_password_hash_queue").set(left as f64);
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|_| argon2::password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&salt)?;
    Ok(argon2(params)
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

fn verify_blocking(params: &Params, password: &str, phc: &str) -> Verification {
    let Ok(hash) = PasswordHash::new(phc) else {
        tracing::error!("a stored password hash is not a PHC string");
        return Verification::Invalid;
    };
    if argon2(params)
        .verify_password(password.as_bytes(), &hash)
        .is_err()
    {
        return Verification::Invalid;
    }
    let current = hash.algorithm.as_str() == "argon2id"
        && Params::try_from(&hash).is_ok_and(|used| {
            used.m_cost() == params.m_cost()
                && used.t_cost() == params.t_cost()
                && used.p_cost() == params.p_cost()
        });
    Verification::Valid {
        needs_rehash: !current,
    }
}

/// Characters of generated passwords: letters and digits without look-alikes (0/O, 1/l/I).
const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A strong random password: 24 characters of a 57-character alphabet (about 140 bits).
pub fn generate_password() -> Result<SecretString, Error> {
    let mut password = String::with_capacity(24);
    let mut buffer = [0_u8; 64];
    // 57 * 4 = 228: bytes at or above it are rejected so every character is equally likely.
    let limit = 256 / ALPHABET.len() * ALPHABET.len();
    while password.len() < 24 {
        getrandom::fill(&mut buffer)
            .map_err(|error| Error::internal(anyhow::anyhow!("no randomness: {error}")))?;
        for byte in buffer {
            if usize::from(byte) < limit && password.len() < 24 {
                password.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
            }
        }
    }
    Ok(SecretString::from(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_settings() -> PasswordHashSettings {
        PasswordHashSettings {
            memory_kib: 1024,
            iterations: 1,
            ..PasswordHashSettings::default()
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let hasher = PasswordHasher::new(&fast_settings()).unwrap();
        let password = SecretString::from("correct horse battery staple");
        let phc = hasher.hash(&password).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(!phc.contains("correct"));
        assert_eq!(
            hasher.verify(&password, Some(&phc)).await.unwrap(),
            Verification::Valid {
                needs_rehash: false
            }
        );
        let wrong = SecretString::from("correct horse battery stapler");
        assert_eq!(
            hasher.verify(&wrong, Some(&phc)).await.unwrap(),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn passwords_are_nfkc_normalized_at_set_and_at_verify() {
        let hasher = PasswordHasher::new(&fast_settings()).unwrap();
        // U+FB01 (the "fi" ligature) is NFKC-equivalent to "fi".
        let phc = hasher
            .hash(&SecretString::from("\u{FB01}ne passphrase here"))
            .await
            .unwrap();
        assert_eq!(
            hasher
                .verify(&SecretString::from("fine passphrase here"), Some(&phc))
                .await
                .unwrap(),
            Verification::Valid {
                needs_rehash: false
            }
        );
    }

    #[tokio::test]
    async fn raised_parameters_ask_for_a_rehash() {
        let old = PasswordHasher::new(&fast_settings()).unwrap();
        let password = SecretString::from("a long enough passphrase");
        let phc = old.hash(&password).await.unwrap();
        let new = PasswordHasher::new(&PasswordHashSettings {
            memory_kib: 2048,
            ..fast_settings()
        })
        .unwrap();
        assert_eq!(
            new.verify(&password, Some(&phc)).await.unwrap(),
            Verification::Valid { needs_rehash: true }
        );
    }

    #[tokio::test]
    async fn unknown_users_are_checked_against_the_dummy_and_always_fail() {
        let hasher = PasswordHasher::new(&fast_settings()).unwrap();
        assert_eq!(
            hasher
                .verify(&SecretString::from("anything at all here"), None)
                .await
                .unwrap(),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_with_resource_exhausted() {
        let hasher = PasswordHasher::new(&PasswordHashSettings {
            concurrency: 1,
            max_queue: 0,
            ..fast_settings()
        })
        .unwrap();
        let permit = hasher.inner.permits.acquire().await.unwrap();
        let refused = hasher
            .hash(&SecretString::from("a long enough passphrase"))
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), Reason::Overloaded);
        drop(permit);
        assert!(
            hasher
                .hash(&SecretString::from("a long enough passphrase"))
                .await
                .is_ok()
        );
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.expose_secret().chars().count(), 24);
        assert!(a.expose_secret().bytes().all(|c| ALPHABET.contains(&c)));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
