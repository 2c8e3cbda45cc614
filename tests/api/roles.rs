//! Default roles (`Role.default_for_new_users`) and role checks (`Authenticate.required_roles`,
//! Envoy's `keystone_required_roles` and `[[ext_authz.routes]] roles`).

use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use keystone::proto::pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{
    ADMIN_PASSWORD, TestApp, bad_field, reason, spawn_app, spawn_app_with, with_bearer,
};

async fn create_scope(app: &TestApp, admin: &str, name: &str) {
    app.user_admin()
        .create_scope(with_bearer(
            pb::CreateScopeRequest {
                scope: Some(pb::Scope {
                    name: name.into(),
                    description: String::new(),
                }),
            },
            admin,
        ))
        .await
        .unwrap();
}

async fn create_role(
    app: &TestApp,
    token: &str,
    name: &str,
    scopes: &[&str],
    default: bool,
) -> Result<pb::Role, tonic::Status> {
    app.user_admin()
        .create_role(with_bearer(
            pb::CreateRoleRequest {
                role: Some(pb::Role {
                    name: name.into(),
                    description: String::new(),
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    default_for_new_users: default,
                }),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn update_role(
    app: &TestApp,
    token: &str,
    role: pb::Role,
    paths: &[&str],
) -> Result<pb::Role, tonic::Status> {
    app.user_admin()
        .update_role(with_bearer(
            pb::UpdateRoleRequest {
                role: Some(role),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn get_role(app: &TestApp, admin: &str, name: &str) -> pb::Role {
    app.user_admin()
        .get_role(with_bearer(pb::GetRoleRequest { name: name.into() }, admin))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn new_users_get_the_default_roles() {
    let app = spawn_app_with(|settings| settings.auth.registration = true).await;
    let admin = app.admin_token().await;
    create_scope(&app, &admin, "orders:read").await;
    create_scope(&app, &admin, "orders:write").await;
    let member = create_role(&app, &admin, "member", &["orders:read"], true)
        .await
        .unwrap();
    assert!(member.default_for_new_users);
    create_role(&app, &admin, "clerk", &["orders:write"], false)
        .await
        .unwrap();

    // Register.
    let user = app
        .auth()
        .register(pb::RegisterRequest {
            username: "newbie".into(),
            email: "newbie@example.com".into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.roles, ["member"]);
    let token = app.login("newbie", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(token.scopes, ["orders:read"]);

    // CreateUser with no roles gets the defaults; with roles, only those.
    let create = |username: &str, roles: &[&str]| pb::CreateUserRequest {
        username: username.into(),
        email: format!("{username}@example.com"),
        password: ADMIN_PASSWORD.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        ..Default::default()
    };
    let plain = app
        .user_admin()
        .create_user(with_bearer(create("plain", &[]), &admin))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(plain.roles, ["member"]);
    let clerk = app
        .user_admin()
        .create_user(with_bearer(create("clerk1", &["clerk"]), &admin))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(clerk.roles, ["clerk"]);

    // Unmarked, a role is no longer given.
    let mut unmarked = member.clone();
    unmarked.default_for_new_users = false;
    let unmarked = update_role(&app, &admin, unmarked, &["default_for_new_users"])
        .await
        .unwrap();
    assert!(!unmarked.default_for_new_users);
    let later = app
        .user_admin()
        .create_user(with_bearer(create("later", &[]), &admin))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(later.roles.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn no_default_role_may_hold_a_keystone_scope() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create_scope(&app, &admin, "orders:read").await;

    // Created so.
    let status = create_role(&app, &admin, "helpers", &["keystone:admin"], true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "role.default_for_new_users");
    assert!(status.message().contains("keystone:admin"), "{status:?}");
    let status = app
        .user_admin()
        .get_role(with_bearer(
            pb::GetRoleRequest {
                name: "helpers".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "nothing was created");

    // Marked so.
    let readers = create_role(&app, &admin, "readers", &["keystone:users.read"], false)
        .await
        .unwrap();
    let mut marked = readers.clone();
    marked.default_for_new_users = true;
    let status = update_role(&app, &admin, marked, &["default_for_new_users"])
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "role.default_for_new_users");
    assert!(
        !get_role(&app, &admin, "readers")
            .await
            .default_for_new_users
    );

    // Given such a scope once default.
    let member = create_role(&app, &admin, "member", &["orders:read"], true)
        .await
        .unwrap();
    let mut widened = member.clone();
    widened.scopes = vec!["orders:read".into(), "keystone:introspect".into()];
    let status = update_role(&app, &admin, widened, &["scopes"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        get_role(&app, &admin, "member").await.scopes,
        ["orders:read"],
        "nothing changed"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn only_a_caller_who_could_assign_a_role_may_make_it_default() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create_scope(&app, &admin, "payroll:write").await;
    let payroll = create_role(&app, &admin, "payroll", &["payroll:write"], false)
        .await
        .unwrap();
    let helpdesk = app
        .token_with_scopes("helpdesk", &["keystone:users.write"])
        .await;
    let mut marked = payroll;
    marked.default_for_new_users = true;
    let status = update_role(&app, &helpdesk, marked, &["default_for_new_users"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        !get_role(&app, &admin, "payroll")
            .await
            .default_for_new_users
    );
    let status = create_role(&app, &helpdesk, "payroll2", &["payroll:write"], true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    app.stop().await.unwrap();
}

async fn authenticate(
    app: &TestApp,
    token: &str,
    roles: Vec<String>,
) -> Result<pb::Principal, tonic::Status> {
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: token.to_owned(),
            required_roles: roles,
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().principal.unwrap())
}

#[tokio::test]
async fn authenticate_checks_the_roles_asked_for() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create_scope(&app, &admin, "orders:read").await;
    create_role(&app, &admin, "member", &["orders:read"], false)
        .await
        .unwrap();
    app.create_user("mia", ADMIN_PASSWORD, &["member"]).await;
    let token = app.login("mia", ADMIN_PASSWORD).await.unwrap().access_token;

    let principal = authenticate(&app, &token, vec!["member".into()])
        .await
        .unwrap();
    assert_eq!(principal.roles, ["member"]);
    let status = authenticate(&app, &token, vec!["member".into(), "auditor".into()])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "MISSING_ROLE");
    assert!(status.message().contains("auditor"), "{status:?}");

    // A service token holds no role.
    let secret = app
        .create_client("svc", &["orders:read"], &[], None, true)
        .await;
    let service = app
        .client_token("svc", &secret, &["orders:read"], "")
        .await
        .unwrap()
        .access_token;
    let status = authenticate(&app, &service, vec!["member".into()])
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "MISSING_ROLE");

    // Bad input names the field.
    let status = authenticate(&app, &token, vec!["r".into(); 10_000])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "required_roles");
    let status = authenticate(&app, &token, vec!["member".into(), "Not A Role!".into()])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "required_roles[1]");
    app.stop().await.unwrap();
}

fn check_request(token: &str, path: &str, extensions: &[(&str, &str)]) -> CheckRequest {
    let bearer = format!("Bearer {token}");
    crate::ext_authz::check_request(&[("authorization", &bearer)], path, extensions)
}

/// The HTTP status Envoy would answer with (200 when allowed).
async fn envoy_status(app: &TestApp, request: CheckRequest) -> i32 {
    let response = AuthorizationClient::new(app.channel.clone())
        .check(request)
        .await
        .unwrap()
        .into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.status.map(|s| s.code).unwrap_or_default()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn envoy_checks_roles_from_the_route_and_its_context_extensions() {
    let app = spawn_app_with(|settings| {
        settings.ext_authz.routes = vec![keystone::config::ExtAuthzRoute {
            path_prefix: "/members".into(),
            roles: vec!["member".into()],
            ..Default::default()
        }];
    })
    .await;
    let admin = app.admin_token().await;
    create_scope(&app, &admin, "orders:read").await;
    create_role(&app, &admin, "member", &["orders:read"], false)
        .await
        .unwrap();
    app.create_user("mia", ADMIN_PASSWORD, &["member"]).await;
    app.create_user("otto", ADMIN_PASSWORD, &[]).await;
    let mia = app.login("mia", ADMIN_PASSWORD).await.unwrap().access_token;
    let otto = app
        .login("otto", ADMIN_PASSWORD)
        .await
        .unwrap()
        .access_token;

    assert_eq!(
        envoy_status(&app, check_request(&mia, "/members/x", &[])).await,
        200
    );
    assert_eq!(
        envoy_status(&app, check_request(&otto, "/members/x", &[])).await,
        403
    );
    assert_eq!(
        envoy_status(&app, check_request(&otto, "/public", &[])).await,
        200
    );
    let extension = [("keystone_required_roles", "member auditor")];
    assert_eq!(
        envoy_status(&app, check_request(&mia, "/public", &extension)).await,
        403
    );
    let extension = [("keystone_required_roles", " member ")];
    assert_eq!(
        envoy_status(&app, check_request(&mia, "/public", &extension)).await,
        200
    );
    // A malformed extension is the route's fault: 500, never an open door.
    let extension = [("keystone_required_roles", "Bad!Role")];
    assert_eq!(
        envoy_status(&app, check_request(&mia, "/public", &extension)).await,
        500
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_refresh_carries_only_the_scopes_the_users_roles_grant_now() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for scope in ["orders:read", "orders:write"] {
        create_scope(&app, &admin, scope).await;
    }
    let clerk = create_role(
        &app,
        &admin,
        "clerk",
        &["orders:read", "orders:write"],
        false,
    )
    .await
    .unwrap();
    create_role(&app, &admin, "viewer", &["orders:read"], false)
        .await
        .unwrap();
    app.create_user("dana", ADMIN_PASSWORD, &["clerk", "viewer"])
        .await;
    let login = app
        .login_with("dana", ADMIN_PASSWORD, &["orders:read", "orders:write"], "")
        .await
        .unwrap();
    assert_eq!(login.scopes, ["orders:read", "orders:write"]);
    // The clerk loses orders:write: the next refresh reads the user's grants again.
    update_role(
        &app,
        &admin,
        pb::Role {
            scopes: vec!["orders:read".into()],
            ..clerk
        },
        &["scopes"],
    )
    .await
    .unwrap();
    let refreshed = app.refresh(&login.refresh_token).await.unwrap();
    assert_eq!(refreshed.scopes, ["orders:read"]);
}
