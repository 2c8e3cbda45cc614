//! The client credentials grant through gRPC.

use std::time::Duration;

use keystone::proto::pb;
use tonic::Code;

use crate::helpers::{reason, spawn_app, spawn_app_with, with_bearer};

#[tokio::test]
async fn client_credentials_give_a_service_token_without_a_refresh_token() {
    let app = spawn_app().await;
    let secret = app
        .create_client(
            "billing",
            &["keystone:introspect", "keystone:users.read"],
            &["orders", "invoices"],
            Some(Duration::from_secs(300)),
            true,
        )
        .await;
    let token = app.client_token("billing", &secret, &[], "").await.unwrap();
    assert!(token.refresh_token.is_empty());
    assert_eq!(token.expires_in, 300);
    // Keystone's own scopes are never implied: asking none gives none of them.
    assert!(token.scopes.is_empty(), "{:?}", token.scopes);
    let principal = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: token.access_token.clone(),
            required_scopes: Vec::new(),
            audience: "invoices".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(principal.kind(), pb::PrincipalKind::Service);
    assert_eq!(principal.subject, "billing");
    assert_eq!(principal.client_id, "billing");
    assert_eq!(principal.audience, ["invoices", "orders"]);
    assert!(principal.session_id.is_empty());

    // Asked for by name, they are for Keystone's audience only.
    let status = app
        .client_token("billing", &secret, &["keystone:users.read"], "orders")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "INVALID_SCOPE");
    let narrowed = app
        .client_token("billing", &secret, &["keystone:users.read"], "")
        .await
        .unwrap();
    assert_eq!(narrowed.scopes, ["keystone:users.read"]);
    let principal = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: narrowed.access_token,
            required_scopes: vec!["keystone:users.read".into()],
            audience: "keystone".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(principal.audience, ["keystone"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_client_and_a_wrong_secret_get_the_same_answer() {
    let app = spawn_app().await;
    let secret = app.create_client("reports", &[], &[], None, true).await;
    let wrong = app
        .client_token("reports", &format!("{secret}x"), &[], "")
        .await
        .unwrap_err();
    let unknown = app
        .client_token("nobody", &secret, &[], "")
        .await
        .unwrap_err();
    for status in [&wrong, &unknown] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(status), "INVALID_CREDENTIALS");
    }
    assert_eq!(wrong.message(), unknown.message());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_disabled_client_is_told_so_only_with_the_right_secret() {
    let app = spawn_app().await;
    let secret = app.create_client("legacy", &[], &[], None, false).await;
    let status = app
        .client_token("legacy", &secret, &[], "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "ACCOUNT_DISABLED");
    let status = app
        .client_token("legacy", "kss_wrong", &[], "")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn clients_get_only_their_scopes_and_audiences() {
    let app = spawn_app().await;
    let secret = app
        .create_client("search", &["keystone:users.read"], &["catalog"], None, true)
        .await;
    let status = app
        .client_token("search", &secret, &["keystone:users.write"], "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "INVALID_SCOPE");
    let status = app
        .client_token("search", &secret, &[], "payments")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "INVALID_AUDIENCE");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_lifetime_is_capped_by_the_global_maximum() {
    let app = spawn_app_with(|settings| {
        settings.tokens.max_access_ttl = Duration::from_secs(3600);
    })
    .await;
    let secret = app
        .create_client("batch", &[], &[], Some(Duration::from_secs(86_400)), true)
        .await;
    let token = app.client_token("batch", &secret, &[], "").await.unwrap();
    assert_eq!(token.expires_in, 3600);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn issued_service_tokens_are_audited_unless_switched_off_and_refusals_always() {
    for audit_tokens in [true, false] {
        let app = spawn_app_with(|settings| settings.clients.audit_tokens = audit_tokens).await;
        let secret = app.create_client("ledger", &[], &[], None, true).await;
        for _ in 0..3 {
            app.client_token("ledger", &secret, &[], "").await.unwrap();
        }
        app.client_token("ledger", &format!("{secret}x"), &[], "")
            .await
            .unwrap_err();
        let admin = app.admin_token().await;
        let events = |action: &'static str| {
            let mut admin_api = app.user_admin();
            let admin = admin.clone();
            async move {
                admin_api
                    .list_audit_events(with_bearer(
                        pb::ListAuditEventsRequest {
                            action: action.into(),
                            actor: "ledger".into(),
                            ..Default::default()
                        },
                        &admin,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .events
            }
        };
        // Written a moment after the calls (batched): listing waits for them.
        let issued = events("token.issue").await;
        assert_eq!(issued.len(), if audit_tokens { 3 } else { 0 }, "{issued:?}");
        let refused = events("client.authenticate").await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].outcome, "failure");
        app.stop().await.unwrap();
    }
}
