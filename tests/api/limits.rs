//! Rate limits on the calls that check credentials (`limits.*`), and the client IP they count
//! under (`server.trusted_proxies`). Over gRPC and HTTP alike.

use std::time::Duration;

use keystone::{
    config::Quota,
    proto::pb::{self, IssueTokenRequest, issue_token_request::Grant},
};
use tonic::{Code, metadata::MetadataValue};
use tonic_types::StatusExt as _;

use crate::helpers::{TestApp, http, reason, spawn_app_with, with_bearer};

/// A quota of `burst` calls, then one an hour.
fn tight(burst: u32) -> Quota {
    Quota {
        rate: 1,
        per: Duration::from_secs(3600),
        burst,
    }
}

fn assert_rate_limited(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "RATE_LIMITED");
    let delay = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay);
    assert!(
        delay.is_some_and(|d| d >= Duration::from_secs(60)),
        "the retry delay is the quota's: {delay:?}"
    );
}

/// A refresh grant with a token that is not one: refused, but counted per IP.
async fn bogus_refresh(app: &TestApp, forwarded_for: Option<&str>) -> tonic::Status {
    let mut request = tonic::Request::new(IssueTokenRequest {
        grant: Some(Grant::RefreshToken(pb::RefreshTokenGrant {
            refresh_token: "not-a-refresh-token".to_owned(),
        })),
        ..Default::default()
    });
    if let Some(ip) = forwarded_for {
        request
            .metadata_mut()
            .insert("x-forwarded-for", MetadataValue::try_from(ip).unwrap());
    }
    app.auth().issue_token(request).await.unwrap_err()
}

