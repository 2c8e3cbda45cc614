//! Latency of single gRPC calls against a real Keystone on loopback (SQLite in a temporary
//! directory, one client, one call at a time): Health/Check as the transport floor,
//! Authenticate, IssueToken with client credentials, and IssueToken with a password.
//! Throughput under load is the load generator's business; this is the per-call cost.
//!
//! Run: `cargo bench --bench grpc_calls` (add `-- --quick` for a fast pass).

// A benchmark sets its scene with the machine's time (clippy.toml keeps Keystone's own code
// to `keystone::clock`).
#![allow(clippy::disallowed_methods)]

use std::{hint::black_box, net::SocketAddr, sync::Arc};

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use keystone::{
    App, Settings,
    clock::SystemClock,
    config::SecretSettings,
    domain::{AuditRecord, Email, NewClient, NewUser, Outcome, RoleName, Username},
    password::PasswordHasher,
    proto::pb::{self, auth_client::AuthClient, issue_token_request::Grant},
    secrets::Pepper,
    store::Store,
};
use secrecy::SecretString;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PEPPER: &str = "bench-pepper-0123456789abcdefghijklmnopqrstuvwxyz";
const PASSWORD: &str = "correct horse battery staple";
const SECRET: &str = "kss_bench_secret_0123456789abcdefghijklmnopqrs";

fn calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database_url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let settings = Settings {
        database_url: SecretString::from(database_url.clone()),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        secrets: SecretSettings {
            pepper: Some(SecretString::from(PEPPER)),
            ..SecretSettings::default()
        },
        ..Settings::default()
    };
    let channel = runtime.block_on(async {
        let app = App::build_with_clock(settings, Arc::new(SystemClock))
            .await
            .expect("Keystone builds");
        let addr = app.local_addr();
        tokio::spawn(app.run_until(std::future::pending()));
        seed(&database_url).await;
        Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect()
            .await
            .expect("a connection")
    });
    let mut auth = AuthClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let password_grant = || pb::IssueTokenRequest {
        grant: Some(Grant::Password(pb::PasswordGrant {
            username: "bench".into(),
            password: PASSWORD.into(),
        })),
        ..Default::default()
    };
    let client_grant = || pb::IssueTokenRequest {
        grant: Some(Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: "bench-client".into(),
            client_secret: SECRET.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let token = runtime
        .block_on(auth.issue_token(password_grant()))
        .expect("a token")
        .into_inner()
        .access_token;

    c.bench_function("grpc Health/Check", |b| {
        b.iter(|| {
            runtime
                .block_on(health.check(HealthCheckRequest::default()))
                .expect("serving")
        })
    });
    c.bench_function("grpc Authenticate", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.authenticate(pb::AuthenticateRequest {
                    token: black_box(token.clone()),
                    required_scopes: vec!["keystone:users.read".into()],
                    ..Default::default()
                }))
                .expect("authenticated")
        })
    });
    c.bench_function("grpc IssueToken client_credentials", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.issue_token(client_grant()))
                .expect("a token")
        })
    });
    let mut group = c.benchmark_group("grpc slow");
    group.sample_size(20);
    group.bench_function("IssueToken password", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.issue_token(password_grant()))
                .expect("a token")
        })
    });
    group.finish();
}

/// A user and a client to log in as.
async fn seed(database_url: &str) {
    let settings = Settings::default();
    let store = Store::connect(
        &SecretString::from(database_url.to_owned()),
        &settings.database,
    )
    .await
    .expect("the bench database");
    let hasher = PasswordHasher::new(&settings.auth.argon2).expect("a hasher");
    let now = Utc::now();
    store
        .insert_user(
            NewUser {
                username: Username::parse("bench").expect("a username"),
                email: Email::parse("bench@example.com").expect("an email"),
                password_hash: hasher
                    .hash(&SecretString::from(PASSWORD))
                    .await
                    .expect("a hash"),
                enabled: true,
                email_verified: true,
                password_change_required: false,
                roles: vec![RoleName::parse("admin").expect("a role")],
                default_roles: false,
            },
            &AuditRecord::new("bench", "user.create", "", Outcome::Success),
            now,
        )
        .await
        .expect("the bench user");
    store
        .insert_client(
            NewClient {
                client_id: "bench-client".into(),
                name: "bench".into(),
                description: String::new(),
                allowed_scopes: vec!["keystone:introspect".into()],
                allowed_audiences: Vec::new(),
                access_token_ttl: None,
                enabled: true,
                certificate: Default::default(),
                certificate_bound_tokens: false,
                token_exchange: false,
                jwks_json: None,
                federated_identities: Vec::new(),
            },
            Some(Pepper::from_secret(&SecretString::from(PEPPER)).hash_client_secret(SECRET)),
            &AuditRecord::new("bench", "client.create", "bench-client", Outcome::Success),
            now,
        )
        .await
        .expect("the bench client");
    store.close().await;
}

criterion_group!(benches, calls);
criterion_main!(benches);
