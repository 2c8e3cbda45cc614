//! A whole run of the real binary at `RUST_LOG=trace`, with known secrets going through it:
//! none of them may appear in what it prints, as text or as JSON (`log.format = "json"`,
//! where every line must also be one JSON object).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use keystone::proto::pb;
use tonic::transport::Channel;

use crate::{
    cli::keystone,
    helpers::{TEST_PEPPER, TestDatabase, address_after, with_bearer},
};

const ADMIN_PASSWORD: &str = "canary-admin-passphrase-7d1f";
const NEW_PASSWORD: &str = "canary-new-passphrase-93ab";
const DATABASE_PASSWORD: &str = "canary-database-password-5e2c";
/// What Keystone sends a trusted issuer's key endpoint as its bearer token.
const BEARER_TOKEN: &str = "canary-issuer-bearer-token-4b7e";
/// 32 bytes, base64: a key-encryption key made to be recognized.
const KEY_ENCRYPTION_KEY: &str = "Y2FuYXJ5LWtleS1lbmNyeXB0aW9uLWtleS0wMTIzNDU=";

#[tokio::test]
async fn a_run_at_trace_level_logs_no_secret() {
    canary("text").await;
}

#[tokio::test]
async fn a_run_at_trace_level_in_json_logs_no_secret_and_only_json_lines() {
    let stdout = canary("json").await;
    let mut lines = 0;
    for line in stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("a log line is not JSON ({error}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(event[field].is_string(), "{field} in {line}");
        }
        lines += 1;
    }
    assert!(lines > 100, "the run logged: {lines} lines");
    assert!(
        stdout.contains(r#""level":"TRACE""#),
        "the run logged at trace level"
    );
    assert!(
        stdout.contains("Keystone is serving gRPC on"),
        "messages are in the lines"
    );
}