#[tokio::test]
async fn logins_for_one_name_are_limited_whoever_tries_and_other_names_are_not() {
    let app = spawn_app_with(|settings| settings.limits.per_username = tight(2)).await;
    app.create_user("alice", "correct horse battery staple", &[])
        .await;
    for _ in 0..2 {
        let status = app.login("alice", "wrong password!").await.unwrap_err();
        assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    }
    // The right password is refused too: the name's quota is spent. Case does not
    // make another name.
    let status = app
        .login("ALICE", "correct horse battery staple")
        .await
        .unwrap_err();
    assert_rate_limited(&status);
    // A name nobody has is counted all the same: a limit reveals nothing.
    for _ in 0..2 {
        let status = app.login("nobody", "wrong password!").await.unwrap_err();
        assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    }
    assert_rate_limited(&app.login("nobody", "wrong password!").await.unwrap_err());
    app.create_user("bob", "correct horse battery staple", &[])
        .await;
    app.login("bob", "correct horse battery staple")
        .await
        .expect("another name has its own quota");

    // Over HTTP: 429 with Retry-After, the same count.
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=alice&password=correct+horse+battery+staple",
    )
    .await;
    assert_eq!(response.status, 429, "{}", response.body);
    assert_eq!(response.json()["error"], "temporarily_unavailable");
    let retry_after: u64 = response
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!(retry_after >= 60, "{retry_after}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn one_address_is_limited_across_grants_and_transports() {
    let app = spawn_app_with(|settings| settings.limits.per_ip = tight(3)).await;
    for _ in 0..2 {
        assert_eq!(
            reason(&bogus_refresh(&app, None).await),
            "INVALID_CREDENTIALS"
        );
    }
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/revoke",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=whatever",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    // The fourth call from 127.0.0.1, whatever it is.
    assert_rate_limited(&bogus_refresh(&app, None).await);
    let status = app.login("alice", "whatever password").await.unwrap_err();
    assert_rate_limited(&status);
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/revoke",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=whatever",
    )
    .await;
    assert_eq!(response.status, 429, "{}", response.body);
    // A forwarded address from an untrusted peer changes nothing.
    assert_rate_limited(&bogus_refresh(&app, Some("198.51.100.1")).await);
    // Authenticate is not limited: it checks no credential against the database.
    let token = {
        let status = app
            .auth()
            .authenticate(pb::AuthenticateRequest {
                token: "x.y.z".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        status.code()
    };
    assert_eq!(token, Code::Unauthenticated);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota() {
    let app = spawn_app_with(|settings| {
        settings.limits.per_ip = tight(1);
        settings.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    // The proxy's own quota goes on this login.
    let admin = app
        .token_with_scopes("auditor", &["keystone:users.read"])
        .await;
    // The client wrote the first address; the proxy appended the one it saw.
    let chain = "203.0.113.66, 198.51.100.1";
    assert_eq!(
        reason(&bogus_refresh(&app, Some(chain)).await),
        "INVALID_CREDENTIALS"
    );
    assert_rate_limited(&bogus_refresh(&app, Some("10.9.9.9, 198.51.100.1")).await);
    assert_eq!(
        reason(&bogus_refresh(&app, Some("198.51.100.2")).await),
        "INVALID_CREDENTIALS"
    );
    // Without the header the proxy itself is the client.
    assert_rate_limited(&bogus_refresh(&app, None).await);

    // The audit trail names the forwarded client, over HTTP too.
    app.create_user("carol", "correct horse battery staple", &[])
        .await;
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-forwarded-for", "198.51.100.3"),
        ],
        "grant_type=password&username=carol&password=correct+horse+battery+staple",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let events = app.audit_events(&admin, "login").await;
    assert!(
        events
            .iter()
            .any(|event| event.actor == "carol" && event.peer == "198.51.100.3"),
        "{events:#?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_is_limited_on_what_it_does_and_nobody_can_spend_its_quota_for_it() {
    let app = spawn_app_with(|settings| settings.limits.per_client = tight(2)).await;
    let secret = app
        .create_client("billing", &["keystone:introspect"], &[], None, true)
        .await;
    // Client ids are no secret: failed guesses count against the guesser's address only.
    for _ in 0..5 {
        let status = app
            .client_token("billing", "kss_wrong", &[], "")
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    }
    for _ in 0..2 {
        app.client_token("billing", &secret, &[], "")
            .await
            .expect("the client's own quota is whole");
    }
    assert_rate_limited(
        &app.client_token("billing", &secret, &[], "")
            .await
            .unwrap_err(),
    );
    // HTTP Basic on the introspection endpoint counts under the same client.
    let basic = base64_basic("billing", &secret);
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/introspect",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic),
        ],
        "token=x",
    )
    .await;
    assert_eq!(response.status, 429, "{}", response.body);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn guessing_a_secret_with_http_basic_on_any_grant_is_limited_per_address() {
    let app = spawn_app_with(|settings| settings.limits.per_ip = tight(2)).await;
    let secret = app.create_client("billing", &[], &[], None, true).await;
    let token = |authorization: String| {
        let addr = app.http_addr;
        async move {
            http(
                addr,
                "POST",
                "/oauth2/token",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("authorization", &authorization),
                ],
                "grant_type=refresh_token&refresh_token=x",
            )
            .await
        }
    };
    for _ in 0..2 {
        let response = token(base64_basic("billing", "kss_wrong")).await;
        assert_eq!(response.status, 401, "{}", response.body);
    }
    // Refused before the secret is looked at: the right one tells nothing now.
    let response = token(base64_basic("billing", &secret)).await;
    assert_eq!(response.status, 429, "{}", response.body);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn introspection_is_limited_per_caller() {
    let app = spawn_app_with(|settings| settings.limits.per_client = tight(2)).await;
    let caller = app
        .token_with_scopes("gateway", &["keystone:introspect"])
        .await;
    let other = app
        .token_with_scopes("mesh", &["keystone:introspect"])
        .await;
    let introspect = |bearer: String| {
        let mut client = app.auth();
        async move {
            client
                .introspect(with_bearer(
                    pb::IntrospectRequest {
                        token: "x".to_owned(),
                        ..Default::default()
                    },
                    &bearer,
                ))
                .await
        }
    };
    for _ in 0..2 {
        let answer = introspect(caller.clone()).await.unwrap().into_inner();
        assert!(!answer.active);
    }
    assert_rate_limited(&introspect(caller.clone()).await.unwrap_err());
    introspect(other)
        .await
        .expect("another caller has its own quota");
    app.stop().await.unwrap();
}

fn base64_basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}
