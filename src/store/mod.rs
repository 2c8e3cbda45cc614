//! Persistence over the sea-orm connection (PostgreSQL or SQLite). Entities never leave this
//! module: queries return domain types. `DbErr` becomes [`Error`] here, with unique violations
//! as `AlreadyExists` and lost connections as `Unavailable`; driver text never reaches a caller.
//!
//! Layer: infrastructure. Uses [`crate::domain`], [`crate::config`], [`crate::error`] and
//! [`crate::clock`]; never the revocation set, the cluster or the token code above it.

mod audit;
mod clients;
pub mod entity;
mod keys;
mod logins;
mod refresh_tokens;
pub mod retention;
pub(crate) mod revocations;
mod roles;
pub(crate) mod users;

pub use audit::AuditFilter;
pub use clients::{CachedClient, ClientChanges, ClientSecretRecord, SecretRotation};
pub use keys::{KeyTransition, StoredKey};
pub use logins::{FORGET_FAILURES_AFTER, LockoutPolicy, LoginRecord};
pub use refresh_tokens::{NewRefreshToken, RefreshRecord, Rotation, SessionOrigin};
pub use retention::RetentionPolicy;
pub use roles::RoleChanges;
pub use users::{UserChange, UserFilter, UserGrants};

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbErr, SqlErr,
    TransactionTrait as _,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use secrecy::ExposeSecret;

use crate::{
    config::DatabaseSettings,
    domain::ScopeSet,
    error::{Error, Reason},
};

/// What the service decides about a change the store applies in one transaction: whether
/// the target may be changed (`permit`, given the target's scopes and audiences (a client's;
/// none for a user) as they stand once the change holds its locks, so no concurrent grant slips between check and change), and the
/// revocation of the target's tokens (`revoke`, called right before the commit so that it
/// covers every token issued from state read before the change).
pub struct ChangeGuard<'a> {
    /// Refuses the change, given what the target holds.
    pub permit: &'a Permit<'a>,
    /// Makes the revocation of the target's tokens, stamped when called.
    pub revoke: Option<&'a (dyn Fn() -> crate::domain::Revocation + Sync)>,
}

/// Judges a change, given what the target holds (see [`ChangeGuard`]).
pub type Permit<'a> = dyn Fn(&Holdings<'_>) -> Result<(), Error> + Sync + 'a;

/// What the target of a change holds, as read under its lock: the powers a caller must have
/// to change it.
#[derive(Debug, Clone, Copy)]
pub struct Holdings<'a> {
    /// Its scopes (a user's through roles, a client's allowed ones).
    pub scopes: &'a ScopeSet,
    /// A client's allowed audiences.
    pub audiences: &'a [String],
    /// Whether a client authenticates without a secret: by TLS certificate or by its keys.
    pub secretless: bool,
    /// Whether a client may exchange tokens on its subjects' behalf.
    pub token_exchange: bool,
}

/// Scopes as stored, read into a set. Each was checked on its way in; one that does not parse
/// now (a rule added since, a row written by hand) is logged and left out: it is never
/// granted, and it locks no one out of the rest.
pub(crate) fn stored_scopes(names: &[String]) -> ScopeSet {
    let mut scopes = ScopeSet::default();
    for name in names {
        match crate::domain::Scope::parse(name) {
            Ok(scope) => scopes.insert(scope),
            Err(error) => {
                tracing::error!(scope = %name, %error, "a stored scope is invalid: left out");
            }
        }
    }
    scopes
}

impl std::fmt::Debug for ChangeGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeGuard")
            .field("revoke", &self.revoke.is_some())
            .finish_non_exhaustive()
    }
}

impl ChangeGuard<'_> {
    /// Writes the revocation `revoke` makes, if any, in the change's transaction, and returns
    /// it.
    pub(crate) async fn write_revocation(
        &self,
        txn: &sea_orm::DatabaseTransaction,
    ) -> Result<Option<crate::domain::Revocation>, Error> {
        let Some(make) = self.revoke else {
            return Ok(None);
        };
        let revocation = make();
        revocations::upsert(txn, &revocation).await?;
        Ok(Some(revocation))
    }
}

