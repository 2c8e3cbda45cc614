//! `keystone.v1.UserAdmin` through the real API: per-RPC authorization, users, roles, scopes,
//! paging and the audit trail.

use keystone::proto::pb::{
    AssignRolesRequest, AuthenticateRequest, ChangePasswordRequest, CreateRoleRequest,
    CreateScopeRequest, CreateUserRequest, DeleteRoleRequest, DeleteScopeRequest,
    DeleteUserRequest, GetRoleRequest, GetUserRequest, ListAuditEventsRequest, ListRolesRequest,
    ListScopesRequest, ListUsersRequest, LockUserRequest, RemoveRolesRequest,
    RevokeUserSessionsRequest, Role, Scope, SetPasswordRequest, UnlockUserRequest,
    UpdateRoleRequest, UpdateUserRequest, User, get_user_request::Lookup,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{TestApp, bad_field, reason, spawn_app, spawn_app_with, with_bearer};

/// A password that meets the policy and holds no test username.
const PASSWORD: &str = "violet tractor sunrise 7";

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn create_user(app: &TestApp, token: &str, username: &str, roles: &[&str]) -> User {
    app.user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: username.to_owned(),
                email: format!("{username}@example.com"),
                password: PASSWORD.to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("the user is created")
        .into_inner()
        .user
        .expect("a user")
}

async fn authenticate(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.auth()
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn assert_revoked(app: &TestApp, token: &str) {
    let status = authenticate(app, token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_REVOKED");
}

#[tokio::test]
async fn admin_calls_need_a_token_holding_the_rpcs_scope_checked_before_any_lookup() {
    let app = spawn_app().await;
    let reader = app
        .token_with_scopes("auditor", &["keystone:users.read"])
        .await;
    let outsider = app
        .token_with_scopes("billing", &["keystone:clients.read"])
        .await;

    // No token, a bad one: UNAUTHENTICATED.
    let status = app
        .user_admin()
        .get_user(GetUserRequest {
            lookup: Some(Lookup::Username("nobody".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_MISSING");
    let status = app
        .user_admin()
        .list_users(with_bearer(ListUsersRequest::default(), "not.a.token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A token without the scope is refused before the user is looked up: the answer is the
    // same for a user that exists and one that does not.
    for name in ["auditor", "nobody"] {
        let status = app
            .user_admin()
            .get_user(with_bearer(
                GetUserRequest {
                    lookup: Some(Lookup::Username(name.into())),
                },
                &outsider,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{name}");
        assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");
    }
    // Read is not write.
    let status = app
        .user_admin()
        .delete_user(with_bearer(
            DeleteUserRequest {
                id: uuid::Uuid::new_v4().to_string(),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // With the scope, a missing user is NOT_FOUND.
    let status = app
        .user_admin()
        .get_user(with_bearer(
            GetUserRequest {
                lookup: Some(Lookup::Username("nobody".into())),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // The refusals are in the audit trail.
    let events = app.audit_events(&reader, "user.delete").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].outcome, "denied");
    assert_eq!(
        events[0].details.get("required_scope").map(String::as_str),
        Some("keystone:users.write")
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_admin_creates_reads_lists_updates_and_deletes_a_user() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create_user(&app, &admin, "Alice", &[]).await;
    assert_eq!(user.username, "Alice");
    assert_eq!(user.enabled, Some(true));
    assert!(!user.password_change_required, "a given password stands");

    let by_name = app
        .user_admin()
        .get_user(with_bearer(
            GetUserRequest {
                lookup: Some(Lookup::Username("ALICE".into())),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.id, user.id, "usernames are case-insensitive");

    let updated = app
        .user_admin()
        .update_user(with_bearer(
            UpdateUserRequest {
                user: Some(User {
                    id: user.id.clone(),
                    email: "alice@example.org".into(),
                    email_verified: true,
                    // Not in the mask: left alone.
                    enabled: Some(false),
                    ..Default::default()
                }),
                update_mask: mask(&["email", "email_verified"]),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.email, "alice@example.org");
    assert!(updated.email_verified);
    assert_eq!(updated.enabled, Some(true));
    app.login("alice@example.org", PASSWORD)
        .await
        .expect("the new email logs in");

    let listed = app
        .user_admin()
        .list_users(with_bearer(
            ListUsersRequest {
                query: "ali".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 1);
    assert_eq!(listed.users[0].id, user.id);

    app.user_admin()
        .delete_user(with_bearer(
            DeleteUserRequest {
                id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let status = app
        .user_admin()
        .get_user(with_bearer(
            GetUserRequest {
                lookup: Some(Lookup::Id(user.id.clone())),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = app.login("alice", PASSWORD).await.unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_fields_are_invalid_arguments_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let cases: Vec<(CreateUserRequest, &str)> = vec![
        (
            CreateUserRequest {
                username: "bad name".into(),
                email: "a@example.com".into(),
                ..Default::default()
            },
            "username",
        ),
        (
            CreateUserRequest {
                username: "carol".into(),
                email: "not-an-email".into(),
                ..Default::default()
            },
            "email",
        ),
        (
            CreateUserRequest {
                username: "carol".into(),
                email: "carol@example.com".into(),
                roles: vec!["Not A Role".into()],
                ..Default::default()
            },
            "roles[0]",
        ),
        (
            CreateUserRequest {
                username: "carol".into(),
                email: "carol@example.com".into(),
                password: "short".into(),
                ..Default::default()
            },
            "password",
        ),
        (
            // Latin with a Cyrillic `а`: a look-alike.
            CreateUserRequest {
                username: "p\u{0430}ypal".into(),
                email: "paypal@example.com".into(),
                ..Default::default()
            },
            "username",
        ),
    ];
    for (request, field) in cases {
        let status = app
            .user_admin()
            .create_user(with_bearer(request, &admin))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(bad_field(&status), field);
    }
    // Roles must exist.
    let status = app
        .user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: "carol".into(),
                email: "carol@example.com".into(),
                roles: vec!["ghost".into()],
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Nothing was written.
    let users = app
        .user_admin()
        .list_users(with_bearer(ListUsersRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1, "only root: {users:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn look_alike_and_duplicate_usernames_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create_user(&app, &admin, "bob", &[]).await;
    for name in ["BOB", "b0b", "\u{ff42}ob"] {
        let status = app
            .user_admin()
            .create_user(with_bearer(
                CreateUserRequest {
                    username: name.into(),
                    email: format!("other{}@example.com", name.len()),
                    password: PASSWORD.into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{name}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_generated_password_is_shown_once_and_must_be_changed() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app
        .user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: "dave".into(),
                email: "dave@example.com".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let generated = created.generated_password;
    assert!(generated.len() >= 20, "{generated}");
    assert!(created.user.unwrap().password_change_required);

    let restricted = app.login("dave", &generated).await.unwrap();
    assert_eq!(restricted.scopes, ["keystone:password.change"]);
    assert!(restricted.refresh_token.is_empty());
    app.auth()
        .change_password(with_bearer(
            ChangePasswordRequest {
                current_password: generated.clone(),
                new_password: PASSWORD.into(),
            },
            &restricted.access_token,
        ))
        .await
        .unwrap();
    let full = app.login("dave", PASSWORD).await.unwrap();
    assert!(!full.refresh_token.is_empty());

    // The generated password is in no audit event.
    let events = app
        .user_admin()
        .list_audit_events(with_bearer(ListAuditEventsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .events;
    let text = format!("{events:?}");
    assert!(!text.contains(&generated));
    assert!(!text.contains(PASSWORD));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn update_masks_refuse_unknown_output_only_and_unchangeable_paths() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create_user(&app, &admin, "erin", &[]).await;
    for paths in [
        &[][..],
        &["locked"],
        &["nonsense"],
        &["roles"],
        &["username"],
    ] {
        let status = app
            .user_admin()
            .update_user(with_bearer(
                UpdateUserRequest {
                    user: Some(User {
                        id: user.id.clone(),
                        ..Default::default()
                    }),
                    update_mask: mask(paths),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{paths:?}");
        assert_eq!(bad_field(&status), "update_mask", "{paths:?}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_right_password_on_a_disabled_account_does_not_lock_it_for_later() {
    let app = spawn_app_with(|settings| settings.auth.lockout_threshold = 2).await;
    let admin = app.admin_token().await;
    let user = create_user(&app, &admin, "gina", &[]).await;
    let enable = |enabled: bool| {
        let request = with_bearer(
            UpdateUserRequest {
                user: Some(User {
                    id: user.id.clone(),
                    enabled: Some(enabled),
                    ..Default::default()
                }),
                update_mask: mask(&["enabled"]),
            },
            &admin,
        );
        let mut client = app.user_admin();
        async move { client.update_user(request).await.unwrap() }
    };
    enable(false).await;
    // Past the threshold: each attempt had the right password, so each is settled.
    for _ in 0..4 {
        assert_eq!(
            reason(&app.login("gina", PASSWORD).await.unwrap_err()),
            "ACCOUNT_DISABLED"
        );
    }
    enable(true).await;
    app.login("gina", PASSWORD)
        .await
        .expect("the account, let back in, is not locked");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn disabling_locking_removing_roles_and_ending_sessions_revoke_tokens_at_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let admin_api = || app.user_admin();
    let writer_role = "keystone:users.read";
    admin_api()
        .create_role(with_bearer(
            CreateRoleRequest {
                role: Some(Role {
                    name: "reader".into(),
                    description: String::new(),
                    scopes: vec![writer_role.into()],
                    default_for_new_users: false,
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let user = create_user(&app, &admin, "frank", &["reader"]).await;

    // Disable, then enable: the old token stays refused, a new one works at once.
    let token = app.login("frank", PASSWORD).await.unwrap();
    admin_api()
        .update_user(with_bearer(
            UpdateUserRequest {
                user: Some(User {
                    id: user.id.clone(),
                    enabled: Some(false),
                    ..Default::default()
                }),
                update_mask: mask(&["enabled"]),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_revoked(&app, &token.access_token).await;
    assert!(app.refresh(&token.refresh_token).await.is_err());
    assert_eq!(
        reason(&app.login("frank", PASSWORD).await.unwrap_err()),
        "ACCOUNT_DISABLED"
    );
    admin_api()
        .update_user(with_bearer(
            UpdateUserRequest {
                user: Some(User {
                    id: user.id.clone(),
                    enabled: Some(true),
                    ..Default::default()
                }),
                update_mask: mask(&["enabled"]),
            },
            &admin,
        ))
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::milliseconds(5));
    let token = app.login("frank", PASSWORD).await.unwrap();
    authenticate(&app, &token.access_token)
        .await
        .expect("a token issued after the revocation works");

    // Lock.
    let locked = admin_api()
        .lock_user(with_bearer(
            LockUserRequest {
                id: user.id.clone(),
                until: None,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(locked.locked);
    assert_revoked(&app, &token.access_token).await;
    assert_eq!(
        reason(&app.login("frank", PASSWORD).await.unwrap_err()),
        "ACCOUNT_LOCKED"
    );
    admin_api()
        .unlock_user(with_bearer(
            UnlockUserRequest {
                id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::milliseconds(5));

    // Removing a role.
    let token = app.login("frank", PASSWORD).await.unwrap();
    let after = admin_api()
        .remove_roles(with_bearer(
            RemoveRolesRequest {
                user_id: user.id.clone(),
                roles: vec!["reader".into()],
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(after.roles.is_empty());
    assert_revoked(&app, &token.access_token).await;
    app.clock.advance(chrono::Duration::milliseconds(5));

    // Ending the sessions.
    let first = app.login("frank", PASSWORD).await.unwrap();
    let second = app.login("frank", PASSWORD).await.unwrap();
    let ended = admin_api()
        .revoke_user_sessions(with_bearer(
            RevokeUserSessionsRequest {
                user_id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.revoked_sessions, 2);
    for token in [&first, &second] {
        assert_revoked(&app, &token.access_token).await;
        assert!(app.refresh(&token.refresh_token).await.is_err());
    }

    // Deleting, naming the user in another spelling of the same UUID.
    app.clock.advance(chrono::Duration::milliseconds(5));
    let token = app.login("frank", PASSWORD).await.unwrap();
    admin_api()
        .delete_user(with_bearer(
            DeleteUserRequest {
                id: user.id.to_uppercase(),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_revoked(&app, &token.access_token).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn set_password_applies_the_policy_ends_sessions_and_requires_a_change() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create_user(&app, &admin, "grace", &[]).await;
    let token = app.login("grace", PASSWORD).await.unwrap();

    let status = app
        .user_admin()
        .set_password(with_bearer(
            SetPasswordRequest {
                id: user.id.clone(),
                password: "1qaz2wsx3edc4rfv".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "WEAK_PASSWORD");
    authenticate(&app, &token.access_token)
        .await
        .expect("a refused reset changes nothing");

    let reset = app
        .user_admin()
        .set_password(with_bearer(
            SetPasswordRequest {
                id: user.id.clone(),
                password: "quiet meadow lantern 12".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(reset.generated_password.is_empty());
    assert_revoked(&app, &token.access_token).await;
    assert!(app.refresh(&token.refresh_token).await.is_err());
    assert!(app.login("grace", PASSWORD).await.is_err());
    let restricted = app.login("grace", "quiet meadow lantern 12").await.unwrap();
    assert_eq!(restricted.scopes, ["keystone:password.change"]);

    let generated = app
        .user_admin()
        .set_password(with_bearer(
            SetPasswordRequest {
                id: user.id.clone(),
                password: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .generated_password;
    assert!(generated.len() >= 20);
    let restricted = app.login("grace", &generated).await.unwrap();
    assert_eq!(restricted.scopes, ["keystone:password.change"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_timed_lock_ends_by_itself_and_unlock_clears_failed_logins() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create_user(&app, &admin, "heidi", &[]).await;

    let past = prost_types::Timestamp {
        seconds: 0,
        nanos: 0,
    };
    let status = app
        .user_admin()
        .lock_user(with_bearer(
            LockUserRequest {
                id: user.id.clone(),
                until: Some(past),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "until");
    let beyond_9999 = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    let status = app
        .user_admin()
        .lock_user(with_bearer(
            LockUserRequest {
                id: user.id.clone(),
                until: Some(beyond_9999),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "until");

    let in_an_hour = keystone::clock::Clock::now(&app.clock) + chrono::Duration::hours(1);
    let locked = app
        .user_admin()
        .lock_user(with_bearer(
            LockUserRequest {
                id: user.id.clone(),
                until: Some(prost_types::Timestamp {
                    seconds: in_an_hour.timestamp(),
                    nanos: 0,
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(locked.locked);
    assert_eq!(
        locked.locked_until.map(|t| t.seconds),
        Some(in_an_hour.timestamp())
    );
    assert_eq!(
        reason(&app.login("heidi", PASSWORD).await.unwrap_err()),
        "ACCOUNT_LOCKED"
    );
    app.clock.advance(chrono::Duration::seconds(2 * 3600));
    app.login("heidi", PASSWORD)
        .await
        .expect("the lock has ended");

    // Failed logins lock the name; the admin sees it and unlocks.
    let admin = app.admin_relogin().await;
    for _ in 0..6 {
        let _ = app.login("heidi", "wrong wrong wrong wrong").await;
    }
    let seen = app
        .user_admin()
        .get_user(with_bearer(
            GetUserRequest {
                lookup: Some(Lookup::Id(user.id.clone())),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.locked, "{seen:?}");
    let unlocked = app
        .user_admin()
        .unlock_user(with_bearer(
            UnlockUserRequest {
                id: user.id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!unlocked.locked);
    assert_eq!(unlocked.failed_login_attempts, 0);
    app.login("heidi", PASSWORD)
        .await
        .expect("unlocked by the admin");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn nobody_grants_what_they_do_not_hold() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let helpdesk = app
        .token_with_scopes("helpdesk", &["keystone:users.write"])
        .await;
    let target = create_user(&app, &admin, "ivan", &[]).await;

    let status = app
        .user_admin()
        .create_role(with_bearer(
            CreateRoleRequest {
                role: Some(Role {
                    name: "superuser".into(),
                    description: String::new(),
                    scopes: vec!["keystone:admin".into()],
                    default_for_new_users: false,
                }),
            },
            &helpdesk,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: "mallory".into(),
                email: "mallory@example.com".into(),
                password: PASSWORD.into(),
                roles: vec!["admin".into()],
                ..Default::default()
            },
            &helpdesk,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .user_admin()
        .assign_roles(with_bearer(
            AssignRolesRequest {
                user_id: target.id.clone(),
                roles: vec!["admin".into()],
            },
            &helpdesk,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .user_admin()
        .update_role(with_bearer(
            UpdateRoleRequest {
                role: Some(Role {
                    name: "admin".into(),
                    description: "mine now".into(),
                    scopes: vec![],
                    default_for_new_users: false,
                }),
                update_mask: mask(&["description"]),
            },
            &helpdesk,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // What the caller holds, it may grant.
    app.user_admin()
        .create_role(with_bearer(
            CreateRoleRequest {
                role: Some(Role {
                    name: "junior".into(),
                    description: String::new(),
                    scopes: vec!["keystone:users.read".into()],
                    default_for_new_users: false,
                }),
            },
            &helpdesk,
        ))
        .await
        .unwrap();
    let ivan = app
        .user_admin()
        .assign_roles(with_bearer(
            AssignRolesRequest {
                user_id: target.id.clone(),
                roles: vec!["junior".into()],
            },
            &helpdesk,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ivan.roles, ["junior"]);
    let status = app
        .user_admin()
        .assign_roles(with_bearer(
            AssignRolesRequest {
                user_id: target.id.clone(),
                roles: vec!["ghost".into()],
            },
            &helpdesk,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_users_write_caller_cannot_take_over_an_admin() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let helpdesk = app
        .token_with_scopes("helpdesk", &["keystone:users.write"])
        .await;
    let root = app
        .user_admin()
        .get_user(with_bearer(
            GetUserRequest {
                lookup: Some(Lookup::Username("root".into())),
            },
            &helpdesk,
        ))
        .await
        .unwrap()
        .into_inner();
    let id = root.id.clone();
    let denied = |result: Result<(), tonic::Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}");
    };
    let api = app.user_admin();
    denied(
        api.clone()
            .set_password(with_bearer(
                SetPasswordRequest {
                    id: id.clone(),
                    password: String::new(),
                },
                &helpdesk,
            ))
            .await
            .map(|_| ()),
        "reset",
    );
    denied(
        api.clone()
            .lock_user(with_bearer(
                LockUserRequest {
                    id: id.clone(),
                    until: None,
                },
                &helpdesk,
            ))
            .await
            .map(|_| ()),
        "lock",
    );
    denied(
        api.clone()
            .update_user(with_bearer(
                UpdateUserRequest {
                    user: Some(User {
                        id: id.clone(),
                        enabled: Some(false),
                        ..Default::default()
                    }),
                    update_mask: mask(&["enabled"]),
                },
                &helpdesk,
            ))
            .await
            .map(|_| ()),
        "disable",
    );
    denied(
        api.clone()
            .delete_user(with_bearer(DeleteUserRequest { id: id.clone() }, &helpdesk))
            .await
            .map(|_| ()),
        "delete",
    );
    denied(
        api.clone()
            .revoke_user_sessions(with_bearer(
                RevokeUserSessionsRequest {
                    user_id: id.clone(),
                },
                &helpdesk,
            ))
            .await
            .map(|_| ()),
        "end sessions",
    );
    authenticate(&app, &admin)
        .await
        .expect("the admin is untouched");
    // Nor a user holding any other scope the helpdesk lacks: whoever resets the password
    // holds what the account holds.
    app.user_admin()
        .create_scope(with_bearer(
            CreateScopeRequest {
                scope: Some(Scope {
                    name: "payroll:write".into(),
                    description: String::new(),
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    app.user_admin()
        .create_role(with_bearer(
            CreateRoleRequest {
                role: Some(Role {
                    name: "payroll".into(),
                    description: String::new(),
                    scopes: vec!["payroll:write".into()],
                    default_for_new_users: false,
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let clerk = create_user(&app, &admin, "paula", &["payroll"]).await;
    denied(
        api.clone()
            .set_password(with_bearer(
                SetPasswordRequest {
                    id: clerk.id,
                    password: String::new(),
                },
                &helpdesk,
            ))
            .await
            .map(|_| ()),
        "reset a payroll clerk",
    );
    // A plain user is the helpdesk's to manage.
    let plain = create_user(&app, &admin, "judy", &[]).await;
    api.clone()
        .set_password(with_bearer(
            SetPasswordRequest {
                id: plain.id,
                password: String::new(),
            },
            &helpdesk,
        ))
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed_disabled_locked_or_demoted() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let root = app
        .user_admin()
        .get_user(with_bearer(
            GetUserRequest {
                lookup: Some(Lookup::Username("root".into())),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let id = root.id.clone();
    let api = app.user_admin();
    let refused = |result: Result<(), tonic::Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{what}: {status:?}"
        );
    };
    refused(
        api.clone()
            .delete_user(with_bearer(DeleteUserRequest { id: id.clone() }, &admin))
            .await
            .map(|_| ()),
        "delete",
    );
    refused(
        api.clone()
            .update_user(with_bearer(
                UpdateUserRequest {
                    user: Some(User {
                        id: id.clone(),
                        enabled: Some(false),
                        ..Default::default()
                    }),
                    update_mask: mask(&["enabled"]),
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        "disable",
    );
    refused(
        api.clone()
            .lock_user(with_bearer(
                LockUserRequest {
                    id: id.clone(),
                    until: None,
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        "lock",
    );
    refused(
        api.clone()
            .remove_roles(with_bearer(
                RemoveRolesRequest {
                    user_id: id.clone(),
                    roles: vec!["admin".into()],
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        "demote",
    );
    refused(
        api.clone()
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: "admin".into(),
                        description: String::new(),
                        scopes: vec!["keystone:users.read".into()],
                        default_for_new_users: false,
                    }),
                    update_mask: mask(&["scopes"]),
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        "strip the role",
    );
    refused(
        api.clone()
            .delete_role(with_bearer(
                DeleteRoleRequest {
                    name: "admin".into(),
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        "delete the role",
    );
    authenticate(&app, &admin)
        .await
        .expect("nothing was revoked by the refused changes");

    // With a second admin, the first may go.
    create_user(&app, &admin, "kate", &["admin"]).await;
    api.clone()
        .delete_user(with_bearer(DeleteUserRequest { id }, &admin))
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn roles_and_scopes_are_managed_and_changes_apply_to_the_next_token() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let api = app.user_admin();
    api.clone()
        .create_scope(with_bearer(
            CreateScopeRequest {
                scope: Some(Scope {
                    name: "orders:read".into(),
                    description: "Read orders".into(),
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let status = api
        .clone()
        .create_scope(with_bearer(
            CreateScopeRequest {
                scope: Some(Scope {
                    name: "orders:read".into(),
                    description: String::new(),
                }),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = api
        .clone()
        .create_scope(with_bearer(
            CreateScopeRequest {
                scope: Some(Scope {
                    name: "no-colon".into(),
                    description: String::new(),
                }),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "scope.name");

    api.clone()
        .create_role(with_bearer(
            CreateRoleRequest {
                role: Some(Role {
                    name: "clerk".into(),
                    description: "Front desk".into(),
                    scopes: vec!["orders:read".into()],
                    default_for_new_users: false,
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let role = api
        .clone()
        .get_role(with_bearer(
            GetRoleRequest {
                name: "clerk".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role.scopes, ["orders:read"]);
    create_user(&app, &admin, "leo", &["clerk"]).await;
    let before = app.login("leo", PASSWORD).await.unwrap();
    assert_eq!(before.scopes, ["orders:read"]);

    // A scope in use needs force.
    let status = api
        .clone()
        .delete_scope(with_bearer(
            DeleteScopeRequest {
                name: "orders:read".into(),
                force: false,
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = api
        .clone()
        .delete_scope(with_bearer(
            DeleteScopeRequest {
                name: "keystone:admin".into(),
                force: true,
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "built in");

    api.clone()
        .update_role(with_bearer(
            UpdateRoleRequest {
                role: Some(Role {
                    name: "clerk".into(),
                    description: String::new(),
                    scopes: vec!["keystone:users.read".into(), "orders:read".into()],
                    default_for_new_users: false,
                }),
                update_mask: mask(&["scopes"]),
            },
            &admin,
        ))
        .await
        .unwrap();
    // Keystone's own scope comes only when asked for by name.
    let after = app.login("leo", PASSWORD).await.unwrap();
    assert_eq!(after.scopes, ["orders:read"]);
    let after = app
        .login_with("leo", PASSWORD, &["keystone:users.read", "orders:read"], "")
        .await
        .unwrap();
    assert_eq!(after.scopes, ["keystone:users.read", "orders:read"]);

    api.clone()
        .delete_scope(with_bearer(
            DeleteScopeRequest {
                name: "orders:read".into(),
                force: true,
            },
            &admin,
        ))
        .await
        .unwrap();
    let role = api
        .clone()
        .get_role(with_bearer(
            GetRoleRequest {
                name: "clerk".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role.scopes, ["keystone:users.read"]);
    let scopes = api
        .clone()
        .list_scopes(with_bearer(ListScopesRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .scopes;
    assert!(scopes.iter().all(|s| s.name != "orders:read"));

    api.clone()
        .delete_role(with_bearer(
            DeleteRoleRequest {
                name: "clerk".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let roles = api
        .clone()
        .list_roles(with_bearer(ListRolesRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert_eq!(
        roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["admin"]
    );
    assert!(app.login("leo", PASSWORD).await.unwrap().scopes.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn listings_page_with_opaque_tokens_bound_to_their_query() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for name in ["ann", "ben", "cal", "dan", "eve_x"] {
        create_user(&app, &admin, name, &[]).await;
    }
    let api = app.user_admin();
    let list = |page_size: i32, page_token: String, query: &str| {
        let mut api = api.clone();
        let request = with_bearer(
            ListUsersRequest {
                page_size,
                page_token,
                query: query.to_owned(),
                role: String::new(),
            },
            &admin,
        );
        async move { api.list_users(request).await.map(|r| r.into_inner()) }
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(2, token, "").await.unwrap();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["ann", "ben", "cal", "dan", "eve_x", "root"]);

    let first = list(2, String::new(), "").await.unwrap();
    let status = list(2, first.next_page_token.clone(), "a")
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "page_token", "bound to its query");
    let mut forged = first.next_page_token.clone();
    forged.insert(3, 'x');
    let status = list(2, forged, "").await.unwrap_err();
    assert_eq!(bad_field(&status), "page_token");
    let status = list(-1, String::new(), "").await.unwrap_err();
    assert_eq!(bad_field(&status), "page_size");

    // `_` is taken literally, not as a LIKE wildcard.
    let literal = list(0, String::new(), "eve_").await.unwrap();
    assert_eq!(literal.users.len(), 1);
    let none = list(0, String::new(), "e_e").await.unwrap();
    assert!(none.users.is_empty());
    // The role filter.
    let admins = api
        .clone()
        .list_users(with_bearer(
            ListUsersRequest {
                role: "admin".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(admins.len(), 1);
    assert_eq!(admins[0].username, "root");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn admin_writes_are_audited_with_actor_target_and_peer() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create_user(&app, &admin, "mia", &[]).await;
    app.user_admin()
        .lock_user(with_bearer(
            LockUserRequest {
                id: user.id.clone(),
                until: None,
            },
            &admin,
        ))
        .await
        .unwrap();
    let events = app
        .user_admin()
        .list_audit_events(with_bearer(
            ListAuditEventsRequest {
                target: user.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["user.lock", "user.create"], "newest first");
    let root_id = events[0].actor.clone();
    assert!(uuid::Uuid::parse_str(&root_id).is_ok(), "{root_id}");
    assert!(events.iter().all(|e| e.outcome == "success"));
    assert!(events.iter().all(|e| e.peer == "127.0.0.1"), "{events:?}");
    let by_actor = app
        .user_admin()
        .list_audit_events(with_bearer(
            ListAuditEventsRequest {
                actor: root_id,
                action: "user.lock".into(),
                page_size: 1,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_actor.events.len(), 1);
    assert!(by_actor.next_page_token.is_empty());
    app.stop().await.unwrap();
}

/// Calls an admin RPC by its path with an empty request (every field default).
async fn call_admin_rpc(app: &TestApp, path: &'static str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    grpc.unary::<_, (), _>(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err(path)
}

#[tokio::test]
async fn every_admin_rpc_refuses_callers_without_a_token_or_without_its_scope() {
    let app = spawn_app().await;
    let mesh = app
        .token_with_scopes("mesh", &["keystone:introspect"])
        .await;
    for rpc in keystone::grpc::caller::ADMIN_RPCS {
        let status = call_admin_rpc(&app, rpc.path, None).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{}", rpc.path);
        let status = call_admin_rpc(&app, rpc.path, Some("not.a.token")).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{}", rpc.path);
        let status = call_admin_rpc(&app, rpc.path, Some(&mesh)).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{}", rpc.path);
        assert_eq!(reason(&status), "INSUFFICIENT_SCOPE", "{}", rpc.path);
    }
    app.stop().await.unwrap();
}
