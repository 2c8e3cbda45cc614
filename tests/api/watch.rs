//! `Auth/WatchRevocations`: the revocation set, then each change, to callers holding
//! `keystone:introspect`.

use keystone::proto::pb::{RevocationKind, RevokeRequest, WatchRevocationsRequest};
use tonic::Code;

use crate::helpers::{reason, spawn_app, with_bearer};

#[tokio::test]
async fn watch_revocations_streams_the_snapshot_then_each_change_in_order() {
    let app = spawn_app().await;
    let secret = app
        .create_client("mesh", &["keystone:introspect"], &[], None, true)
        .await;
    let token = || async {
        app.client_token("mesh", &secret, &["keystone:introspect"], "")
            .await
            .unwrap()
            .access_token
    };
    let watcher = token().await;
    // Without the scope, or without a token: refused.
    let status = app
        .auth()
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let plain = app.create_client("plain", &[], &[], None, true).await;
    let plain_token = app
        .client_token("plain", &plain, &[], "")
        .await
        .unwrap()
        .access_token;
    let status = app
        .auth()
        .watch_revocations(with_bearer(WatchRevocationsRequest {}, &plain_token))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");

    let before = token().await;
    revoke(&app, before.clone()).await;
    let mut stream = app
        .auth()
        .watch_revocations(with_bearer(WatchRevocationsRequest {}, &watcher))
        .await
        .unwrap()
        .into_inner();
    let mut snapshot = Vec::new();
    loop {
        let message = stream.message().await.unwrap().expect("the stream goes on");
        if message.snapshot_complete {
            assert!(message.revocation.is_none());
            break;
        }
        snapshot.push(message.revocation.unwrap());
    }
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot[0].kind(), RevocationKind::Token);

    let mut ids = Vec::new();
    for _ in 0..3 {
        let token = token().await;
        let principal = app
            .auth()
            .authenticate(keystone::proto::pb::AuthenticateRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .principal
            .unwrap();
        ids.push(principal.token_id);
        revoke(&app, token).await;
    }
    for id in &ids {
        let message = stream.message().await.unwrap().expect("a change");
        let entry = message.revocation.expect("an entry");
        assert_eq!(&entry.key, id, "in the order they were made");
        assert!(entry.expires_at.is_some());
    }
    app.stop().await.unwrap();
    assert!(
        matches!(stream.message().await, Err(_) | Ok(None)),
        "the stream ends when the server stops"
    );
}

async fn revoke(app: &crate::helpers::TestApp, token: String) {
    app.auth()
        .revoke(RevokeRequest {
            token,
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
}
