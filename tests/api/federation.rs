//! Secretless service clients by workload identity (RFC 7523 section 2.2 with a trusted
//! issuer's token), through the real gRPC and HTTP APIs. The tests serve a fake Kubernetes
//! cluster (RS256 service-account tokens, its JWKS on loopback) and a SPIRE-shaped issuer
//! (ES256 JWT-SVIDs, a SPIFFE bundle with `jwt-svid` and `x509-svid` keys), and JWKS endpoints
//! that hang, answer 10 MiB or answer garbage.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use aws_lc_rs::{
    encoding::AsDer as _,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use keystone::{clock::Clock as _, config::TrustedIssuerSettings, proto::pb};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    assertions::by_assertion,
    helpers::{TestApp, assert_refused, bad_field, http, reason, spawn_app_with, with_bearer},
};

/// The `client_assertion_type` of RFC 7523.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The test server's issuer (the default), which workload tokens are addressed to.
const KEYSTONE: &str = "http://127.0.0.1:8080";

/// The fake cluster's issuer.
pub(crate) const CLUSTER_ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// The fake SPIRE server's issuer.
const SPIRE_ISS: &str = "https://oidc.spire.example.org";

/// A pod's service account in the fake cluster.
pub(crate) const POD: &str = "system:serviceaccount:payments:api";

/// A SPIFFE ID of the fake SPIRE trust domain.
const SPIFFE_ID: &str = "spiffe://example.org/ns/payments/sa/api";

/// A signing key of a fake issuer, and its public JWK.
#[derive(Clone)]
pub(crate) struct IssuerKey {
    signing: EncodingKey,
    jwk: Value,
    kid: String,
    algorithm: Algorithm,
}

impl IssuerKey {
    /// An RSA key, as a Kubernetes cluster signs with.
    pub(crate) fn rsa(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let signing = EncodingKey::from_rsa_der(pkcs1_of(pkcs8.as_ref()));
        Self::with(signing, kid, Algorithm::RS256)
    }

    /// A P-256 key, as SPIRE signs JWT-SVIDs with.
    fn ec(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        Self::with(
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            kid,
            Algorithm::ES256,
        )
    }

    fn with(signing: EncodingKey, kid: &str, algorithm: Algorithm) -> Self {
        let mut jwk: Value =
            serde_json::to_value(Jwk::from_encoding_key(&signing, algorithm).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        Self {
            signing,
            jwk,
            kid: kid.to_owned(),
            algorithm,
        }
    }

    /// A token with `claims`, this key's `kid` in its header.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
    }
}

/// The RSAPrivateKey (PKCS #1) inside a PrivateKeyInfo (PKCS #8): its third element, an
/// OCTET STRING.
fn pkcs1_of(pkcs8: &[u8]) -> &[u8] {
    /// The contents of the DER element at the start of `der`, and what follows it.
    fn element(der: &[u8]) -> (&[u8], &[u8]) {
        let (length, header) = match der[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let bytes = usize::from(long & 0x7f);
                let length = der[2..2 + bytes]
                    .iter()
                    .fold(0, |length, byte| length << 8 | usize::from(*byte));
                (length, 2 + bytes)
            }
        };
        (&der[header..header + length], &der[header + length..])
    }
    let (info, _) = element(pkcs8);
    let (_version, rest) = element(info);
    let (_algorithm, rest) = element(rest);
    element(rest).0
}

/// A projected service-account token's claims, as kube-apiserver writes them, issued at `now`
/// for an hour, addressed to Keystone.
pub(crate) fn service_account_claims(now: i64, subject: &str) -> Value {
    json!({
        "aud": [KEYSTONE],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": CLUSTER_ISS,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": "payments",
            "node": {"name": "node-1", "uid": uuid::Uuid::new_v4().to_string()},
            "pod": {"name": "api-7d9f8", "uid": uuid::Uuid::new_v4().to_string()},
            "serviceaccount": {"name": "api", "uid": uuid::Uuid::new_v4().to_string()},
        },
        "sub": subject,
    })
}

