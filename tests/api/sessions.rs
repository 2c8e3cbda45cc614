//! Sessions through gRPC: refresh-token rotation, the retry grace, reuse detection, concurrent
//! refreshes, Logout, Revoke of a refresh token, and ChangePassword.

use chrono::Duration;
use keystone::proto::pb;
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::Code;

use crate::helpers::{ADMIN_SCOPE, TestApp, reason, spawn_app, spawn_app_with, with_bearer};

const PASSWORD: &str = "correct horse battery staple";

async fn session_of(app: &TestApp, access_token: &str) -> Result<String, tonic::Status> {
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: access_token.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().principal.unwrap().session_id)
}

fn assert_reason(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, expected: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected, "{status:?}");
}

#[tokio::test]
async fn a_refresh_rotates_the_token_and_keeps_the_session() {
    let app = spawn_app().await;
    app.create_user("ann", PASSWORD, &["admin"]).await;
    // A refresh keeps the scopes of its grant, Keystone's own among them.
    let first = app
        .login_with("ann", PASSWORD, &[ADMIN_SCOPE], "")
        .await
        .unwrap();
    assert!(first.refresh_token.starts_with("ksr_"));
    let session = session_of(&app, &first.access_token).await.unwrap();

    app.clock.advance(Duration::seconds(60));
    let second = app.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.scopes, ["keystone:admin"]);
    assert_eq!(
        session_of(&app, &second.access_token).await.unwrap(),
        session
    );

    let third = app.refresh(&second.refresh_token).await.unwrap();
    assert_eq!(
        session_of(&app, &third.access_token).await.unwrap(),
        session
    );

    // The refresh token is stored only as a hash.
    let db = Database::connect(app.database_url()).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT token_hash FROM refresh_tokens",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let hash: Vec<u8> = row.try_get("", "token_hash").unwrap();
        assert_eq!(hash.len(), 32);
        assert!(!String::from_utf8_lossy(&hash).contains("ksr_"));
    }
    db.close().await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_retry_within_the_grace_gets_the_same_successor() {
    let app = spawn_app().await;
    app.create_user("ben", PASSWORD, &[]).await;
    let first = app.login("ben", PASSWORD).await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    app.clock.advance(Duration::seconds(5));
    let retried = app.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(
        retried.refresh_token, second.refresh_token,
        "a lost response must not end the session"
    );
    session_of(&app, &second.access_token)
        .await
        .expect("the first answer's token still works");
    app.refresh(&second.refresh_token)
        .await
        .expect("the successor works");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_reused_refresh_token_ends_the_whole_session() {
    let app = spawn_app().await;
    app.create_user("cat", PASSWORD, &[]).await;
    let first = app.login("cat", PASSWORD).await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    app.clock.advance(Duration::seconds(11));

    assert_reason(
        app.refresh(&first.refresh_token).await,
        Code::PermissionDenied,
        "REFRESH_TOKEN_REUSED",
    );
    assert_reason(
        app.refresh(&second.refresh_token).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_reason(
        session_of(&app, &second.access_token).await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
    );
    assert_reason(
        session_of(&app, &first.access_token).await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
    );

    // Other sessions of the same user go on.
    let other = app.login("cat", PASSWORD).await.unwrap();
    session_of(&app, &other.access_token)
        .await
        .expect("a new session works");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_used_token_whose_successor_was_used_is_a_reuse_even_within_the_grace() {
    let app = spawn_app().await;
    app.create_user("dan", PASSWORD, &[]).await;
    let first = app.login("dan", PASSWORD).await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    app.refresh(&second.refresh_token).await.unwrap();
    assert_reason(
        app.refresh(&first.refresh_token).await,
        Code::PermissionDenied,
        "REFRESH_TOKEN_REUSED",
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_refreshes_leave_one_live_successor() {
    let app = spawn_app().await;
    app.create_user("eve", PASSWORD, &[]).await;
    let first = app.login("eve", PASSWORD).await.unwrap();
    let mut refreshes = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut client = app.auth();
        let refresh_token = first.refresh_token.clone();
        refreshes.spawn(async move {
            client
                .issue_token(pb::IssueTokenRequest {
                    grant: Some(pb::issue_token_request::Grant::RefreshToken(
                        pb::RefreshTokenGrant { refresh_token },
                    )),
                    ..Default::default()
                })
                .await
                .map(|response| response.into_inner().refresh_token)
        });
    }
    let mut successors = std::collections::BTreeSet::new();
    while let Some(answer) = refreshes.join_next().await {
        successors.insert(answer.unwrap().expect("every concurrent retry is answered"));
    }
    assert_eq!(successors.len(), 1, "one successor, whoever won");

    let db = Database::connect(app.database_url()).await.unwrap();
    let live = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM refresh_tokens WHERE used_at IS NULL AND revoked_at IS NULL",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.try_get::<i64>("", "n").unwrap(), 1);
    db.close().await.unwrap();
    let successor = successors.into_iter().next().unwrap();
    app.refresh(&successor)
        .await
        .expect("the one successor works");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn logout_ends_the_session_and_its_access_tokens() {
    let app = spawn_app().await;
    app.create_user("fay", PASSWORD, &[]).await;
    let session = app.login("fay", PASSWORD).await.unwrap();
    let other = app.login("fay", PASSWORD).await.unwrap();
    app.auth()
        .logout(with_bearer(
            pb::LogoutRequest {
                refresh_token: session.refresh_token.clone(),
            },
            &session.access_token,
        ))
        .await
        .unwrap();
    assert_reason(
        session_of(&app, &session.access_token).await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
    );
    assert_reason(
        app.refresh(&session.refresh_token).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    session_of(&app, &other.access_token)
        .await
        .expect("the other session goes on");

    let status = app
        .auth()
        .logout(tonic::Request::new(pb::LogoutRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "Logout needs a bearer token"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_session() {
    let app = spawn_app().await;
    app.create_user("gus", PASSWORD, &[]).await;
    let session = app.login("gus", PASSWORD).await.unwrap();
    app.auth()
        .revoke(pb::RevokeRequest {
            token: session.refresh_token.clone(),
            token_type_hint: "refresh_token".into(),
        })
        .await
        .unwrap();
    assert_reason(
        app.refresh(&session.refresh_token).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_reason(
        session_of(&app, &session.access_token).await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions() {
    let app = spawn_app().await;
    app.create_user("hal", PASSWORD, &[]).await;
    let mine = app.login("hal", PASSWORD).await.unwrap();
    let other = app.login("hal", PASSWORD).await.unwrap();
    let change = |current: &str, new: &str| {
        let request = with_bearer(
            pb::ChangePasswordRequest {
                current_password: current.to_owned(),
                new_password: new.to_owned(),
            },
            &mine.access_token,
        );
        let mut client = app.auth();
        async move { client.change_password(request).await }
    };

    let wrong = change("not my password at all", "a brand new passphrase").await;
    assert_reason(wrong, Code::InvalidArgument, "INVALID_CREDENTIALS");
    let weak = change(PASSWORD, "short").await;
    assert_reason(weak, Code::InvalidArgument, "WEAK_PASSWORD");
    change(PASSWORD, "a brand new passphrase").await.unwrap();

    assert_reason(
        session_of(&app, &other.access_token).await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
    );
    assert_reason(
        app.refresh(&other.refresh_token).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    session_of(&app, &mine.access_token)
        .await
        .expect("the caller's session goes on");
    app.refresh(&mine.refresh_token)
        .await
        .expect("the caller's session goes on");

    assert_reason(
        app.login("hal", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    app.login("hal", "a brand new passphrase").await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_current_passwords_lock_the_account_like_failed_logins() {
    let app = spawn_app_with(|settings| settings.auth.lockout_threshold = 3).await;
    app.create_user("hugo", PASSWORD, &[]).await;
    let session = app.login("hugo", PASSWORD).await.unwrap();
    let change = |current: &str| {
        let request = with_bearer(
            pb::ChangePasswordRequest {
                current_password: current.to_owned(),
                new_password: "a brand new passphrase".to_owned(),
            },
            &session.access_token,
        );
        let mut client = app.auth();
        async move { client.change_password(request).await }
    };
    // A stolen access token is no oracle for the password: guesses through ChangePassword
    // count toward the same lock as logins.
    for _ in 0..3 {
        assert_reason(
            change("a guess at the password").await,
            Code::InvalidArgument,
            "INVALID_CREDENTIALS",
        );
    }
    assert_reason(
        change(PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_LOCKED",
    );
    assert_reason(
        app.login("hugo", PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_LOCKED",
    );
    // Each guess is in the audit trail.
    let store = app.store().await;
    let events = store
        .list_audit_events(
            &keystone::store::AuditFilter {
                action: Some("user.change_password".to_owned()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    store.close().await;
    assert_eq!(
        events.iter().filter(|e| e.outcome == "failure").count(),
        3,
        "{events:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_required_change_unlocks_the_full_token() {
    let app = spawn_app().await;
    app.create_user_with("ida", PASSWORD, &["admin"], true)
        .await;
    let restricted = app.login("ida", PASSWORD).await.unwrap();
    assert_eq!(restricted.scopes, ["keystone:password.change"]);
    app.auth()
        .change_password(with_bearer(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.to_owned(),
                new_password: "my very own passphrase".to_owned(),
            },
            &restricted.access_token,
        ))
        .await
        .unwrap();
    let full = app
        .login_with("ida", "my very own passphrase", &[ADMIN_SCOPE], "")
        .await
        .unwrap();
    assert_eq!(full.scopes, ["keystone:admin"]);
    assert!(!full.refresh_token.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_refresh_leaves_the_token_usable() {
    let app = spawn_app().await;
    app.create_user("ivo", PASSWORD, &["admin"]).await;
    let first = app.login("ivo", PASSWORD).await.unwrap();
    let status = app
        .auth()
        .issue_token(pb::IssueTokenRequest {
            grant: Some(pb::issue_token_request::Grant::RefreshToken(
                pb::RefreshTokenGrant {
                    refresh_token: first.refresh_token.clone(),
                },
            )),
            scopes: vec!["orders:admin".into()],
            audience: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_SCOPE");
    // Well past the retry grace: had the refused call consumed it, this would be a reuse.
    app.clock.advance(Duration::seconds(60));
    app.refresh(&first.refresh_token)
        .await
        .expect("the token survives a refused refresh");
    app.stop().await.unwrap();
}
