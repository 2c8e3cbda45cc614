//! The App: built from settings (connects the database, applies migrations, binds the
//! listeners), then run until a shutdown future resolves. Everything long-lived is owned here
//! and passed down; nothing sits in a global. This module composes; [`listeners`] serves and
//! drains, [`background`] runs what goes on beside the listeners.
//!
//! Layer: the top. It uses every other module; only `main` and the command line use it.

mod background;
mod listeners;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;

use self::{
    background::{Background, Parts},
    listeners::{Listeners, Served},
};
use crate::{
    clock::{SharedClock, SystemClock},
    cluster::{Bus, Redis},
    config::Settings,
    federation::Federation,
    grpc::{
        Apis, Health, auth::AuthApi, client_admin::ClientAdminApi, ext_authz::ExtAuthzApi,
        user_admin::UserAdminApi,
    },
    http::HttpState,
    password::PasswordHasher,
    revocation::{Revocations, SyncSettings},
    secrets::Pepper,
    service::{
        Authenticator, ClientAdminService, UserAdminService,
        auth::{AuthPolicy, AuthService},
        client_admin::ClientLimits,
        limits::RateLimits,
        paging::Pager,
    },
    store::Store,
    tls::Tls,
    token::{KeyManager, KeyRing, TokenVerifier, sealing::KeySealer},
};

/// A Keystone server, built and bound, not yet serving.
#[derive(Debug)]
pub struct App {
    settings: Settings,
    clock: SharedClock,
    store: Store,
    keys: KeyManager,
    revocations: Revocations,
    bus: Bus,
    auth: AuthService,
    apis: Apis,
    listeners: Listeners,
    tls: Option<Tls>,
    health: Health,
    /// Told when shutdown begins, so that streams end.
    draining: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// Builds the server on the system clock.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds the server on the given clock (tests move time with a manual one).
    pub async fn build_with_clock(settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        let store = open_database(&settings).await?;
        let hasher = password_hasher(&settings).await?;
        let bus = connect_bus(&settings).await?;
        let revocations = load_revocations(&settings, &store, &bus, &clock).await?;
        let pepper = Pepper::load(
            settings.secrets.pepper.as_ref(),
            &settings.secrets.pepper_file,
        )
        .context("cannot load the pepper (secrets.pepper or secrets.pepper_file)")?;
        let user_admin = user_admin_service(
            &settings,
            &store,
            &clock,
            hasher.clone(),
            &revocations,
            &bus,
            &pepper,
        );
        bootstrap_admin(&settings, &user_admin).await?;
        let tls = Tls::load(&settings.tls).context("cannot set up TLS")?;
        let listeners = Listeners::bind(&settings).await?;

        let keys = key_manager(&settings, &store, &clock, &pepper)?;
        keys.refresh()
            .await
            .context("cannot load the signing keys")?;
        let client_admin = ClientAdminService::new(
            store.clone(),
            clock.clone(),
            revocations.clone(),
            bus.clone(),
            pepper.clone(),
            ClientLimits {
                max_access_ttl: settings.tokens.max_access_ttl,
                max_secret_grace: settings.clients.max_secret_grace,
                token_lifetime: token_lifetime(&settings),
            },
            settings.clients.delegable_audiences.clone(),
        );
        let federation = Federation::new(&settings.federation, &settings.issuer, clock.now())
            .context("cannot set up the trusted issuers ([[federation.issuers]])")?;
        let client_admin = client_admin
            .with_trusted_issuers(federation.issuer_names().map(str::to_owned).collect());
        let policy = AuthPolicy::from_settings(&settings);
        let authenticator = Authenticator::new(
            TokenVerifier::new(keys.ring().clone(), policy.issuer.clone(), policy.leeway),
            &policy.keystone_audience,
            store.clone(),
            clock.clone(),
            revocations.clone(),
            RateLimits::new(
                &settings.limits,
                settings.auth.registration_per_minute,
                bus.redis().cloned(),
            ),
        )
        .with_dpop(settings.tokens.dpop_proof_max_age, bus.redis().cloned());
        let auth = AuthService::new(
            authenticator.clone(),
            store.clone(),
            hasher,
            keys.ring().clone(),
            pepper,
            policy,
        )
        .with_federation(Arc::new(federation));
        let (draining, draining_rx) = tokio::sync::watch::channel(false);
        let apis = Apis {
            auth: AuthApi::new(auth.clone(), draining_rx),
            user_admin: UserAdminApi::new(authenticator.clone(), user_admin, clock.clone()),
            client_admin: ClientAdminApi::new(authenticator.clone(), client_admin),
            ext_authz: ExtAuthzApi::new(authenticator, settings.ext_authz.clone()),
        };
        let health = Health::new().await;
        Ok(Self {
            settings,
            clock,
            store,
            keys,
            revocations,
            bus,
            auth,
            apis,
            listeners,
            tls,
            health,
            draining,
        })
    }

