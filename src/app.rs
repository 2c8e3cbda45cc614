//! The App: built from settings (connects the database, applies migrations, binds the
//! listener), then run until a shutdown future resolves. Everything long-lived is owned here
//! and passed down; nothing sits in a global.
//!
//! Shutdown, in order: health turns NOT_SERVING for every name; after `server.drain_delay`
//! the listener closes and connections get GOAWAY, so new calls are refused; calls in flight
//! get `server.shutdown_grace` to finish.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{
    clock::{SharedClock, SystemClock},
    config::Settings,
    domain::PasswordPolicy,
    grpc::{
        self, Apis, Health, auth::AuthApi, client_admin::ClientAdminApi, ext_authz::ExtAuthzApi,
        user_admin::UserAdminApi,
    },
    http::HttpState,
    password::PasswordHasher,
    revocation::{Revocations, SyncSettings, redis::Redis},
    secrets::Pepper,
    service::{
        ClientAdminService, UserAdminService, auth::AuthService, client_admin::ClientLimits,
        paging::Pager,
    },
    store::{RetentionPolicy, Store},
    token::{
        keys::{KeyManager, KeyRing},
        sealing::KeySealer,
    },
};

/// A Keystone server, built and bound, not yet serving.
#[derive(Debug)]
pub struct App {
    settings: Settings,
    clock: SharedClock,
    store: Store,
    keys: KeyManager,
    revocations: Revocations,
    auth: AuthService,
    apis: Apis,
    listener: TcpListener,
    local_addr: SocketAddr,
    health: Health,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    /// `admin_grpc_addr`: the admin services' own listener, when set.
    admin_grpc: Option<TcpListener>,
    /// `admin_http_addr`: `/metrics`' own listener, when set.
    admin_http: Option<TcpListener>,
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
        let revocations = load_revocations(&settings, &store, &clock).await?;
        let pepper = Pepper::load(&settings.secrets)
            .context("cannot load the pepper (secrets.pepper or secrets.pepper_file)")?;
        let user_admin = user_admin_service(
            &settings,
            &store,
            &clock,
            hasher.clone(),
            &revocations,
            &pepper,
        );
        if let (Some(username), Some(password)) = (
            &settings.bootstrap_admin_username,
            &settings.bootstrap_admin_password,
        ) {
            // Replicas starting together race for it: one that loses finds it made.
            let made = match user_admin
                .bootstrap_admin(username, None, Some(password.clone()), true)
                .await
            {
                Err(crate::error::Error::AlreadyExists { .. }) => Ok(None),
                other => other,
            };
            match made
                .context("cannot create the bootstrap admin (bootstrap_admin_username/_password)")?
            {
                Some(outcome) => tracing::info!(
                    user_id = %outcome.user.id,
                    username = %outcome.user.username,
                    "created the bootstrap admin"
                ),
                None => tracing::info!(
                    username = %username,
                    "the bootstrap admin exists already; left as it is"
                ),
            }
        }
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on grpc_addr {}", settings.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("cannot listen on http_addr {}", settings.http_addr))?;
        let http_addr = http_listener.local_addr()?;
        let admin_grpc = bind_optional(settings.admin_grpc_addr, "admin_grpc_addr").await?;
        let admin_http = bind_optional(settings.admin_http_addr, "admin_http_addr").await?;

