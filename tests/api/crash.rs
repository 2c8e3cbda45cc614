//! Atomicity under SIGKILL: a real `keystone serve` process killed in the middle of refresh
//! rotations, admin writes, logins and client credentials grants leaves a database where every
//! state change happened whole or not at all, and every answered call has its audit event.
//! Checked in the database itself, then by a restart on it.

use std::{
    process::Child,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use keystone::proto::pb::{
    self, IssueTokenRequest, client_admin_client::ClientAdminClient, issue_token_request::Grant,
    user_admin_client::UserAdminClient,
};
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::transport::Channel;

use crate::{
    cli::keystone,
    helpers::{TEST_PEPPER, TestDatabase, reason, serving_process, with_bearer},
};

const ADMIN: &str = "crashadmin";
const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// Scopes a role may hold; role `r-<k>` is created with the first `k % 5 + 1` of them.
const SCOPES: [&str; 5] = ["crash:s0", "crash:s1", "crash:s2", "crash:s3", "crash:s4"];

struct Server {
    child: Child,
    channel: Channel,
}

impl Server {
    async fn start(database_url: &str) -> Self {
        Self::start_with(database_url, &[]).await
    }

    async fn start_with(database_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut command = keystone();
        for (name, value) in extra {
            command.env(name, value);
        }
        command
            .arg("serve")
            .env("KEYSTONE_DATABASE_URL", database_url)
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER)
            .env("KEYSTONE_GRPC_ADDR", "127.0.0.1:0")
            .env("KEYSTONE_HTTP_ADDR", "127.0.0.1:0")
            .env("KEYSTONE_BOOTSTRAP_ADMIN_USERNAME", ADMIN)
            .env("KEYSTONE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            // The flood below comes from one address and one name.
            .env("KEYSTONE_LIMITS__PER_IP", "off")
            .env("KEYSTONE_LIMITS__PER_CLIENT", "off")
            .env("KEYSTONE_LIMITS__PER_USERNAME", "off");
        let (child, channel) = serving_process(command).await;
        Self { child, channel }
    }

    fn auth(&self) -> pb::auth_client::AuthClient<Channel> {
        pb::auth_client::AuthClient::new(self.channel.clone())
    }

    async fn login(&self) -> pb::TokenResponse {
        self.auth()
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::Password(pb::PasswordGrant {
                    username: ADMIN.to_owned(),
                    password: ADMIN_PASSWORD.to_owned(),
                })),
                scopes: vec![crate::helpers::ADMIN_SCOPE.to_owned()],
                ..Default::default()
            })
            .await
            .expect("the admin logs in")
            .into_inner()
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown, no flush, nothing finished.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `jti` of a JWT.
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["jti"].as_str().expect("a jti").to_owned()
}

/// What the callers were answered before the kill.
#[derive(Default)]
struct Answered {
    /// Tokens issued to logins, by `jti`: each must have its audit event.
    logins: Vec<String>,
    /// Tokens issued to the service client, by `jti`: each must have its audit event.
    service: Vec<String>,
    /// Logins of the stranger refused: each must have its audit event.
    refused: i64,
}

impl Answered {
    fn enough(&self) -> bool {
        !self.logins.is_empty() && !self.service.is_empty() && self.refused > 0
    }
}

/// Who calls.
#[derive(Clone, Copy)]
enum Caller {
    Admin,
    Service,
    Stranger,
}

