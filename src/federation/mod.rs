//! Workload identity federation: the issuers whose tokens a service client may prove itself
//! with instead of a secret (`[[federation.issuers]]`): a Kubernetes cluster's projected
//! service-account tokens, SPIRE's JWT-SVIDs. A client lists the identities it is known by
//! (`federated_identities`: an issuer's name and a `sub`).
//!
//! Each issuer's public keys come from its `jwks_uri` (fetched with a timeout and a size cap,
//! one fetch at a time) or its `jwks_file` (read at start, so a wrong path stops the start).
//! A key set is fetched the first time it is needed (the endpoint is not needed to start), and
//! again:
//! - for an assertion naming a `kid` the cached set lacks, at most once per
//!   `federation.refetch_interval` (a stranger's made-up `kid`s cannot drive fetches);
//! - once the set is older than `federation.keys_max_age`, in the background, the old set
//!   serving meanwhile (and on, when the fetch fails), so a key the issuer dropped stops
//!   counting.
//!
//! A fetch is a task of its own, so a caller that gives up does not cut it short. A dead
//! endpoint costs only the assertions of its own issuer: at most [`MAX_WAITING`] of them wait
//! for a fetch at once, each at most one `fetch_timeout`, and the others are answered at once;
//! nothing else waits for it.
//!
//! Layer: state kept in step, beside [`crate::token`] (whose assertion checks it uses).

mod fetch;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};

use crate::{
    config::{FederationSettings, TrustedIssuerSettings},
    domain::FederatedIdentity,
    token::assertion::{self, ClientKeys, Refusal, WorkloadExpected},
};

pub use self::fetch::MAX_JWKS_BYTES;

/// The issuers Keystone trusts for workload tokens.
#[derive(Debug, Default)]
pub struct Federation {
    issuers: Vec<Arc<TrustedIssuer>>,
}

/// Why a workload token proved nothing.
#[derive(Debug)]
pub enum WorkloadRefusal {
    /// The token is wrong (and whether its signature verified).
    Refused(Refusal),
    /// The issuer's keys could not be had: nothing can be said of the token now.
    Unavailable(anyhow::Error),
}

/// One trusted issuer and its cached keys.
pub struct TrustedIssuer {
    name: String,
    issuer: String,
    audience: String,
    max_age: i64,
    source: Source,
    refetch_interval: chrono::Duration,
    keys_max_age: chrono::Duration,
    fetch_timeout: Duration,
    state: std::sync::Mutex<State>,
    /// Whether a fetch is under way (one at a time).
    fetching: AtomicBool,
    /// How many fetches have ended: callers waiting for one watch it.
    done: tokio::sync::watch::Sender<u64>,
    /// Permits to wait for a fetch: the callers beyond them are answered at once.
    waiting: tokio::sync::Semaphore,
}

/// The most calls that wait for one issuer's fetch at once.
const MAX_WAITING: usize = 64;

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Where an issuer's keys come from.
enum Source {
    Uri(fetch::Endpoint),
    File(PathBuf),
}

#[derive(Default)]
struct State {
    keys: Option<Arc<ClientKeys>>,
    fetched_at: Option<DateTime<Utc>>,
    attempted_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl Federation {
    /// The trusted issuers of `settings`; an issuer's audience defaults to `keystone_issuer`.
    /// Reads each `jwks_file` and `ca_file` now: a file that cannot be read or holds no usable
    /// key stops the start, naming the setting. Fetches nothing.
    pub fn new(
        settings: &FederationSettings,
        keystone_issuer: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        let mut issuers = Vec::with_capacity(settings.issuers.len());
        let mut system_roots = None;
        for configured in &settings.issuers {
            issuers.push(Arc::new(TrustedIssuer::new(
                configured,
                settings,
                keystone_issuer,
                now,
                &mut system_roots,
            )?));
        }
        Ok(Self { issuers })
    }

    /// The names of the trusted issuers, as clients' `federated_identities` use them.
    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|issuer| issuer.name.as_str())
    }

    /// The trusted issuer an assertion names in its (unchecked) `iss`, if any: the assertion
    /// is then a workload's token, to be checked with that issuer's keys.
    pub fn issuer_of(&self, assertion: &str) -> Option<&Arc<TrustedIssuer>> {
        if self.issuers.is_empty() {
            return None;
        }
        let iss = assertion::claimed_issuer(assertion)?;
        self.issuers.iter().find(|issuer| issuer.issuer == iss)
    }
}