        let keys = key_manager(&settings, &store, &clock, &pepper)?;
        keys.refresh()
            .await
            .context("cannot load the signing keys")?;
        let client_admin = ClientAdminService::new(
            store.clone(),
            clock.clone(),
            revocations.clone(),
            pepper.clone(),
            ClientLimits {
                max_access_ttl: settings.tokens.max_access_ttl,
                max_secret_grace: settings.clients.max_secret_grace,
                token_lifetime: token_lifetime(&settings),
            },
            settings.clients.delegable_audiences.clone(),
        );
        let auth = AuthService::new(
            &settings,
            store.clone(),
            hasher,
            clock.clone(),
            keys.ring().clone(),
            revocations.clone(),
            pepper,
        );
        let (draining, draining_rx) = tokio::sync::watch::channel(false);
        let apis = Apis {
            auth: AuthApi::new(auth.clone(), draining_rx),
            user_admin: UserAdminApi::new(auth.clone(), user_admin, clock.clone()),
            client_admin: ClientAdminApi::new(auth.clone(), client_admin),
            ext_authz: ExtAuthzApi::new(auth.clone(), settings.ext_authz.clone()),
        };
        let health = Health::new().await;
        Ok(Self {
            settings,
            clock,
            store,
            keys,
            revocations,
            auth,
            apis,
            listener,
            local_addr,
            health,
            http_listener,
            http_addr,
            admin_grpc,
            admin_http,
            draining,
        })
    }

    /// The address the gRPC listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address of the admin gRPC listener, when there is one.
    pub fn admin_grpc_addr(&self) -> Option<SocketAddr> {
        self.admin_grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address of the admin HTTP listener, when there is one.
    pub fn admin_http_addr(&self) -> Option<SocketAddr> {
        self.admin_http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The clock the server runs on.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Serves until `shutdown` resolves, then drains (see the module doc).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            settings,
            clock,
            store,
            keys,
            revocations,
            auth,
            apis,
            listener,
            local_addr,
            health,
            http_listener,
            http_addr,
            admin_grpc,
            admin_http,
            draining,
        } = self;

        store.ping().await.context("the database does not answer")?;
        health.set(true).await;
        let monitor = tokio::spawn(watch_database(
            store.clone(),
            health.clone(),
            settings.database.health_check_interval,
        ));
        // A single node writes every revocation itself; a cluster follows the others.
        let follower = settings.cluster.enabled.then(|| {
            tokio::spawn(crate::revocation::sync::follow(
                revocations.clone(),
                keys.clone(),
                clock.clone(),
                settings.revocation.poll_interval,
                settings.revocation.max_staleness,
            ))
        });
        let retention = tokio::spawn(retain(
            store.clone(),
            clock.clone(),
            RetentionPolicy {
                login_failures_kept: crate::store::FORGET_FAILURES_AFTER,
                audit_events_kept: chrono::Duration::from_std(settings.retention.audit_events)
                    .unwrap_or(chrono::Duration::MAX),
                batch_size: settings.retention.batch_size,
                max_batches: 100,
            },
            settings.retention.interval,
        ));
        let redis = revocations.redis().cloned();
        let auth_for_http = auth.clone();
        let ring_for_http = keys.ring().clone();
        let upkeep = tokio::spawn(upkeep(
            keys,
            revocations,
            auth,
            clock,
            settings.keys.reload_interval,
        ));
        let http_state = HttpState {
            auth: auth_for_http,
            store: store.clone(),
            ring: ring_for_http,
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
            ),
            connection_limits: crate::listener::ConnectionLimits::new(&settings.server, false),
            http_idle_timeout: settings.server.http_idle_timeout,
            metrics: crate::metrics::install(),
        };
        // Every listener but the main gRPC one stops when draining begins, after the delay.
        let drained = || {
            let mut draining = draining.subscribe();
            let delay = settings.server.drain_delay;
            async move {
                let _ = draining.wait_for(|draining| *draining).await;
                tokio::time::sleep(delay).await;
            }
        };
        let http_routes = if admin_http.is_some() {
            crate::http::Routes::Public
        } else {
            crate::http::Routes::All
        };
        let mut listeners: Vec<(&str, tokio::task::JoinHandle<()>)> = Vec::new();
        let serve_http = |listener, routes, state, stop| async move {
            if let Err(error) = crate::http::serve(listener, routes, state, stop).await {
                tracing::warn!(error = %error, "an HTTP server failed");
            }
        };
        listeners.push((
            "HTTP",
            tokio::spawn(serve_http(
                http_listener,
                http_routes,
                http_state.clone(),
                drained(),
            )),
        ));
        if let Some(listener) = admin_http {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(admin_http_addr = %addr, "Keystone is serving /metrics on {addr}");
            }
            listeners.push((
                "admin HTTP",
                tokio::spawn(serve_http(
                    listener,
                    crate::http::Routes::Admin,
                    http_state,
                    drained(),
                )),
            ));
        }
        let grpc_role = if admin_grpc.is_some() {
            grpc::Listener::Public
        } else {
            grpc::Listener::All
        };
        if let Some(listener) = admin_grpc {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(admin_grpc_addr = %addr, "Keystone is serving the admin APIs on {addr}");
            }
            let (settings, apis, health, stop) =
                (settings.clone(), apis.clone(), health.clone(), drained());
            listeners.push((
                "admin gRPC",
                tokio::spawn(async move {
                    let served = grpc::serve(
                        listener,
                        grpc::Listener::Admin,
                        &settings,
                        apis,
                        &health,
                        stop,
                    )
                    .await;
                    if let Err(error) = served {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "the admin gRPC server failed"
                        );
                    }
                }),
            ));
        }
        tracing::info!(http_addr = %http_addr, "Keystone is serving HTTP on {http_addr}");
        tracing::info!(grpc_addr = %local_addr, "Keystone is serving gRPC on {local_addr}");

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let drain_delay = settings.server.drain_delay;
        let signalled = {
            let health = health.clone();
            async move {
                shutdown.await;
                monitor.abort();
                upkeep.abort();
                retention.abort();
                health.set(false).await;
                let _ = draining.send(true);
                tracing::info!("health is NOT_SERVING; draining");
                tokio::time::sleep(drain_delay).await;
                // The listener closes as this future returns.
                let _ = draining_tx.send(());
            }
        };
        let grace = settings.server.shutdown_grace;
        let grace_expired = async move {
            match draining_rx.await {
                Ok(()) => tokio::time::sleep(grace).await,
                Err(_) => std::future::pending().await,
            }
        };

        let serve = grpc::serve(listener, grpc_role, &settings, apis, &health, signalled);
        let served = tokio::select! {
            result = serve => result.context("the gRPC server failed"),
            () = grace_expired => {
                tracing::warn!(
                    grace = %humantime::format_duration(grace),
                    "calls still in flight after the shutdown grace; stopping anyway"
                );
                Ok(())
            }
        };
        // The other listeners stopped taking requests when draining began; those in flight
        // get what is left of one grace, then everything still running is stopped, so that
        // nothing outlives the database pool closed below.
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut handle) in listeners {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                tracing::warn!(
                    listener = name,
                    "requests still in flight after the shutdown grace"
                );
                handle.abort();
            }
        }
        // Followed to the end: tokens are checked against a fresh set while draining.
        if let Some(follower) = follower {
            follower.abort();
        }
        if let Some(redis) = redis {
            redis.quit().await;
        }
        // Audit events still queued are written before the pool closes (within the grace).
        if tokio::time::timeout(grace, store.flush_audit())
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