/// Calls that change nothing but must be audited, as fast as they come, until the server goes.
fn audited_calls(
    work: &mut tokio::task::JoinSet<()>,
    server: &Server,
    client: &(String, String),
    stranger: &str,
    answered: &Arc<Mutex<Answered>>,
) {
    // Client credentials are fast: several callers keep many in flight at the kill.
    let callers = [
        Caller::Admin,
        Caller::Service,
        Caller::Service,
        Caller::Service,
        Caller::Service,
        Caller::Stranger,
    ];
    for caller in callers {
        let grant = match caller {
            Caller::Admin => Grant::Password(pb::PasswordGrant {
                username: ADMIN.to_owned(),
                password: ADMIN_PASSWORD.to_owned(),
            }),
            Caller::Service => Grant::ClientCredentials(pb::ClientCredentialsGrant {
                client_id: client.0.clone(),
                client_secret: client.1.clone(),
                ..Default::default()
            }),
            Caller::Stranger => Grant::Password(pb::PasswordGrant {
                username: stranger.to_owned(),
                password: "not the password".to_owned(),
            }),
        };
        let mut auth = server.auth();
        let answered = answered.clone();
        work.spawn(async move {
            loop {
                let outcome = auth
                    .issue_token(IssueTokenRequest {
                        grant: Some(grant.clone()),
                        ..Default::default()
                    })
                    .await;
                let mut answered = answered.lock().unwrap();
                match (caller, outcome) {
                    (Caller::Admin, Ok(response)) => answered
                        .logins
                        .push(jti_of(&response.into_inner().access_token)),
                    (Caller::Service, Ok(response)) => answered
                        .service
                        .push(jti_of(&response.into_inner().access_token)),
                    (Caller::Stranger, Err(status))
                        if matches!(
                            reason(&status).as_str(),
                            "INVALID_CREDENTIALS" | "ACCOUNT_LOCKED"
                        ) =>
                    {
                        answered.refused += 1;
                    }
                    // The server went away (or something else happened, which the checks
                    // after the kill do not count).
                    _ => return,
                }
            }
        });
    }
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .expect("a count");
    row.try_get_by_index::<i64>(0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_mid_write_leaves_every_change_whole_or_absent() {
    let database = TestDatabase::fresh().await;
    let mut client_secret = String::new();
    for round in 0..3u64 {
        let mut server = Server::start(database.url()).await;
        let admin = server.login().await.access_token;
        if round == 0 {
            let created = ClientAdminClient::new(server.channel.clone())
                .create_client(with_bearer(
                    pb::CreateClientRequest {
                        client: Some(pb::Client {
                            client_id: "crash-service".to_owned(),
                            name: "crash service".to_owned(),
                            ..Default::default()
                        }),
                    },
                    &admin,
                ))
                .await
                .unwrap()
                .into_inner();
            client_secret = created.client_secret;
            let mut users = UserAdminClient::new(server.channel.clone());
            for scope in SCOPES {
                users
                    .create_scope(with_bearer(
                        pb::CreateScopeRequest {
                            scope: Some(pb::Scope {
                                name: scope.to_owned(),
                                description: String::new(),
                            }),
                        },
                        &admin,
                    ))
                    .await
                    .unwrap();
            }
        }
        // Sessions rotating their refresh tokens as fast as they can, and roles being made,
        // when the process is killed.
        let mut work = tokio::task::JoinSet::new();
        let rotations = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let created = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..6 {
            let rotations = rotations.clone();
            let mut refresh_token = server.login().await.refresh_token;
            let mut auth = server.auth();
            work.spawn(async move {
                loop {
                    let Ok(response) = auth
                        .issue_token(IssueTokenRequest {
                            grant: Some(Grant::RefreshToken(pb::RefreshTokenGrant {
                                refresh_token: refresh_token.clone(),
                            })),
                            ..Default::default()
                        })
                        .await
                    else {
                        return;
                    };
                    refresh_token = response.into_inner().refresh_token;
                    rotations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        for writer in 0..2u64 {
            let mut users = UserAdminClient::new(server.channel.clone());
            let admin = admin.clone();
            let created = created.clone();
            work.spawn(async move {
                for k in 0.. {
                    let k = round * 1_000_000 + writer * 100_000 + k;
                    let scopes = SCOPES[..usize::try_from(k % 5 + 1).unwrap()]
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect();
                    let outcome = users
                        .create_role(with_bearer(
                            pb::CreateRoleRequest {
                                role: Some(pb::Role {
                                    name: format!("r-{k}"),
                                    description: String::new(),
                                    scopes,
                                    default_for_new_users: false,
                                }),
                            },
                            &admin,
                        ))
                        .await;
                    if outcome.is_err() {
                        return;
                    }
                    created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let answered = Arc::new(Mutex::new(Answered::default()));
        let stranger = format!("stranger-{round}");
        audited_calls(
            &mut work,
            &server,
            &("crash-service".to_owned(), client_secret.clone()),
            &stranger,
            &answered,
        );
        // Killed once both kinds of work are under way, at a different moment each round.
        let started = std::time::Instant::now();
        while rotations.load(std::sync::atomic::Ordering::Relaxed) == 0
            || created.load(std::sync::atomic::Ordering::Relaxed) == 0
            || !answered.lock().unwrap().enough()
        {
            if started.elapsed() > Duration::from_secs(30) {
                let answered = answered.lock().unwrap();
                panic!(
                    "no work got done: {} rotations, {} roles, {} logins, {} service tokens, \
                     {} refusals",
                    rotations.load(std::sync::atomic::Ordering::Relaxed),
                    created.load(std::sync::atomic::Ordering::Relaxed),
                    answered.logins.len(),
                    answered.service.len(),
                    answered.refused,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + 150 * round)).await;
        server.kill();
        while work.join_next().await.is_some() {}

        let db = Database::connect(database.url()).await.unwrap();
        // No refresh token used without its successor, unless its session was ended.
        let orphaned = count(
            &db,
            "SELECT COUNT(*) FROM refresh_tokens t WHERE t.used_at IS NOT NULL \
             AND t.revoked_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.id = t.successor_id)",
        )
        .await;
        assert_eq!(
            orphaned, 0,
            "round {round}: a used token lost its successor"
        );
        // At most one live token per session.
        let forked = count(
            &db,
            "SELECT COUNT(*) FROM (SELECT family_id FROM refresh_tokens \
             WHERE used_at IS NULL AND revoked_at IS NULL GROUP BY family_id \
             HAVING COUNT(*) > 1) f",
        )
        .await;
        assert_eq!(forked, 0, "round {round}: a session forked");
        let rotated = count(
            &db,
            "SELECT COUNT(*) FROM refresh_tokens WHERE used_at IS NOT NULL",
        )
        .await;
        // Every role whole, with its audit event.
        let roles = count(&db, "SELECT COUNT(*) FROM roles WHERE name LIKE 'r-%'").await;
        let partial = count(
            &db,
            "SELECT COUNT(*) FROM roles r WHERE r.name LIKE 'r-%' AND \
             (SELECT COUNT(*) FROM role_scopes rs WHERE rs.role_id = r.id) \
             <> (CAST(SUBSTR(r.name, 3) AS BIGINT) % 5) + 1",
        )
        .await;
        assert_eq!(partial, 0, "round {round}: a role lost some of its scopes");
        let unaudited = count(
            &db,
            "SELECT COUNT(*) FROM roles r WHERE r.name LIKE 'r-%' AND NOT EXISTS \
             (SELECT 1 FROM audit_events a WHERE a.action = 'role.create' AND a.target = r.name)",
        )
        .await;
        assert_eq!(
            unaudited, 0,
            "round {round}: a role was made without its audit event"
        );
        // Every answered call's event: tokens by their jti, refusals by their count.
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT details FROM audit_events WHERE outcome = 'success' \
                 AND action IN ('login', 'token.issue')",
            ))
            .await
            .unwrap();
        let audited: std::collections::HashSet<String> = rows
            .iter()
            .filter_map(|row| {
                let details: String = row.try_get_by_index(0).unwrap();
                let details: serde_json::Value = serde_json::from_str(&details).unwrap();
                details["jti"].as_str().map(str::to_owned)
            })
            .collect();
        let answered = std::mem::take(&mut *answered.lock().unwrap());
        for (kind, issued) in [("login", &answered.logins), ("service", &answered.service)] {
            let unaudited = issued.iter().filter(|jti| !audited.contains(*jti)).count();
            assert_eq!(
                unaudited,
                0,
                "round {round}: {unaudited} of {} {kind} tokens handed out have no audit event",
                issued.len()
            );
        }
        let refusals = count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'login' AND actor = '{stranger}'"
            ),
        )
        .await;
        assert!(
            refusals >= answered.refused,
            "round {round}: {} refused logins answered, {refusals} audited",
            answered.refused
        );
        db.close().await.unwrap();
        eprintln!(
            "round {round}: killed after {rotated} rotations, {roles} roles, {} logins, {} service tokens and {} refused logins in all",
            answered.logins.len(),
            answered.service.len(),
            answered.refused
        );
        assert!(answered.enough(), "the kill came after some audited calls");
        assert!(rotated > 0 && roles > 0, "the kill came after some work");
    }
    // The database the kills left serves again.
    let server = Server::start(database.url()).await;
    server.login().await;
}

/// A call a shutting-down server never took, as tonic's client reports it.
fn refused_before_accepted(status: &tonic::Status) -> bool {
    let debug = format!("{status:?}");
    match status.code() {
        // The transport's, not Keystone's own (which carries an ErrorInfo, e.g. a database
        // that went away under a call).
        tonic::Code::Unavailable => reason(status).is_empty(),
        tonic::Code::Cancelled => status.message() == "operation was canceled",
        tonic::Code::Internal => debug.contains("GoAway(") && debug.contains("NO_ERROR"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_fails_no_call_it_accepted() {
    let database = TestDatabase::fresh().await;
    let mut server = Server::start_with(
        database.url(),
        &[
            ("KEYSTONE_SERVER__DRAIN_DELAY", "500ms"),
            ("KEYSTONE_SERVER__SHUTDOWN_GRACE", "10s"),
        ],
    )
    .await;
    let token = server.login().await.access_token;
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut auth = server.auth();
        let token = token.clone();
        load.spawn(async move {
            let (mut served, mut refused) = (0_u64, 0_u64);
            loop {
                let outcome = if worker % 4 == 0 {
                    // Logins: argon2 keeps them in flight for a while.
                    auth.issue_token(IssueTokenRequest {
                        grant: Some(Grant::Password(pb::PasswordGrant {
                            username: ADMIN.to_owned(),
                            password: ADMIN_PASSWORD.to_owned(),
                        })),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                } else {
                    auth.authenticate(pb::AuthenticateRequest {
                        token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                };
                match outcome {
                    Ok(()) => served += 1,
                    // Refused before it was accepted: the listener closed, or the connection
                    // closed (after GOAWAY) before the client ever sent the call (hyper's
                    // `Canceled`: "a pending item was dropped before ever being processed").
                    // Or a stream the server's final GOAWAY (NO_ERROR) did not take: RFC 9113
                    // section 6.8, not processed, safe to retry (tonic says INTERNAL).
                    Err(status) if refused_before_accepted(&status) => {
                        refused += 1;
                        if refused > 3 {
                            return Ok((served, refused));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(status) => return Err(status),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let mut total = 0;
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(outcome) = load.join_next().await {
            match outcome.unwrap() {
                Ok((served, _)) => total += served,
                Err(status) => panic!("a call failed during shutdown: {status:?}"),
            }
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "the server still served a minute after SIGTERM"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit within a minute of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(total > 0);
}
