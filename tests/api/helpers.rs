//! The test harness: `spawn_app` starts a real Keystone on a random port with a fresh database
//! (an SQLite file in a temporary directory, or, when `KEYSTONE_TEST_DATABASE_URL` is set, a
//! PostgreSQL database created for the test and dropped after it), and gives tonic clients.

use std::{io::Write as _, net::SocketAddr, sync::Arc};

use chrono::{TimeZone as _, Utc};
use keystone::{
    App, Settings,
    clock::ManualClock,
    config::SecretSettings,
    domain::{AuditRecord, Email, NewClient, NewUser, Outcome, RoleName, Username},
    password::PasswordHasher,
    proto::pb::{
        IssueTokenRequest, PasswordGrant, TokenResponse, auth_client::AuthClient,
        client_admin_client::ClientAdminClient, issue_token_request::Grant,
        user_admin_client::UserAdminClient,
    },
    secrets::Pepper,
    store::Store,
};
use sea_orm::{ConnectionTrait as _, Database};
use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// The PostgreSQL server tests may use: any database on it; each test makes its own.
pub const TEST_DATABASE_URL: &str = "KEYSTONE_TEST_DATABASE_URL";
/// The Redis server tests may use.
#[allow(dead_code)]
pub const TEST_REDIS_URL: &str = "KEYSTONE_TEST_REDIS_URL";

/// The pepper of test servers.
pub const TEST_PEPPER: &str = "test-pepper-0123456789abcdefghijklmnopqrstuvwxyz";

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
            let left = name.clone();
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
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** the test database {left} could not be dropped: it was left behind ***\n"
                );
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
        secrets: SecretSettings {
            pepper: Some(SecretString::from(TEST_PEPPER)),
            ..SecretSettings::default()
        },
        ..Settings::default()
    }
}

/// A running Keystone for one test.
pub struct TestApp {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    /// Where it serves HTTP.
    #[allow(dead_code)]
    pub http_addr: SocketAddr,
    /// Where it serves the admin APIs, when on their own listener.
    #[allow(dead_code)]
    pub admin_grpc_addr: Option<SocketAddr>,
    /// Where it serves `/metrics`, when on its own listener.
    #[allow(dead_code)]
    pub admin_http_addr: Option<SocketAddr>,
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
    spawn_app_at(
        database,
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap(),
        configure,
    )
    .await
}

/// Starts Keystone with its clock at `now` (tests that meet real-time verifiers).
pub async fn spawn_app_at(
    database: TestDatabase,
    now: chrono::DateTime<Utc>,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn(database, now, configure, None).await
}

/// Starts Keystone speaking TLS (`configure` sets `tls.*`); its channel connects to
/// `localhost` with `client` (the CA to trust, and a client certificate if any).
#[allow(dead_code)]
pub async fn spawn_app_tls(
    configure: impl FnOnce(&mut Settings),
    client: tonic::transport::ClientTlsConfig,
) -> TestApp {
    let database = TestDatabase::fresh().await;
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    spawn(database, now, configure, Some(client)).await
}

async fn spawn(
    database: TestDatabase,
    now: chrono::DateTime<Utc>,
    configure: impl FnOnce(&mut Settings),
    client_tls: Option<tonic::transport::ClientTlsConfig>,
) -> TestApp {
    let mut settings = test_settings(database.url());
    configure(&mut settings);
    settings.validate().expect("test settings are valid");

    let clock = ManualClock::new(now);
    let app = App::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .expect("Keystone builds");
    let addr = app.local_addr();
    let http_addr = app.http_addr();
    let (admin_grpc_addr, admin_http_addr) = (app.admin_grpc_addr(), app.admin_http_addr());
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = shutdown_rx.await;
    }));
    let channel = match client_tls {
        None => Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("Keystone accepts connections"),
        Some(tls) => Channel::from_shared(format!("https://localhost:{}", addr.port()))
            .expect("a valid URI")
            .tls_config(tls)
            .expect("a TLS client")
            .connect()
            .await
            .expect("Keystone accepts TLS connections"),
    };
    TestApp {
        addr,
        http_addr,
        admin_grpc_addr,
        admin_http_addr,
        channel,
        clock,
        shutdown: Some(shutdown_tx),
        server: Some(server),
        _database: database,
    }
}

