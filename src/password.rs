//! Password hashing and verification with argon2id, off the async runtime.
//!
//! Hashes are PHC strings, so raising the parameters is picked up on the next successful login
//! (`Verification::Valid { needs_rehash: true }`). Work runs on threads of its own, one per
//! permit of a semaphore sized from the cores and the memory cost, at a lower scheduling
//! priority (`auth.argon2.niceness`) so that a login flood takes only the CPU that token
//! validation leaves; when too many calls wait, new ones are refused with RESOURCE_EXHAUSTED
//! instead of queueing without bound. Unknown users are verified against a dummy hash made with the live
//! parameters, so they take the same time as wrong passwords. Passwords are NFKC-normalized at
//! set and at verify (NIST SP 800-63B-4 section 3.1.1.2).
//!
//! Layer: foundation. Uses [`crate::config`] and [`crate::error`]; the services use it.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _,
    Version,
    password_hash::{Decimal, Ident, Output, ParamsString, Salt, SaltString},
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
    pool: HashPool,
    permits: Arc<Semaphore>,
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
        // Made on the caller's thread, which is not a hashing thread: its memory goes back.
        release_memory();
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                pool: HashPool::start(permits, settings.niceness)?,
                permits: Arc::new(Semaphore::new(permits)),
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
        let admission = self.admit()?;
        self.verify_admitted(admission, password, phc).await
    }

    /// [`Self::verify`] with a place in the queue already taken ([`Self::admit`]).
    pub async fn verify_admitted(
        &self,
        admission: Admission<'_>,
        password: &SecretString,
        phc: Option<&str>,
    ) -> Result<Verification, Error> {
        let known = phc.is_some();
        let phc = phc.unwrap_or(&self.inner.dummy_hash).to_owned();
        let normalized = SecretString::from(password.expose_secret().nfkc().collect::<String>());
        let params = self.inner.params.clone();
        let verification = self
            .run_admitted(admission, move || {
                verify_blocking(&params, normalized.expose_secret(), &phc)
            })
            .await?;
        Ok(if known {
            verification
        } else {
            Verification::Invalid
        })
    }

    /// A place in the queue for one hash, or RESOURCE_EXHAUSTED when every permit is taken
    /// and the queue is full. Taken before a login is recorded anywhere, so a login turned
    /// away for overload leaves no trace (it does not count toward a lockout).
    pub fn admit(&self) -> Result<Admission<'_>, Error> {
        let waiting = self.inner.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = WaitingGuard(&self.inner.waiting);
        ::metrics::gauge!("keystone_password_hash_queue").set(waiting as f64 + 1.0);
        // Those admitted wait for a permit: as many as are free, plus the queue.
        if waiting >= self.inner.max_waiting + self.inner.permits.available_permits() {
            ::metrics::counter!("keystone_password_hash_refused_total").increment(1);
            return Err(overloaded());
        }
        Ok(Admission { _waiting: guard })
    }

    /// Runs argon2 work on the hashing threads once a permit is free (after taking a place
    /// in the queue, or refusing). The caller's span follows the work.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let admission = self.admit()?;
        self.run_admitted(admission, work).await
    }

    /// Runs argon2 work with a place already taken. The permit travels with the work: a
    /// caller that goes away (a cancelled call) does not free it before the hash is done, so
    /// cancelled logins cannot pile up work behind the queue's back.
    async fn run_admitted<T: Send + 'static>(
        &self,
        admission: Admission<'_>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let queued = crate::clock::monotonic();
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|error| Error::internal(anyhow::anyhow!("hash pool closed: {error}")))?;
        ::metrics::histogram!("keystone_password_hash_wait_seconds")
            .record(queued.elapsed().as_secs_f64());
        drop(admission);
        let span = tracing::Span::current();
        let (done, result) = tokio::sync::oneshot::channel();
        self.inner.pool.run(Box::new(move || {
            let _permit = permit;
            // Nobody waits for it any more: skip the work.
            if !done.is_closed() {
                let _ = done.send(span.in_scope(work));
            }
        }));
        result
            .await
            .map_err(|_| Error::internal(anyhow::anyhow!("a hashing thread stopped")))
    }
}

/// A place in the hashing queue (see [`PasswordHasher::admit`]); given back when dropped.
#[must_use]
pub struct Admission<'a> {
    _waiting: WaitingGuard<'a>,
}

impl std::fmt::Debug for Admission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

fn overloaded() -> Error {
    Error::ResourceExhausted {
        reason: Reason::Overloaded,
        message: "too many logins at once; retry shortly".to_owned(),
        retry_after: Some(std::time::Duration::from_secs(1)),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// How long a hashing thread keeps its memory with nothing to do.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(2);

/// Threads that do nothing but argon2, each holding one permit's work at a time. Each waits
/// on its own for the next job, so each gives its memory back after [`IDLE_RELEASE`] idle.
struct HashPool {
    shared: Arc<PoolShared>,
}

#[derive(Default)]
struct PoolShared {
    jobs: std::sync::Mutex<std::collections::VecDeque<Job>>,
    ready: std::sync::Condvar,
}

impl HashPool {
    fn start(threads: usize, niceness: i32) -> anyhow::Result<Self> {
        let shared = Arc::new(PoolShared::default());
        for index in 0..threads.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    lower_priority(niceness);
                    work_loop(&shared);
                })
                .map_err(|error| anyhow::anyhow!("cannot start a hashing thread: {error}"))?;
        }
        Ok(Self { shared })
    }

    fn run(&self, job: Job) {
        self.shared
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(job);
        self.shared.ready.notify_one();
    }
}