    /// The address the gRPC listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// The address of the admin gRPC listener, when there is one.
    pub fn admin_grpc_addr(&self) -> Option<SocketAddr> {
        self.listeners.admin_grpc_addr()
    }

    /// The address of the admin HTTP listener, when there is one.
    pub fn admin_http_addr(&self) -> Option<SocketAddr> {
        self.listeners.admin_http_addr()
    }

    /// The clock the server runs on.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Serves until `shutdown` resolves, then drains (see [`listeners`]).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            settings,
            clock,
            store,
            keys,
            revocations,
            bus,
            auth,
            apis,
            listeners,
            tls,
            health,
            draining,
        } = self;

        store.ping().await.context("the database does not answer")?;
        health.set(true).await;
        let http = HttpState {
            auth: auth.clone(),
            store: store.clone(),
            ring: keys.ring().clone(),
            // A cache must not hold the key set past the moment a new key signs, counting the
            // time a replica may take to load it.
            jwks_max_age: settings
                .keys
                .publish_ahead
                .saturating_sub(settings.keys.reload_interval)
                .min(Duration::from_secs(300)),
            draining: draining.subscribe(),
            concurrency_limit: settings.server.concurrency_limit,
            request_timeout: settings.server.request_timeout,
            trusted_proxies: crate::client_ip::TrustedProxies::new(
                &settings.server.trusted_proxies,
            )
            .with_certificate_proxies(&settings.server.client_certificate_proxies),
            connection_limits: crate::listener::ConnectionLimits::new(&settings.server, false)
                .with_tls(tls.clone()),
            http_idle_timeout: settings.server.http_idle_timeout,
            metrics: crate::metrics::install(),
        };
        let mut background = Background::start(Parts {
            settings: settings.clone(),
            clock,
            store: store.clone(),
            keys,
            revocations,
            bus: bus.clone(),
            auth,
            health: health.clone(),
            tls: tls.clone(),
        });
        let served = listeners
            .serve(
                &settings,
                Served {
                    apis,
                    health,
                    http,
                    draining,
                    tls,
                },
                shutdown,
                || background.stop_early(),
            )
            .await;
        // Followed to the end: tokens are checked against a fresh set while draining.
        background.stop();
        bus.quit().await;
        // Audit events still queued are written before the pool closes (within the grace).
        if tokio::time::timeout(settings.server.shutdown_grace, store.flush_audit())
            .await
            .is_err()
        {
            tracing::error!("audit events still queued after the shutdown grace are lost");
        }
        store.close().await;
        tracing::info!("Keystone stopped");
        served
    }
}