impl TestApp {
    /// A client of `keystone.v1.Auth`.
    #[allow(dead_code)]
    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }

    /// A client of `keystone.v1.UserAdmin`.
    #[allow(dead_code)]
    pub fn user_admin(&self) -> UserAdminClient<Channel> {
        UserAdminClient::new(self.channel.clone())
    }

    /// A client of `keystone.v1.ClientAdmin`.
    #[allow(dead_code)]
    pub fn client_admin(&self) -> ClientAdminClient<Channel> {
        ClientAdminClient::new(self.channel.clone())
    }

    /// Seeds an admin (role `admin`) named `root` and returns an access token of theirs, for
    /// Keystone, with `keystone:admin` (asked for by name: it is never implied).
    #[allow(dead_code)]
    pub async fn admin_token(&self) -> String {
        self.create_user("root", ADMIN_PASSWORD, &["admin"]).await;
        self.admin_relogin().await
    }

    /// The audit events with `action`, as `token` (one allowed `keystone:audit.read`) reads
    /// them, the newest first.
    #[allow(dead_code)]
    pub async fn audit_events(
        &self,
        token: &str,
        action: &str,
    ) -> Vec<keystone::proto::pb::AuditEvent> {
        self.user_admin()
            .list_audit_events(with_bearer(
                keystone::proto::pb::ListAuditEventsRequest {
                    action: action.to_owned(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .expect("the audit trail can be read")
            .into_inner()
            .events
    }

    /// A fresh access token of the admin seeded by `admin_token` (after the clock moved).
    #[allow(dead_code)]
    pub async fn admin_relogin(&self) -> String {
        self.login_with("root", ADMIN_PASSWORD, &[ADMIN_SCOPE], "")
            .await
            .expect("the admin logs in")
            .access_token
    }

    /// Seeds a role `<name>-role` with `scopes` and a user `name` holding it, and returns an
    /// access token of theirs (it carries exactly `scopes`, asked for by name: Keystone's own
    /// are never implied; with one of those, it is for Keystone's audience).
    #[allow(dead_code)]
    pub async fn token_with_scopes(&self, name: &str, scopes: &[&str]) -> String {
        let store = self.store().await;
        let role = format!("{name}-role");
        store
            .insert_role(
                &RoleName::parse(&role).unwrap(),
                "",
                &scopes
                    .iter()
                    .map(|s| keystone::domain::Scope::parse(s).unwrap())
                    .collect::<Vec<_>>(),
                false,
                &AuditRecord::new("test", "role.create", &role, Outcome::Success),
                Utc::now(),
            )
            .await
            .unwrap();
        store.close().await;
        self.create_user(name, ADMIN_PASSWORD, &[&role]).await;
        self.login_with(name, ADMIN_PASSWORD, scopes, "")
            .await
            .expect("the user logs in")
            .access_token
    }

    /// A store on the server's database, for seeding and for checks the API cannot make.
    #[allow(dead_code)]
    pub async fn store(&self) -> Store {
        Store::connect(
            &SecretString::from(self.database_url().to_owned()),
            &Settings::default().database,
        )
        .await
        .unwrap()
    }

    /// Creates a user straight in the database, returning its id.
    #[allow(dead_code)]
    pub async fn create_user(&self, username: &str, password: &str, roles: &[&str]) -> uuid::Uuid {
        self.create_user_with(username, password, roles, false)
            .await
    }

    /// Like `create_user`, choosing whether the user must change the password first.
    #[allow(dead_code)]
    pub async fn create_user_with(
        &self,
        username: &str,
        password: &str,
        roles: &[&str],
        password_change_required: bool,
    ) -> uuid::Uuid {
        let store = Store::connect(
            &SecretString::from(self.database_url().to_owned()),
            &Settings::default().database,
        )
        .await
        .unwrap();
        let hasher = PasswordHasher::new(&Settings::default().auth.argon2).unwrap();
        let user = store
            .insert_user(
                NewUser {
                    username: Username::parse(username).unwrap(),
                    email: Email::parse(&format!("{username}@example.com")).unwrap(),
                    password_hash: hasher
                        .hash(&SecretString::from(password.to_owned()))
                        .await
                        .unwrap(),
                    enabled: true,
                    email_verified: true,
                    password_change_required,
                    roles: roles.iter().map(|r| RoleName::parse(r).unwrap()).collect(),
                    default_roles: false,
                },
                &AuditRecord::new("test", "user.create", "", Outcome::Success),
                Utc::now(),
            )
            .await
            .unwrap();
        store.close().await;
        user.id
    }

    /// Creates a service client straight in the database (the admin API is not built yet) and
    /// returns its secret.
    #[allow(dead_code)]
    pub async fn create_client(
        &self,
        client_id: &str,
        scopes: &[&str],
        audiences: &[&str],
        ttl: Option<std::time::Duration>,
        enabled: bool,
    ) -> String {
        let store = Store::connect(
            &SecretString::from(self.database_url().to_owned()),
            &Settings::default().database,
        )
        .await
        .unwrap();
        let secret = format!("kss_{}", uuid::Uuid::new_v4().simple());
        let pepper = Pepper::from_secret(&SecretString::from(TEST_PEPPER));
        store
            .insert_client(
                NewClient {
                    client_id: client_id.to_owned(),
                    name: client_id.to_owned(),
                    description: String::new(),
                    allowed_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    allowed_audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
                    access_token_ttl: ttl,
                    enabled,
                    certificate: Default::default(),
                    certificate_bound_tokens: false,
                    token_exchange: false,
                    jwks_json: None,
                    federated_identities: Vec::new(),
                },
                Some(pepper.hash_client_secret(&secret)),
                &AuditRecord::new("test", "client.create", client_id, Outcome::Success),
                Utc::now(),
            )
            .await
            .unwrap();
        store.close().await;
        secret
    }

    /// The client credentials grant.
    #[allow(dead_code)]
    pub async fn client_token(
        &self,
        client_id: &str,
        secret: &str,
        scopes: &[&str],
        audience: &str,
    ) -> Result<TokenResponse, tonic::Status> {
        self.auth()
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::ClientCredentials(
                    keystone::proto::pb::ClientCredentialsGrant {
                        client_id: client_id.to_owned(),
                        client_secret: secret.to_owned(),
                        ..Default::default()
                    },
                )),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                audience: audience.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Uses a refresh token.
    #[allow(dead_code)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, tonic::Status> {
        self.auth()
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::RefreshToken(
                    keystone::proto::pb::RefreshTokenGrant {
                        refresh_token: refresh_token.to_owned(),
                    },
                )),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Logs in with the password grant.
    #[allow(dead_code)]
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<TokenResponse, tonic::Status> {
        self.login_with(username, password, &[], "").await
    }

    /// Logs in asking for scopes and an audience.
    #[allow(dead_code)]
    pub async fn login_with(
        &self,
        username: &str,
        password: &str,
        scopes: &[&str],
        audience: &str,
    ) -> Result<TokenResponse, tonic::Status> {
        self.auth()
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::Password(PasswordGrant {
                    username: username.to_owned(),
                    password: password.to_owned(),
                })),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                audience: audience.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

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

/// The scope that allows everything an admin can do.
pub const ADMIN_SCOPE: &str = "keystone:admin";

/// The password of seeded admins and scoped users.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple 42";

/// The active signing key's row as stored: its kid and its (sealed) private key.
#[allow(dead_code)]
pub async fn stored_active_key(database_url: &str) -> (String, Vec<u8>) {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    let db = Database::connect(database_url).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT kid, private_key FROM signing_keys WHERE state = 'active'",
        ))
        .await
        .unwrap()
        .unwrap();
    let stored = (
        row.try_get("", "kid").unwrap(),
        row.try_get("", "private_key").unwrap(),
    );
    db.close().await.unwrap();
    stored
}

/// The active signing key's PKCS#8 DER: read from the database at `database_url` and opened
/// with the key-encryption key of the test pepper (what a leaked database alone cannot do).
#[allow(dead_code)]
pub async fn active_private_key(database_url: &str) -> Vec<u8> {
    active_private_key_sealed_with(database_url, None).await
}

/// The same, for a server with `secrets.key_encryption_key = kek`.
#[allow(dead_code)]
pub async fn active_private_key_sealed_with(database_url: &str, kek: Option<&str>) -> Vec<u8> {
    let (kid, stored) = stored_active_key(database_url).await;
    let pepper = keystone::secrets::Pepper::from_secret(&SecretString::from(TEST_PEPPER));
    let settings = SecretSettings {
        key_encryption_key: kek
            .map(|kek| keystone::secrets::KeyEncryptionKey::decode(kek).unwrap()),
        ..SecretSettings::default()
    };
    let sealer = keystone::token::sealing::KeySealer::from_settings(&settings, &pepper).unwrap();
    sealer.open(&kid, &stored).unwrap().private_key
}

/// The field a `BadRequest` detail of a status names.
#[allow(dead_code)]
pub fn bad_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .and_then(|bad| bad.field_violations.first())
        .map(|violation| violation.field.clone())
        .unwrap_or_default()
}

