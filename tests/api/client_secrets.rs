//! A client's secrets, visible without the secret (`Client.secrets`), and ended one at a time
//! (`ClientAdmin/RevokeClientSecret`).

use keystone::proto::pb::{
    Client, ClientSecretInfo, CreateClientRequest, GetClientRequest, RevokeClientSecretRequest,
    RotateClientSecretRequest,
};
use tonic::Code;

use crate::helpers::{TestApp, bad_field, reason, spawn_app, with_bearer};

async fn get(app: &TestApp, admin: &str, client_id: &str) -> Client {
    app.client_admin()
        .get_client(with_bearer(
            GetClientRequest {
                client_id: client_id.into(),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn rotate(app: &TestApp, admin: &str, client_id: &str, grace_seconds: i64) -> String {
    app.client_admin()
        .rotate_client_secret(with_bearer(
            RotateClientSecretRequest {
                client_id: client_id.into(),
                grace_period: Some(prost_types::Duration {
                    seconds: grace_seconds,
                    nanos: 0,
                }),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret
}

async fn revoke(
    app: &TestApp,
    token: &str,
    client_id: &str,
    secret_id: &str,
) -> Result<(), tonic::Status> {
    app.client_admin()
        .revoke_client_secret(with_bearer(
            RevokeClientSecretRequest {
                client_id: client_id.into(),
                secret_id: secret_id.into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

/// A client made through the API (its secret stamped by the server's clock, as a rotation's is).
async fn create(app: &TestApp, admin: &str, client_id: &str) -> String {
    app.client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(Client {
                    client_id: client_id.into(),
                    allowed_scopes: vec!["keystone:introspect".into()],
                    ..Default::default()
                }),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret
}

fn ids(secrets: &[ClientSecretInfo]) -> Vec<&str> {
    secrets.iter().map(|s| s.id.as_str()).collect()
}

#[tokio::test]
async fn a_clients_secrets_are_shown_without_the_secret() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let created = app
        .client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(Client {
                    client_id: "billing".into(),
                    allowed_scopes: vec!["keystone:introspect".into()],
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let secret = created.client_secret;
    let client = created.client.unwrap();
    assert_eq!(client.secrets.len(), 1);
    let info = &client.secrets[0];
    assert_eq!(info.id.len(), 12);
    assert!(info.id.bytes().all(|b| b.is_ascii_hexdigit()), "{info:?}");
    assert!(info.created_at.is_some());
    assert!(info.expires_at.is_none());
    assert!(info.last_used_at.is_none());

    app.client_token("billing", &secret, &[], "").await.unwrap();
    let read = get(&app, &admin, "billing").await;
    assert_eq!(ids(&read.secrets), [info.id.as_str()]);
    assert!(read.secrets[0].last_used_at.is_some());
    let printed = format!("{read:?}");
    assert!(!printed.contains(&secret), "{printed}");
    assert!(!printed.contains(&secret["kss_".len()..]), "{printed}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_leaked_previous_secret_is_ended_before_its_grace_runs_out() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let old = create(&app, &admin, "billing").await;
    let new = rotate(&app, &admin, "billing", 3600).await;
    let client = get(&app, &admin, "billing").await;
    assert_eq!(client.secrets.len(), 2, "{client:?}");
    // The newest first; the previous one ends with its grace.
    assert!(client.secrets[0].expires_at.is_none());
    assert!(client.secrets[1].expires_at.is_some());
    let (new_id, old_id) = (client.secrets[0].id.clone(), client.secrets[1].id.clone());
    app.client_token("billing", &old, &[], "").await.unwrap();

    // The current secret cannot go while only the ending one would be left.
    let status = revoke(&app, &admin, "billing", &new_id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.client_token("billing", &new, &[], "").await.unwrap();

    revoke(&app, &admin, "billing", &old_id.to_uppercase())
        .await
        .unwrap();
    let status = app
        .client_token("billing", &old, &[], "")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    app.client_token("billing", &new, &[], "").await.unwrap();
    assert_eq!(
        ids(&get(&app, &admin, "billing").await.secrets),
        [new_id.as_str()]
    );

    // The last live secret stays; rotating is how it ends.
    let status = revoke(&app, &admin, "billing", &new_id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.client_token("billing", &new, &[], "").await.unwrap();

    // A secret already ended, or never there.
    let status = revoke(&app, &admin, "billing", &old_id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = revoke(&app, &admin, "nobody", &old_id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn revoking_a_secret_takes_a_well_formed_id_and_the_write_scope() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let old = create(&app, &admin, "billing").await;
    rotate(&app, &admin, "billing", 3600).await;
    let old_id = get(&app, &admin, "billing").await.secrets[1].id.clone();

    for bad in ["", "xyz", "0123456789abcdef0123", "ghijklmnopqr", &old] {
        let status = revoke(&app, &admin, "billing", bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(bad_field(&status), "secret_id", "{bad}");
        assert!(!status.message().contains(&old), "never the secret");
    }
    let reader = app
        .token_with_scopes("reader", &["keystone:clients.read"])
        .await;
    let status = revoke(&app, &reader, "billing", &old_id).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Nothing changed.
    assert_eq!(get(&app, &admin, "billing").await.secrets.len(), 2);
    app.client_token("billing", &old, &[], "").await.unwrap();
    app.stop().await.unwrap();
}
