//! Password strength: zxcvbn's estimate wherever a password is set (`auth.password_min_strength`,
//! WEAK_PASSWORD with the estimator's advice), and `Auth/EstimatePasswordStrength` for the
//! screens where one is chosen.

use keystone::{config::Quota, proto::pb};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{ADMIN_PASSWORD, bad_field, reason, spawn_app, spawn_app_with, with_bearer};

/// Weak passwords of 15 and 16 characters that the length rule and the blocklist let through.
const GUESSABLE: [&str; 4] = [
    "1234567890123456",
    "123456789012345",
    "abcdefghijklmnop",
    "iloveyouiloveyou",
];

/// A long random passphrase.
const STRONG: &str = "gravel-otter-quasar-lantern-mosaic";

fn registration(username: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        username: username.to_owned(),
        email: format!("{username}@example.com"),
        password: password.to_owned(),
    }
}

/// The description of the violation on `field`.
fn violation(status: &tonic::Status, field: &str) -> String {
    let details = status.get_error_details();
    let bad_request = details.bad_request().expect("a BadRequest detail");
    bad_request
        .field_violations
        .iter()
        .find(|v| v.field == field)
        .unwrap_or_else(|| panic!("no violation on {field}: {bad_request:?}"))
        .description
        .clone()
}

#[tokio::test]
async fn guessable_passwords_are_refused_with_advice_and_a_passphrase_is_taken() {
    let app = spawn_app_with(|settings| settings.auth.registration = true).await;
    for (i, weak) in GUESSABLE.into_iter().enumerate() {
        let status = app
            .auth()
            .register(registration(&format!("weak{i}"), weak))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{weak}");
        assert_eq!(reason(&status), "WEAK_PASSWORD", "{weak}");
        let description = violation(&status, "password");
        assert!(description.contains("too easy to guess"), "{description}");
        assert!(description.contains("at least 3 needed"), "{description}");
        assert!(
            !description.contains(weak),
            "the password is not repeated: {description}"
        );
        assert!(!status.message().contains(weak));
    }
    // Nothing was created: the names are free.
    app.auth()
        .register(registration("weak0", STRONG))
        .await
        .expect("a long random passphrase is taken");
    app.login("weak0", STRONG).await.expect("and works");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_place_a_password_is_set_checks_its_strength() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let weak = "iloveyouiloveyou";

    // CreateUser.
    let status = app
        .user_admin()
        .create_user(with_bearer(
            pb::CreateUserRequest {
                username: "dora".into(),
                email: "dora@example.com".into(),
                password: weak.into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "WEAK_PASSWORD");
    assert_eq!(bad_field(&status), "password");

    // SetPassword.
    let id = app.create_user("dora", ADMIN_PASSWORD, &[]).await;
    let status = app
        .user_admin()
        .set_password(with_bearer(
            pb::SetPasswordRequest {
                id: id.to_string(),
                password: weak.into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "WEAK_PASSWORD");

    // ChangePassword; and a password holding the user's own name.
    let token = app
        .login("dora", ADMIN_PASSWORD)
        .await
        .unwrap()
        .access_token;
    for weak in [weak, "Dora1990Dora1990"] {
        let status = app
            .auth()
            .change_password(with_bearer(
                pb::ChangePasswordRequest {
                    current_password: ADMIN_PASSWORD.into(),
                    new_password: weak.into(),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "WEAK_PASSWORD", "{weak}");
        assert_eq!(bad_field(&status), "new_password");
    }
    // The password was not changed.
    app.login("dora", ADMIN_PASSWORD).await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_minimum_strength_is_a_setting() {
    let app = spawn_app_with(|settings| {
        settings.auth.registration = true;
        settings.auth.password_min_strength = 0;
    })
    .await;
    app.auth()
        .register(registration("lenient", "iloveyouiloveyou"))
        .await
        .expect("strength 0 takes what the other rules take");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_bootstrap_admin_password_must_be_strong_too() {
    let database = crate::helpers::TestDatabase::fresh().await;
    let mut settings = crate::helpers::test_settings(database.url());
    settings.bootstrap_admin_username = Some("root".into());
    settings.bootstrap_admin_password = Some(secrecy::SecretString::from("1234567890123456"));
    let Err(error) = keystone::app::App::build(settings).await else {
        panic!("a weak bootstrap password stops the start");
    };
    let error = format!("{error:#}");
    assert!(error.contains("too easy to guess"), "{error}");
    assert!(!error.contains("1234567890123456"), "{error}");
}

async fn estimate(
    app: &crate::helpers::TestApp,
    password: &str,
    username: &str,
    email: &str,
) -> Result<pb::EstimatePasswordStrengthResponse, tonic::Status> {
    app.auth()
        .estimate_password_strength(pb::EstimatePasswordStrengthRequest {
            password: password.to_owned(),
            username: username.to_owned(),
            email: email.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_estimator_needs_no_token_and_says_what_the_policy_would() {
    let app = spawn_app().await;
    for weak in GUESSABLE {
        let answer = estimate(&app, weak, "", "").await.unwrap();
        assert!(answer.score < 3, "{weak}: {answer:?}");
        assert!(!answer.acceptable, "{weak}");
        assert!(!answer.suggestions.is_empty(), "{weak}: {answer:?}");
        assert!(answer.warning.contains("too easy to guess"), "{answer:?}");
    }
    let strong = estimate(&app, STRONG, "", "").await.unwrap();
    assert_eq!(strong.score, 4);
    assert!(strong.acceptable);
    assert!(strong.guesses_log10 > 10.0, "{strong:?}");
    assert!(strong.warning.is_empty(), "{strong:?}");

    // Too short: the length rule speaks, and the estimate is still given.
    let short = estimate(&app, "Tr0ub4dor&3", "", "").await.unwrap();
    assert!(!short.acceptable);
    assert!(short.warning.contains("at least 15"), "{short:?}");

    // The account's names: refused when held, and guessable.
    let named = estimate(
        &app,
        "penelope-gravel-otter-quasar",
        "Penelope",
        "pen@example.com",
    )
    .await
    .unwrap();
    assert!(!named.acceptable, "{named:?}");
    assert!(named.warning.contains("username"), "{named:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_estimator_refuses_what_no_password_can_be() {
    // By default a 1 MiB request to Auth is refused before it is read.
    let app = spawn_app().await;
    let huge = "x".repeat(1 << 20);
    let status = estimate(&app, &huge, "", "").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "MESSAGE_TOO_LARGE");
    app.stop().await.unwrap();

    // Read, it is no password.
    let app = spawn_app_with(|settings| {
        settings.server.max_message_size = 4 << 20;
        settings.server.max_auth_message_size = 4 << 20;
    })
    .await;
    let status = estimate(&app, &huge, "", "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "password");
    assert!(
        status.message().contains("at most 128"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("xxxxxxxx"));

    let status = estimate(&app, STRONG, &"u".repeat(400), "")
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "username");
    let status = estimate(&app, STRONG, "", &"e".repeat(400))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "email");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_estimator_is_counted_per_address() {
    let app = spawn_app_with(|settings| {
        settings.limits.per_ip = Quota {
            rate: 1,
            per: std::time::Duration::from_secs(60),
            burst: 3,
        };
    })
    .await;
    for _ in 0..3 {
        estimate(&app, STRONG, "", "").await.unwrap();
    }
    let status = estimate(&app, STRONG, "", "").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "RATE_LIMITED");
    app.stop().await.unwrap();
}
