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
//! A dead endpoint costs only the assertions of its own issuer, each at most one
//! `fetch_timeout`; nothing else waits for it.
//!
//! Layer: state kept in step, beside [`crate::token`] (whose assertion checks it uses).

mod fetch;

use std::{path::PathBuf, sync::Arc, time::Duration};

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
    /// Held while fetching: one fetch at a time, the others wait for its outcome.
    fetching: tokio::sync::Mutex<()>,
}

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
            fetching: tokio::sync::Mutex::new(()),
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
    /// again in the background when old), else fetched now when the last attempt is far
    /// enough behind.
    async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Arc<ClientKeys>, WorkloadRefusal> {
        let (cached, old, may_fetch) = self.snapshot(now);
        if let Some(keys) = cached.as_ref().filter(|keys| keys.knows(kid)) {
            if old && may_fetch {
                let issuer = Arc::clone(self);
                tokio::spawn(async move { issuer.refresh(now).await });
            }
            return Ok(Arc::clone(keys));
        }
        if may_fetch || self.fetching.try_lock().is_err() {
            // Fetch, or wait for the fetch under way.
            self.refresh(now).await;
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
                    .unwrap_or("no fetch has finished")
            ))),
        }
    }

    /// The cached keys, whether they are older than `keys_max_age`, and whether a fetch may
    /// start (none attempted within `refetch_interval`).
    fn snapshot(&self, now: DateTime<Utc>) -> (Option<Arc<ClientKeys>>, bool, bool) {
        let state = self.lock();
        let old = state
            .fetched_at
            .is_none_or(|at| now - at >= self.keys_max_age);
        (state.keys.clone(), old, self.may_fetch(&state, now))
    }

    fn may_fetch(&self, state: &State, now: DateTime<Utc>) -> bool {
        state
            .attempted_at
            .is_none_or(|at| now - at >= self.refetch_interval || now < at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock still holds a consistent state: each write is one assignment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches the keys, unless another caller did while this one waited its turn.
    async fn refresh(&self, now: DateTime<Utc>) {
        let _turn = self.fetching.lock().await;
        {
            let mut state = self.lock();
            if !self.may_fetch(&state, now) {
                return;
            }
            state.attempted_at = Some(now);
        }
        let fetched = match tokio::time::timeout(self.fetch_timeout, self.read()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {} (federation.fetch_timeout)",
                humantime::format_duration(self.fetch_timeout)
            )),
        };
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
