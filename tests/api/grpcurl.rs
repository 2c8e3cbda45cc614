//! The walkthrough of docs/walkthrough.md, driven by the real `grpcurl` (1.8.6: reflection v1alpha)
//! and `buf curl` (reflection v1), as an admin would run it. The tools come from
//! `KEYSTONE_TEST_GRPCURL` / `KEYSTONE_TEST_BUF` (`.ci/run` installs both in a virtualenv) or
//! from `PATH`; without them the test says loudly that it was skipped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::helpers::{say_skipped, spawn_app_with};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// The tool named by `variable`, else `name` on `PATH`.
fn tool(variable: &str, name: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(variable)
        && Path::new(&path).is_file()
    {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs a command off the runtime; returns whether it succeeded, and its stdout and stderr.
async fn run(program: &Path, args: Vec<String>) -> (bool, String, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(&program)
            .args(&args)
            .output()
            .expect("the tool runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("the tool's task ends")
}

/// `grpcurl -plaintext [-H authorization] -d BODY ADDR METHOD`, parsed as JSON.
async fn call(grpcurl: &Path, addr: &str, token: Option<&str>, method: &str, body: Value) -> Value {
    let mut args = vec!["-plaintext".to_owned()];
    if let Some(token) = token {
        args.push("-H".to_owned());
        args.push(format!("authorization: Bearer {token}"));
    }
    args.extend([
        "-d".to_owned(),
        body.to_string(),
        addr.to_owned(),
        method.to_owned(),
    ]);
    let (ok, stdout, stderr) = run(grpcurl, args).await;
    assert!(ok, "grpcurl {method} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{method}: {e}: {stdout}"))
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {value}"))
}

#[tokio::test]
async fn the_readme_admin_walkthrough_works_with_grpcurl_and_buf_curl() {
    let Some(grpcurl) = tool("KEYSTONE_TEST_GRPCURL", "grpcurl") else {
        say_skipped(
            "the_readme_admin_walkthrough_works_with_grpcurl_and_buf_curl",
            "no grpcurl (set KEYSTONE_TEST_GRPCURL or put it on PATH; .ci/run installs it)",
        );
        return;
    };
    let app = spawn_app_with(|settings| {
        settings.bootstrap_admin_username = Some(ADMIN.to_owned());
        settings.bootstrap_admin_password = Some(ADMIN_PASSWORD.to_owned().into());
    })
    .await;
    let addr = app.addr.to_string();

    // list and describe, through reflection v1alpha.
    let (ok, services, stderr) = run(
        &grpcurl,
        vec!["-plaintext".into(), addr.clone(), "list".into()],
    )
    .await;
    assert!(ok, "{stderr}");
    for service in [
        "keystone.v1.Auth",
        "keystone.v1.UserAdmin",
        "keystone.v1.ClientAdmin",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} in {services}"
        );
    }
    let (ok, described, stderr) = run(
        &grpcurl,
        vec![
            "-plaintext".into(),
            addr.clone(),
            "describe".into(),
            "keystone.v1.ClientAdmin".into(),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(described.contains("RotateClientSecret"), "{described}");
    assert!(described.contains("shown this once") || described.contains("returned this once"));

    // No token: UNAUTHENTICATED, with the ErrorInfo reason printed.
    let (ok, _, stderr) = run(
        &grpcurl,
        vec![
            "-plaintext".into(),
            "-d".into(),
            "{}".into(),
            addr.clone(),
            "keystone.v1.ClientAdmin/ListClients".into(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(stderr.contains("TOKEN_MISSING"), "{stderr}");

    // The bootstrap admin logs in, asking for Keystone's own scope by name (never implied).
    let login = call(
        &grpcurl,
        &addr,
        None,
        "keystone.v1.Auth/IssueToken",
        serde_json::json!({
            "password": {"username": ADMIN, "password": ADMIN_PASSWORD},
            "scopes": ["keystone:admin"]
        }),
    )
    .await;
    let admin = text(&login, "/accessToken").to_owned();

    // A client, its token, and the token checked.
    let created = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.ClientAdmin/CreateClient",
        serde_json::json!({"client": {
            "client_id": "reporting",
            "name": "Reporting",
            "allowed_scopes": ["keystone:introspect"],
            "access_token_ttl": "300s"
        }}),
    )
    .await;
    let secret = text(&created, "/clientSecret").to_owned();
    assert_eq!(text(&created, "/client/accessTokenTtl"), "300s");
    let issued = call(
        &grpcurl,
        &addr,
        None,
        "keystone.v1.Auth/IssueToken",
        serde_json::json!({
            "client_credentials": {"client_id": "reporting", "client_secret": secret},
            "scopes": ["keystone:introspect"]
        }),
    )
    .await;
    let token = text(&issued, "/accessToken").to_owned();
    let principal = call(
        &grpcurl,
        &addr,
        None,
        "keystone.v1.Auth/Authenticate",
        serde_json::json!({"token": token, "required_scopes": ["keystone:introspect"]}),
    )
    .await;
    assert_eq!(text(&principal, "/principal/clientId"), "reporting");
    assert_eq!(
        text(&principal, "/principal/kind"),
        "PRINCIPAL_KIND_SERVICE"
    );

    // Token exchange: `relay` (allowed by the admin) trades a token meant for it for one to
    // the ledger, on behalf of whoever the token speaks for (here the `gateway` service).
    let relay = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.ClientAdmin/CreateClient",
        serde_json::json!({"client": {
            "client_id": "relay",
            "allowed_audiences": ["https://ledger.example.com"],
            "token_exchange": true
        }}),
    )
    .await;
    assert_eq!(
        relay.pointer("/client/tokenExchange"),
        Some(&Value::Bool(true))
    );
    let relay_secret = text(&relay, "/clientSecret").to_owned();
    let gateway = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.ClientAdmin/CreateClient",
        serde_json::json!({"client": {"client_id": "gateway", "allowed_audiences": ["relay"]}}),
    )
    .await;
    let for_relay = call(
        &grpcurl,
        &addr,
        None,
        "keystone.v1.Auth/IssueToken",
        serde_json::json!({
            "client_credentials": {
                "client_id": "gateway",
                "client_secret": text(&gateway, "/clientSecret")
            },
            "audience": "relay"
        }),
    )
    .await;
    let exchanged = call(
        &grpcurl,
        &addr,
        None,
        "keystone.v1.Auth/IssueToken",
        serde_json::json!({
            "token_exchange": {
                "subject_token": text(&for_relay, "/accessToken"),
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "client_id": "relay",
                "client_secret": relay_secret
            },
            "audience": "https://ledger.example.com"
        }),
    )
    .await;
    assert_eq!(
        text(&exchanged, "/issuedTokenType"),
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let principal = call(
        &grpcurl,
        &addr,
        None,
        "keystone.v1.Auth/Authenticate",
        serde_json::json!({
            "token": text(&exchanged, "/accessToken"),
            "audience": "https://ledger.example.com"
        }),
    )
    .await;
    assert_eq!(text(&principal, "/principal/subject"), "gateway");
    assert_eq!(text(&principal, "/principal/clientId"), "relay");
    assert_eq!(text(&principal, "/principal/delegation/0/subject"), "relay");

    // Rotation: the new secret works, the old one for the grace.
    let rotated = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.ClientAdmin/RotateClientSecret",
        serde_json::json!({"client_id": "reporting", "grace_period": "3600s"}),
    )
    .await;
    let new_secret = text(&rotated, "/clientSecret").to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated.pointer("/previousSecretExpiresAt").is_some());
    for secret in [&new_secret, &secret] {
        call(
            &grpcurl,
            &addr,
            None,
            "keystone.v1.Auth/IssueToken",
            serde_json::json!({"client_credentials": {"client_id": "reporting", "client_secret": secret}}),
        )
        .await;
    }
    let listed = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.ClientAdmin/ListClients",
        serde_json::json!({}),
    )
    .await;
    assert!(
        !listed.to_string().contains(&new_secret),
        "listings hold no secret"
    );

    // A user, changed through an update mask as docs/walkthrough.md writes it.
    let user = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.UserAdmin/CreateUser",
        serde_json::json!({"username": "alice", "email": "alice@example.com"}),
    )
    .await;
    assert!(!text(&user, "/generatedPassword").is_empty());
    let id = text(&user, "/user/id").to_owned();
    let updated = call(
        &grpcurl,
        &addr,
        Some(&admin),
        "keystone.v1.UserAdmin/UpdateUser",
        serde_json::json!({"user": {"id": id, "enabled": false}, "update_mask": {"paths": ["enabled"]}}),
    )
    .await;
    assert_eq!(updated.pointer("/enabled"), Some(&Value::Bool(false)));

    // buf curl speaks reflection v1.
    match tool("KEYSTONE_TEST_BUF", "buf") {
        Some(buf) => {
            let (ok, stdout, stderr) = run(
                &buf,
                vec![
                    "curl".into(),
                    "--protocol".into(),
                    "grpc".into(),
                    "--http2-prior-knowledge".into(),
                    "-H".into(),
                    format!("authorization: Bearer {admin}"),
                    "-d".into(),
                    "{}".into(),
                    format!("http://{addr}/keystone.v1.UserAdmin/ListRoles"),
                ],
            )
            .await;
            assert!(ok, "buf curl: {stderr}");
            assert!(stdout.contains("\"admin\""), "{stdout}");
        }
        None => say_skipped(
            "the_readme_admin_walkthrough_works_with_grpcurl_and_buf_curl (buf curl part)",
            "no buf (set KEYSTONE_TEST_BUF or put it on PATH; .ci/run installs it)",
        ),
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn grpcurl_speaks_tls_and_a_client_gets_a_token_by_its_certificate() {
    use keystone::{config::ClientAuth, proto::pb};

    use crate::{
        helpers::{spawn_app_tls, with_bearer},
        tls::{Ca, Files, presenting, trusting},
    };

    let Some(grpcurl) = tool("KEYSTONE_TEST_GRPCURL", "grpcurl") else {
        say_skipped(
            "grpcurl_speaks_tls_and_a_client_gets_a_token_by_its_certificate",
            "no grpcurl (set KEYSTONE_TEST_GRPCURL or put it on PATH; .ci/run installs it)",
        );
        return;
    };
    let (ca, workloads) = (Ca::new("keystone test CA"), Ca::new("workloads CA"));
    let files = Files::new(&ca.server(), Some(&workloads));
    let admin_leaf = workloads.client("admin-laptop");
    let app = spawn_app_tls(
        |s| files.configure(s, Some(ClientAuth::Optional)),
        presenting(trusting(&ca), &admin_leaf),
    )
    .await;
    let admin = app.admin_token().await;
    app.client_admin()
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "payments".to_owned(),
                    tls_client_auth_sans: vec!["spiffe://example.org/payments".to_owned()],
                    certificate_bound_tokens: true,
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let workload = workloads.workload("api", "Payments", "spiffe://example.org/payments");
    std::fs::write(files.path("ca.pem"), &ca.pem).unwrap();
    std::fs::write(files.path("payments.crt"), &workload.cert).unwrap();
    std::fs::write(files.path("payments.key"), &workload.key).unwrap();
    let (cacert, cert, key) = (
        files.path("ca.pem").display().to_string(),
        files.path("payments.crt").display().to_string(),
        files.path("payments.key").display().to_string(),
    );
    let target = format!("localhost:{}", app.addr.port());

    // The server's certificate checked against the CA; reflection over TLS.
    let (ok, services, stderr) = run(
        &grpcurl,
        vec![
            "-cacert".into(),
            cacert.clone(),
            target.clone(),
            "list".into(),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(
        services.lines().any(|l| l == "keystone.v1.Auth"),
        "{services}"
    );

    // The client's certificate is its credential: no secret.
    let (ok, issued, stderr) = run(
        &grpcurl,
        vec![
            "-cacert".into(),
            cacert.clone(),
            "-cert".into(),
            cert,
            "-key".into(),
            key,
            "-d".into(),
            r#"{"client_credentials":{"client_id":"payments"}}"#.into(),
            target.clone(),
            "keystone.v1.Auth/IssueToken".into(),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let issued: Value = serde_json::from_str(&issued).unwrap();
    assert_eq!(issued["tokenType"], "Bearer", "{issued}");
    assert!(text(&issued, "/accessToken").starts_with("ey"));

    // Without the certificate, the same call is refused.
    let (ok, _, stderr) = run(
        &grpcurl,
        vec![
            "-cacert".into(),
            cacert,
            "-d".into(),
            r#"{"client_credentials":{"client_id":"payments"}}"#.into(),
            target,
            "keystone.v1.Auth/IssueToken".into(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("INVALID_CREDENTIALS"), "{stderr}");
    app.stop().await.unwrap();
}
