//! Several replicas: real `keystone` processes on loopback ports sharing one PostgreSQL
//! database and one Redis (from `KEYSTONE_TEST_DATABASE_URL` and `KEYSTONE_TEST_REDIS_URL`;
//! skipped loudly without them). Outages are made with TCP proxies the test owns between a
//! replica and PostgreSQL or Redis, so the shared servers are never stopped.

use std::{
    net::SocketAddr,
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keystone::proto::pb::{
    AuthenticateRequest, Client as ClientMessage, CreateClientRequest, RegisterRequest,
    RevokeRequest, RotateClientSecretRequest, UpdateClientRequest, WatchRevocationsRequest,
    auth_client::AuthClient, client_admin_client::ClientAdminClient,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{Code, transport::Channel};

use crate::{
    cli::keystone,
    helpers::{
        TEST_PEPPER, TEST_REDIS_URL, TestDatabase, postgres_url, reason, say_skipped, with_bearer,
    },
};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// The PostgreSQL server and Redis the test may use, or why it is skipped.
pub(crate) fn backends(test: &str) -> Option<(String, String)> {
    let redis = std::env::var(TEST_REDIS_URL)
        .ok()
        .filter(|url| !url.is_empty());
    match (postgres_url(), redis) {
        (Some(postgres), Some(redis)) => Some((postgres, redis)),
        _ => {
            say_skipped(
                test,
                "KEYSTONE_TEST_DATABASE_URL and KEYSTONE_TEST_REDIS_URL are both needed",
            );
            None
        }
    }
}

/// A TCP proxy the test can cut and restore: an outage of whatever is behind it, as the
/// replica sees it.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let cut = cut.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused at once
                    }
                    let connection = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(connection);
                }
            }
        });
        Self {
            addr,
            cut,
            connections,
            accept,
        }
    }

    /// Every connection through the proxy dies, and new ones are dropped.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The address in a `scheme://[user@]host:port/...` URL.
fn addr_of(url: &str) -> SocketAddr {
    let parsed = url::Url::parse(url).unwrap();
    let host = parsed.host_str().unwrap().replace("localhost", "127.0.0.1");
    format!("{host}:{}", parsed.port().unwrap_or(6379))
        .parse()
        .unwrap()
}

/// The same URL pointing at `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_host(Some(&addr.ip().to_string())).unwrap();
    parsed.set_port(Some(addr.port())).unwrap();
    parsed.to_string()
}

/// One `keystone serve` process.
pub(crate) struct Replica {
    child: Child,
    channel: Channel,
}

impl Replica {
    /// A replica of the deployment `cluster` (its own channel and keys on the shared Redis).
    pub(crate) async fn start(
        cluster: &str,
        database_url: &str,
        redis_url: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut command = keystone();
        command
            .arg("serve")
            .env("KEYSTONE_DATABASE_URL", database_url)
            .env("KEYSTONE_REDIS_URL", redis_url)
            .env("KEYSTONE_CLUSTER__ENABLED", "true")
            .env("KEYSTONE_CLUSTER__NAME", cluster)
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER)
            .env("KEYSTONE_GRPC_ADDR", "127.0.0.1:0")
            .env("KEYSTONE_HTTP_ADDR", "127.0.0.1:0")
            .env("KEYSTONE_BOOTSTRAP_ADMIN_USERNAME", ADMIN)
            .env("KEYSTONE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("KEYSTONE_SERVER__SHUTDOWN_GRACE", "1s");
        for (name, value) in extra {
            command.env(name, value);
        }
        let (child, channel) = crate::helpers::serving_process(command).await;
        Self { child, channel }
    }