/// The database behind Keystone.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// A pool of its own for admin listings and audit reads (a bulkhead): however many of
    /// those run, or however slow, they cannot take the connections logins and token
    /// issuance need. The same pool as `db` for an in-memory database.
    reports: DatabaseConnection,
    /// SQLite takes one writer at a time, and a writer that finds the file locked sleeps in
    /// SQLite's busy handler (1 ms, 2 ms, 5 ms, …) long after the lock is free. So on SQLite
    /// the frequent writes (logins, refresh rotations, audit batches) take turns here instead,
    /// and wait only as long as the write before them. `None` on PostgreSQL.
    writes: Option<WriteGate>,
    audit: audit::AuditQueue,
    clients: std::sync::Arc<clients::ClientCache>,
}

/// The most connections to a SQLite file (see [`Store::connect`]).
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// The turn of one writer on SQLite (see [`Store`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteGate(std::sync::Arc<tokio::sync::Mutex<()>>);

impl WriteGate {
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock().await
    }
}

/// Waits for this process's turn to write (SQLite); nothing to wait for on PostgreSQL.
/// Never call a gated method while holding a turn: the gate is not reentrant.
pub(crate) async fn write_turn(
    gate: Option<&WriteGate>,
) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    match gate {
        Some(gate) => Some(gate.turn().await),
        None => None,
    }
}

/// What replicas take turns at.
#[derive(Debug, Clone, Copy)]
pub enum ReplicaLock {
    /// Applying migrations at start.
    Migrations,
    /// Creating, promoting and retiring signing keys.
    Keys,
    /// Deleting expired rows (see [`retention`]).
    Retention,
}

/// The key of `what`'s PostgreSQL advisory lock: arbitrary and fixed ("KS" and a number).
fn advisory_key(what: ReplicaLock) -> i64 {
    match what {
        ReplicaLock::Migrations => 0x4B53_0001,
        ReplicaLock::Keys => 0x4B53_0002,
        ReplicaLock::Retention => 0x4B53_0003,
    }
}

/// A lock held across replicas until released (a PostgreSQL advisory lock held by an open
/// transaction, on a connection of its own: the work it guards runs on the others, so a pool
/// on PostgreSQL needs at least two connections). On SQLite, which has one writer and serves
/// one node, there is nothing to hold.
#[derive(Debug)]
pub struct HeldLock(Option<sea_orm::DatabaseTransaction>);

impl HeldLock {
    /// Lets the next replica in.
    pub async fn release(self) {
        if let Some(txn) = self.0
            && let Err(error) = txn.commit().await
        {
            tracing::debug!(error = %error, "releasing a replica lock");
        }
    }
}

/// Whether a migration is applied, as `keystone migrate status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// The migration's name.
    pub name: String,
    /// Whether it has been applied.
    pub applied: bool,
}

impl Store {
    /// Opens the connection pools and checks that the database answers.
    pub async fn connect(
        database_url: &secrecy::SecretString,
        settings: &DatabaseSettings,
    ) -> Result<Self, Error> {
        let url = database_url.expose_secret();
        // An in-memory SQLite database exists per connection: a pool of several would see
        // several empty databases.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // SQLite has one writer at a time and readers that never wait for it (WAL): a few
        // connections serve as well as many, and each costs a thread and its page cache.
        let sqlite = url.starts_with("sqlite:");
        let (max, reports_max) = if in_memory {
            (1, 0)
        } else if sqlite {
            (
                settings.max_connections.min(SQLITE_MAX_CONNECTIONS),
                settings.admin_max_connections.min(1),
            )
        } else {
            (settings.max_connections, settings.admin_max_connections)
        };
        let min = if in_memory {
            1
        } else {
            settings.min_connections.min(max)
        };
        let db = Database::connect(pool_options(url, settings, max, min))
            .await
            .map_err(unavailable)?;
        warm_up(&db, max).await;
        let reports = if reports_max == 0 {
            db.clone()
        } else {
            // Opened when a report first needs it, not at start.
            let mut options = pool_options(url, settings, reports_max, 0);
            options.connect_lazy(true);
            Database::connect(options).await.map_err(unavailable)?
        };
        Ok(Self::from_connections(db, reports))
    }