/// Binds an optional listener.
async fn bind_optional(
    addr: Option<SocketAddr>,
    setting: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {setting} {addr}")
            })?))
        }
        None => Ok(None),
    }
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

/// The revocation set, loaded from the database, with Redis when `redis_url` is set.
pub async fn load_revocations(
    settings: &Settings,
    store: &Store,
    clock: &SharedClock,
) -> anyhow::Result<Revocations> {
    let revocations = Revocations::load(
        store.clone(),
        clock.now(),
        SyncSettings {
            clustered: settings.cluster.enabled,
            max_staleness: settings.revocation.max_staleness,
        },
    )
    .await
    .context("cannot load the revocation set")?;
    Ok(match &settings.redis_url {
        Some(url) => revocations.with_redis(
            Redis::connect(
                url,
                &settings.cluster.name,
                settings.revocation.redis_timeout,
                Duration::from_secs(2),
            )
            .await
            .context("cannot use redis_url")?,
        ),
        None => revocations,
    })
}

/// The user administration service.
pub fn user_admin_service(
    settings: &Settings,
    store: &Store,
    clock: &SharedClock,
    hasher: PasswordHasher,
    revocations: &Revocations,
    pepper: &Pepper,
) -> UserAdminService {
    UserAdminService::new(
        store.clone(),
        hasher,
        PasswordPolicy::new(settings.auth.password_min_length),
        clock.clone(),
        revocations.clone(),
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

/// Periodic upkeep: key lifecycle steps and reloads every `keys.reload_interval` (so key
/// changes made elsewhere arrive without a restart), revocations the database could not record
/// when asked written, and, every minute, revocations whose tokens have all expired dropped
/// from memory, idle rate-limit state forgotten and refused admin calls counted.
async fn upkeep(
    keys: KeyManager,
    revocations: Revocations,
    auth: AuthService,
    clock: SharedClock,
    every: Duration,
) {
    const PRUNE_EVERY: Duration = Duration::from_secs(60);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_prune = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if let Err(error) = keys.refresh().await {
            tracing::warn!(error = error.chain(), "cannot refresh the signing keys");
        }
        revocations.record_pending(clock.now()).await;
        record_gauges(&keys, &revocations, &clock);
        crate::metrics::run_upkeep();
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            auth.forget_idle_limits();
            auth.write_ended_refusals().await;
            revocations.prune(clock.now());
        }
    }
}

