//! Clients that authenticate by a key of their own (`private_key_jwt`, RFC 7523 section 2.2),
//! through the real gRPC and HTTP APIs: no secret is ever made for them; an assertion they sign
//! gets a token once; every broken rule is refused with `INVALID_CREDENTIALS` and says why;
//! only public keys are registered, only by an admin; and an assertion used on one replica is
//! refused on another.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keystone::clock::Clock as _;
use keystone::proto::pb::{self, IssueTokenRequest, issue_token_request::Grant};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{TestApp, assert_refused, bad_field, http, reason, spawn_app, with_bearer};

/// The `client_assertion_type` of RFC 7523.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The test server's issuer (the default).
const ISSUER: &str = "http://127.0.0.1:8080";

/// A client's P-256 key: what signs, and the public JWK an admin registers.
pub(crate) struct ClientKey {
    pub(crate) signing: EncodingKey,
    pub(crate) jwk: Value,
    kid: String,
}

impl ClientKey {
    pub(crate) fn new(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        Self {
            signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
            kid: kid.to_owned(),
        }
    }

    /// The JWK Set of this key alone.
    pub(crate) fn jwks(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    /// An assertion by `client` made at `now` (seconds), for the token endpoint, good for a
    /// minute, with a new `jti`; `change` edits the claims first.
    pub(crate) fn assertion_with(
        &self,
        client: &str,
        now: i64,
        change: impl FnOnce(&mut Value),
    ) -> String {
        let mut claims = json!({
            "iss": client, "sub": client, "aud": format!("{ISSUER}/oauth2/token"),
            "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
        });
        change(&mut claims);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }

    pub(crate) fn assertion(&self, client: &str, now: i64) -> String {
        self.assertion_with(client, now, |_| {})
    }
}

/// `token`'s claims under another `header` and `signature` (none checked).
pub(crate) fn forged(token: &str, header: &Value, signature: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    format!(
        "{}.{payload}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string())
    )
}

/// Creates `client_id` with `key`'s public key as `admin`; the secret it was given (none).
async fn create_keyed_client(
    app: &TestApp,
    admin: &str,
    client_id: &str,
    key: &ClientKey,
) -> Result<String, tonic::Status> {
    crate::exchange::create_client(
        app,
        admin,
        pb::Client {
            client_id: client_id.into(),
            allowed_audiences: vec!["api".into()],
            jwks_json: key.jwks(),
            ..Default::default()
        },
    )
    .await
}

/// The client credentials grant by assertion.
pub(crate) async fn by_assertion(
    app: &TestApp,
    client_id: &str,
    assertion: &str,
) -> Result<pb::TokenResponse, tonic::Status> {
    app.auth()
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(pb::ClientCredentialsGrant {
                client_id: client_id.to_owned(),
                client_assertion: assertion.to_owned(),
                client_assertion_type: JWT_BEARER.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_client_with_keys_has_no_secret_and_gets_a_token_once_per_assertion() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    let key = ClientKey::new("k1");
    let secret = create_keyed_client(&app, &admin, "signer", &key)
        .await
        .unwrap();
    assert!(secret.is_empty(), "a client with keys gets no secret");

    let assertion = key.assertion("signer", now);
    let issued = by_assertion(&app, "signer", &assertion).await.unwrap();
    let principal = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: issued.access_token.clone(),
            audience: "api".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(principal.subject, "signer");
    assert_eq!(principal.kind, pb::PrincipalKind::Service as i32);

    // Once: the same assertion again is refused, and says why.
    let status = assert_refused(
        by_assertion(&app, "signer", &assertion).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "a replayed assertion",
    );
    assert!(status.message().contains("used before"), "{status:?}");

    // The client id may be left out: the assertion's `sub` names the client.
    by_assertion(&app, "", &key.assertion("signer", now))
        .await
        .expect("an assertion without client_id");

    // Over HTTP, with the form fields of RFC 7523; the discovery document says so.
    let form = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
        JWT_BEARER.replace(':', "%3A"),
        key.assertion("signer", now)
    );
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let addr = app.http_addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http(addr, "POST", "/oauth2/token", &headers, &body).await
        }
    };
    let form_type = (
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    );
    // The same form again: the assertion was used.
    let replayed = post(vec![form_type.clone()], form.clone()).await;
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    assert_eq!(replayed.json()["error"], "invalid_client");
    // HTTP Basic and an assertion: two ways of authenticating (RFC 6749 section 2.3).
    let both = post(
        vec![
            form_type,
            (
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("signer:x")
                ),
            ),
        ],
        format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
            JWT_BEARER.replace(':', "%3A"),
            key.assertion("signer", now)
        ),
    )
    .await;
    assert_eq!(both.status, 400, "{}", both.body);
    assert_eq!(both.json()["error"], "invalid_request");
    let metadata = http(
        app.http_addr,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        "",
    )
    .await
    .json();
    assert!(
        metadata["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|method| method == "private_key_jwt"),
        "{metadata}"
    );

    // The audit trail names the client and never holds the assertion.
    let events = app.audit_events(&admin, "token.issue").await;
    assert!(events.iter().any(|event| event.actor == "signer"));
    let failures = app.audit_events(&admin, "client.authenticate").await;
    let replay = failures
        .iter()
        .find(|event| event.actor == "signer")
        .expect("the replay is on record");
    assert_eq!(replay.details["reason"], "assertion used before");
    assert!(
        !format!("{failures:?}").contains(&assertion),
        "no assertion in the audit trail"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_broken_assertion_is_refused_and_says_why() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let key = ClientKey::new("k1");
    create_keyed_client(&app, &admin, "signer", &key)
        .await
        .unwrap();
    let stranger = ClientKey::new("k1");
    let now = app.clock.now().timestamp();
    let good = key.assertion("signer", now);
    let payload = good.split('.').nth(1).unwrap().to_owned();
    let forged = |header: Value, signature: &str| forged(&good, &header, signature);
    let hmac = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap(),
        &EncodingKey::from_secret(key.jwk.to_string().as_bytes()).unwrap(),
    )
    .unwrap();
    // Validly signed, but with the wrong key in the header or under an unknown kid.
    let signed_with_header = |key: &ClientKey, kid: &str, jwk: Option<&Value>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        header.jwk = jwk.map(|jwk| serde_json::from_value(jwk.clone()).unwrap());
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key.signing).unwrap()
    };
    // Once the signature checked out, the message says what is wrong; before, nothing (which
    // clients have keys, and which kids, is not for strangers to probe).
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "expired",
            key.assertion_with("signer", now, |c| c["exp"] = (now - 120).into()),
            Some("expired"),
        ),
        (
            "more than an hour ahead",
            key.assertion_with("signer", now, |c| c["exp"] = (now + 7200).into()),
            Some("lives too long"),
        ),
        (
            "too old",
            key.assertion_with("signer", now, |c| c["iat"] = (now - 7200).into()),
            Some("too old"),
        ),
        (
            "for another audience",
            key.assertion_with("signer", now, |c| {
                c["aud"] = "https://elsewhere.example".into()
            }),
            Some("aud must name Keystone"),
        ),
        (
            "another issuer",
            key.assertion_with("signer", now, |c| c["iss"] = "mallory".into()),
            Some("iss and sub"),
        ),
        (
            "without a jti",
            key.assertion_with("signer", now, |c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            Some("jti"),
        ),
        (
            "signed by another key",
            stranger.assertion("signer", now),
            None,
        ),
        (
            "alg none",
            forged(json!({"alg": "none", "kid": "k1"}), ""),
            None,
        ),
        ("HMAC keyed with the public key", hmac, None),
        (
            "its own key in the header",
            signed_with_header(&stranger, "k1", Some(&stranger.jwk)),
            None,
        ),
        ("an unknown kid", signed_with_header(&key, "k9", None), None),
        ("garbage", "not-a-jwt".to_owned(), None),
    ];
    for (case, assertion, told) in cases {
        let status = assert_refused(
            by_assertion(&app, "signer", &assertion).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
            case,
        );
        match told {
            Some(why) => assert!(
                status.message().starts_with("invalid client assertion: ")
                    && status.message().contains(why),
                "{case}: {status:?}"
            ),
            None => assert_eq!(status.message(), "invalid credentials", "{case}"),
        }
    }
    // A secret proves nothing for a client with keys; an assertion nothing for one without.
    let secret_client = app.create_client("secretive", &[], &[], None, true).await;
    let with_secret = app
        .auth()
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(pb::ClientCredentialsGrant {
                client_id: "signer".into(),
                client_secret: secret_client.clone(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await;
    assert_refused(
        with_secret,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "a secret for a client with keys",
    );
    assert_refused(
        by_assertion(&app, "secretive", &key.assertion("secretive", now)).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "an assertion for a client without keys",
    );
    // Malformed requests name the field.
    for (case, secret, assertion_type, field) in [
        (
            "another assertion type",
            "",
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            "client_credentials.client_assertion_type",
        ),
        (
            "a secret and an assertion",
            "kss_x",
            JWT_BEARER,
            "client_credentials.client_secret",
        ),
    ] {
        let status = app
            .auth()
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::ClientCredentials(pb::ClientCredentialsGrant {
                    client_id: "signer".into(),
                    client_secret: secret.into(),
                    client_assertion: key.assertion("signer", now),
                    client_assertion_type: assertion_type.into(),
                })),
                ..Default::default()
            })
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert_eq!(bad_field(&status), field, "{case}");
    }
    // The good one still works: none of the refusals used it up.
    by_assertion(&app, "signer", &good).await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn only_an_admin_registers_keys_and_only_public_ones() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    let key = ClientKey::new("k1");
    let mut private = key.jwk.clone();
    private["d"] = "c2VjcmV0LWtleS1tYXRlcmlhbA".into();
    let status = crate::exchange::create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "leaky".into(),
            jwks_json: json!({ "keys": [private] }).to_string(),
            ..Default::default()
        },
    )
    .await
    .expect_err("a private key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "client.jwks_json");
    assert!(
        !status.message().contains("c2VjcmV0"),
        "the key is not echoed: {status:?}"
    );

    let writer = app
        .token_with_scopes("ops", &["keystone:clients.write"])
        .await;
    assert_refused(
        create_keyed_client(&app, &writer, "sneaky", &key).await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "a writer registering keys",
    );

    // Keys given to a client with a secret: the secret is gone (and cannot be rotated back).
    let secret = app.create_client("convert", &[], &[], None, true).await;
    app.client_token("convert", &secret, &[], "").await.unwrap();
    let updated = app
        .client_admin()
        .update_client(with_bearer(
            pb::UpdateClientRequest {
                client: Some(pb::Client {
                    client_id: "convert".into(),
                    jwks_json: key.jwks(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["jwks_json".into()],
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.secrets.is_empty(), "{updated:?}");
    assert!(updated.jwks_json.contains("\"k1\""));
    assert_refused(
        app.client_token("convert", &secret, &[], "").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "the secret of a client that now has keys",
    );
    by_assertion(&app, "convert", &key.assertion("convert", now))
        .await
        .unwrap();
    assert_refused(
        app.client_admin()
            .rotate_client_secret(with_bearer(
                pb::RotateClientSecretRequest {
                    client_id: "convert".into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await,
        Code::FailedPrecondition,
        "FAILED_PRECONDITION",
        "a secret for a client with keys",
    );
    // A writer may not manage it.
    assert_refused(
        app.client_admin()
            .revoke_client_tokens(with_bearer(
                pb::RevokeClientTokensRequest {
                    client_id: "convert".into(),
                },
                &writer,
            ))
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "a writer managing a client with keys",
    );
    // A certificate and keys both: refused.
    let status = crate::exchange::create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "both".into(),
            jwks_json: key.jwks(),
            tls_client_certificate_sha256: vec!["ab".repeat(32)],
            ..Default::default()
        },
    )
    .await
    .expect_err("a certificate and keys");
    assert_eq!(bad_field(&status), "client.jwks_json");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_with_keys_exchanges_tokens_by_assertion() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    let key = ClientKey::new("k1");
    crate::exchange::create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "relay".into(),
            allowed_audiences: vec!["downstream".into()],
            jwks_json: key.jwks(),
            token_exchange: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let caller = app
        .create_client("caller", &[], &["relay"], None, true)
        .await;
    let subject = app
        .client_token("caller", &caller, &[], "relay")
        .await
        .unwrap()
        .access_token;
    let mut grant = crate::exchange::grant("relay", "", &subject);
    grant.client_assertion = key.assertion("relay", now);
    grant.client_assertion_type = JWT_BEARER.into();
    let exchanged = crate::exchange::exchange_with(&app, grant.clone(), "downstream", &[])
        .await
        .unwrap();
    assert!(!exchanged.access_token.is_empty());
    assert_refused(
        crate::exchange::exchange_with(&app, grant, "downstream", &[]).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "the same assertion twice",
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_assertion_used_on_one_replica_is_refused_on_another() {
    let test = "an_assertion_used_on_one_replica_is_refused_on_another";
    let Some((postgres, redis)) = crate::cluster::backends(test) else {
        return;
    };
    let database = crate::helpers::TestDatabase::fresh_postgres(&postgres).await;
    let nodes =
        crate::cluster::replicas(&database, &redis, 2, &[("KEYSTONE_ISSUER", ISSUER)]).await;
    let admin = nodes[0].admin_login().await;
    let key = ClientKey::new("k1");
    let now = chrono::Utc::now().timestamp();
    nodes[0]
        .client_admin()
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "signer".into(),
                    jwks_json: key.jwks(),
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    let grant = |assertion: &str| IssueTokenRequest {
        grant: Some(Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: "signer".into(),
            client_assertion: assertion.to_owned(),
            client_assertion_type: JWT_BEARER.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    for round in 0..6 {
        // Each replica in turn takes a new assertion, and the other refuses it after.
        let (first, second) = if round % 2 == 0 {
            (&nodes[0], &nodes[1])
        } else {
            (&nodes[1], &nodes[0])
        };
        let assertion = key.assertion("signer", now);
        first.auth().issue_token(grant(&assertion)).await.unwrap();
        let status = second
            .auth()
            .issue_token(grant(&assertion))
            .await
            .expect_err("used on the other replica");
        assert_eq!(reason(&status), "INVALID_CREDENTIALS", "{status:?}");
        assert!(status.message().contains("used before"), "{status:?}");
    }
}