/// Runs the binary at trace level with `log.format = format`, takes secrets through it, and
/// fails if any appears in its output; returns what it printed on stdout.
async fn canary(format: &str) -> String {
    let database = TestDatabase::fresh().await;
    // PostgreSQL (trust authentication) takes any password: the URL carries one to look for.
    // A password the URL already has (password authentication) is the canary instead.
    let (database_url, database_password) = match url::Url::parse(database.url()) {
        Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => match url.password() {
            Some(password) => (database.url().to_owned(), password.to_owned()),
            None => {
                let mut url = url;
                let _ = url.set_password(Some(DATABASE_PASSWORD));
                (url.to_string(), DATABASE_PASSWORD.to_owned())
            }
        },
        _ => (database.url().to_owned(), DATABASE_PASSWORD.to_owned()),
    };
    // A trusted cluster (its keys on loopback, fetched with a bearer token of Keystone's own).
    let cluster_key = crate::federation::IssuerKey::rsa("canary-1");
    let cluster = crate::federation::FakeIssuer::serve(crate::federation::Answer::Keys(
        crate::federation::key_set(&[&cluster_key]),
    ))
    .await;
    let directory = tempfile::tempdir().unwrap();
    let bearer_file = directory.path().join("token");
    std::fs::write(&bearer_file, BEARER_TOKEN).unwrap();
    let config = directory.path().join("keystone.toml");
    std::fs::write(
        &config,
        format!(
            "[[federation.issuers]]\nname = \"cluster\"\nissuer = \"{}\"\njwks_uri = \"{}\"\n\
             bearer_token_file = \"{}\"\n",
            crate::federation::CLUSTER_ISS,
            cluster.uri,
            bearer_file.display()
        ),
    )
    .unwrap();
    let mut command = keystone();
    // Redis too when there is one, so that fred's trace output is read as well.
    if let Some(redis) = std::env::var(crate::helpers::TEST_REDIS_URL)
        .ok()
        .filter(|url| !url.is_empty())
    {
        command.env("KEYSTONE_REDIS_URL", redis).env(
            "KEYSTONE_CLUSTER__NAME",
            format!("canary-{}", uuid::Uuid::new_v4().simple()),
        );
    }
    let mut child = command
        .arg("serve")
        .env("RUST_LOG", "trace")
        .env("KEYSTONE_LOG__FORMAT", format)
        .env("KEYSTONE_DATABASE_URL", &database_url)
        .env("KEYSTONE_SECRETS__KEY_ENCRYPTION_KEY", KEY_ENCRYPTION_KEY)
        .env("KEYSTONE_GRPC_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_HTTP_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER)
        .env("KEYSTONE_BOOTSTRAP_ADMIN_USERNAME", "opsadmin")
        .env("KEYSTONE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("KEYSTONE_CONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let collected = output.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = address_after(&line, "serving gRPC on ") {
                let _ = addr_tx.send(addr.to_string());
            }
            let mut text = collected.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let addr = tokio::time::timeout(Duration::from_secs(60), addr_rx.recv())
        .await
        .expect("keystone starts")
        .expect("keystone says where it listens");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut auth = pb::auth_client::AuthClient::new(channel.clone());
    let mut clients = pb::client_admin_client::ClientAdminClient::new(channel);

    // Everything secret that a run sees: a password grant, a refresh, a password change, a
    // failed login, a revocation.
    let login = |username: &str, password: &str| pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::Password(
            pb::PasswordGrant {
                username: username.to_owned(),
                password: password.to_owned(),
            },
        )),
        scopes: vec![crate::helpers::ADMIN_SCOPE.to_owned()],
        ..Default::default()
    };
    let first = auth
        .issue_token(login("opsadmin", ADMIN_PASSWORD))
        .await
        .unwrap()
        .into_inner();
    // A service client: its secret, a grant with it, and a guess.
    let client_secret = clients
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "canary-service".to_owned(),
                    name: "canary".to_owned(),
                    allowed_audiences: vec!["canary-relay".to_owned()],
                    ..Default::default()
                }),
            },
            &first.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    let client_grant = |secret: &str| pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::ClientCredentials(
            pb::ClientCredentialsGrant {
                client_id: "canary-service".to_owned(),
                client_secret: secret.to_owned(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    auth.issue_token(client_grant(&client_secret))
        .await
        .unwrap();
    auth.issue_token(client_grant("kss_canary-wrong-client-secret"))
        .await
        .unwrap_err();
    // A token exchange (RFC 8693) by a client that may, and one with a wrong secret.
    let relay_secret = clients
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "canary-relay".to_owned(),
                    allowed_audiences: vec!["canary-downstream".to_owned()],
                    token_exchange: true,
                    ..Default::default()
                }),
            },
            &first.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    let mut for_relay = client_grant(&client_secret);
    for_relay.audience = "canary-relay".to_owned();
    let subject = auth.issue_token(for_relay).await.unwrap().into_inner();
    let exchange = |secret: &str| pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::TokenExchange(
            pb::TokenExchangeGrant {
                subject_token: subject.access_token.clone(),
                subject_token_type: "urn:ietf:params:oauth:token-type:access_token".to_owned(),
                client_id: "canary-relay".to_owned(),
                client_secret: secret.to_owned(),
                ..Default::default()
            },
        )),
        audience: "canary-downstream".to_owned(),
        ..Default::default()
    };
    auth.issue_token(exchange(&relay_secret)).await.unwrap();
    auth.issue_token(exchange("kss_canary-wrong-relay-secret"))
        .await
        .unwrap_err();
    // A pod's service-account token, right and expired (its `iat` and `exp` from the server's
    // clock, read off a token it issued).
    clients
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "canary-pod".to_owned(),
                    federated_identities: vec![pb::FederatedIdentity {
                        issuer_name: "cluster".to_owned(),
                        subject: crate::federation::POD.to_owned(),
                    }],
                    ..Default::default()
                }),
            },
            &first.access_token,
        ))
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let pod_token = cluster_key.sign(&crate::federation::service_account_claims(
        now,
        crate::federation::POD,
    ));
    let expired_pod_token = cluster_key.sign(&crate::federation::service_account_claims(
        now - 7200,
        crate::federation::POD,
    ));
    let by_pod_token = |token: &str| pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::ClientCredentials(
            pb::ClientCredentialsGrant {
                client_assertion: token.to_owned(),
                client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                    .to_owned(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    auth.issue_token(by_pod_token(&pod_token)).await.unwrap();
    auth.issue_token(by_pod_token(&expired_pod_token))
        .await
        .unwrap_err();
    let second = auth
        .issue_token(pb::IssueTokenRequest {
            grant: Some(pb::issue_token_request::Grant::RefreshToken(
                pb::RefreshTokenGrant {
                    refresh_token: first.refresh_token.clone(),
                },
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    auth.change_password(with_bearer(
        pb::ChangePasswordRequest {
            current_password: ADMIN_PASSWORD.to_owned(),
            new_password: NEW_PASSWORD.to_owned(),
        },
        &second.access_token,
    ))
    .await
    .unwrap();
    auth.issue_token(login("opsadmin", "canary-wrong-passphrase-1"))
        .await
        .unwrap_err();
    auth.revoke(pb::RevokeRequest {
        token: second.refresh_token.clone(),
        token_type_hint: String::new(),
    })
    .await
    .unwrap();
    drop(auth);
    drop(clients);

    // The key in the clear (the database holds it sealed): that must not be logged either.
    let private_key =
        crate::helpers::active_private_key_sealed_with(database.url(), Some(KEY_ENCRYPTION_KEY))
            .await;

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    reader.join().unwrap();
    let stdout = output.lock().unwrap().clone();
    let mut printed = stdout.clone();
    printed.push_str(&stderr_reader.join().unwrap());
    assert!(
        printed.contains("TRACE") || printed.contains("trace"),
        "the run logged at trace level"
    );

    let hex: String = private_key.iter().map(|b| format!("{b:02x}")).collect();
    let secrets = [
        ("the admin password", ADMIN_PASSWORD.to_owned()),
        ("the new password", NEW_PASSWORD.to_owned()),
        ("a wrong password", "canary-wrong-passphrase-1".to_owned()),
        ("the pepper", TEST_PEPPER.to_owned()),
        ("the key-encryption key", KEY_ENCRYPTION_KEY.to_owned()),
        ("the database password", database_password.clone()),
        ("a client secret", client_secret.clone()),
        ("an exchanging client's secret", relay_secret.clone()),
        (
            "a wrong exchanging client's secret",
            "kss_canary-wrong-relay-secret".to_owned(),
        ),
        (
            "a wrong client secret",
            "kss_canary-wrong-client-secret".to_owned(),
        ),
        ("the first refresh token", first.refresh_token.clone()),
        ("a pod's service-account token", pod_token.clone()),
        (
            "an expired service-account token",
            expired_pod_token.clone(),
        ),
        (
            "Keystone's bearer token for an issuer",
            BEARER_TOKEN.to_owned(),
        ),
        ("the second refresh token", second.refresh_token.clone()),
        ("the private key (base64)", STANDARD.encode(&private_key)),
        (
            "the private key (base64url)",
            URL_SAFE_NO_PAD.encode(&private_key),
        ),
        ("the private key (hex)", hex),
    ];
    for (what, secret) in secrets {
        if let Some(at) = printed.find(&secret) {
            let start = printed[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = printed[at..].find('\n').map_or(printed.len(), |i| at + i);
            panic!("{what} appears in the logs: {}", &printed[start..end]);
        }
    }
    stdout
}