impl TrustedIssuer {
    fn new(
        configured: &TrustedIssuerSettings,
        settings: &FederationSettings,
        keystone_issuer: &str,
        now: DateTime<Utc>,
        system_roots: &mut Option<Arc<rustls::RootCertStore>>,
    ) -> anyhow::Result<Self> {
        let mut state = State::default();
        let source = if configured.jwks_file.is_empty() {
            Source::Uri(fetch::Endpoint::new(configured, system_roots)?)
        } else {
            let path = PathBuf::from(&configured.jwks_file);
            let keys = read_file(&path).map_err(|error| {
                anyhow::anyhow!(
                    "federation.issuers.jwks_file of `{}` ({}): {error:#}",
                    configured.name,
                    path.display()
                )
            })?;
            state.keys = Some(Arc::new(keys));
            state.fetched_at = Some(now);
            state.attempted_at = Some(now);
            Source::File(path)
        };
        Ok(Self {
            name: configured.name.clone(),
            issuer: configured.issuer.clone(),
            audience: if configured.audience.is_empty() {
                keystone_issuer.to_owned()
            } else {
                configured.audience.clone()
            },
            max_age: i64::try_from(configured.max_assertion_age.as_secs()).unwrap_or(i64::MAX),
            source,
            refetch_interval: chrono::Duration::from_std(settings.refetch_interval)?,
            keys_max_age: chrono::Duration::from_std(settings.keys_max_age)?,
            fetch_timeout: settings.fetch_timeout,
            state: std::sync::Mutex::new(state),
            fetching: AtomicBool::new(false),
            done: tokio::sync::watch::Sender::new(0),
            waiting: tokio::sync::Semaphore::new(MAX_WAITING),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a workload's token from this issuer at `now` (`leeway` seconds of clock skew):
    /// its signature by one of the issuer's keys (fetched when needed), `iss`, `aud`, `exp`,
    /// `nbf` and the age of its `iat`.
    pub async fn verify(
        self: &Arc<Self>,
        token: &str,
        leeway: i64,
        now: DateTime<Utc>,
    ) -> Result<FederatedIdentity, WorkloadRefusal> {
        let kid = assertion::claimed_kid(token);
        let keys = self.keys_for(kid.as_deref(), now).await?;
        let expected = WorkloadExpected {
            issuer: &self.issuer,
            audience: &self.audience,
            max_age: self.max_age,
            leeway,
        };
        assertion::verify_workload(token, &keys, expected, now)
            .map(|verified| FederatedIdentity {
                issuer_name: self.name.clone(),
                subject: verified.subject,
            })
            .map_err(WorkloadRefusal::Refused)
    }

    /// The keys to check a token naming `kid` with: the cached ones when they know it (fetched
    /// again in the background when old); else those a fetch brings, when one is under way or
    /// may start (the last attempt `refetch_interval` behind); else the cached ones, which
    /// will not know it.
    async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Arc<ClientKeys>, WorkloadRefusal> {
        let (cached, old, may_fetch) = self.snapshot(now);
        if let Some(keys) = cached.as_ref().filter(|keys| keys.knows(kid)) {
            if old && may_fetch {
                self.start_fetch(now);
            }
            return Ok(Arc::clone(keys));
        }
        if may_fetch {
            self.start_fetch(now);
        }
        // Subscribed before looking: a fetch that ends later is seen, and one that ended
        // before cleared `fetching` first.
        let mut done = self.done.subscribe();
        if self.fetching.load(Ordering::Acquire) {
            // A bounded number of calls wait, each at most the fetch's own budget; the others
            // are answered now.
            let Ok(_turn) = self.waiting.try_acquire() else {
                return Err(WorkloadRefusal::Unavailable(anyhow::anyhow!(
                    "too many calls wait for the keys of trusted issuer `{}`",
                    self.name
                )));
            };
            let _ = tokio::time::timeout(
                self.fetch_timeout + Duration::from_millis(100),
                done.changed(),
            )
            .await;
        }
        let state = self.lock();
        match &state.keys {
            Some(keys) => Ok(Arc::clone(keys)),
            None => Err(WorkloadRefusal::Unavailable(anyhow::anyhow!(
                "trusted issuer `{}` has no keys yet: {}",
                self.name,
                state
                    .last_error
                    .as_deref()
                    .unwrap_or("its first fetch is under way")
            ))),
        }
    }

    /// The cached keys, whether they are older than `keys_max_age`, and whether a fetch may
    /// start (none under way, none attempted within `refetch_interval`).
    fn snapshot(&self, now: DateTime<Utc>) -> (Option<Arc<ClientKeys>>, bool, bool) {
        let state = self.lock();
        let old = state
            .fetched_at
            .is_none_or(|at| now - at >= self.keys_max_age);
        let may_fetch = !self.fetching.load(Ordering::Acquire) && self.may_fetch(&state, now);
        (state.keys.clone(), old, may_fetch)
    }

    fn may_fetch(&self, state: &State, now: DateTime<Utc>) -> bool {
        state
            .attempted_at
            .is_none_or(|at| now - at >= self.refetch_interval)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock still holds a consistent state: each write is one assignment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a fetch of the keys, unless one is under way or was attempted within
    /// `refetch_interval`. The fetch is a task of its own: a caller that gives up (its
    /// deadline passed, it went away) does not end it, and all who wait see its outcome.
    fn start_fetch(self: &Arc<Self>, now: DateTime<Utc>) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut state = self.lock();
            if !self.may_fetch(&state, now) {
                self.fetching.store(false, Ordering::Release);
                return;
            }
            state.attempted_at = Some(now);
        }
        let issuer = Arc::clone(self);
        tokio::spawn(async move {
            let fetched = match tokio::time::timeout(issuer.fetch_timeout, issuer.read()).await {
                Ok(fetched) => fetched,
                Err(_) => Err(anyhow::anyhow!(
                    "no answer within {} (federation.fetch_timeout)",
                    humantime::format_duration(issuer.fetch_timeout)
                )),
            };
            issuer.settle(fetched, now);
            issuer.fetching.store(false, Ordering::Release);
            issuer.done.send_modify(|fetches| *fetches += 1);
        });
    }

    /// Keeps what a fetch brought, or the keys from before with the reason it failed.
    fn settle(&self, fetched: anyhow::Result<ClientKeys>, now: DateTime<Utc>) {
        let mut state = self.lock();
        match fetched {
            Ok(keys) => {
                tracing::info!(issuer = %self.name, keys = keys.len(), "fetched a trusted issuer's keys");
                metrics::counter!("keystone_federation_key_fetches_total", "issuer" => self.name.clone(), "outcome" => "ok").increment(1);
                state.keys = Some(Arc::new(keys));
                state.fetched_at = Some(now);
                state.last_error = None;
            }
            Err(error) => {
                let error = format!("{error:#}");
                tracing::warn!(issuer = %self.name, %error, kept = state.keys.is_some(), "could not fetch a trusted issuer's keys");
                metrics::counter!("keystone_federation_key_fetches_total", "issuer" => self.name.clone(), "outcome" => "failed").increment(1);
                state.last_error = Some(error);
            }
        }
    }

    /// Reads the issuer's key set from its source.
    async fn read(&self) -> anyhow::Result<ClientKeys> {
        match &self.source {
            Source::Uri(endpoint) => {
                let body = endpoint.get().await?;
                ClientKeys::parse_published(&body)
                    .map_err(|error| anyhow::anyhow!("its key set: {error}"))
            }
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path)).await?
            }
        }
    }
}

/// Reads and parses a key set file of at most [`MAX_JWKS_BYTES`].
fn read_file(path: &std::path::Path) -> anyhow::Result<ClientKeys> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_JWKS_BYTES {
        anyhow::bail!("longer than {} KiB", MAX_JWKS_BYTES / 1024);
    }
    ClientKeys::parse_published(&bytes).map_err(|error| anyhow::anyhow!("its key set: {error}"))
}