    /// The store over an existing connection (call it on a Tokio runtime: it starts the
    /// audit writer). Clients are not cached until [`Store::caching_clients`].
    pub fn from_connection(db: DatabaseConnection) -> Self {
        Self::from_connections(db.clone(), db)
    }

    fn from_connections(db: DatabaseConnection, reports: DatabaseConnection) -> Self {
        let writes = (db.get_database_backend() == sea_orm::DatabaseBackend::Sqlite)
            .then(WriteGate::default);
        Self {
            audit: audit::AuditQueue::start(db.clone(), writes.clone()),
            writes,
            clients: std::sync::Arc::new(clients::ClientCache::new(Duration::ZERO)),
            db,
            reports,
        }
    }

    /// The same store, remembering clients and their secrets for up to `ttl` (see
    /// [`Store::client_for_login`]); zero turns the cache off.
    #[must_use]
    pub fn caching_clients(mut self, ttl: Duration) -> Self {
        self.clients = std::sync::Arc::new(clients::ClientCache::new(ttl));
        self
    }

    /// This process's turn to write, on SQLite (see [`Store`]).
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        write_turn(self.writes.as_ref()).await
    }

    /// A transaction that writes, with this process's turn to write on SQLite, held until
    /// both are dropped (the transaction first: bind them as `let (_turn, txn)`). Every write
    /// transaction takes the turn: SQLite lets a transaction that read before another
    /// connection's commit not write at all (`SQLITE_BUSY`, without waiting), so on one file
    /// the writers must take turns, not race.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<
        (
            Option<tokio::sync::MutexGuard<'_, ()>>,
            sea_orm::DatabaseTransaction,
        ),
        Error,
    > {
        let turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(db_error)?;
        Ok((turn, txn))
    }

    /// The underlying connection, for the other store modules.
    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The pool of admin listings and audit reads (see [`Store`]).
    pub(crate) fn reports_db(&self) -> &DatabaseConnection {
        &self.reports
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(unavailable)
    }

    /// Applies pending migrations (all, or the next `steps`), one replica at a time.
    pub async fn migrate_up(&self, steps: Option<u32>) -> Result<(), Error> {
        let lock = self.lock_replicas(ReplicaLock::Migrations).await?;
        let result = Migrator::up(&self.db, steps).await.map_err(db_error);
        lock.release().await;
        result
    }

    /// Waits for `what`'s lock across replicas, and holds it until released.
    pub async fn lock_replicas(&self, what: ReplicaLock) -> Result<HeldLock, Error> {
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(HeldLock(None));
        }
        let txn = self.db.begin().await.map_err(db_error)?;
        // A replica stuck holding the lock must not stall the others for ever.
        txn.execute_unprepared("SET LOCAL lock_timeout = '30s'")
            .await
            .map_err(db_error)?;
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [advisory_key(what).into()],
        ))
        .await
        .map_err(db_error)?;
        Ok(HeldLock(Some(txn)))
    }

    /// Takes `what`'s lock across replicas if no other replica holds it: `None` if one does.
    pub async fn try_lock_replicas(&self, what: ReplicaLock) -> Result<Option<HeldLock>, Error> {
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(Some(HeldLock(None)));
        }
        let txn = self.db.begin().await.map_err(db_error)?;
        let taken: bool = txn
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock($1) AS taken",
                [advisory_key(what).into()],
            ))
            .await
            .map_err(db_error)?
            .map(|row| row.try_get("", "taken"))
            .transpose()
            .map_err(db_error)?
            .unwrap_or(false);
        if taken {
            Ok(Some(HeldLock(Some(txn))))
        } else {
            HeldLock(Some(txn)).release().await;
            Ok(None)
        }
    }

    /// Rolls back the last `steps` applied migrations.
    pub async fn migrate_down(&self, steps: u32) -> Result<(), Error> {
        Migrator::down(&self.db, Some(steps))
            .await
            .map_err(db_error)
    }

    /// Every migration Keystone knows, in order, and whether it is applied.
    pub async fn migration_status(&self) -> Result<Vec<MigrationState>, Error> {
        let migrations = Migrator::get_migration_with_status(&self.db)
            .await
            .map_err(db_error)?;
        Ok(migrations
            .into_iter()
            .map(|migration| MigrationState {
                name: migration.name().to_owned(),
                applied: migration.status().to_string() == "Applied",
            })
            .collect())
    }

    /// Closes the pools.
    pub async fn close(&self) {
        for pool in [&self.reports, &self.db] {
            if let Err(error) = pool.close_by_ref().await {
                tracing::debug!(error = %error, "closing a database pool");
            }
        }
    }
}

