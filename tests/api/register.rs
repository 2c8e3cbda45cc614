//! `Auth/Register`: off by default; when on, validated, policy-checked and rate limited.

use keystone::proto::pb;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{reason, spawn_app, spawn_app_with};

fn registration(username: &str, email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        username: username.to_owned(),
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn registration_is_off_by_default() {
    let app = spawn_app().await;
    let status = app
        .auth()
        .register(registration(
            "newbie",
            "newbie@example.com",
            "a perfectly fine passphrase",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "REGISTRATION_DISABLED");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_registered_user_can_log_in_and_holds_nothing() {
    let app = spawn_app_with(|settings| settings.auth.registration = true).await;
    let user = app
        .auth()
        .register(registration(
            "Newbie",
            "Newbie@Example.com",
            "a perfectly fine passphrase",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.username, "Newbie");
    assert!(user.roles.is_empty());
    assert!(!user.email_verified);
    assert_eq!(user.enabled, Some(true));
    let token = app
        .login("newbie", "a perfectly fine passphrase")
        .await
        .unwrap();
    assert!(token.scopes.is_empty());

    let status = app
        .auth()
        .register(registration(
            "NEWBIE",
            "other@example.com",
            "a perfectly fine passphrase",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_registrations_name_the_field() {
    let app = spawn_app_with(|settings| settings.auth.registration = true).await;
    for (request, field, expected) in [
        (
            registration("ok-name", "ok@example.com", "1qaz2wsx3edc4rfv"),
            "password",
            "WEAK_PASSWORD",
        ),
        (
            registration("ok-name", "ok@example.com", "short"),
            "password",
            "WEAK_PASSWORD",
        ),
        (
            registration("ok-name", "not-an-email", "a perfectly fine passphrase"),
            "email",
            "INVALID_ARGUMENT",
        ),
        (
            registration("bad name", "ok@example.com", "a perfectly fine passphrase"),
            "username",
            "INVALID_ARGUMENT",
        ),
    ] {
        let status = app.auth().register(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(reason(&status), expected, "{field}");
        let violations = status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(violations[0].field, field);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let app = spawn_app_with(|settings| {
        settings.auth.registration = true;
        settings.auth.registration_per_minute = 2;
    })
    .await;
    for n in 0..2 {
        app.auth()
            .register(registration(
                &format!("user{n}"),
                &format!("user{n}@example.com"),
                "a perfectly fine passphrase",
            ))
            .await
            .unwrap();
    }
    let status = app
        .auth()
        .register(registration(
            "user9",
            "user9@example.com",
            "a perfectly fine passphrase",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "RATE_LIMITED");
    let delay = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        delay.is_some_and(|d| d.as_secs() >= 1),
        "a retry delay is given: {delay:?}"
    );
    app.stop().await.unwrap();
}
