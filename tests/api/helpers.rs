//! The test harness: `spawn_app` starts a real Keystone on a random port with a fresh database
//! (an SQLite file in a temporary directory, or, when `KEYSTONE_TEST_DATABASE_URL` is set, a
//! PostgreSQL database created for the test and dropped after it), and gives tonic clients.

use std::{io::Write as _, net::SocketAddr, sync::Arc};

use chrono::{TimeZone as _, Utc};
use keystone::{App, Settings, clock::ManualClock};
use sea_orm::{ConnectionTrait as _, Database};
use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// The PostgreSQL server tests may use: any database on it; each test makes its own.
pub const TEST_DATABASE_URL: &str = "KEYSTONE_TEST_DATABASE_URL";
/// The Redis server tests may use.
#[allow(dead_code)]
pub const TEST_REDIS_URL: &str = "KEYSTONE_TEST_REDIS_URL";

/// Says, past the test harness's output capture, that a test did not run in full.
pub fn say_skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
}

/// The PostgreSQL URL for tests, if set.
pub fn postgres_url() -> Option<String> {
    std::env::var(TEST_DATABASE_URL)
        .ok()
        .filter(|url| !url.is_empty())
}

/// A database that exists for one test.
pub enum TestDatabase {
    /// An SQLite file in a directory removed on drop.
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    /// A PostgreSQL database dropped on drop.
    Postgres {
        server_url: String,
        name: String,
        url: String,
    },
}

impl TestDatabase {
    /// A fresh database: PostgreSQL when `KEYSTONE_TEST_DATABASE_URL` is set, else SQLite.
    pub async fn fresh() -> Self {
        match postgres_url() {
            Some(server_url) => Self::fresh_postgres(&server_url).await,
            None => Self::fresh_sqlite(),
        }
    }

    /// A fresh SQLite file.
    pub fn fresh_sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("keystone.db").display()
        );
        TestDatabase::Sqlite { _dir: dir, url }
    }

    /// A fresh PostgreSQL database on the server at `server_url`.
    pub async fn fresh_postgres(server_url: &str) -> Self {
        let name = format!("keystone_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(server_url)
            .await
            .expect("KEYSTONE_TEST_DATABASE_URL must point at a PostgreSQL server that answers");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("the test role must be allowed to create databases");
        let _ = admin.close().await;
        let mut url = url::Url::parse(server_url).expect("KEYSTONE_TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        TestDatabase::Postgres {
            server_url: server_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }

    /// The URL Keystone connects to.
    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Sqlite { url, .. } | TestDatabase::Postgres { url, .. } => url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres {
            server_url, name, ..
        } = self
        {
            let (server_url, name) = (server_url.clone(), name.clone());
            // Drop runs inside the test's runtime, which cannot be blocked on; a thread with a
            // runtime of its own drops the database.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let admin = Database::connect(&server_url).await?;
                    admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await?;
                    admin.close().await?;
                    Ok::<_, anyhow::Error>(())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                say_skipped("dropping a test database", "it was left behind");
            }
        }
    }
}

/// Settings for a test server: port 0, the given database, everything else default.
pub fn test_settings(database_url: &str) -> Settings {
    Settings {
        database_url: SecretString::from(database_url.to_owned()),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Settings::default()
    }
}

/// A running Keystone for one test.
pub struct TestApp {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    /// The clock it runs on.
    #[allow(dead_code)]
    pub clock: ManualClock,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the server must be gone before its database is.
    _database: TestDatabase,
}

/// Starts Keystone with the default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts Keystone with test settings changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let database = TestDatabase::fresh().await;
    spawn_app_on(database, configure).await
}

/// Starts Keystone on an existing test database (to restart a server on the same data).
pub async fn spawn_app_on(
    database: TestDatabase,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(database.url());
    configure(&mut settings);
    settings.validate().expect("test settings are valid");

    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap());
    let app = App::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .expect("Keystone builds");
    let addr = app.local_addr();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = shutdown_rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("Keystone accepts connections");
    TestApp {
        addr,
        channel,
        clock,
        shutdown: Some(shutdown_tx),
        server: Some(server),
        _database: database,
    }
}

impl TestApp {
    /// The URL of the server's database, for checks the API cannot make yet.
    #[allow(dead_code)]
    pub fn database_url(&self) -> &str {
        self._database.url()
    }

    /// Asks the server to shut down, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }

    /// Stops the server and hands back its database, to start another server on it.
    #[allow(dead_code)]
    pub async fn stop_keeping_database(mut self) -> TestDatabase {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task ends")
                .expect("the server stops cleanly");
        }
        let placeholder = TestDatabase::fresh_sqlite();
        std::mem::replace(&mut self._database, placeholder)
    }

    /// Waits for the server to stop after `begin_shutdown`.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