/// A JWT-SVID's claims (no `jti`, no `nbf`), issued at `now` for five minutes.
fn svid_claims(now: i64) -> Value {
    json!({
        "aud": [KEYSTONE],
        "exp": now + 300,
        "iat": now,
        "iss": SPIRE_ISS,
        "sub": SPIFFE_ID,
    })
}

/// What a fake JWKS endpoint answers.
#[derive(Clone)]
pub(crate) enum Answer {
    /// This key set.
    Keys(Value),
    /// Nothing, ever.
    Hang,
    /// 10 MiB, streamed without a length.
    Huge,
    /// 200 with a body that is no JSON.
    Garbage,
    /// This key set, after a while.
    Slow(Duration, Value),
    /// 10 MiB, its length said up front.
    Sized,
    /// A redirect to this address.
    Redirect(String),
}

/// A JWKS endpoint on loopback, counting the fetches it answers.
#[derive(Clone)]
pub(crate) struct FakeIssuer {
    pub(crate) uri: String,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
}

impl FakeIssuer {
    pub(crate) async fn serve(answer: Answer) -> Self {
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/openid/v1/jwks", listener.local_addr().unwrap());
        let router = axum::Router::new().route(
            "/openid/v1/jwks",
            axum::routing::get({
                let answer = answer.clone();
                let fetches = fetches.clone();
                move || {
                    let answer = answer.lock().unwrap().clone();
                    fetches.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let ok = |body: axum::body::Body| {
                            http::Response::builder().status(200).body(body).unwrap()
                        };
                        match answer {
                            Answer::Keys(set) => ok(axum::body::Body::from(set.to_string())),
                            Answer::Hang => std::future::pending().await,
                            Answer::Huge => {
                                let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
                                ok(axum::body::Body::from_stream(tokio_stream::iter(
                                    (0..160).map(move |_| {
                                        Ok::<_, std::convert::Infallible>(chunk.clone())
                                    }),
                                )))
                            }
                            Answer::Garbage => ok(axum::body::Body::from("<html>not a key set")),
                            Answer::Slow(delay, set) => {
                                tokio::time::sleep(delay).await;
                                ok(axum::body::Body::from(set.to_string()))
                            }
                            Answer::Sized => ok(axum::body::Body::from(vec![b' '; 10 << 20])),
                            Answer::Redirect(to) => http::Response::builder()
                                .status(302)
                                .header("location", to)
                                .body(axum::body::Body::empty())
                                .unwrap(),
                        }
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            uri,
            answer,
            fetches,
        }
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The key set of `keys`.
pub(crate) fn key_set(keys: &[&IssuerKey]) -> Value {
    json!({ "keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>() })
}

/// A trusted issuer called `name` with `iss`, its keys at `jwks_uri`.
fn trusted(name: &str, iss: &str, jwks_uri: &str) -> TrustedIssuerSettings {
    TrustedIssuerSettings {
        name: name.into(),
        issuer: iss.into(),
        jwks_uri: jwks_uri.into(),
        jwks_file: String::new(),
        ca_file: String::new(),
        bearer_token_file: String::new(),
        audience: String::new(),
        max_assertion_age: Duration::from_secs(3600),
    }
}

/// A fake cluster with one key, and a server trusting it as `cluster` (`change` edits that).
async fn cluster_app(
    change: impl FnOnce(&mut TrustedIssuerSettings) + Send + 'static,
) -> (IssuerKey, FakeIssuer, TestApp) {
    let key = IssuerKey::rsa("cluster-1");
    let cluster = FakeIssuer::serve(Answer::Keys(key_set(&[&key]))).await;
    let mut issuer = trusted("cluster", CLUSTER_ISS, &cluster.uri);
    change(&mut issuer);
    let app = spawn_app_with(move |settings| settings.federation.issuers.push(issuer)).await;
    (key, cluster, app)
}

/// A fake cluster answering `answer`, a server trusting it as `cluster`, and the server's
/// client `payments`, known by [`POD`].
async fn payments_app(answer: Answer) -> (FakeIssuer, TestApp) {
    let cluster = FakeIssuer::serve(answer).await;
    let issuer = trusted("cluster", CLUSTER_ISS, &cluster.uri);
    let app = spawn_app_with(move |settings| settings.federation.issuers.push(issuer)).await;
    let admin = app.admin_token().await;
    create_workload_client(&app, &admin, "payments", &[("cluster", POD)])
        .await
        .unwrap();
    (cluster, app)
}

/// A client known by `issuer_name`'s `subject`, created by `admin`; the secret it got.
async fn create_workload_client(
    app: &TestApp,
    admin: &str,
    client_id: &str,
    identities: &[(&str, &str)],
) -> Result<String, tonic::Status> {
    crate::exchange::create_client(
        app,
        admin,
        pb::Client {
            client_id: client_id.into(),
            allowed_audiences: vec!["api".into()],
            federated_identities: identities
                .iter()
                .map(|(issuer_name, subject)| pb::FederatedIdentity {
                    issuer_name: (*issuer_name).into(),
                    subject: (*subject).into(),
                })
                .collect(),
            ..Default::default()
        },
    )
    .await
}

/// The client a token was issued to, as `Authenticate` sees it.
async fn principal(app: &TestApp, token: &str) -> pb::Principal {
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: token.to_owned(),
            audience: "api".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
}

#[tokio::test]
async fn a_pod_gets_a_token_with_its_service_account_token_and_no_secret() {
    let (cluster_key, cluster, app) = cluster_app(|_| {}).await;
    assert_eq!(
        cluster.fetches(),
        0,
        "the keys are fetched when first needed"
    );
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    let secret = create_workload_client(&app, &admin, "payments", &[("cluster", POD)])
        .await
        .unwrap();
    assert!(
        secret.is_empty(),
        "a client known by its workload gets no secret"
    );
    let shown = app
        .client_admin()
        .get_client(with_bearer(
            pb::GetClientRequest {
                client_id: "payments".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        shown.federated_identities,
        vec![pb::FederatedIdentity {
            issuer_name: "cluster".into(),
            subject: POD.into(),
        }]
    );

    // The pod's token, with its client id and without: the identity names the client.
    let token = cluster_key.sign(&service_account_claims(now, POD));
    for client_id in ["payments", ""] {
        let issued = by_assertion(&app, client_id, &token).await.unwrap();
        let seen = principal(&app, &issued.access_token).await;
        assert_eq!(seen.subject, "payments", "an ordinary service token");
        assert_eq!(seen.client_id, "payments");
        assert!(issued.refresh_token.is_empty());
    }
    assert_eq!(cluster.fetches(), 1, "the keys are cached");

    // Over HTTP as the README's curl does: the form, no client id, no secret.
    let form = serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", token.as_str()),
        ("audience", "api"),
    ])
    .unwrap();
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let issued = response.json();
    let seen = principal(&app, issued["access_token"].as_str().unwrap()).await;
    assert_eq!(seen.subject, "payments");

    // A secret sent along proves nothing for such a client.
    assert_refused(
        app.client_token("payments", "kc_secret_guess", &[], "api")
            .await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "a secret for a workload client",
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_spire_svid_gets_a_token_and_exchanges_one() {
    let spire_key = IssuerKey::ec("spire-jwt-1");
    // A SPIFFE bundle: the JWT key marked `jwt-svid`, an X.509 authority beside it.
    let mut jwt_key = spire_key.jwk.clone();
    jwt_key["use"] = "jwt-svid".into();
    let x509_authority = {
        let mut key = IssuerKey::ec("x509").jwk;
        key.as_object_mut().unwrap().remove("kid");
        key["use"] = "x509-svid".into();
        key["x5c"] = json!(["MIIB"]);
        key
    };
    let bundle = json!({
        "keys": [x509_authority, jwt_key],
        "spiffe_refresh_hint": 300,
        "spiffe_sequence": 7,
    });
    let spire = FakeIssuer::serve(Answer::Keys(bundle)).await;
    let uri = spire.uri.clone();
    let app = spawn_app_with(move |settings| {
        settings
            .federation
            .issuers
            .push(trusted("spire", SPIRE_ISS, &uri));
    })
    .await;
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    crate::exchange::create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "relay".into(),
            allowed_audiences: vec!["downstream".into()],
            token_exchange: true,
            federated_identities: vec![pb::FederatedIdentity {
                issuer_name: "spire".into(),
                subject: SPIFFE_ID.into(),
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let svid = spire_key.sign(&svid_claims(now));
    let issued = by_assertion(&app, "", &svid).await.unwrap();
    let token = issued.access_token;
    assert!(!token.is_empty());
    // The same SVID again: a workload's token is its identity until it expires.
    by_assertion(&app, "relay", &svid).await.unwrap();

    // Token exchange, the client proving itself with its SVID.
    let caller = app
        .create_client("caller", &[], &["relay"], None, true)
        .await;
    let subject = app
        .client_token("caller", &caller, &[], "relay")
        .await
        .unwrap()
        .access_token;
    let mut grant = crate::exchange::grant("", "", &subject);
    grant.client_assertion = svid.clone();
    grant.client_assertion_type = JWT_BEARER.into();
    let exchanged = crate::exchange::exchange_with(&app, grant, "downstream", &[])
        .await
        .unwrap();
    let seen = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: exchanged.access_token,
            audience: "downstream".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(seen.subject, "caller");
    assert_eq!(seen.client_id, "relay");
    assert_eq!(seen.delegation[0].client_id, "relay");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_broken_workload_token_is_refused_and_says_why() {
    let (cluster_key, _cluster, app) =
        cluster_app(|issuer| issuer.max_assertion_age = Duration::from_secs(600)).await;
    let stranger_key = IssuerKey::rsa("cluster-1");
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    create_workload_client(&app, &admin, "payments", &[("cluster", POD)])
        .await
        .unwrap();
    create_workload_client(
        &app,
        &admin,
        "orders",
        &[("cluster", "system:serviceaccount:orders:api")],
    )
    .await
    .unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = service_account_claims(now, POD);
        change(&mut claims);
        cluster_key.sign(&claims)
    };
    let good = with(&|_| {});
    let hmac = jsonwebtoken::encode(
        &Header {
            kid: Some("cluster-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &service_account_claims(now, POD),
        &EncodingKey::from_secret(cluster_key.jwk["n"].as_str().unwrap().as_bytes()).unwrap(),
    )
    .unwrap();
    let header_key = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("cluster-1".into());
        header.jwk = Some(serde_json::from_value(stranger_key.jwk.clone()).unwrap());
        jsonwebtoken::encode(
            &header,
            &service_account_claims(now, POD),
            &stranger_key.signing,
        )
        .unwrap()
    };
    // (case, client id sent, token, what the message says once the signature verified)
    let cases: Vec<(&str, &str, String, Option<&str>)> = vec![
        (
            "an untrusted issuer",
            "payments",
            with(&|c| c["iss"] = "https://evil.example.com".into()),
            None,
        ),
        (
            "signed by a key the issuer does not publish",
            "payments",
            stranger_key.sign(&service_account_claims(now, POD)),
            None,
        ),
        (
            "addressed to another audience",
            "payments",
            with(&|c| c["aud"] = json!(["https://kubernetes.default.svc"])),
            Some("aud"),
        ),
        (
            "expired",
            "payments",
            with(&|c| c["exp"] = (now - 60).into()),
            Some("expired"),
        ),
        (
            "older than max_assertion_age",
            "payments",
            with(&|c| c["iat"] = (now - 1200).into()),
            Some("max_assertion_age"),
        ),
        (
            "not valid yet",
            "payments",
            with(&|c| c["nbf"] = (now + 600).into()),
            Some("nbf"),
        ),
        (
            "no iat",
            "payments",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            Some("iat"),
        ),
        (
            "alg none",
            "payments",
            crate::assertions::forged(&good, &json!({"alg": "none", "kid": "cluster-1"}), ""),
            None,
        ),
        ("HMAC keyed with the public key", "payments", hmac, None),
        ("a key in the header", "payments", header_key, None),
        (
            "another client's service account",
            "payments",
            with(&|c| c["sub"] = "system:serviceaccount:orders:api".into()),
            Some("not known by"),
        ),
        (
            "a service account no client is known by",
            "",
            with(&|c| c["sub"] = "system:serviceaccount:default:default".into()),
            Some("no client is known by"),
        ),
        (
            "expired, without a client id",
            "",
            with(&|c| c["exp"] = (now - 60).into()),
            Some("expired"),
        ),
        ("garbage", "payments", "a.b.c".to_owned(), None),
        (
            "an untrusted issuer, without a client id",
            "",
            with(&|c| c["iss"] = "https://evil.example.com".into()),
            None,
        ),
    ];
    for (case, client_id, token, says) in cases {
        let newest = app
            .audit_events(&admin, "client.authenticate")
            .await
            .first()
            .map(|event| event.id.clone());
        let status = by_assertion(&app, client_id, &token).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(reason(&status), "INVALID_CREDENTIALS", "{case}");
        match says {
            Some(says) => assert!(
                status.message().contains(says),
                "{case}: {}",
                status.message()
            ),
            None => assert_eq!(
                status.message(),
                "invalid credentials",
                "{case}: nothing is said before the signature checks out"
            ),
        }
        let events = app.audit_events(&admin, "client.authenticate").await;
        assert_ne!(
            events.first().map(|event| event.id.clone()),
            newest,
            "{case}: audited"
        );
        assert_eq!(events[0].outcome, "failure", "{case}");
        assert!(!events[0].details["reason"].is_empty(), "{case}");
    }
    // The good token still works: nothing above was remembered against it.
    by_assertion(&app, "payments", &good).await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_jwks_endpoint_costs_only_its_own_issuer() {
    let cluster_key = IssuerKey::rsa("cluster-1");
    let cluster = FakeIssuer::serve(Answer::Keys(key_set(&[&cluster_key]))).await;
    let hanging = FakeIssuer::serve(Answer::Hang).await;
    let huge = FakeIssuer::serve(Answer::Huge).await;
    let garbage = FakeIssuer::serve(Answer::Garbage).await;
    let sized = FakeIssuer::serve(Answer::Sized).await;
    let redirect = FakeIssuer::serve(Answer::Redirect(cluster.uri.clone())).await;
    let uris = [
        ("sized", "https://sized.example.com", sized.uri.clone()),
        (
            "redirect",
            "https://redirect.example.com",
            redirect.uri.clone(),
        ),
        ("cluster", CLUSTER_ISS, cluster.uri.clone()),
        (
            "hanging",
            "https://hanging.example.com",
            hanging.uri.clone(),
        ),
        ("huge", "https://huge.example.com", huge.uri.clone()),
        (
            "garbage",
            "https://garbage.example.com",
            garbage.uri.clone(),
        ),
    ];
    let app = spawn_app_with(move |settings| {
        settings.federation.fetch_timeout = Duration::from_secs(3);
        for (name, iss, uri) in &uris {
            settings.federation.issuers.push(trusted(name, iss, uri));
        }
    })
    .await;
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    for name in ["cluster", "hanging", "huge", "garbage", "sized", "redirect"] {
        create_workload_client(&app, &admin, name, &[(name, POD)])
            .await
            .unwrap();
    }
    let secret = app.create_client("plain", &[], &["api"], None, true).await;
    // Each dead issuer's token, signed by a key it would never serve.
    let token_of = |iss: &str| {
        let mut claims = service_account_claims(now, POD);
        claims["iss"] = iss.into();
        cluster_key.sign(&claims)
    };

    let stuck = {
        let app_channel = app.channel.clone();
        let token = token_of("https://hanging.example.com");
        tokio::spawn(async move {
            pb::auth_client::AuthClient::new(app_channel)
                .issue_token(pb::IssueTokenRequest {
                    grant: Some(pb::issue_token_request::Grant::ClientCredentials(
                        pb::ClientCredentialsGrant {
                            client_assertion: token,
                            client_assertion_type: JWT_BEARER.into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .await
        })
    };
    // Wait until the fetch hangs, then show that nothing else waits for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hanging.fetches() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no fetch began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.client_token("plain", &secret, &[], "api")
        .await
        .unwrap();
    by_assertion(
        &app,
        "cluster",
        &cluster_key.sign(&service_account_claims(now, POD)),
    )
    .await
    .unwrap();
    assert!(
        !stuck.is_finished(),
        "a secret and another issuer's token were served while the fetch hung"
    );
    let status = stuck.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    for (name, iss, endpoint) in [
        ("huge", "https://huge.example.com", &huge),
        ("garbage", "https://garbage.example.com", &garbage),
        ("sized", "https://sized.example.com", &sized),
        (
            "redirect (not followed)",
            "https://redirect.example.com",
            &redirect,
        ),
    ] {
        for _ in 0..2 {
            let status = by_assertion(&app, "", &token_of(iss)).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        }
        assert_eq!(
            endpoint.fetches(),
            1,
            "{name}: fetched again only after federation.refetch_interval"
        );
    }
    // The endpoint mends; after the interval, its keys are fetched and its tokens work.
    garbage.answer(Answer::Keys(key_set(&[&cluster_key])));
    app.clock.advance(chrono::Duration::seconds(61));
    let now = app.clock.now().timestamp();
    let mut claims = service_account_claims(now, POD);
    claims["iss"] = "https://garbage.example.com".into();
    by_assertion(&app, "", &cluster_key.sign(&claims))
        .await
        .unwrap();
    assert_eq!(garbage.fetches(), 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_caller_giving_up_does_not_cut_the_fetch_short_and_one_fetch_serves_all() {
    let key = IssuerKey::rsa("cluster-1");
    let (slow, app) =
        payments_app(Answer::Slow(Duration::from_millis(500), key_set(&[&key]))).await;
    let token = key.sign(&service_account_claims(app.clock.now().timestamp(), POD));
    let grant = || pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::ClientCredentials(
            pb::ClientCredentialsGrant {
                client_assertion: token.clone(),
                client_assertion_type: JWT_BEARER.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    // The first caller's deadline passes during the first fetch: the call ends, the fetch
    // goes on.
    let mut hurried = tonic::Request::new(grant());
    hurried.set_timeout(Duration::from_millis(50));
    let status = app.auth().issue_token(hurried).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // Callers arriving meanwhile wait for that same fetch, and all get tokens from it.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut auth = app.auth();
            let request = grant();
            tokio::spawn(async move { auth.issue_token(request).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(slow.fetches(), 1, "one fetch served every caller");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn keys_are_fetched_again_for_a_new_kid_at_most_once_per_interval_and_when_old() {
    let first = IssuerKey::rsa("cluster-1");
    let second = IssuerKey::rsa("cluster-2");
    let (cluster, app) = payments_app(Answer::Keys(key_set(&[&first]))).await;
    let token =
        |key: &IssuerKey| key.sign(&service_account_claims(app.clock.now().timestamp(), POD));
    by_assertion(&app, "payments", &token(&first))
        .await
        .unwrap();
    assert_eq!(cluster.fetches(), 1);

    // The cluster rotates its key. A token with the new kid right away: the keys were fetched
    // this very second, so they are not fetched again, and no made-up kid makes them be.
    cluster.answer(Answer::Keys(key_set(&[&first, &second])));
    for kid in ["cluster-2", "made-up-1", "made-up-2"] {
        let mut key = second.clone();
        key.kid = kid.into();
        let status = by_assertion(&app, "payments", &token(&key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{kid}");
    }
    assert_eq!(cluster.fetches(), 1);
    // A minute on, the new kid fetches them again, once.
    app.clock.advance(chrono::Duration::seconds(61));
    by_assertion(&app, "payments", &token(&second))
        .await
        .unwrap();
    by_assertion(&app, "payments", &token(&first))
        .await
        .unwrap();
    assert_eq!(cluster.fetches(), 2);

    // The cluster drops the first key. Past keys_max_age, the next token (known kid) is
    // served at once and the keys are fetched again behind it; then the dropped key is
    // refused.
    cluster.answer(Answer::Keys(key_set(&[&second])));
    app.clock.advance(chrono::Duration::seconds(3601));
    by_assertion(&app, "payments", &token(&first))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.fetches() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no refresh began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut refused = false;
    while !refused {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped key still counts"
        );
        refused = by_assertion(&app, "payments", &token(&first))
            .await
            .is_err();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    by_assertion(&app, "payments", &token(&second))
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start_and_a_bad_one_stops_the_start() {
    let key = IssuerKey::ec("file-1");
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("jwks.json");
    std::fs::write(&path, key_set(&[&key]).to_string()).unwrap();
    let file = path.display().to_string();
    let app = spawn_app_with(move |settings| {
        let mut issuer = trusted("spire", SPIRE_ISS, "");
        issuer.jwks_file = file;
        settings.federation.issuers.push(issuer);
    })
    .await;
    let admin = app.admin_token().await;
    create_workload_client(&app, &admin, "relay", &[("spire", SPIFFE_ID)])
        .await
        .unwrap();
    by_assertion(
        &app,
        "",
        &key.sign(&svid_claims(app.clock.now().timestamp())),
    )
    .await
    .unwrap();
    app.stop().await.unwrap();

    for (case, content) in [
        ("garbage", "not json".to_owned()),
        (
            "a private key",
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}]})
                .to_string(),
        ),
        (
            "no usable key",
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let mut settings = crate::helpers::test_settings("sqlite::memory:");
        let mut issuer = trusted("spire", SPIRE_ISS, "");
        issuer.jwks_file = path.display().to_string();
        settings.federation.issuers.push(issuer);
        let error = keystone::app::App::build(settings)
            .await
            .err()
            .unwrap_or_else(|| panic!("{case}: started"));
        assert!(
            format!("{error:#}").contains("federation.issuers.jwks_file"),
            "{case}: {error:#}"
        );
    }
}

#[tokio::test]
async fn only_an_admin_gives_workload_identities_and_each_names_one_client() {
    let (cluster_key, _cluster, app) = cluster_app(|_| {}).await;
    let now = app.clock.now().timestamp();
    let admin = app.admin_token().await;
    let writer = app
        .token_with_scopes(
            "writer",
            &["keystone:clients.write", "keystone:clients.read"],
        )
        .await;
    assert_refused(
        create_workload_client(&app, &writer, "payments", &[("cluster", POD)]).await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "a clients.write caller gives a workload identity",
    );
    let status = create_workload_client(&app, &admin, "payments", &[("k8s", POD)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_field(&status),
        "client.federated_identities[0].issuer_name"
    );
    let status = create_workload_client(&app, &admin, "payments", &[("cluster", " x")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A client with a secret becomes a workload client: its secret is gone, its tokens end.
    let secret = app
        .create_client("payments", &[], &["api"], None, true)
        .await;
    let old = app
        .client_token("payments", &secret, &[], "api")
        .await
        .unwrap()
        .access_token;
    let update = |identities: Vec<pb::FederatedIdentity>| pb::UpdateClientRequest {
        client: Some(pb::Client {
            client_id: "payments".into(),
            federated_identities: identities,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["federated_identities".into()],
        }),
    };
    let pod = pb::FederatedIdentity {
        issuer_name: "cluster".into(),
        subject: POD.into(),
    };
    assert_refused(
        app.client_admin()
            .update_client(with_bearer(update(vec![pod.clone()]), &writer))
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "a clients.write caller",
    );
    let updated = app
        .client_admin()
        .update_client(with_bearer(update(vec![pod.clone()]), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.secrets.is_empty(), "its secrets were deleted");
    assert_refused(
        app.client_token("payments", &secret, &[], "api").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "the old secret",
    );
    let status = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: old,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "its tokens ended");
    let token = cluster_key.sign(&service_account_claims(now, POD));
    by_assertion(&app, "", &token).await.unwrap();
    let status = app
        .client_admin()
        .rotate_client_secret(with_bearer(
            pb::RotateClientSecretRequest {
                client_id: "payments".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // One identity names one client; keys and identities do not go together.
    assert_refused(
        create_workload_client(&app, &admin, "orders", &[("cluster", POD)]).await,
        Code::AlreadyExists,
        "ALREADY_EXISTS",
        "an identity another client has",
    );
    let status = crate::exchange::create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "both".into(),
            jwks_json: crate::assertions::ClientKey::new("k1").jwks(),
            federated_identities: vec![pb::FederatedIdentity {
                issuer_name: "cluster".into(),
                subject: "system:serviceaccount:both:api".into(),
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Taken off, the identity proves nothing.
    app.client_admin()
        .update_client(with_bearer(update(Vec::new()), &admin))
        .await
        .unwrap();
    assert_refused(
        by_assertion(&app, "", &token).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "an identity taken off",
    );
    assert_refused(
        by_assertion(&app, "payments", &token).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
        "an identity taken off, the client named",
    );
    app.stop().await.unwrap();
}

/// A JWKS endpoint over TLS (a certificate for `localhost` from `ca`) that answers only
/// requests bearing the token `expected` holds, as a cluster that keeps its keys to its own
/// service accounts does.
async fn serve_tls_jwks(
    ca: &crate::tls::Ca,
    keys: Arc<Mutex<Value>>,
    expected: Arc<Mutex<String>>,
) -> String {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let leaf = ca.server();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, keys, expected) = (acceptor.clone(), keys.clone(), expected.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let bearer = format!("Bearer {}", expected.lock().unwrap());
                    let allowed = request
                        .headers()
                        .get("authorization")
                        .is_some_and(|value| value.as_bytes() == bearer.as_bytes());
                    let (status, body) = if allowed {
                        (200, keys.lock().unwrap().to_string())
                    } else {
                        (401, "Unauthorized".to_owned())
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("https://localhost:{port}/openid/v1/jwks")
}

#[tokio::test]
async fn a_cluster_keeping_its_keys_to_its_service_accounts_is_read_over_tls_with_a_token() {
    let ca = crate::tls::Ca::new("cluster CA");
    let other_ca = crate::tls::Ca::new("another CA");
    let first = IssuerKey::rsa("cluster-1");
    let second = IssuerKey::rsa("cluster-2");
    let expected = Arc::new(Mutex::new("keystone-pod-token-1".to_owned()));
    let served = Arc::new(Mutex::new(key_set(&[&first])));
    let uri = serve_tls_jwks(&ca, served.clone(), expected.clone()).await;
    let directory = tempfile::tempdir().unwrap();
    let ca_file = directory.path().join("ca.crt");
    let other_ca_file = directory.path().join("other-ca.crt");
    let token_file = directory.path().join("token");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    std::fs::write(&other_ca_file, &other_ca.pem).unwrap();
    std::fs::write(&token_file, "keystone-pod-token-1\n").unwrap();
    let (token_path, ca_path, other_path) = (
        token_file.display().to_string(),
        ca_file.display().to_string(),
        other_ca_file.display().to_string(),
    );
    let app = spawn_app_with(move |settings| {
        let mut cluster = trusted("cluster", CLUSTER_ISS, &uri);
        cluster.ca_file = ca_path;
        cluster.bearer_token_file = token_path;
        let mut impostor = trusted("impostor", "https://impostor.example.com", &uri);
        impostor.ca_file = other_path;
        settings.federation.issuers.extend([cluster, impostor]);
    })
    .await;
    let admin = app.admin_token().await;
    create_workload_client(&app, &admin, "payments", &[("cluster", POD)])
        .await
        .unwrap();
    create_workload_client(&app, &admin, "impostor", &[("impostor", POD)])
        .await
        .unwrap();
    let token = |key: &IssuerKey, iss: &str| {
        let mut claims = service_account_claims(app.clock.now().timestamp(), POD);
        claims["iss"] = iss.into();
        key.sign(&claims)
    };
    by_assertion(&app, "payments", &token(&first, CLUSTER_ISS))
        .await
        .unwrap();
    // A server whose certificate does not chain to the issuer's ca_file is not believed.
    let status = by_assertion(
        &app,
        "impostor",
        &token(&first, "https://impostor.example.com"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The pod's token is renewed in place, and the cluster rotates its key: the fetch the
    // new kid causes (a minute on) sends the new token, or it would learn no new key.
    *expected.lock().unwrap() = "keystone-pod-token-2".to_owned();
    std::fs::write(&token_file, "keystone-pod-token-2").unwrap();
    *served.lock().unwrap() = key_set(&[&first, &second]);
    app.clock.advance(chrono::Duration::seconds(61));
    by_assertion(&app, "payments", &token(&second, CLUSTER_ISS))
        .await
        .unwrap();
    app.stop().await.unwrap();
}
