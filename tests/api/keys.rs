//! Signing-key lifecycle through the running server: a rotation publishes the next key before
//! it signs and keeps old tokens valid; a revoked key's tokens fail.

use std::{sync::Arc, time::Duration};

use keystone::{
    Settings,
    clock::SharedClock,
    proto::pb,
    secrets::{KeyEncryptionKey, Pepper},
    store::Store,
    token::{KeyManager, KeyRing, sealing::KeySealer},
};
use secrecy::SecretString;
use tonic::Code;

use crate::{
    cli::{keystone, run_beside},
    helpers::{TEST_PEPPER, TestApp, reason, spawn_app_on, spawn_app_with},
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
    let pepper = Pepper::from_secret(&SecretString::from(TEST_PEPPER));
    let manager = KeyManager::new(
        store.clone(),
        KeyRing::default(),
        clock,
        KeySealer::from_settings(&settings.secrets, &pepper).unwrap(),
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

    // Without the servers' pepper, the command cannot open the stored keys: it refuses
    // rather than make a key no server could use.
    let (code, _, stderr) = run_beside(
        keystone()
            .args(["keys", "revoke", &kid])
            .env("KEYSTONE_DATABASE_URL", app.database_url())
            .env(
                "KEYSTONE_SECRETS__PEPPER",
                "another-pepper-0123456789abcdefghijklmnop",
            ),
    )
    .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("key-encryption key"), "{stderr}");
    assert!(!stderr.contains("another-pepper"), "{stderr}");
    let (code, stdout, stderr) = run_beside(
        keystone()
            .args(["keys", "revoke", &kid])
            .env("KEYSTONE_DATABASE_URL", app.database_url())
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER),
    )
    .await;
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

    let (code, _, stderr) = run_beside(
        keystone()
            .args(["keys", "revoke", &kid])
            .env("KEYSTONE_DATABASE_URL", app.database_url())
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER),
    )
    .await;
    assert_eq!(code, 1, "revoking twice fails: {stderr}");
    assert!(stderr.contains("no live key"), "{stderr}");
    // Without any pepper, the command does not make one up.
    let nowhere = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_beside(
        keystone()
            .args(["keys", "rotate"])
            .env("KEYSTONE_DATABASE_URL", app.database_url())
            .env(
                "KEYSTONE_SECRETS__PEPPER_FILE",
                nowhere.path().join("keystone.pepper"),
            ),
    )
    .await;
    assert!(!nowhere.path().join("keystone.pepper").exists());
    assert_ne!(code, 0);
    assert!(stderr.contains("servers' pepper"), "{stderr}");
    app.stop().await.unwrap();
}

async fn authenticates(app: &TestApp, token: &str) -> bool {
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: token.to_owned(),
            ..Default::default()
        })
        .await
        .is_ok()
}

#[tokio::test]
async fn private_keys_are_sealed_at_rest_and_follow_the_key_encryption_key() {
    const KEK_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEK_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let kek = |value: &str| Some(KeyEncryptionKey::decode(value).unwrap());

    // Without a key-encryption key of its own, the pepper's seals the key.
    let app = spawn_app_with(|_| {}).await;
    app.create_user("kim", PASSWORD, &[]).await;
    let token = app.login("kim", PASSWORD).await.unwrap().access_token;
    let (kid, by_pepper) = crate::helpers::stored_active_key(app.database_url()).await;
    let der = crate::helpers::active_private_key(app.database_url()).await;
    assert!(by_pepper.starts_with(b"KSE1"), "sealed");
    assert!(
        !by_pepper
            .windows(16)
            .any(|w| der.windows(16).any(|d| d == w)),
        "nothing of the key in the clear"
    );
    let database = app.stop_keeping_database().await;

    // An explicit key set: the stored key stays as it is (a replica that does not know the
    // new key yet would lose it) and still opens; `keystone keys reseal` seals it under A.
    let app = spawn_app_on(database, |s| s.secrets.key_encryption_key = kek(KEK_A)).await;
    assert!(authenticates(&app, &token).await);
    assert!(app.login("kim", PASSWORD).await.is_ok());
    let (same_kid, unchanged) = crate::helpers::stored_active_key(app.database_url()).await;
    assert_eq!((same_kid.as_str(), &unchanged), (kid.as_str(), &by_pepper));
    let database_url = app.database_url().to_owned();
    let reseal = |current: &str, previous: Option<&str>| {
        let mut command = keystone();
        command
            .args(["keys", "reseal"])
            .env("KEYSTONE_DATABASE_URL", &database_url)
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER)
            .env("KEYSTONE_SECRETS__KEY_ENCRYPTION_KEY", current);
        if let Some(previous) = previous {
            command.env("KEYSTONE_SECRETS__PREVIOUS_KEY_ENCRYPTION_KEY", previous);
        }
        run_beside(&mut command)
    };
    let (code, stdout, stderr) = reseal(KEK_A, None).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&kid), "{stdout}");
    let (_, by_a) = crate::helpers::stored_active_key(app.database_url()).await;
    assert!(by_a.starts_with(b"KSE1"));
    assert_ne!(by_a[4..12], by_pepper[4..12], "another key-encryption key");
    assert!(app.login("kim", PASSWORD).await.is_ok());
    let database = app.stop_keeping_database().await;

    // The key-encryption key lost: the server refuses to start, and says why.
    let mut settings = crate::helpers::test_settings(database.url());
    settings.secrets.key_encryption_key = kek(KEK_B);
    let error = match keystone::app::App::build(settings).await {
        Ok(_) => panic!("a server that cannot open its keys started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("key-encryption key"), "{error}");
    assert!(!error.contains(KEK_B) && !error.contains(KEK_A), "{error}");

    // Changed from A to B with A as the previous key: read at once, sealed under B on demand.
    let app = spawn_app_on(database, |s| {
        s.secrets.key_encryption_key = kek(KEK_B);
        s.secrets.previous_key_encryption_key = kek(KEK_A);
    })
    .await;
    assert!(app.login("kim", PASSWORD).await.is_ok());
    let (code, _, stderr) = reseal(KEK_B, Some(KEK_A)).await;
    assert_eq!(code, 0, "{stderr}");
    let (_, by_b) = crate::helpers::stored_active_key(app.database_url()).await;
    assert_ne!(by_b[4..12], by_a[4..12]);
    assert!(app.login("kim", PASSWORD).await.is_ok());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_planted_in_the_clear_neither_signs_nor_verifies() {
    let app = spawn_app_with(|_| {}).await;
    app.create_user("pat", PASSWORD, &[]).await;
    let token = app.login("pat", PASSWORD).await.unwrap().access_token;
    // Whoever can write the database puts a private key of their knowing in the clear (here
    // the real one, opened: the same bytes an attacker's own key would be stored as).
    let der = crate::helpers::active_private_key(app.database_url()).await;
    let (kid, _) = crate::helpers::stored_active_key(app.database_url()).await;
    {
        use sea_orm::{ConnectionTrait as _, Database, Statement};
        let db = Database::connect(app.database_url()).await.unwrap();
        db.execute_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "UPDATE signing_keys SET private_key = $1 WHERE kid = $2",
            [der.into(), kid.clone().into()],
        ))
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let database = app.stop_keeping_database().await;
    let app = spawn_app_on(database, |_| {}).await;
    let status = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let jwks = app
        .auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        jwks.keys.iter().all(|key| key.kid != kid),
        "a key stored in the clear is published"
    );
    app.stop().await.unwrap();
}