/// Creates the admin of the environment (`bootstrap_admin_username`/`_password`) for a new
/// installation (see [`UserAdminService::bootstrap_admin`]).
async fn bootstrap_admin(settings: &Settings, user_admin: &UserAdminService) -> anyhow::Result<()> {
    let (Some(username), Some(password)) = (
        &settings.bootstrap_admin_username,
        &settings.bootstrap_admin_password,
    ) else {
        return Ok(());
    };
    // Replicas starting together race for it: one that loses finds it made.
    let made = match user_admin
        .bootstrap_admin(username, None, Some(password.clone()), true)
        .await
    {
        Err(crate::error::Error::AlreadyExists { .. }) => Ok(None),
        other => other,
    };
    match made.context("cannot create the bootstrap admin (bootstrap_admin_username/_password)")? {
        Some(outcome) => tracing::info!(
            user_id = %outcome.user.id,
            username = %outcome.user.username.as_str(),
            "created the bootstrap admin"
        ),
        None => tracing::info!(
            username = %username,
            "the bootstrap admin exists already; left as it is"
        ),
    }
    Ok(())
}

/// Connects to the database and, with `database.migrate_on_start`, applies pending migrations.
pub async fn open_database(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database_url, &settings.database)
        .await
        .context("cannot connect to the database (database_url)")?
        .caching_clients(settings.clients.cache_ttl);
    if settings.database.migrate_on_start {
        store
            .migrate_up(None)
            .await
            .context("cannot apply the database migrations")?;
    }
    Ok(store)
}

/// The password hasher (its dummy hash is one argon2 run, made off the runtime).
pub async fn password_hasher(settings: &Settings) -> anyhow::Result<PasswordHasher> {
    let argon2 = settings.auth.argon2.clone();
    tokio::task::spawn_blocking(move || PasswordHasher::new(&argon2)).await?
}

/// The cluster's bus: over Redis when `redis_url` is set, else local.
pub async fn connect_bus(settings: &Settings) -> anyhow::Result<Bus> {
    Ok(match &settings.redis_url {
        Some(url) => Bus::over(
            Redis::connect(
                url,
                &settings.cluster.name,
                settings.revocation.redis_timeout,
                Duration::from_secs(2),
            )
            .await
            .context("cannot use redis_url")?,
        ),
        None => Bus::local(),
    })
}

/// The revocation set, loaded from the database; its changes go out on `bus`.
pub async fn load_revocations(
    settings: &Settings,
    store: &Store,
    bus: &Bus,
    clock: &SharedClock,
) -> anyhow::Result<Revocations> {
    Revocations::load(
        store.clone(),
        bus.clone(),
        clock.now(),
        SyncSettings {
            clustered: settings.cluster.enabled,
            max_staleness: settings.revocation.max_staleness,
        },
    )
    .await
    .context("cannot load the revocation set")
}

/// The user administration service.
pub fn user_admin_service(
    settings: &Settings,
    store: &Store,
    clock: &SharedClock,
    hasher: PasswordHasher,
    revocations: &Revocations,
    bus: &Bus,
    pepper: &Pepper,
) -> UserAdminService {
    UserAdminService::new(
        store.clone(),
        hasher,
        crate::domain::PasswordPolicy::new(
            settings.auth.password_min_length,
            settings.auth.password_min_strength,
        ),
        clock.clone(),
        revocations.clone(),
        bus.clone(),
        Pager::new(pepper.clone()),
        token_lifetime(settings),
    )
}

/// The longest a token issued now can be accepted: its maximal lifetime plus the leeway. A
/// revocation of a user or client lasts that long.
fn token_lifetime(settings: &Settings) -> Duration {
    settings.tokens.max_access_ttl + settings.tokens.leeway
}

/// The key manager of a store, as the server and `keystone keys` build it: private keys are
/// sealed with the key-encryption key of the settings (or the pepper's).
pub fn key_manager(
    settings: &Settings,
    store: &Store,
    clock: &SharedClock,
    pepper: &Pepper,
) -> anyhow::Result<KeyManager> {
    let sealer = KeySealer::from_settings(&settings.secrets, pepper)?;
    Ok(KeyManager::new(
        store.clone(),
        KeyRing::default(),
        clock.clone(),
        sealer,
        settings.keys.algorithm,
        settings.keys.publish_ahead,
        settings.keys.rotate_every,
        settings.tokens.max_access_ttl + settings.tokens.leeway,
    ))
}