/// Takes jobs until the process ends; a job that panics is reported, and the thread goes on.
fn work_loop(shared: &PoolShared) {
    let mut jobs = shared
        .jobs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if let Some(job) = jobs.pop_front() {
            drop(jobs);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("a password hash panicked");
            }
            jobs = shared
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        }
        let (next, waited) = shared
            .ready
            .wait_timeout(jobs, IDLE_RELEASE)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        jobs = next;
        if waited.timed_out() && jobs.is_empty() {
            release_memory();
        }
    }
}

/// Lowers this thread's scheduling priority by `niceness` below the process's (Linux:
/// `setpriority` on the thread id; at most 19). Failing to is logged: hashing still works,
/// at the runtime's priority.
fn lower_priority(niceness: i32) {
    if niceness <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let thread = Some(rustix::thread::gettid());
        let lowered = rustix::process::getpriority_process(thread).and_then(|now| {
            rustix::process::setpriority_process(thread, now.saturating_add(niceness).min(19))
        });
        if let Err(error) = lowered {
            tracing::warn!(error = %error, niceness, "cannot lower the priority of a hashing thread");
        }
    }
}

struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        ::metrics::gauge!("keystone_password_hash_queue").set(left as f64);
    }
}

/// Blocks of argon2 memory kept by each hashing thread between hashes, so that a login does
/// not map, fault in and zero its memory cost anew. The buffer is reserved with at least
/// [`MAPPED_FLOOR_BYTES`] of capacity: the allocator then maps it on its own (glibc always does
/// at or above 32 MiB, whatever its adaptive threshold has become), so dropping it when the
/// pool goes idle gives the memory back to the system. Only the blocks used are touched.
const MAPPED_FLOOR_BYTES: usize = 33 * 1024 * 1024;

thread_local! {
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` over `blocks` blocks of this thread's argon2 memory.
fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    MEMORY.with(|memory| match memory.try_borrow_mut() {
        Ok(mut memory) => {
            if memory.len() < blocks {
                let floor = MAPPED_FLOOR_BYTES / std::mem::size_of::<Block>();
                let mut fresh = Vec::with_capacity(blocks.max(floor));
                fresh.resize(blocks, Block::default());
                *memory = fresh;
            }
            f(&mut memory[..blocks])
        }
        // Not reentrant in practice; a fresh buffer if it ever were.
        Err(_) => f(&mut vec![Block::default(); blocks]),
    })
}

/// Gives this thread's argon2 memory back (the pool is idle).
fn release_memory() {
    MEMORY.with(|memory| {
        if let Ok(mut memory) = memory.try_borrow_mut() {
            *memory = Vec::new();
        }
    });
}

/// argon2 as a `password_hash` hasher that works in the thread's kept memory; the
/// `PasswordVerifier` that comes with it parses the PHC string and compares in constant time,
/// as argon2's own does.
struct KeptMemoryArgon2;

impl argon2::PasswordHasher for KeptMemoryArgon2 {
    type Params = Params;

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        algorithm: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> argon2::password_hash::Result<PasswordHash<'a>> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = salt.into();
        let mut salt_bytes = [0_u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let output = Output::init_with(output_len, |out| {
            with_memory(params.block_count(), |blocks| {
                argon2.hash_password_into_with_memory(password, salt_bytes, out, blocks)
            })
            .map_err(Into::into)
        })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|_| argon2::password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&salt)?;
    Ok(KeptMemoryArgon2
        .hash_password_customized(
            password.as_bytes(),
            Some(Algorithm::Argon2id.ident()),
            Some(Version::V0x13.into()),
            params.clone(),
            &salt,
        )?
        .to_string())
}

fn verify_blocking(params: &Params, password: &str, phc: &str) -> Verification {
    let Ok(hash) = PasswordHash::new(phc) else {
        tracing::error!("a stored password hash is not a PHC string");
        return Verification::Invalid;
    };
    if KeptMemoryArgon2
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

    #[test]
    fn kept_memory_hashes_are_argon2s_own() {
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        // Other parameters than the live ones, and a smaller memory after a larger one, on
        // the same thread: the kept buffer is cut to each hash's own size.
        for (m, t, p) in [(2048, 2, 1), (1024, 1, 2), (1024, 3, 1)] {
            let params = Params::new(m, t, p, None).unwrap();
            let ours = KeptMemoryArgon2
                .hash_password_customized(
                    b"pass",
                    Some(Algorithm::Argon2id.ident()),
                    Some(Version::V0x13.into()),
                    params.clone(),
                    &salt,
                )
                .unwrap()
                .to_string();
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"pass", &salt)
                .unwrap()
                .to_string();
            assert_eq!(ours, theirs);
            let parsed = PasswordHash::new(&theirs).unwrap();
            assert!(KeptMemoryArgon2.verify_password(b"pass", &parsed).is_ok());
            assert!(KeptMemoryArgon2.verify_password(b"pas", &parsed).is_err());
        }
        // argon2i and argon2d hashes (from elsewhere) verify too.
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let params = Params::new(1024, 1, 1, None).unwrap();
            let theirs = Argon2::new(algorithm, Version::V0x10, params)
                .hash_password(b"pass", &salt)
                .unwrap()
                .to_string();
            let parsed = PasswordHash::new(&theirs).unwrap();
            assert!(KeptMemoryArgon2.verify_password(b"pass", &parsed).is_ok());
        }
        release_memory();
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
