//! One verdict everywhere: the same tokens (exchanged ones too) through `Authenticate`, Envoy's `Check`,
//! `/oauth2/introspect`, and a third-party verifier that knows only the JWKS document (PyJWT,
//! from `KEYSTONE_TEST_PYTHON`; `.ci/run` installs it). A JWKS-only verifier cannot see
//! revocation (that is what `WatchRevocations` is for), so revoked tokens are compared across
//! Keystone's own paths only.

use std::process::Command;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use keystone::proto::pb::{AuthenticateRequest, RevokeRequest};

use crate::helpers::{TestApp, TestDatabase, http, say_skipped, spawn_app_at};

const VERIFY: &str = r#"
import sys, jwt
url, audience, issuer, token = sys.argv[1:5]
try:
    key = jwt.PyJWKClient(url).get_signing_key_from_jwt(token)
    jwt.decode(token, key.key, algorithms=["EdDSA", "ES256"], audience=audience, issuer=issuer,
               options={"require": ["exp", "iat", "sub", "jti"]})
    print("valid")
except Exception as error:
    print("invalid", type(error).__name__, error)
"#;

async fn authenticate(app: &TestApp, token: &str, audience: &str) -> bool {
    app.auth()
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            audience: audience.to_owned(),
            ..Default::default()
        })
        .await
        .is_ok()
}

async fn envoy_check(app: &TestApp, token: &str, audience: &str) -> bool {
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    path: "/".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("keystone_audience".to_owned(), audience.to_owned())].into(),
            ..Default::default()
        }),
    };
    let response = AuthorizationClient::new(app.channel.clone())
        .check(request)
        .await
        .unwrap()
        .into_inner();
    response.status.is_some_and(|status| status.code == 0)
}

async fn introspect(app: &TestApp, caller: &str, token: &str, audience: &str) -> bool {
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/introspect",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Bearer {caller}")),
        ],
        &format!("token={token}"),
    )
    .await
    .json();
    response["active"] == true
        && response["aud"]
            .as_array()
            .is_some_and(|aud| aud.iter().any(|a| a == audience))
}

/// PyJWT's verdict, off the runtime (the server in this process must answer its JWKS fetch).
async fn pyjwt(python: &str, app: &TestApp, token: &str, audience: &str) -> bool {
    let args = [
        "-c".to_owned(),
        VERIFY.to_owned(),
        format!("http://{}/.well-known/jwks.json", app.http_addr),
        audience.to_owned(),
        "http://127.0.0.1:8080".to_owned(),
        token.to_owned(),
    ];
    let python = python.to_owned();
    let output = tokio::task::spawn_blocking(move || Command::new(python).args(args).output())
        .await
        .unwrap()
        .expect("python runs");
    let verdict = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    verdict.trim() == "valid"
}

#[tokio::test]
async fn every_path_gives_a_token_the_same_verdict_as_a_third_party_verifier() {
    let python = std::env::var("KEYSTONE_TEST_PYTHON").ok().filter(|p| {
        Command::new(p)
            .args(["-c", "import jwt, cryptography"])
            .status()
            .is_ok_and(|status| status.success())
    });
    let Some(python) = python else {
        say_skipped(
            "every_path_gives_a_token_the_same_verdict_as_a_third_party_verifier",
            "no Python with PyJWT (KEYSTONE_TEST_PYTHON; .ci/run installs it)",
        );
        return;
    };
    // The server's clock starts two hours in the past, so that a token it issues then has
    // expired for PyJWT, which reads the real clock; it is then moved to now.
    let now = chrono::Utc::now();
    let app = spawn_app_at(
        TestDatabase::fresh_sqlite(),
        now - chrono::Duration::hours(2),
        |_| {},
    )
    .await;
    let api = "https://api.example.com";
    let secret = app
        .create_client("svc", &["keystone:introspect"], &[api], None, true)
        .await;
    let mint = || async {
        app.client_token("svc", &secret, &[], api)
            .await
            .unwrap()
            .access_token
    };
    let expired = mint().await;
    app.clock.advance(chrono::Duration::hours(2));
    let valid = mint().await;
    // A token exchanged by `relay` (RFC 8693), on behalf of `caller`, whose token was for it.
    let exchanged = {
        let admin = app.admin_token().await;
        let relay = crate::exchange::exchanging_client(&app, &admin, "relay", &[], &[api]).await;
        let caller = app
            .create_client("caller", &[], &["relay"], None, true)
            .await;
        let subject = app
            .client_token("caller", &caller, &[], "relay")
            .await
            .unwrap()
            .access_token;
        crate::exchange::exchange_with(
            &app,
            crate::exchange::grant("relay", &relay, &subject),
            api,
            &[],
        )
        .await
        .unwrap()
        .access_token
    };
    // The introspecting caller: a token for Keystone with the scope, asked for by name; the
    // tokens it introspects are for its own audience, so it may see them active.
    let caller = app
        .client_token("svc", &secret, &["keystone:introspect"], "")
        .await
        .unwrap()
        .access_token;
    let revoked = mint().await;
    app.auth()
        .revoke(RevokeRequest {
            token: revoked.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    let forged = {
        let mut chars: Vec<char> = valid.chars().collect();
        let middle = chars.len() - 20;
        chars[middle] = if chars[middle] == 'x' { 'y' } else { 'x' };
        chars.into_iter().collect::<String>()
    };
    let unsigned = {
        let mut parts = valid.split('.');
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap())
                .unwrap();
        let mut header = header;
        header["alg"] = "none".into();
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts.next().unwrap()
        )
    };
    let other_issuer = {
        let other = spawn_app_at(TestDatabase::fresh_sqlite(), chrono::Utc::now(), |_| {}).await;
        let secret = other
            .create_client("svc", &["keystone:introspect"], &[api], None, true)
            .await;
        other
            .client_token("svc", &secret, &[], api)
            .await
            .unwrap()
            .access_token
    };

    let cases = [
        ("valid", valid.as_str(), api, true),
        ("exchanged", exchanged.as_str(), api, true),
        (
            "exchanged, another audience",
            exchanged.as_str(),
            "relay",
            false,
        ),
        (
            "wrong audience",
            valid.as_str(),
            "https://other.example.com",
            false,
        ),
        ("expired", expired.as_str(), api, false),
        ("forged signature", forged.as_str(), api, false),
        ("alg none", unsigned.as_str(), api, false),
        ("another server's key", other_issuer.as_str(), api, false),
        ("garbage", "not.a.token", api, false),
    ];
    for (name, token, audience, expected) in cases {
        assert_eq!(
            authenticate(&app, token, audience).await,
            expected,
            "Authenticate: {name}"
        );
        assert_eq!(
            envoy_check(&app, token, audience).await,
            expected,
            "Check: {name}"
        );
        assert_eq!(
            introspect(&app, &caller, token, audience).await,
            expected,
            "introspect: {name}"
        );
        assert_eq!(
            pyjwt(&python, &app, token, audience).await,
            expected,
            "PyJWT: {name}"
        );
    }
    for (name, check) in [
        ("Authenticate", authenticate(&app, &revoked, api).await),
        ("Check", envoy_check(&app, &revoked, api).await),
        ("introspect", introspect(&app, &caller, &revoked, api).await),
    ] {
        assert!(!check, "{name} refuses a revoked token");
    }
    app.stop().await.unwrap();
}
