//! Keystone's own authority (issue 16): a token meant for another service cannot administer
//! Keystone, no grant carries Keystone's scopes unasked, introspection shows a token only to
//! whom it was meant for, audiences are a power, quotas and the audit trail cannot be used up
//! from outside, and nothing grows without bound. Each test is an attack that once worked.

use std::time::Duration;

use keystone::proto::pb::{
    self, Client, CreateClientRequest, CreateUserRequest, DeleteClientRequest, IntrospectRequest,
    ListAuditEventsRequest, ListUsersRequest, RotateClientSecretRequest, UpdateClientRequest,
    WatchRevocationsRequest,
};
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::{Code, metadata::MetadataValue};

use crate::helpers::{
    ADMIN_PASSWORD, ADMIN_SCOPE, TestApp, http, reason, spawn_app, spawn_app_with, with_bearer,
};

fn assert_refused(status: &tonic::Status, code: Code, expected: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(status), expected, "{status:?}");
}

/// A genuine token's claims, changed by `change` and signed again with Keystone's own key:
/// what an attacker holding such a token would present (as a token issued before these rules,
/// or by a bug elsewhere, would be).
async fn resigned(
    app: &TestApp,
    token: &str,
    change: impl FnOnce(&mut serde_json::Value),
) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut parts = token.split('.');
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    change(&mut claims);
    let key = jsonwebtoken::EncodingKey::from_ed_der(
        &crate::helpers::active_private_key(app.database_url()).await,
    );
    let mut new_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    new_header.typ = Some("at+jwt".into());
    new_header.kid = header["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&new_header, &claims, &key).unwrap()
}