/// The options of one pool of `max` connections. A PostgreSQL password is taken out of the
/// URL and handed to the driver apart: sea-orm logs the options, URL included, at debug level.
fn pool_options(url: &str, settings: &DatabaseSettings, max: u32, min: u32) -> ConnectOptions {
    let (url, password) = without_password(url);
    let mut options = ConnectOptions::new(url);
    if let Some(password) = password {
        options.map_sqlx_postgres_opts(move |options| options.password(&password));
    }
    options
        .max_connections(max)
        .min_connections(min)
        .connect_timeout(settings.connect_timeout)
        // A call that finds every connection taken waits this long, then answers UNAVAILABLE.
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Duration::from_secs(600))
        // A connection used within the last second is handed out as it is; only one idle
        // longer (which a restart, a proxy or a firewall may have dropped) is pinged first.
        // sqlx's default pings on every checkout: a round trip on the path of every
        // statement (it still pings each connection as it goes back, off the call's path).
        .test_before_acquire_if_idle_for(Duration::from_secs(1))
        // Statements are logged by our own spans; sqlx's log adds nothing but noise.
        .sqlx_logging(false)
        // SQLite: write-ahead logging, so readers never wait for the writer, and commits
        // that append to the log without an fsync each (NORMAL is durable against a
        // crashed process; a power cut may lose the last commits, never corrupt the file).
        // Writers queue for up to five seconds rather than fail at once.
        .map_sqlx_sqlite_opts(|options| {
            options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
        });
    options
}

/// Connections a start holds at once on PostgreSQL (the replica lock's transaction, the
/// migrator's own, the key ring's lock; counted from a start's log).
const START_CONNECTIONS: u32 = 4;

/// Opens the connections a start needs together rather than one after another: on PostgreSQL
/// each is a TCP, TLS and authentication handshake (about 100 ms on loopback with TLS). What
/// fails here changes nothing: the pool opens connections as they are needed.
async fn warm_up(db: &DatabaseConnection, max: u32) {
    if db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return;
    }
    let pool = db.get_postgres_connection_pool();
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..START_CONNECTIONS.min(max) {
        let pool = pool.clone();
        opening.spawn(async move { pool.acquire().await });
    }
    // Held until all are open, so that each is a connection of its own; then back to the pool.
    let opened = opening.join_all().await;
    drop(opened);
}

/// A `postgres://` URL without its password, and the password (percent-decoded); any other
/// URL as it is.
fn without_password(url: &str) -> (String, Option<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_owned(), None);
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return (url.to_owned(), None);
    }
    // In the authority, or as a `password` parameter (both are sqlx's).
    let in_query = parsed
        .query_pairs()
        .find(|(name, _)| name == "password")
        .map(|(_, value)| value.into_owned());
    let in_authority = parsed.password().map(|password| {
        percent_encoding::percent_decode_str(password)
            .decode_utf8_lossy()
            .into_owned()
    });
    let Some(password) = in_authority.or(in_query.clone()) else {
        return (url.to_owned(), None);
    };
    if parsed.set_password(None).is_err() {
        return (url.to_owned(), None);
    }
    if in_query.is_some() {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(name, _)| name != "password")
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    (parsed.to_string(), Some(password))
}

