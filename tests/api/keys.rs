//! Signing-key lifecycle through the running server: a rotation publishes the next key before
//! it signs and keeps old tokens valid; a revoked key's tokens fail.

use std::{sync::Arc, time::Duration};

use keystone::{
    Settings,
    clock::SharedClock,
    proto::pb,
    store::Store,
    token::keys::{KeyManager, KeyRing},
};
use secrecy::SecretString;
use tonic::Code;

use crate::{
    cli::{keystone, run},
    helpers::{TestApp, reason, spawn_app_with},
};

const PASSWORD: &str = "correct horse battery staple";

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

async fn published(app: &TestApp) -> Vec<String> {
    app.auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|key| key.kid)
        .collect()
}

/// Polls `check` until it holds, for at most five seconds (the server reloads keys every
/// 100 ms in these tests).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fast_reload(settings: &mut Settings) {
    settings.keys.reload_interval = Duration::from_millis(100);
    settings.tokens.access_ttl = Duration::from_secs(3600);
}

#[tokio::test]
async fn a_rotation_publishes_the_key_before_it_signs_and_old_tokens_stay_valid() {
    let app = spawn_app_with(fast_reload).await;
    app.create_user("kim", PASSWORD, &[]).await;
    let old_token = app.login("kim", PASSWORD).await.unwrap().access_token;
    let old_kid = kid_of(&old_token);

    let store = Store::connect(
        &SecretString::from(app.database_url().to_owned()),
        &Settings::default().database,
    )
    .await
    .unwrap();
    let settings = Settings::default();
    let clock: SharedClock = Arc::new(app.clock.clone());
    let manager = KeyManager::new(
        store.clone(),
        KeyRing::default(),
        clock,
        settings.keys.algorithm,
        settings.keys.publish_ahead,
        settings.keys.rotate_every,
        settings.tokens.max_access_ttl,
    );
    let new_kid = manager.rotate().await.unwrap();
    store.close().await;

    eventually("the next key is published", || async {
        published(&app).await.contains(&new_kid)
    })
    .await;
    let token = app.login("kim", PASSWORD).await.unwrap().access_token;
    assert_eq!(
        kid_of(&token),
        old_kid,
        "the next key does not sign before its time"
    );

    app.clock
        .advance(chrono::Duration::minutes(25) + chrono::Duration::seconds(1));
    eventually("the next key signs", || async {
        kid_of(&app.login("kim", PASSWORD).await.unwrap().access_token) == new_kid
    })
    .await;
    let keys = published(&app).await;
    assert!(
        keys.contains(&old_kid),
        "the retired key stays published: {keys:?}"
    );
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: old_token,
            ..Default::default()
        })
        .await
        .expect("a token of the retired key is still valid");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn keystone_keys_revoke_makes_the_tokens_of_the_key_fail() {
    let app = spawn_app_with(fast_reload).await;
    app.create_user("lee", PASSWORD, &[]).await;
    let token = app.login("lee", PASSWORD).await.unwrap().access_token;
    let kid = kid_of(&token);

    let (code, stdout, stderr) = run(keystone()
        .args(["keys", "revoke", &kid])
        .env("KEYSTONE_DATABASE_URL", app.database_url()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&kid));

    eventually("the revoked key's token fails", || async {
        match app
            .auth()
            .authenticate(pb::AuthenticateRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
        {
            Err(status) => {
                status.code() == Code::Unauthenticated && reason(&status) == "TOKEN_INVALID"
            }
            Ok(_) => false,
        }
    })
    .await;
    assert!(
        !published(&app).await.contains(&kid),
        "the key left the JWKS"
    );
    let fresh = app.login("lee", PASSWORD).await.unwrap().access_token;
    assert_ne!(kid_of(&fresh), kid, "a new key signs at once");

    let (code, _, stderr) = run(keystone()
        .args(["keys", "revoke", &kid])
        .env("KEYSTONE_DATABASE_URL", app.database_url()));
    assert_eq!(code, 1, "revoking twice fails: {stderr}");
    app.stop().await.unwrap();
}