async fn introspect(
    app: &TestApp,
    caller: &str,
    token: &str,
) -> Result<pb::IntrospectResponse, tonic::Status> {
    app.auth()
        .introspect(with_bearer(
            IntrospectRequest {
                token: token.to_owned(),
                token_type_hint: String::new(),
            },
            caller,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_admins_token_for_an_application_cannot_administer_keystone() {
    let app = spawn_app_with(|settings| settings.tokens.user_audiences = vec!["app".into()]).await;
    app.create_user("root", ADMIN_PASSWORD, &["admin"]).await;

    // The application's token of an admin, asking no scope: none of Keystone's.
    let for_app = app
        .login_with("root", ADMIN_PASSWORD, &[], "app")
        .await
        .unwrap();
    assert!(for_app.scopes.is_empty(), "{:?}", for_app.scopes);
    // Asking for them by name for the application: refused.
    let status = app
        .login_with("root", ADMIN_PASSWORD, &[ADMIN_SCOPE], "app")
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "INVALID_SCOPE");

    // Even a token for the application that did carry `keystone:admin` is refused by every
    // part of Keystone that takes a bearer token.
    let admin = app.admin_relogin().await;
    let replayed = resigned(&app, &admin, |claims| claims["aud"] = "app".into()).await;
    let status = app
        .user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: "mallory".into(),
                email: "mallory@example.com".into(),
                password: "a long and new admin passphrase".into(),
                roles: vec!["admin".into()],
                ..Default::default()
            },
            &replayed,
        ))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "AUDIENCE_MISMATCH");
    let status = app
        .user_admin()
        .list_users(with_bearer(ListUsersRequest::default(), &replayed))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "AUDIENCE_MISMATCH");
    let status = app
        .client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(Client {
                    client_id: "backdoor".into(),
                    allowed_scopes: vec![ADMIN_SCOPE.into()],
                    ..Default::default()
                }),
            },
            &replayed,
        ))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "AUDIENCE_MISMATCH");
    let status = introspect(&app, &replayed, &admin).await.unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "AUDIENCE_MISMATCH");
    let status = app
        .auth()
        .watch_revocations(with_bearer(WatchRevocationsRequest {}, &replayed))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "AUDIENCE_MISMATCH");
    // The same token for Keystone works: the refusals were the audience's.
    app.user_admin()
        .list_users(with_bearer(ListUsersRequest::default(), &admin))
        .await
        .expect("the admin's token for Keystone administers it");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_grant_that_names_no_scope_carries_none_of_keystones() {
    let app = spawn_app_with(|settings| settings.tokens.user_audiences = vec!["app".into()]).await;
    app.create_user("root", ADMIN_PASSWORD, &["admin"]).await;
    // The OAuth endpoint as an application's backend would call it.
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!(
            "grant_type=password&username=root&password={}&audience=app",
            ADMIN_PASSWORD.replace(' ', "+")
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json = response.json();
    assert_eq!(json["scope"], "");
    let token = json["access_token"].as_str().unwrap();
    let claims: serde_json::Value = {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert!(
        !claims["scope"]
            .as_str()
            .unwrap_or_default()
            .contains("keystone:"),
        "{claims}"
    );
    // A client allowed Keystone's scopes gets none of them unasked either.
    let secret = app
        .create_client("ops-bot", &[ADMIN_SCOPE], &["app"], None, true)
        .await;
    let token = app.client_token("ops-bot", &secret, &[], "").await.unwrap();
    assert!(token.scopes.is_empty(), "{:?}", token.scopes);
    let asked = app
        .client_token("ops-bot", &secret, &[ADMIN_SCOPE], "")
        .await
        .unwrap();
    assert_eq!(asked.scopes, [ADMIN_SCOPE]);
    app.stop().await.unwrap();
}

/// A token of `client` (allowed `keystone:introspect`) for introspecting.
async fn introspecting(app: &TestApp, client: &str, secret: &str) -> String {
    app.client_token(client, secret, &["keystone:introspect"], "")
        .await
        .unwrap()
        .access_token
}

#[tokio::test]
async fn introspection_shows_a_token_only_to_whom_it_was_meant_for() {
    let app =
        spawn_app_with(|settings| settings.tokens.user_audiences = vec!["orders".into()]).await;
    app.create_user("alice", ADMIN_PASSWORD, &[]).await;
    let orders = app
        .create_client(
            "orders-api",
            &["keystone:introspect"],
            &["orders"],
            None,
            true,
        )
        .await;
    let billing = app
        .create_client(
            "billing-api",
            &["keystone:introspect"],
            &["billing"],
            None,
            true,
        )
        .await;
    let for_orders = app
        .login_with("alice", ADMIN_PASSWORD, &[], "orders")
        .await
        .unwrap()
        .access_token;
    let orders_caller = introspecting(&app, "orders-api", &orders).await;
    let billing_caller = introspecting(&app, "billing-api", &billing).await;

    let unrelated = introspect(&app, &billing_caller, &for_orders)
        .await
        .unwrap();
    assert_eq!(
        unrelated,
        pb::IntrospectResponse::default(),
        "only active: false"
    );
    let meant = introspect(&app, &orders_caller, &for_orders).await.unwrap();
    assert!(meant.active);
    assert_eq!(meant.username, "alice");
    let admin = app.admin_token().await;
    assert!(introspect(&app, &admin, &for_orders).await.unwrap().active);

    // Over HTTP, with the clients' own credentials: the same.
    let body = format!("token={for_orders}");
    for (client, secret, active) in [
        ("billing-api", &billing, false),
        ("orders-api", &orders, true),
    ] {
        use base64::{Engine as _, engine::general_purpose::STANDARD};
        let basic = format!("Basic {}", STANDARD.encode(format!("{client}:{secret}")));
        let response = http(
            app.http_addr,
            "POST",
            "/oauth2/introspect",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
            ],
            &body,
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.json()["active"],
            active,
            "{client}: {}",
            response.body
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_clients_write_caller_cannot_give_audiences_or_take_over_a_client_holding_them() {
    let app = spawn_app_with(|settings| {
        settings.clients.delegable_audiences = vec!["sandbox".into()];
    })
    .await;
    let admin = app.admin_token().await;
    let ops = app
        .token_with_scopes("ops", &["keystone:clients.write"])
        .await;
    let create = |token: &str, client_id: &str, audiences: &[&str]| {
        let request = with_bearer(
            CreateClientRequest {
                client: Some(Client {
                    client_id: client_id.into(),
                    allowed_audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                    ..Default::default()
                }),
            },
            token,
        );
        let mut api = app.client_admin();
        async move {
            api.create_client(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // Giving an audience beyond clients.delegable_audiences: refused, and audited.
    let status = create(&ops, "sneaky", &["payments"]).await.unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    create(&ops, "toy", &["sandbox"])
        .await
        .expect("a delegable audience");
    let update = |token: &str, client_id: &str, client: Client, paths: &[&str]| {
        let request = with_bearer(
            UpdateClientRequest {
                client: Some(Client {
                    client_id: client_id.into(),
                    ..client
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            token,
        );
        let mut api = app.client_admin();
        async move { api.update_client(request).await }
    };
    let status = update(
        &ops,
        "toy",
        Client {
            allowed_audiences: vec!["payments".into()],
            ..Default::default()
        },
        &["allowed_audiences"],
    )
    .await
    .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");

    // A client with no scope but an important audience is out of reach: no rotation with a
    // long grace, no disabling, no deletion.
    create(&admin, "payments-gateway", &["payments"])
        .await
        .unwrap();
    let status = app
        .client_admin()
        .rotate_client_secret(with_bearer(
            RotateClientSecretRequest {
                client_id: "payments-gateway".into(),
                grace_period: Some(prost_types::Duration {
                    seconds: 7 * 86_400,
                    nanos: 0,
                }),
            },
            &ops,
        ))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    let status = update(
        &ops,
        "payments-gateway",
        Client {
            enabled: Some(false),
            ..Default::default()
        },
        &["enabled"],
    )
    .await
    .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    let status = app
        .client_admin()
        .delete_client(with_bearer(
            DeleteClientRequest {
                client_id: "payments-gateway".into(),
            },
            &ops,
        ))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    // The admin may.
    app.client_admin()
        .rotate_client_secret(with_bearer(
            RotateClientSecretRequest {
                client_id: "payments-gateway".into(),
                grace_period: None,
            },
            &admin,
        ))
        .await
        .expect("keystone:admin manages any client");
    app.stop().await.unwrap();
}

/// A request from `ip`, as a trusted proxy forwards it.
fn from<T>(ip: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", MetadataValue::try_from(ip).unwrap());
    request
}

#[tokio::test]
async fn a_flood_of_wrong_secrets_does_not_stop_the_real_client() {
    let app = spawn_app_with(|settings| {
        settings.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        settings.limits.per_client = keystone::config::Quota {
            rate: 1,
            per: Duration::from_secs(3600),
            burst: 5,
        };
    })
    .await;
    let secret = app
        .create_client("resource-server", &["keystone:introspect"], &[], None, true)
        .await;
    let grant = |secret: &str| pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::ClientCredentials(
            pb::ClientCredentialsGrant {
                client_id: "resource-server".into(),
                client_secret: secret.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    // Far more wrong secrets than the client's quota, from an attacker's address, by gRPC and
    // by HTTP introspection with Basic credentials.
    for _ in 0..20 {
        let status = app
            .auth()
            .issue_token(from("203.0.113.9", grant("kss_guess")))
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
        use base64::{Engine as _, engine::general_purpose::STANDARD};
        let basic = format!("Basic {}", STANDARD.encode("resource-server:kss_guess"));
        let response = http(
            app.http_addr,
            "POST",
            "/oauth2/introspect",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
                ("x-forwarded-for", "203.0.113.9"),
            ],
            "token=x",
        )
        .await;
        assert_ne!(response.status, 200);
    }
    // The real client, from its own address, still has its whole quota.
    for _ in 0..5 {
        app.auth()
            .issue_token(from("198.51.100.7", grant(&secret)))
            .await
            .expect("the client's quota is its own");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn ten_thousand_refused_admin_calls_leave_a_handful_of_audit_rows() {
    let app = spawn_app_with(|settings| {
        settings.limits.per_ip = keystone::config::Quota {
            rate: 1,
            per: Duration::from_secs(3600),
            burst: 100,
        };
    })
    .await;
    let admin = app.admin_token().await;
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut api = app.user_admin();
        calls.spawn(async move {
            let mut refused = 0;
            for _ in 0..625 {
                let request = if worker % 2 == 0 {
                    tonic::Request::new(ListUsersRequest::default())
                } else {
                    with_bearer(ListUsersRequest::default(), "not.a.token")
                };
                if api.list_users(request).await.is_err() {
                    refused += 1;
                }
            }
            refused
        });
    }
    let mut refused = 0;
    while let Some(count) = calls.join_next().await {
        refused += count.unwrap();
    }
    assert_eq!(refused, 10_000);
    let events = app
        .user_admin()
        .list_audit_events(with_bearer(
            ListAuditEventsRequest {
                action: "user.list".into(),
                page_size: 100,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let denied: Vec<_> = events.iter().filter(|e| e.outcome == "denied").collect();
    assert!(
        !denied.is_empty() && denied.len() <= 4,
        "{} audit rows for 10 000 refusals: {denied:#?}",
        denied.len()
    );
    // Past the address's quota (limits.per_ip), the refusal says so.
    let status = app
        .user_admin()
        .list_users(ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_refused(&status, Code::ResourceExhausted, "RATE_LIMITED");
    app.stop().await.unwrap();
}

async fn count(url: &str, sql: &str) -> i64 {
    let db = Database::connect(url).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    let count = row.try_get_by_index::<i64>(0).unwrap();
    db.close().await.unwrap();
    count
}

/// Waits until `sql` counts nothing.
async fn until_none(app: &TestApp, sql: &str) {
    let started = std::time::Instant::now();
    loop {
        let left = count(app.database_url(), sql).await;
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{left} rows left: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn retention_empties_each_table_once_its_rows_no_longer_matter() {
    let app = spawn_app_with(|settings| {
        settings.retention.interval = Duration::from_millis(100);
        settings.retention.audit_events = Duration::from_secs(2 * 86_400);
    })
    .await;
    app.create_user("alice", ADMIN_PASSWORD, &[]).await;
    let session = app.login("alice", ADMIN_PASSWORD).await.unwrap();
    let ended = app.login("alice", ADMIN_PASSWORD).await.unwrap();
    app.refresh(&session.refresh_token).await.unwrap();
    app.auth()
        .revoke(pb::RevokeRequest {
            token: ended.refresh_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    app.auth()
        .revoke(pb::RevokeRequest {
            token: session.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    let _ = app
        .login("ghost", "not anybody's password")
        .await
        .unwrap_err();

    // A revoked session's tokens go at once; a live session's stay.
    until_none(
        &app,
        "SELECT COUNT(*) FROM refresh_tokens WHERE revoked_at IS NOT NULL",
    )
    .await;
    assert_eq!(
        count(app.database_url(), "SELECT COUNT(*) FROM refresh_tokens").await,
        2
    );
    assert!(count(app.database_url(), "SELECT COUNT(*) FROM revocations").await > 0);
    assert_eq!(
        count(app.database_url(), "SELECT COUNT(*) FROM login_failures").await,
        1
    );

    // A day later the revocations (of tokens living minutes) and settled failures go.
    app.clock.advance(chrono::Duration::hours(25));
    until_none(&app, "SELECT COUNT(*) FROM revocations").await;
    until_none(&app, "SELECT COUNT(*) FROM login_failures").await;
    assert_eq!(
        count(app.database_url(), "SELECT COUNT(*) FROM refresh_tokens").await,
        2
    );
    // Past its idle lifetime the session ends, and its tokens go; past retention.audit_events,
    // the events of the first day.
    app.clock.advance(chrono::Duration::days(8));
    until_none(&app, "SELECT COUNT(*) FROM refresh_tokens").await;
    // (The seeding helper stamps its events with the wall clock, months after the server's:
    // they are not the server's to judge.)
    until_none(
        &app,
        "SELECT COUNT(*) FROM audit_events WHERE actor <> 'test'",
    )
    .await;
    let metrics = http(app.http_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics
            .body
            .contains("keystone_retention_deleted_total{table=\"refresh_tokens\"}"),
        "{}",
        metrics.body
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_watch_ends_when_its_token_is_revoked() {
    let app = spawn_app().await;
    let secret = app
        .create_client("mesh", &["keystone:introspect"], &[], None, true)
        .await;
    let watcher = app
        .client_token("mesh", &secret, &["keystone:introspect"], "")
        .await
        .unwrap()
        .access_token;
    let mut stream = app
        .auth()
        .watch_revocations(with_bearer(WatchRevocationsRequest {}, &watcher))
        .await
        .unwrap()
        .into_inner();
    loop {
        let message = stream.message().await.unwrap().expect("the snapshot");
        if message.snapshot_complete {
            break;
        }
    }
    app.auth()
        .revoke(pb::RevokeRequest {
            token: watcher.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends within seconds of the revocation");
    assert_refused(&ended, Code::Unauthenticated, "TOKEN_REVOKED");
    app.stop().await.unwrap();
}