/// Like [`db_error`], but a unique violation gets `message`, which names what collided.
pub(crate) fn db_error_or_exists(message: String) -> impl FnOnce(DbErr) -> Error {
    move |error| match db_error(error) {
        Error::AlreadyExists { .. } => Error::AlreadyExists { message },
        other => other,
    }
}

/// The database could not be reached.
fn unavailable(source: DbErr) -> Error {
    Error::Unavailable {
        reason: Reason::Unavailable,
        what: "the database",
        source: Some(source.into()),
    }
}

/// Turns a database error into the crate error. Unique violations become `AlreadyExists`
/// (callers that know what collided give a better message), lost connections and a busy or
/// stopping database `Unavailable`.
pub(crate) fn db_error(error: DbErr) -> Error {
    if let Some(SqlErr::UniqueConstraintViolation(_)) = error.sql_err() {
        return Error::AlreadyExists {
            message: "it already exists".to_owned(),
        };
    }
    // PostgreSQL refuses text it cannot store (a NUL character, 22021; 22P05): the input was
    // bad, not the server. Validation turns such input away first; this is the net under it.
    if let DbErr::Query(sea_orm::RuntimeErr::SqlxError(source))
    | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(source)) = &error
        && let Some(code) = source.as_database_error().and_then(|e| e.code())
        && matches!(code.as_ref(), "22021" | "22P05")
    {
        return Error::invalid_argument("request", "contains characters that cannot be stored");
    }
    if is_transient(&error) {
        unavailable(error)
    } else {
        Error::internal(error)
    }
}

/// Whether a failure says the database was unreachable, busy or going away (worth trying
/// again as it is), not that it refused what was sent: no connection, a connection lost
/// mid-statement (a connection handed out unpinged may have died with a restart), or one of
/// the codes of [`passes`].
pub(crate) fn is_transient(error: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(source))
        | DbErr::Query(RuntimeErr::SqlxError(source)) => match &**source {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(database) => database.code().is_some_and(|code| passes(&code)),
            _ => false,
        },
        _ => false,
    }
}

/// Whether a database error code says the database was busy or going away, not that it
/// refused the statement: PostgreSQL's SQLSTATEs (five characters) of lost connections (08),
/// serialization failures and deadlocks (40001, 40P01), exhausted resources (53),
/// a server shutting down or starting (57P01–57P03), a lock not available (55P03) and a
/// standby that cannot write yet (25006); SQLite's (extended) result codes of a busy or locked
/// database.
fn passes(code: &str) -> bool {
    if code.len() == 5 {
        return matches!(&code[..2], "08" | "53")
            || matches!(
                code,
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "25006"
            );
    }
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
    code.parse::<u32>()
        .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_scope_that_no_longer_parses_is_left_out_not_granted() {
        let stored = ["orders:read", "Not A Scope", "keystone:admin"].map(str::to_owned);
        let scopes = stored_scopes(&stored);
        assert_eq!(scopes.to_strings(), ["keystone:admin", "orders:read"]);
    }

    #[test]
    fn a_postgres_password_leaves_the_url() {
        assert_eq!(
            without_password("postgres://keystone:s%40cret@db:5432/keystone?sslmode=require"),
            (
                "postgres://keystone@db:5432/keystone?sslmode=require".to_owned(),
                Some("s@cret".to_owned())
            )
        );
        assert_eq!(
            without_password("postgres://keystone@db/keystone?password=s3cret&sslmode=require"),
            (
                "postgres://keystone@db/keystone?sslmode=require".to_owned(),
                Some("s3cret".to_owned())
            )
        );
        assert_eq!(
            without_password("postgresql://keystone@db/keystone?password=s3cret"),
            (
                "postgresql://keystone@db/keystone".to_owned(),
                Some("s3cret".to_owned())
            )
        );
        assert_eq!(
            without_password("postgres://keystone@db/keystone"),
            ("postgres://keystone@db/keystone".to_owned(), None)
        );
        assert_eq!(
            without_password("sqlite://keystone.db?mode=rwc"),
            ("sqlite://keystone.db?mode=rwc".to_owned(), None)
        );
    }
}