/// The `ErrorInfo` reason of a status.
#[allow(dead_code)]
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// Asserts that `result` failed with `code` and the `ErrorInfo` reason `expected` (`case`
/// names the attempt); the status, for more checks.
#[track_caller]
#[allow(dead_code)]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    expected: &str,
    case: &str,
) -> tonic::Status {
    let status = result.expect_err(case);
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, expected),
        "{case}: {status:?}"
    );
    status
}

/// A request with `authorization: Bearer <token>`.
#[allow(dead_code)]
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a valid header value"),
    );
    request
}

/// An HTTP/1.1 response: status, headers (names lowercased) and body.
#[allow(dead_code)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

#[allow(dead_code)]
impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection, through hyper's client (so chunked and
/// length-delimited bodies are read as any client reads them).
#[allow(dead_code)]
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    use http_body_util::Full;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        // The server may close first (it answered, or refused): nothing to do then.
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    read_response(sender.send_request(request).await.unwrap()).await
}

/// A response read whole.
#[allow(dead_code)]
pub async fn read_response(response: http::Response<hyper::body::Incoming>) -> HttpResponse {
    use http_body_util::BodyExt as _;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A child process killed if the guard is dropped before [`ChildGuard::into_inner`], so that
/// a test that panics while starting it leaves nothing running.
#[allow(dead_code)]
pub struct ChildGuard(Option<std::process::Child>);

#[allow(dead_code)]
impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// The child.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("a guarded child")
    }

    /// The child, no longer guarded.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("a guarded child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of one metric series (`name{labels}` exactly as rendered) in a Prometheus text
/// exposition, if present.
#[allow(dead_code)]
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The address that follows `marker` in a log line of Keystone's, text or JSON.
#[allow(dead_code)]
pub fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    rest.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect::<String>()
        .parse()
        .ok()
}

/// Runs `command` (a `keystone serve`), waits until it says where it serves gRPC, and
/// connects to it. Its output is read to the end, so that it never blocks on a full pipe; the
/// process is killed if it never serves.
#[allow(dead_code)]
pub async fn serving_process(mut command: std::process::Command) -> (std::process::Child, Channel) {
    use std::io::BufRead as _;
    let mut child = ChildGuard::new(
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("keystone starts"),
    );
    let stdout = child.child().stdout.take().expect("piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut log = Vec::new();
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.split("serving gRPC on ").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            log.push(line);
        }
        panic!("keystone exited before serving: {log:#?}");
    })
    .await
    .expect("keystone serves within a minute");
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("keystone accepts connections");
    (child.into_inner(), channel)
}