    pub(crate) fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
    }

    pub(crate) fn client_admin(&self) -> ClientAdminClient<Channel> {
        ClientAdminClient::new(self.channel.clone())
    }

    pub(crate) async fn authenticate(&self, token: &str) -> Result<(), tonic::Status> {
        self.auth()
            .authenticate(AuthenticateRequest {
                token: token.to_owned(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Logs the bootstrap admin in.
    pub(crate) async fn admin_login(&self) -> String {
        self.login(ADMIN, ADMIN_PASSWORD)
            .await
            .expect("the bootstrap admin logs in")
    }

    /// A password login asking for `keystone:admin` (by name: it is never implied); the names
    /// that log in here are the admin's, or nobody's.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<String, tonic::Status> {
        self.auth()
            .issue_token(keystone::proto::pb::IssueTokenRequest {
                grant: Some(keystone::proto::pb::issue_token_request::Grant::Password(
                    keystone::proto::pb::PasswordGrant {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    },
                )),
                scopes: vec![crate::helpers::ADMIN_SCOPE.to_owned()],
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().access_token)
    }

    /// A service client with `keystone:introspect`, and a function minting its tokens.
    pub(crate) async fn create_client(&self, admin: &str, client_id: &str) -> String {
        ClientAdminClient::new(self.channel.clone())
            .create_client(with_bearer(
                CreateClientRequest {
                    client: Some(ClientMessage {
                        client_id: client_id.to_owned(),
                        allowed_scopes: vec!["keystone:introspect".into()],
                        ..Default::default()
                    }),
                },
                admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .client_secret
    }

    pub(crate) async fn client_token(&self, client_id: &str, secret: &str) -> String {
        self.auth()
            .issue_token(keystone::proto::pb::IssueTokenRequest {
                grant: Some(
                    keystone::proto::pb::issue_token_request::Grant::ClientCredentials(
                        keystone::proto::pb::ClientCredentialsGrant {
                            client_id: client_id.to_owned(),
                            client_secret: secret.to_owned(),
                            ..Default::default()
                        },
                    ),
                ),
                // Its one scope, by name (never implied): enough to watch revocations.
                scopes: vec!["keystone:introspect".to_owned()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    /// A client credentials grant's outcome.
    pub(crate) async fn try_client_token(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<(), tonic::Status> {
        self.auth()
            .issue_token(keystone::proto::pb::IssueTokenRequest {
                grant: Some(
                    keystone::proto::pb::issue_token_request::Grant::ClientCredentials(
                        keystone::proto::pb::ClientCredentialsGrant {
                            client_id: client_id.to_owned(),
                            client_secret: secret.to_owned(),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Polls until a client credentials grant with `secret` is refused; panics after `within`.
    pub(crate) async fn until_refused(
        &self,
        client_id: &str,
        secret: &str,
        within: Duration,
    ) -> Code {
        let started = Instant::now();
        loop {
            if let Err(status) = self.try_client_token(client_id, secret).await {
                return status.code();
            }
            assert!(
                started.elapsed() < within,
                "the change did not arrive within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn revoke(&self, token: &str) {
        self.auth()
            .revoke(RevokeRequest {
                token: token.to_owned(),
                token_type_hint: String::new(),
            })
            .await
            .unwrap();
    }

    /// Waits until `token` is refused as revoked here; returns how long that took.
    pub(crate) async fn until_revoked(&self, token: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            match self.authenticate(token).await {
                Err(status) if reason(&status) == "TOKEN_REVOKED" => return started.elapsed(),
                Err(status) => panic!("unexpected refusal: {status:?}"),
                Ok(()) => {}
            }
            assert!(
                started.elapsed() < within,
                "the revocation did not arrive within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts replicas one after another (the first one migrates the fresh database).
pub(crate) async fn replicas(
    database: &TestDatabase,
    redis_url: &str,
    count: usize,
    extra: &[(&str, &str)],
) -> Vec<Replica> {
    let cluster = cluster_name();
    let mut started = Vec::with_capacity(count);
    for _ in 0..count {
        started.push(Replica::start(&cluster, database.url(), redis_url, extra).await);
    }
    started
}

/// A deployment name of its own for each test, so that tests sharing Redis do not hear each
/// other.
fn cluster_name() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_is_refused_by_the_others() {
    let test = "a_token_revoked_on_one_replica_is_refused_by_the_others";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let nodes = replicas(&database, &redis, 3, &[]).await;
    let admin = nodes[0].login(ADMIN, ADMIN_PASSWORD).await.unwrap();
    let secret = nodes[0].create_client(&admin, "reporting").await;

    // A watcher on C sees what A revokes.
    let mut watch = nodes[2]
        .auth()
        .watch_revocations(with_bearer(
            WatchRevocationsRequest {},
            &nodes[2].client_token("reporting", &secret).await,
        ))
        .await
        .unwrap()
        .into_inner();
    loop {
        let message = watch.message().await.unwrap().unwrap();
        if message.snapshot_complete {
            break;
        }
    }

    let mut delays = Vec::new();
    for round in 0..30 {
        let token = nodes[round % 3].client_token("reporting", &secret).await;
        for node in &nodes {
            node.authenticate(&token).await.expect("valid everywhere");
        }
        let revoker = &nodes[round % 3];
        let started = Instant::now();
        revoker.revoke(&token).await;
        for (i, node) in nodes.iter().enumerate() {
            if i != round % 3 {
                let waited = node.until_revoked(&token, Duration::from_secs(5)).await;
                delays.push(started.elapsed().max(waited));
            }
        }
        let seen = watch.message().await.unwrap().unwrap();
        assert!(!seen.snapshot_complete);
        assert!(seen.revocation.is_some());
    }
    delays.sort();
    eprintln!(
        "revocation propagation over {} observations: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}

#[tokio::test]
async fn a_client_changed_on_one_replica_is_read_again_by_the_others() {
    let test = "a_client_changed_on_one_replica_is_read_again_by_the_others";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    // Copies kept for an hour: only the change itself can make B read the client again.
    let nodes = replicas(
        &database,
        &redis,
        2,
        &[("KEYSTONE_CLIENTS__CACHE_TTL", "1h")],
    )
    .await;
    let admin = nodes[0].login(ADMIN, ADMIN_PASSWORD).await.unwrap();
    let old_secret = nodes[0].create_client(&admin, "billing").await;
    // B remembers the client with its first secret.
    nodes[1].client_token("billing", &old_secret).await;

    // Rotated on A with no grace: B refuses the old secret as soon as A's event arrives (its
    // copy still holds that secret: only the event makes it read the client again), and
    // takes the new one.
    let new_secret = ClientAdminClient::new(nodes[0].channel.clone())
        .rotate_client_secret(with_bearer(
            RotateClientSecretRequest {
                client_id: "billing".into(),
                grace_period: None,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    let code = nodes[1]
        .until_refused("billing", &old_secret, Duration::from_secs(5))
        .await;
    assert_eq!(code, Code::Unauthenticated);
    nodes[1].client_token("billing", &new_secret).await;

    // Disabled on A: refused on B through the revocation set, whatever B remembers.
    ClientAdminClient::new(nodes[0].channel.clone())
        .update_client(with_bearer(
            UpdateClientRequest {
                client: Some(ClientMessage {
                    client_id: "billing".into(),
                    enabled: Some(false),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let code = nodes[1]
        .until_refused("billing", &new_secret, Duration::from_secs(5))
        .await;
    assert_eq!(code, Code::PermissionDenied, "a disabled client");
}

#[tokio::test]
async fn without_redis_revocations_travel_through_postgres_and_with_neither_tokens_are_refused() {
    let test =
        "without_redis_revocations_travel_through_postgres_and_with_neither_tokens_are_refused";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let redis_proxy = Proxy::to(addr_of(&redis)).await;
    let database_proxy = Proxy::to(addr_of(database.url())).await;
    let settings = [
        ("KEYSTONE_REVOCATION__MAX_STALENESS", "2s"),
        ("KEYSTONE_REVOCATION__POLL_INTERVAL", "200ms"),
        ("KEYSTONE_DATABASE__ACQUIRE_TIMEOUT", "1s"),
        ("KEYSTONE_DATABASE__CONNECT_TIMEOUT", "1s"),
    ];
    let cluster = cluster_name();
    let a = Replica::start(
        &cluster,
        database.url(),
        &via(&redis, redis_proxy.addr),
        &settings,
    )
    .await;
    let b = Replica::start(
        &cluster,
        &via(database.url(), database_proxy.addr),
        &via(&redis, redis_proxy.addr),
        &settings,
    )
    .await;
    let admin = a.login(ADMIN, ADMIN_PASSWORD).await.unwrap();
    let secret = a.create_client(&admin, "reporting").await;
    let revoked = a.client_token("reporting", &secret).await;
    let valid = a.client_token("reporting", &secret).await;
    let victim = a.client_token("reporting", &secret).await;

    // Redis down: the revocation still reaches B, through its polls of PostgreSQL.
    redis_proxy.cut();
    a.revoke(&revoked).await;
    let waited = b.until_revoked(&revoked, Duration::from_secs(5)).await;
    eprintln!("revocation through PostgreSQL alone reached the other replica in {waited:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.authenticate(&valid)
        .await
        .expect("PostgreSQL keeps the set confirmed while Redis is down");

    // Redis back (B catches up from PostgreSQL after the reconnection), then PostgreSQL down
    // for B: Redis, in step since that poll, keeps the set confirmed past the staleness bound
    // (every revocation is written to PostgreSQL first, so none can be made meanwhile).
    redis_proxy.restore();
    // Long enough for fred's reconnection (its back-off reaches 2 s), the resubscription and
    // the poll after it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    database_proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.authenticate(&valid)
        .await
        .expect("Redis heartbeats keep the set confirmed while PostgreSQL is down");

    // Redis down too: past the staleness bound, B refuses rather than trusts.
    redis_proxy.cut();
    let started = Instant::now();
    let status = loop {
        match b.authenticate(&valid).await {
            Ok(()) => {
                assert!(started.elapsed() < Duration::from_secs(10), "never refused");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "REVOCATION_UNAVAILABLE");
    let status = b.authenticate(&revoked).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    // Revoke never says OK for what it could not record: UNAVAILABLE. What was asked is kept,
    // and written once the database is back (checked below).
    let status = b
        .auth()
        .revoke(RevokeRequest {
            token: victim.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "REVOCATION_UNAVAILABLE");

    // Redis back alone: after a gap, Redis cannot vouch for what it may have dropped, so B
    // keeps refusing until PostgreSQL answers again; then it serves without a restart, and
    // what was revoked stays revoked.
    redis_proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        b.authenticate(&valid).await.unwrap_err().code(),
        Code::Unavailable
    );
    database_proxy.restore();
    let started = Instant::now();
    while b.authenticate(&valid).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "B did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reason(&b.authenticate(&revoked).await.unwrap_err()),
        "TOKEN_REVOKED"
    );
    // The revocation B could not record was written once PostgreSQL came back: refused on
    // both replicas.
    b.until_revoked(&victim, Duration::from_secs(30)).await;
    a.until_revoked(&victim, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn failed_logins_spread_over_replicas_lock_the_name() {
    let test = "failed_logins_spread_over_replicas_lock_the_name";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let nodes = replicas(
        &database,
        &redis,
        2,
        &[("KEYSTONE_AUTH__LOCKOUT_THRESHOLD", "3")],
    )
    .await;
    for attempt in 0..3 {
        let status = nodes[attempt % 2]
            .login(ADMIN, "wrong wrong wrong wrong")
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "INVALID_CREDENTIALS", "attempt {attempt}");
    }
    for node in &nodes {
        let status = node.login(ADMIN, ADMIN_PASSWORD).await.unwrap_err();
        assert_eq!(reason(&status), "ACCOUNT_LOCKED");
    }
}

#[tokio::test]
async fn registration_limits_hold_across_replicas() {
    let test = "registration_limits_hold_across_replicas";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let nodes = replicas(
        &database,
        &redis,
        2,
        &[
            ("KEYSTONE_AUTH__REGISTRATION", "true"),
            ("KEYSTONE_AUTH__REGISTRATION_PER_MINUTE", "2"),
        ],
    )
    .await;
    let mut refused = None;
    for attempt in 0..6 {
        let result = nodes[attempt % 2]
            .auth()
            .register(RegisterRequest {
                username: format!("user{attempt}x{}", uuid::Uuid::new_v4().simple()),
                email: format!("u{attempt}{}@example.com", uuid::Uuid::new_v4().simple()),
                password: "violet tractor sunrise 7".into(),
            })
            .await;
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(reason(&status), "RATE_LIMITED");
            refused = Some(attempt);
            break;
        }
    }
    assert_eq!(
        refused,
        Some(2),
        "two replicas share one limit of 2 registrations a minute"
    );
}

#[tokio::test]
async fn replicas_starting_together_on_an_empty_database_agree_on_one_key_and_hear_key_changes() {
    let test =
        "replicas_starting_together_on_an_empty_database_agree_on_one_key_and_hear_key_changes";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let cluster = cluster_name();
    let (a, b) = tokio::join!(
        Replica::start(&cluster, database.url(), &redis, &[]),
        Replica::start(&cluster, database.url(), &redis, &[]),
    );
    let jwks = |node: &Replica| {
        let mut auth = node.auth();
        async move {
            auth.get_jwks(keystone::proto::pb::GetJwksRequest {})
                .await
                .unwrap()
                .into_inner()
                .keys
                .into_iter()
                .map(|key| key.kid)
                .collect::<Vec<_>>()
        }
    };
    let keys = jwks(&a).await;
    assert_eq!(keys.len(), 1, "one key, not one per replica: {keys:?}");
    assert_eq!(jwks(&b).await, keys);

    // `keystone keys revoke` on the command line reaches both replicas through Redis at once
    // (not after keys.reload_interval, 10 s).
    let admin = a.login(ADMIN, ADMIN_PASSWORD).await.unwrap();
    b.authenticate(&admin).await.unwrap();
    let (code, _, stderr) = crate::cli::run(
        keystone()
            .args(["keys", "revoke", &keys[0]])
            .env("KEYSTONE_DATABASE_URL", database.url())
            .env("KEYSTONE_REDIS_URL", &redis)
            .env("KEYSTONE_CLUSTER__NAME", &cluster)
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER),
    );
    assert_eq!(code, 0, "{stderr}");
    let started = Instant::now();
    for node in [&a, &b] {
        while node.authenticate(&admin).await.is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the key revocation did not reach the replica through Redis"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!(
        "a key revocation reached both replicas in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rate_limits_are_counted_once_for_the_cluster_and_locally_while_redis_is_down() {
    let test = "rate_limits_are_counted_once_for_the_cluster_and_locally_while_redis_is_down";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let redis_proxy = Proxy::to(addr_of(&redis)).await;
    let settings = [("KEYSTONE_LIMITS__PER_USERNAME", "1/1h burst 2")];
    let cluster = cluster_name();
    let a = Replica::start(
        &cluster,
        database.url(),
        &via(&redis, redis_proxy.addr),
        &settings,
    )
    .await;
    let b = Replica::start(
        &cluster,
        database.url(),
        &via(&redis, redis_proxy.addr),
        &settings,
    )
    .await;
    // Two guesses at A spend the name's quota for B too.
    for _ in 0..2 {
        let status = a.login("mallory", "guess guess guess").await.unwrap_err();
        assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    }
    let status = b.login("mallory", "guess guess guess").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "RATE_LIMITED");

    // Redis down: each replica counts on its own, and still refuses past the quota.
    redis_proxy.cut();
    for _ in 0..2 {
        let status = b.login("trudy", "guess guess guess").await.unwrap_err();
        assert_eq!(reason(&status), "INVALID_CREDENTIALS", "{status:?}");
    }
    let status = b.login("trudy", "guess guess guess").await.unwrap_err();
    assert_eq!(reason(&status), "RATE_LIMITED", "{status:?}");
}

/// Whether a refresh grant with a token that is not one, forwarded for `client`, got past the
/// client's rate limit (it is refused all the same, for the token).
async fn bogus_refresh_admitted(node: &Replica, client: &str) -> bool {
    use keystone::proto::pb::{IssueTokenRequest, RefreshTokenGrant, issue_token_request::Grant};
    let mut request = tonic::Request::new(IssueTokenRequest {
        grant: Some(Grant::RefreshToken(RefreshTokenGrant {
            refresh_token: "not-a-refresh-token".to_owned(),
        })),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    let status = node.auth().issue_token(request).await.unwrap_err();
    match reason(&status).as_str() {
        "RATE_LIMITED" => false,
        "INVALID_CREDENTIALS" => true,
        other => panic!("unexpected {other}: {status:?}"),
    }
}

#[tokio::test]
async fn a_large_quota_is_counted_ahead_on_each_replica_and_settled_in_redis() {
    let test = "a_large_quota_is_counted_ahead_on_each_replica_and_settled_in_redis";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    // A burst of 64: each replica may admit 4 (a sixteenth) before it asks Redis again.
    let settings = [
        ("KEYSTONE_LIMITS__PER_IP", "1/1h burst 64"),
        ("KEYSTONE_SERVER__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#),
    ];
    let cluster = cluster_name();
    let a = Replica::start(&cluster, database.url(), &redis, &settings).await;
    let b = Replica::start(&cluster, database.url(), &redis, &settings).await;

    // What A admitted on its own reaches Redis within a settlement (50 ms): B, asking Redis
    // after A spent 60, is admitted exactly the 4 left.
    let client = "198.51.100.1";
    for call in 0..60 {
        assert!(bogus_refresh_admitted(&a, client).await, "call {call}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admitted_by_b = 0;
    while bogus_refresh_admitted(&b, client).await {
        admitted_by_b += 1;
        assert!(admitted_by_b <= 64, "B is not limited at all");
    }
    assert_eq!(admitted_by_b, 4, "B saw what A admitted ahead of Redis");
    // A's view predates B's calls: it may admit its share on it, no more, before Redis tells
    // it the quota is spent.
    let mut admitted_by_a = 0;
    while bogus_refresh_admitted(&a, client).await {
        admitted_by_a += 1;
        assert!(admitted_by_a <= 4, "A admitted past its share");
    }

    // Two replicas taking turns overshoot the burst by at most their shares (2 × 4).
    let client = "198.51.100.2";
    let mut admitted = 0;
    let mut refused = [false, false];
    for call in 0..200 {
        let turn = call % 2;
        if bogus_refresh_admitted([&a, &b][turn], client).await {
            admitted += 1;
        } else {
            refused[turn] = true;
            if refused == [true, true] {
                break;
            }
        }
    }
    assert_eq!(refused, [true, true], "both replicas refuse in the end");
    assert!(
        (64..=64 + 2 * 4).contains(&admitted),
        "{admitted} calls admitted for a burst of 64 on two replicas"
    );
}

#[tokio::test]
async fn a_dpop_proof_used_on_one_replica_is_refused_on_another() {
    use crate::dpop::{DpopKey, RESOURCE};

    let test = "a_dpop_proof_used_on_one_replica_is_refused_on_another";
    let Some((postgres, redis)) = backends(test) else {
        return;
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http_addr = format!("127.0.0.1:{port}");
    let cluster = cluster_name();
    let a = Replica::start(
        &cluster,
        database.url(),
        &redis,
        &[("KEYSTONE_HTTP_ADDR", &http_addr)],
    )
    .await;
    let b = Replica::start(&cluster, database.url(), &redis, &[]).await;

    let key = DpopKey::new();
    let now = || chrono::Utc::now().timestamp();
    let issuer = keystone::Settings::default().issuer;
    let proof = key.proof("POST", &format!("{issuer}/oauth2/token"), now(), None);
    let form = format!(
        "grant_type=password&username={ADMIN}&password={}",
        ADMIN_PASSWORD.replace(' ', "+")
    );
    let issued = crate::helpers::http(
        http_addr.parse().unwrap(),
        "POST",
        "/oauth2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("dpop", &proof),
        ],
        &form,
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let token = issued.json()["access_token"].as_str().unwrap().to_owned();

    let authenticate = |replica: &Replica, proof: String| {
        let mut auth = replica.auth();
        let token = token.clone();
        async move {
            auth.authenticate(AuthenticateRequest {
                token,
                dpop_proof: proof,
                http_method: "GET".to_owned(),
                http_uri: RESOURCE.to_owned(),
                ..Default::default()
            })
            .await
        }
    };
    let proof = key.proof("GET", RESOURCE, now(), Some(&token));
    authenticate(&a, proof.clone()).await.unwrap();
    let status = authenticate(&b, proof).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_BINDING_MISMATCH", "{status:?}");
    // A fresh proof is good on either.
    authenticate(&b, key.proof("GET", RESOURCE, now(), Some(&token)))
        .await
        .unwrap();
}
