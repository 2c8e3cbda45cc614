//! `keystone.v1.ClientAdmin` through the real API: clients, secrets and their rotation, and
//! the end of a client's tokens.

use keystone::proto::pb::{
    AuthenticateRequest, Client, CreateClientRequest, CreateUserRequest, DeleteClientRequest,
    GetClientRequest, ListClientsRequest, RevokeClientTokensRequest, RotateClientSecretRequest,
    UpdateClientRequest,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{TestApp, bad_field, reason, spawn_app, spawn_app_with, with_bearer};

async fn create_client(app: &TestApp, token: &str, client: Client) -> (Client, String) {
    let created = app
        .client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(client),
            },
            token,
        ))
        .await
        .expect("the client is created")
        .into_inner();
    (created.client.expect("a client"), created.client_secret)
}

fn reporting() -> Client {
    Client {
        client_id: "reporting".into(),
        name: "Reporting".into(),
        allowed_scopes: vec!["keystone:introspect".into()],
        allowed_audiences: vec!["https://api.example.com".into()],
        ..Default::default()
    }
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

async fn grace(
    app: &TestApp,
    token: &str,
    client_id: &str,
    seconds: i64,
) -> Result<String, tonic::Status> {
    app.client_admin()
        .rotate_client_secret(with_bearer(
            RotateClientSecretRequest {
                client_id: client_id.to_owned(),
                grace_period: Some(prost_types::Duration { seconds, nanos: 0 }),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().client_secret)
}

#[tokio::test]
async fn an_admin_creates_a_client_whose_secret_is_shown_once_and_works() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (client, secret) = create_client(&app, &admin, reporting()).await;
    assert_eq!(client.client_id, "reporting");
    assert_eq!(client.enabled, Some(true));
    assert!(secret.starts_with("kss_"), "{secret}");
    let token = app
        .client_token("reporting", &secret, &["keystone:introspect"], "")
        .await
        .expect("the new secret works");
    assert_eq!(token.scopes, ["keystone:introspect"]);

    // Reads never show the secret, and show when it was last used.
    let read = app
        .client_admin()
        .get_client(with_bearer(
            GetClientRequest {
                client_id: "reporting".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(read.secret_last_used_at.is_some());
    assert!(!format!("{read:?}").contains(&secret));

    // A generated id.
    let (generated, _) = create_client(
        &app,
        &admin,
        Client {
            name: "Anonymous".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        generated.client_id.starts_with("kc_"),
        "{}",
        generated.client_id
    );
    let listed = app
        .client_admin()
        .list_clients(with_bearer(ListClientsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.clients.len(), 2);

    // Update through a mask.
    let updated = app
        .client_admin()
        .update_client(with_bearer(
            UpdateClientRequest {
                client: Some(Client {
                    client_id: "reporting".into(),
                    name: "Reports".into(),
                    access_token_ttl: Some(prost_types::Duration {
                        seconds: 120,
                        nanos: 0,
                    }),
                    // Not in the mask: left alone.
                    allowed_scopes: vec![],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into(), "access_token_ttl".into()],
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Reports");
    assert_eq!(updated.allowed_scopes, ["keystone:introspect"]);
    let token = app
        .client_token("reporting", &secret, &[], "")
        .await
        .unwrap();
    assert_eq!(token.expires_in, 120);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_client_fields_are_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let cases = [
        (
            Client {
                client_id: "has space".into(),
                ..Default::default()
            },
            "client.client_id",
        ),
        (
            Client {
                client_id: "ok".into(),
                access_token_ttl: Some(prost_types::Duration {
                    seconds: 10 * 24 * 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "client.access_token_ttl",
        ),
        (
            Client {
                client_id: "ok".into(),
                allowed_scopes: vec!["no-colon".into()],
                ..Default::default()
            },
            "client.allowed_scopes[0]",
        ),
        (
            Client {
                client_id: "ok".into(),
                allowed_audiences: vec!["has space".into()],
                ..Default::default()
            },
            "client.allowed_audiences[0]",
        ),
    ];
    for (client, field) in cases {
        let status = app
            .client_admin()
            .create_client(with_bearer(
                CreateClientRequest {
                    client: Some(client),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(bad_field(&status), field);
    }
    let status = app
        .client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(Client {
                    client_id: "ok".into(),
                    allowed_scopes: vec!["ghost:read".into()],
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "scopes must exist");
    let listed = app
        .client_admin()
        .list_clients(with_bearer(ListClientsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.clients.is_empty(), "nothing was written");

    // A client id may not be a user's id or username.
    let user = app
        .user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: "payments".into(),
                email: "payments@example.com".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    // Nor may a new username be a client's id.
    create_client(&app, &admin, reporting()).await;
    let status = app
        .user_admin()
        .create_user(with_bearer(
            CreateUserRequest {
                username: "Reporting".into(),
                email: "reporting@example.com".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    for client_id in ["payments", "Payments", user.id.as_str()] {
        let status = app
            .client_admin()
            .create_client(with_bearer(
                CreateClientRequest {
                    client: Some(Client {
                        client_id: client_id.into(),
                        ..Default::default()
                    }),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{client_id}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_secret_keeps_working_for_its_grace_only_and_two_at_most_live() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, first) = create_client(&app, &admin, reporting()).await;

    let second = grace(&app, &admin, "reporting", 3600).await.unwrap();
    assert!(app.client_token("reporting", &first, &[], "").await.is_ok());
    assert!(
        app.client_token("reporting", &second, &[], "")
            .await
            .is_ok()
    );
    app.clock.advance(chrono::Duration::seconds(3601));
    let status = app
        .client_token("reporting", &first, &[], "")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    assert!(
        app.client_token("reporting", &second, &[], "")
            .await
            .is_ok()
    );

    // At most two live: a third secret ends the first at once, whatever its grace.
    let admin = app.admin_relogin().await;
    let third = grace(&app, &admin, "reporting", 3600).await.unwrap();
    let fourth = grace(&app, &admin, "reporting", 3600).await.unwrap();
    assert!(
        app.client_token("reporting", &second, &[], "")
            .await
            .is_err()
    );
    assert!(app.client_token("reporting", &third, &[], "").await.is_ok());
    assert!(
        app.client_token("reporting", &fourth, &[], "")
            .await
            .is_ok()
    );

    // No grace: the previous secret ends now.
    let fifth = grace(&app, &admin, "reporting", 0).await.unwrap();
    assert!(
        app.client_token("reporting", &fourth, &[], "")
            .await
            .is_err()
    );
    assert!(app.client_token("reporting", &fifth, &[], "").await.is_ok());

    // Beyond clients.max_secret_grace (7 days), or negative: refused.
    for seconds in [8 * 24 * 3600, -1] {
        let status = grace(&app, &admin, "reporting", seconds).await.unwrap_err();
        assert_eq!(bad_field(&status), "grace_period", "{seconds}");
    }
    assert!(app.client_token("reporting", &fifth, &[], "").await.is_ok());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn revoking_disabling_and_deleting_a_client_end_its_tokens_at_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, secret) = create_client(&app, &admin, reporting()).await;
    let before = app
        .client_token("reporting", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    app.client_admin()
        .revoke_client_tokens(with_bearer(
            RevokeClientTokensRequest {
                client_id: "reporting".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let status = authenticate(&app, &before).await.unwrap_err();
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    app.clock.advance(chrono::Duration::milliseconds(5));
    let after = app
        .client_token("reporting", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    authenticate(&app, &after)
        .await
        .expect("a token issued after the revocation works");

    app.client_admin()
        .update_client(with_bearer(
            UpdateClientRequest {
                client: Some(Client {
                    client_id: "reporting".into(),
                    enabled: Some(false),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["enabled".into()],
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_eq!(
        reason(&authenticate(&app, &after).await.unwrap_err()),
        "TOKEN_REVOKED"
    );
    let status = app
        .client_token("reporting", &secret, &[], "")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "ACCOUNT_DISABLED");

    app.client_admin()
        .delete_client(with_bearer(
            DeleteClientRequest {
                client_id: "reporting".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let status = app
        .client_admin()
        .get_client(with_bearer(
            GetClientRequest {
                client_id: "reporting".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = app
        .client_token("reporting", &secret, &[], "")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_clients_write_caller_grants_only_what_it_holds_and_cannot_take_over_an_admin_client() {
    // The audience of `reporting` is one such a caller may give.
    let app = spawn_app_with(|settings| {
        settings.clients.delegable_audiences = vec!["https://api.example.com".into()];
    })
    .await;
    let admin = app.admin_token().await;
    let ops = app
        .token_with_scopes("ops", &["keystone:clients.write", "keystone:introspect"])
        .await;
    let reader = app
        .token_with_scopes("viewer", &["keystone:clients.read"])
        .await;

    // Without the scope: refused before the client is looked up.
    let status = app
        .client_admin()
        .get_client(with_bearer(
            GetClientRequest {
                client_id: "ghost".into(),
            },
            &app.token_with_scopes("stranger", &["keystone:users.read"])
                .await,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(reporting()),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let status = app
        .client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(Client {
                    client_id: "escalator".into(),
                    allowed_scopes: vec!["keystone:users.write".into()],
                    ..Default::default()
                }),
            },
            &ops,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");
    create_client(&app, &ops, reporting()).await;

    // An admin's client is out of reach.
    create_client(
        &app,
        &admin,
        Client {
            client_id: "automation".into(),
            allowed_scopes: vec!["keystone:admin".into()],
            ..Default::default()
        },
    )
    .await;
    let status = grace(&app, &ops, "automation", 0).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .client_admin()
        .delete_client(with_bearer(
            DeleteClientRequest {
                client_id: "automation".into(),
            },
            &ops,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    grace(&app, &ops, "reporting", 0)
        .await
        .expect("its own kind of client is the caller's to rotate");
    app.stop().await.unwrap();
}
