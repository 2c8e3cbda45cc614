//! A whole run of the real binary at `RUST_LOG=trace`, with known secrets going through it:
//! none of them may appear in what it prints.

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
    helpers::{TEST_PEPPER, TestDatabase, with_bearer},
};

const ADMIN_PASSWORD: &str = "canary-admin-passphrase-7d1f";
const NEW_PASSWORD: &str = "canary-new-passphrase-93ab";

#[tokio::test]
async fn a_run_at_trace_level_logs_no_secret() {
    let database = TestDatabase::fresh().await;
    let mut child = keystone()
        .arg("serve")
        .env("RUST_LOG", "trace")
        .env("KEYSTONE_DATABASE_URL", database.url())
        .env("KEYSTONE_GRPC_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_HTTP_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER)
        .env("KEYSTONE_BOOTSTRAP_ADMIN_USERNAME", "opsadmin")
        .env("KEYSTONE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
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
            if let Some(rest) = line.split("serving gRPC on ").nth(1) {
                let _ = addr_tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
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
    let mut auth = pb::auth_client::AuthClient::new(channel);

    // Everything secret that a run sees: a password grant, a refresh, a password change, a
    // failed login, a revocation.
    let login = |username: &str, password: &str| pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::Password(
            pb::PasswordGrant {
                username: username.to_owned(),
                password: password.to_owned(),
            },
        )),
        ..Default::default()
    };
    let first = auth
        .issue_token(login("opsadmin", ADMIN_PASSWORD))
        .await
        .unwrap()
        .into_inner();
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

    // The key in the clear (the database holds it sealed): that must not be logged either.
    let private_key = crate::helpers::active_private_key(database.url()).await;

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    reader.join().unwrap();
    let mut printed = output.lock().unwrap().clone();
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
        ("the first refresh token", first.refresh_token.clone()),
        ("the second refresh token", second.refresh_token.clone()),
        ("the private key (base64)", STANDARD.encode(&private_key)),
        (
            "the private key (base64url)",
            URL_SAFE_NO_PAD.encode(&private_key),
        ),
        ("the private key (hex)", hex),
    ];
    for (what, secret) in secrets {
        assert!(!printed.contains(&secret), "{what} appears in the logs");
    }
}