/// Retention (see [`crate::store::retention`]): every `every`, one replica deletes what has
/// expired, and the rows deleted are counted in `keystone_retention_deleted_total{table}`.
async fn retain(store: Store, clock: SharedClock, policy: RetentionPolicy, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Not at start: the first pass comes one interval after it.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match store.delete_expired(policy, clock.now()).await {
            Ok(Some(deleted)) => {
                for (table, rows) in deleted {
                    ::metrics::counter!("keystone_retention_deleted_total", "table" => table.name())
                        .increment(rows);
                    if rows > 0 {
                        tracing::debug!(table = table.name(), rows, "deleted expired rows");
                    }
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = error.chain(), "cannot delete expired rows"),
        }
    }
}

/// The gauges nothing else moves: revocation set size and staleness, Redis, key age.
#[allow(clippy::cast_precision_loss)]
fn record_gauges(keys: &KeyManager, revocations: &Revocations, clock: &SharedClock) {
    ::metrics::gauge!("keystone_revocations").set(revocations.len() as f64);
    ::metrics::gauge!("keystone_revocation_staleness_seconds")
        .set(revocations.staleness().as_secs_f64());
    if let Some(redis) = revocations.redis() {
        ::metrics::gauge!("keystone_redis_up").set(if redis.is_up() { 1.0 } else { 0.0 });
    }
    if let Some(since) = keys.ring().snapshot().signing_since() {
        ::metrics::gauge!("keystone_signing_key_age_seconds")
            .set((clock.now() - since).num_seconds().max(0) as f64);
    }
}

/// Pings the database on an interval and turns health NOT_SERVING while it does not answer.
async fn watch_database(store: Store, health: Health, every: Duration) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let answers = match tokio::time::timeout(every, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                if serving {
                    tracing::warn!(error = error.chain(), "the database does not answer");
                }
                false
            }
            Err(_) => {
                if serving {
                    tracing::warn!("the database did not answer in time");
                }
                false
            }
        };
        ::metrics::gauge!("keystone_database_up").set(if answers { 1.0 } else { 0.0 });
        if answers != serving {
            serving = answers;
            health.set(serving).await;
            tracing::info!(serving, "health changed with the database");
        }
    }
}
