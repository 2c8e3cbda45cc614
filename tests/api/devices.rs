//! Sessions a person can see: `Auth/ListSessions` and `Auth/RevokeSession` for the user,
//! `UserAdmin/ListUserSessions` and `UserAdmin/RevokeUserSession` for admins. A session is a
//! refresh family; ending one ends its refresh tokens and its access tokens.

use keystone::proto::pb::{self, issue_token_request::Grant};
use tonic::Code;

use crate::helpers::{ADMIN_PASSWORD, TestApp, bad_field, reason, spawn_app, with_bearer};

/// A login from a device that names itself.
async fn login_from(app: &TestApp, username: &str, device: &str) -> pb::TokenResponse {
    let mut request = tonic::Request::new(pb::IssueTokenRequest {
        grant: Some(Grant::Password(pb::PasswordGrant {
            username: username.to_owned(),
            password: ADMIN_PASSWORD.to_owned(),
        })),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("user-agent", device.parse().unwrap());
    app.auth().issue_token(request).await.unwrap().into_inner()
}

async fn my_sessions(app: &TestApp, token: &str) -> Result<Vec<pb::Session>, tonic::Status> {
    app.auth()
        .list_sessions(with_bearer(pb::ListSessionsRequest {}, token))
        .await
        .map(|r| r.into_inner().sessions)
}

async fn revoke_mine(app: &TestApp, token: &str, session_id: &str) -> Result<(), tonic::Status> {
    app.auth()
        .revoke_session(with_bearer(
            pb::RevokeSessionRequest {
                session_id: session_id.to_owned(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

async fn session_id(app: &TestApp, access_token: &str) -> String {
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: access_token.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
        .session_id
}

#[tokio::test]
async fn a_user_sees_their_devices_and_ends_one() {
    let app = spawn_app().await;
    app.create_user("mia", ADMIN_PASSWORD, &[]).await;
    let laptop = login_from(&app, "mia", "Firefox/133.0 (laptop)").await;
    let phone = login_from(&app, "mia", "KeystoneApp/2.1 (phone)").await;
    let phone_session = session_id(&app, &phone.access_token).await;

    let sessions = my_sessions(&app, &laptop.access_token).await.unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    // The newest first; the caller's own marked.
    assert_eq!(sessions[0].id, phone_session);
    assert!(
        sessions[0]
            .user_agent
            .starts_with("KeystoneApp/2.1 (phone)")
    );
    assert!(!sessions[0].current);
    assert!(sessions[1].user_agent.starts_with("Firefox/133.0 (laptop)"));
    assert!(sessions[1].current);
    for session in &sessions {
        assert_eq!(session.ip, "127.0.0.1");
        assert_eq!(session.client_id, "keystone");
        assert!(session.created_at.is_some() && session.last_used_at.is_some());
        let seconds = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds);
        assert!(seconds(&session.expires_at) > seconds(&session.last_used_at));
    }

    // A refresh is the session's last use, and keeps it one session.
    let refreshed = app.refresh(&phone.refresh_token).await.unwrap();
    let sessions = my_sessions(&app, &laptop.access_token).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].id, phone_session);

    // The laptop ends the phone's session: its refresh token and its access tokens go.
    revoke_mine(&app, &laptop.access_token, &phone_session)
        .await
        .unwrap();
    let status = app.refresh(&refreshed.refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: refreshed.access_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    let sessions = my_sessions(&app, &laptop.access_token).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current);

    // It is audited.
    let admin = app.admin_token().await;
    let events = app.audit_events(&admin, "session.revoke").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].target, phone_session);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn another_users_session_and_bad_ids_change_nothing() {
    let app = spawn_app().await;
    app.create_user("mia", ADMIN_PASSWORD, &[]).await;
    app.create_user("otto", ADMIN_PASSWORD, &[]).await;
    let mia = login_from(&app, "mia", "mia's laptop").await;
    let otto = login_from(&app, "otto", "otto's laptop").await;
    let otto_session = session_id(&app, &otto.access_token).await;

    let status = revoke_mine(&app, &mia.access_token, &otto_session)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    for bad in ["", "not-a-session", "'; DROP TABLE refresh_tokens; --"] {
        let status = revoke_mine(&app, &mia.access_token, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(bad_field(&status), "session_id");
    }
    // Otto's session lives on.
    app.refresh(&otto.refresh_token).await.unwrap();
    assert_eq!(
        my_sessions(&app, &otto.access_token).await.unwrap().len(),
        1
    );
    // Mia sees only hers.
    let mine = my_sessions(&app, &mia.access_token).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_ne!(mine[0].id, otto_session);

    // No token, or a service's: no sessions to see.
    let status = app
        .auth()
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let secret = app
        .create_client("svc", &[], &["keystone"], None, true)
        .await;
    let service = app
        .client_token("svc", &secret, &[], "keystone")
        .await
        .unwrap()
        .access_token;
    let status = my_sessions(&app, &service).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_long_user_agent_is_kept_short() {
    let app = spawn_app().await;
    app.create_user("mia", ADMIN_PASSWORD, &[]).await;
    let agent = format!("Agent/{}", "x".repeat(8 * 1024));
    let token = login_from(&app, "mia", &agent).await;
    let sessions = my_sessions(&app, &token.access_token).await.unwrap();
    assert_eq!(sessions[0].user_agent.chars().count(), 256);
    assert!(sessions[0].user_agent.starts_with("Agent/xxx"));
    app.stop().await.unwrap();
}

async fn user_sessions(
    app: &TestApp,
    token: &str,
    user_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListUserSessionsResponse, tonic::Status> {
    app.user_admin()
        .list_user_sessions(with_bearer(
            pb::ListUserSessionsRequest {
                user_id: user_id.to_owned(),
                page_size,
                page_token: page_token.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_admin_pages_through_a_users_sessions_and_ends_one() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mia_id = app
        .create_user("mia", ADMIN_PASSWORD, &[])
        .await
        .to_string();
    let mut logins = Vec::new();
    for device in ["one", "two", "three"] {
        logins.push(login_from(&app, "mia", device).await);
    }

    let first = user_sessions(&app, &admin, &mia_id, 2, "").await.unwrap();
    assert_eq!(first.sessions.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = user_sessions(&app, &admin, &mia_id, 2, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(second.sessions.len(), 1);
    assert!(second.next_page_token.is_empty());
    let agents: Vec<&str> = first
        .sessions
        .iter()
        .chain(&second.sessions)
        .map(|s| s.user_agent.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(agents, ["three", "two", "one"]);
    // A page token is for its own listing.
    let other = app
        .create_user("otto", ADMIN_PASSWORD, &[])
        .await
        .to_string();
    let status = user_sessions(&app, &admin, &other, 2, &first.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "page_token");

    // Reading takes users.read; ending one takes users.write.
    let reader = app
        .token_with_scopes("reader", &["keystone:users.read"])
        .await;
    user_sessions(&app, &reader, &mia_id, 0, "").await.unwrap();
    let ended = first.sessions[0].id.clone();
    let revoke = |token: String, user_id: String, session_id: String| {
        let app = &app;
        async move {
            app.user_admin()
                .revoke_user_session(with_bearer(
                    pb::RevokeUserSessionRequest {
                        user_id,
                        session_id,
                    },
                    &token,
                ))
                .await
        }
    };
    let status = revoke(reader.clone(), mia_id.clone(), ended.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Another user's session, named under the wrong user: not found, nothing ended.
    let status = revoke(admin.clone(), other.clone(), ended.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = revoke(admin.clone(), mia_id.clone(), "nope".into())
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "session_id");
    assert_eq!(
        user_sessions(&app, &admin, &mia_id, 0, "")
            .await
            .unwrap()
            .sessions
            .len(),
        3
    );

    // A users.write caller who cannot manage the user (it lacks what she holds) is refused.
    let boss_id = app
        .create_user("boss", ADMIN_PASSWORD, &["admin"])
        .await
        .to_string();
    let boss = login_from(&app, "boss", "boss's laptop").await;
    let boss_session = session_id(&app, &boss.access_token).await;
    let helpdesk = app
        .token_with_scopes("helpdesk", &["keystone:users.write"])
        .await;
    let status = revoke(helpdesk, boss_id, boss_session).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    app.refresh(&boss.refresh_token).await.unwrap();

    revoke(admin.clone(), mia_id.clone(), ended.clone())
        .await
        .unwrap();
    let status = app.refresh(&logins[2].refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Its access token is ended too, and ending it again finds nothing.
    let status = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: logins[2].access_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    let status = revoke(admin.clone(), mia_id.clone(), ended.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.refresh(&logins[1].refresh_token).await.unwrap();
    let left = user_sessions(&app, &admin, &mia_id, 0, "").await.unwrap();
    assert_eq!(left.sessions.len(), 2);
    assert!(left.sessions.iter().all(|s| s.id != ended && !s.current));
    app.stop().await.unwrap();
}
