//! DPoP (RFC 9449) through the real APIs: a proof at `/oauth2/token` binds the access token
//! and the session to the caller's key; `Authenticate` and Envoy's `Check` take the token only
//! with a fresh proof by that key for that request, once.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keystone::{clock::Clock as _, proto::pb::AuthenticateRequest};
use tonic::Code;

use crate::helpers::{TestApp, http, reason, spawn_app, with_bearer};

pub(crate) const RESOURCE: &str = "https://api.example.com/orders";

/// A caller's P-256 key.
pub(crate) struct DpopKey {
    signing: EncodingKey,
    jwk: serde_json::Value,
}

impl DpopKey {
    pub(crate) fn new() -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        Self {
            signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// The RFC 7638 thumbprint, computed here.
    fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            self.jwk["x"], self.jwk["y"]
        );
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// A proof for `method uri` at `iat`, for `token` if given.
    pub(crate) fn proof(&self, method: &str, uri: &str, iat: i64, token: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".to_owned());
        header.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        let mut claims = serde_json::json!({
            "jti": uuid::Uuid::new_v4().to_string(), "htm": method, "htu": uri, "iat": iat,
        });
        if let Some(token) = token {
            claims["ath"] = URL_SAFE_NO_PAD
                .encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    token.as_bytes(),
                ))
                .into();
        }
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }
}

fn token_endpoint() -> String {
    format!("{}/oauth2/token", keystone::Settings::default().issuer)
}

fn now(app: &TestApp) -> i64 {
    app.clock.now().timestamp()
}

/// `POST /oauth2/token` with `form`, and a DPoP header if given.
async fn token(app: &TestApp, form: &str, proof: Option<&str>) -> crate::helpers::HttpResponse {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    http(app.http_addr, "POST", "/oauth2/token", &headers, form).await
}

/// `Authenticate` with a proof for `GET RESOURCE`.
async fn authenticate(
    app: &TestApp,
    token: &str,
    proof: &str,
) -> Result<keystone::proto::pb::Principal, tonic::Status> {
    app.auth()
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            dpop_proof: proof.to_owned(),
            http_method: "GET".to_owned(),
            http_uri: RESOURCE.to_owned(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().principal.unwrap())
}

fn cnf(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["cnf"].clone()
}

#[tokio::test]
async fn a_proof_binds_the_token_and_the_session_to_the_callers_key() {
    let app = spawn_app().await;
    app.create_user("alice", "correct horse battery staple", &[])
        .await;
    let key = DpopKey::new();
    let login = "grant_type=password&username=alice&password=correct+horse+battery+staple";
    let proof = key.proof("POST", &token_endpoint(), now(&app), None);
    let issued = token(&app, login, Some(&proof)).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let body = issued.json();
    assert_eq!(body["token_type"], "DPoP");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(cnf(&access), serde_json::json!({ "jkt": key.thumbprint() }));

    // The same proof again is a replay.
    let replayed = token(&app, login, Some(&proof)).await;
    assert_eq!(replayed.status, 400, "{}", replayed.body);
    assert_eq!(replayed.json()["error"], "invalid_dpop_proof");

    // Accepted with a fresh proof by the key, for this request and token, once.
    let fresh = key.proof("GET", RESOURCE, now(&app), Some(&access));
    let principal = authenticate(&app, &access, &fresh).await.unwrap();
    assert_eq!(principal.dpop_key_thumbprint, key.thumbprint());
    let other = DpopKey::new();
    for (proof, what) in [
        (fresh.clone(), "the same proof again"),
        (String::new(), "no proof"),
        (
            key.proof(
                "GET",
                "https://api.example.com/invoices",
                now(&app),
                Some(&access),
            ),
            "another URI",
        ),
        (
            key.proof("POST", RESOURCE, now(&app), Some(&access)),
            "another method",
        ),
        (
            key.proof("GET", RESOURCE, now(&app), Some("another token")),
            "another token",
        ),
        (
            key.proof("GET", RESOURCE, now(&app) + 600, Some(&access)),
            "a future iat",
        ),
        (
            key.proof("GET", RESOURCE, now(&app) - 600, Some(&access)),
            "an old iat",
        ),
        (
            other.proof("GET", RESOURCE, now(&app), Some(&access)),
            "another key",
        ),
        ("x".repeat(9 * 1024), "an oversized proof"),
    ] {
        let status = authenticate(&app, &access, &proof).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert_eq!(reason(&status), "TOKEN_BINDING_MISMATCH", "{what}");
    }
    // Keystone's own RPCs take no proof: a DPoP-bound token is no bearer token there.
    let status = app
        .auth()
        .logout(with_bearer(Default::default(), &access))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "TOKEN_BINDING_MISMATCH");

    // The session refreshes only with a proof by the same key.
    let form = format!("grant_type=refresh_token&refresh_token={refresh}");
    for (proof, what) in [
        (None, "no proof"),
        (
            Some(other.proof("POST", &token_endpoint(), now(&app), None)),
            "another key",
        ),
        (
            Some(key.proof(
                "POST",
                "https://elsewhere.example/oauth2/token",
                now(&app),
                None,
            )),
            "another endpoint",
        ),
    ] {
        let refused = token(&app, &form, proof.as_deref()).await;
        assert_eq!(refused.status, 400, "{what}: {}", refused.body);
        assert_eq!(refused.json()["error"], "invalid_dpop_proof", "{what}");
    }
    let refreshed = token(
        &app,
        &form,
        Some(&key.proof("POST", &token_endpoint(), now(&app), None)),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(refreshed.json()["token_type"], "DPoP");

    // Introspection says what it is bound to.
    let introspected = app
        .auth()
        .introspect(with_bearer(
            keystone::proto::pb::IntrospectRequest {
                token: access.clone(),
                ..Default::default()
            },
            &app.admin_token().await,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(introspected.cnf.unwrap().jkt, key.thumbprint());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn envoy_checks_the_proof_of_the_request_it_guards() {
    let app = spawn_app().await;
    let secret = app.create_client("orders-app", &[], &[], None, true).await;
    let key = DpopKey::new();
    let issued = token(
        &app,
        &format!("grant_type=client_credentials&client_id=orders-app&client_secret={secret}"),
        Some(&key.proof("POST", &token_endpoint(), now(&app), None)),
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    assert_eq!(issued.json()["token_type"], "DPoP");
    let access = issued.json()["access_token"].as_str().unwrap().to_owned();

    let check = |proof: Option<String>| {
        let mut headers = std::collections::HashMap::from([(
            "authorization".to_owned(),
            format!("DPoP {access}"),
        )]);
        if let Some(proof) = proof {
            headers.insert("dpop".to_owned(), proof);
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        scheme: "https".into(),
                        host: "api.example.com".into(),
                        path: "/orders?page=2".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    };
    let mut envoy = AuthorizationClient::new(app.channel.clone());
    let proof = key.proof("GET", RESOURCE, now(&app), Some(&access));
    let allowed = envoy
        .check(check(Some(proof.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.status.unwrap().code, 0);
    for (proof, what) in [
        (Some(proof), "replayed"),
        (None, "no proof"),
        (
            Some(key.proof("DELETE", RESOURCE, now(&app), Some(&access))),
            "another method",
        ),
    ] {
        let denied = envoy.check(check(proof)).await.unwrap().into_inner();
        assert_eq!(
            denied.status.unwrap().code,
            Code::Unauthenticated as i32,
            "{what}"
        );
    }
    app.stop().await.unwrap();
}
