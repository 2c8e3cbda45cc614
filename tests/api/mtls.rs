//! Clients that authenticate by TLS client certificate (RFC 8705 section 2) and tokens bound
//! to one (section 3), through real TLS connections: a SPIFFE ID, a subject DN, a self-signed
//! thumbprint; the binding checked on Keystone's own connection, on a trusted proxy's
//! `x-forwarded-client-cert`, on a resource server's word, and in Envoy's `Check`.

use std::{net::SocketAddr, sync::Arc};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use keystone::{
    config::ClientAuth,
    proto::pb::{
        self, AuthenticateRequest, ClientCredentialsGrant, CreateClientRequest, IntrospectRequest,
        IssueTokenRequest, RotateClientSecretRequest, TokenResponse, UpdateClientRequest,
        auth_client::AuthClient, issue_token_request::Grant,
    },
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tonic::{Code, transport::Channel};

use crate::{
    helpers::{
        HttpResponse, TestApp, bad_field, read_response, reason, spawn_app_tls, spawn_app_with,
        with_bearer,
    },
    tls::{Ca, Files, Leaf, check_over, connect, presenting, trusting},
};

const PAYMENTS: &str = "spiffe://example.org/ns/payments/sa/api";

/// The hex SHA-256 of a certificate, computed here rather than by Keystone.
fn sha256(der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().try_into().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `cnf` claim of a JWT, read without checking it.
fn cnf(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["cnf"].clone()
}

/// A TLS server whose listeners ask for client certificates of `clients` (and, with
/// `self_signed`, take self-signed ones).
async fn mtls_app(ca: &Ca, files: &Files, self_signed: bool) -> TestApp {
    spawn_app_tls(
        |s| {
            files.configure(s, Some(ClientAuth::Optional));
            s.tls.self_signed_client_certificates = self_signed;
            s.clients.delegable_audiences = vec!["orders".to_owned()];
        },
        trusting(ca),
    )
    .await
}

/// Creates a client through ClientAdmin, as `token`'s holder.
async fn create(
    app: &TestApp,
    token: &str,
    client: pb::Client,
) -> Result<pb::CreateClientResponse, tonic::Status> {
    app.client_admin()
        .create_client(with_bearer(
            CreateClientRequest {
                client: Some(client),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The client credentials grant with no secret, on `channel`.
async fn by_certificate(
    channel: &Channel,
    client_id: &str,
) -> Result<TokenResponse, tonic::Status> {
    AuthClient::new(channel.clone())
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                client_id: client_id.to_owned(),
                client_secret: String::new(),
                ..Default::default()
            })),
            audience: "orders".to_owned(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `Authenticate` of `token` (in the request) on `channel`, with an `x-forwarded-client-cert`
/// naming the certificate of `hash` if given.
async fn authenticate(
    channel: &Channel,
    token: &str,
    hash: Option<[u8; 32]>,
) -> Result<pb::Principal, tonic::Status> {
    let mut request = tonic::Request::new(AuthenticateRequest {
        token: token.to_owned(),
        ..Default::default()
    });
    if let Some(hash) = hash {
        request.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("Hash={}", hex(&hash)).parse().unwrap(),
        );
    }
    AuthClient::new(channel.clone())
        .authenticate(request)
        .await
        .map(|response| response.into_inner().principal.unwrap())
}

#[tokio::test]
async fn a_client_authenticates_by_its_spiffe_id_and_its_tokens_are_bound_to_its_certificate() {
    let (ca, clients) = (Ca::new("keystone test CA"), Ca::new("workloads CA"));
    let files = Files::new(&ca.server(), Some(&clients));
    let app = mtls_app(&ca, &files, false).await;
    let admin = app.admin_token().await;
    let created = create(
        &app,
        &admin,
        pb::Client {
            client_id: "payments".to_owned(),
            allowed_audiences: vec!["orders".to_owned()],
            tls_client_auth_sans: vec![PAYMENTS.to_owned()],
            certificate_bound_tokens: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(created.client_secret.is_empty(), "no secret for it");
    let client = created.client.unwrap();
    assert_eq!(client.tls_client_auth_sans, vec![PAYMENTS.to_owned()]);
    assert!(client.certificate_bound_tokens);

    let workload = clients.workload("api", "Payments", PAYMENTS);
    let own = connect(app.addr, presenting(trusting(&ca), &workload))
        .await
        .unwrap();
    let issued = by_certificate(&own, "payments").await.unwrap();
    let thumbprint = sha256(&workload.der());
    assert_eq!(
        cnf(&issued.access_token),
        serde_json::json!({ "x5t#S256": URL_SAFE_NO_PAD.encode(thumbprint) })
    );

    // Accepted with its certificate, on its own connection.
    let principal = authenticate(&own, &issued.access_token, None)
        .await
        .unwrap();
    assert_eq!(principal.client_id, "payments");
    assert_eq!(
        principal.certificate_thumbprint,
        URL_SAFE_NO_PAD.encode(thumbprint)
    );
    let plain = connect(app.addr, trusting(&ca)).await.unwrap();

    // Refused without it, or with another one, or with a header naming it from a peer that is
    // no `server.client_certificate_proxies`.
    let other = clients.workload("api", "Payments", "spiffe://example.org/ns/other/sa/api");
    let elsewhere = connect(app.addr, presenting(trusting(&ca), &other))
        .await
        .unwrap();
    for (channel, forwarded, what) in [
        (&plain, None, "no certificate"),
        (&elsewhere, None, "another certificate"),
        (&plain, Some(thumbprint), "a header from anyone"),
    ] {
        let status = authenticate(channel, &issued.access_token, forwarded)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert_eq!(reason(&status), "TOKEN_BINDING_MISMATCH", "{what}");
    }

    // Only its certificate gets it a token.
    for (channel, what) in [(&plain, "no certificate"), (&elsewhere, "another name")] {
        let status = by_certificate(channel, "payments").await.expect_err(what);
        assert_eq!(reason(&status), "INVALID_CREDENTIALS", "{what}");
    }

    // Introspection shows the binding.
    let introspected = app
        .auth()
        .introspect(with_bearer(
            IntrospectRequest {
                token: issued.access_token.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(introspected.active);
    assert_eq!(
        introspected.cnf.unwrap().x5t_s256,
        URL_SAFE_NO_PAD.encode(thumbprint)
    );

    // Over HTTP too: the client id alone with the certificate.
    let response = https_post(
        app.http_addr,
        &ca,
        Some(&workload),
        "/oauth2/token",
        "grant_type=client_credentials&client_id=payments&audience=orders",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let token = response.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(cnf(&token)["x5t#S256"], URL_SAFE_NO_PAD.encode(thumbprint));
    let refused = https_post(
        app.http_addr,
        &ca,
        None,
        "/oauth2/token",
        "grant_type=client_credentials&client_id=payments&audience=orders",
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.json()["error"], "invalid_client");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_subject_dn_or_a_self_signed_thumbprint_names_a_client() {
    let (ca, clients) = (Ca::new("keystone test CA"), Ca::new("workloads CA"));
    let files = Files::new(&ca.server(), Some(&clients));
    let app = mtls_app(&ca, &files, true).await;
    let admin = app.admin_token().await;
    create(
        &app,
        &admin,
        pb::Client {
            client_id: "billing".to_owned(),
            allowed_audiences: vec!["orders".to_owned()],
            tls_client_auth_subject_dn: "CN=billing, O=Example".to_owned(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let lone = Leaf::self_signed("batch", Some(PAYMENTS));
    let colons: Vec<String> = sha256(&lone.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let created = create(
        &app,
        &admin,
        pb::Client {
            client_id: "batch".to_owned(),
            allowed_audiences: vec!["orders".to_owned()],
            tls_client_certificate_sha256: vec![colons.join(":")],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        created.client.unwrap().tls_client_certificate_sha256,
        vec![hex(&sha256(&lone.der()))]
    );
    create(
        &app,
        &admin,
        pb::Client {
            client_id: "payments".to_owned(),
            allowed_audiences: vec!["orders".to_owned()],
            tls_client_auth_sans: vec![PAYMENTS.to_owned()],
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let over = |leaf: &Leaf| connect(app.addr, presenting(trusting(&ca), leaf));
    let billing = clients.workload("billing", "Example", "spiffe://example.org/billing");
    let impostor = clients.workload("billing", "Elsewhere", "spiffe://example.org/billing");
    by_certificate(&over(&billing).await.unwrap(), "billing")
        .await
        .unwrap();
    let status = by_certificate(&over(&impostor).await.unwrap(), "billing")
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        "INVALID_CREDENTIALS",
        "another organization"
    );

    // The self-signed certificate gets its own client in, and no other: its SPIFFE ID proves
    // nothing, as no CA vouched for it.
    let lone_channel = over(&lone).await.unwrap();
    let token = by_certificate(&lone_channel, "batch").await.unwrap();
    assert!(cnf(&token.access_token).is_null(), "not asked to be bound");
    let status = by_certificate(&lone_channel, "payments").await.unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    // Nor another client's certificate, whatever the thumbprint.
    let status = by_certificate(&over(&billing).await.unwrap(), "batch")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");

    // A certificate of another CA is still refused in the handshake, and so are an expired
    // and a not yet valid one of the client CA.
    let stranger = Ca::new("another CA").client("billing");
    for (leaf, what) in [
        (&stranger, "another CA"),
        (&clients.client_valid("billing", 2020, 2021), "expired"),
        (
            &clients.client_valid("billing", 2090, 2091),
            "not yet valid",
        ),
    ] {
        assert!(
            check_over(app.addr, presenting(trusting(&ca), leaf))
                .await
                .is_err(),
            "{what}"
        );
    }
    assert_eq!(
        check_over(app.addr, presenting(trusting(&ca), &lone)).await,
        Ok(1)
    );
    app.stop().await.unwrap();

    // Without `tls.self_signed_client_certificates`, the handshake refuses a self-signed one.
    let files = Files::new(&ca.server(), Some(&clients));
    let strict = mtls_app(&ca, &files, false).await;
    assert!(
        check_over(strict.addr, presenting(trusting(&ca), &lone))
            .await
            .is_err()
    );
    strict.stop().await.unwrap();
}

#[tokio::test]
async fn who_may_act_as_a_client_is_keystone_admins_to_say() {
    let app = spawn_app_with(|s| s.clients.delegable_audiences = vec!["orders".to_owned()]).await;
    let admin = app.admin_token().await;
    let writer = app
        .token_with_scopes("writer", &["keystone:clients.write"])
        .await;
    let status = create(
        &app,
        &writer,
        pb::Client {
            client_id: "sneaky".to_owned(),
            tls_client_auth_sans: vec![PAYMENTS.to_owned()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");

    // A client with a secret, taken over to a certificate by an admin: the secret ends.
    let created = create(
        &app,
        &writer,
        pb::Client {
            client_id: "migrating".to_owned(),
            allowed_audiences: vec!["orders".to_owned()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let before = app
        .client_token("migrating", &created.client_secret, &[], "orders")
        .await
        .unwrap()
        .access_token;
    let update = |token: &str, paths: &[&str], client: pb::Client| {
        let mut admin = app.client_admin();
        let request = with_bearer(
            UpdateClientRequest {
                client: Some(client),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            token,
        );
        async move { admin.update_client(request).await }
    };
    let status = update(
        &writer,
        &["tls_client_auth_sans"],
        pb::Client {
            client_id: "migrating".to_owned(),
            tls_client_auth_sans: vec![PAYMENTS.to_owned()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");
    let updated = update(
        &admin,
        &["tls_client_auth_sans"],
        pb::Client {
            client_id: "migrating".to_owned(),
            tls_client_auth_sans: vec![PAYMENTS.to_owned(), "API.example.com".to_owned()],
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        updated.tls_client_auth_sans,
        vec!["api.example.com".to_owned(), PAYMENTS.to_owned()]
    );
    let status = app
        .client_token("migrating", &created.client_secret, &[], "orders")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS", "its secret is gone");
    // And so are the tokens its secret got: they were given under the old terms.
    let plain = app.channel.clone();
    let status = authenticate(&plain, &before, None).await.unwrap_err();
    assert_eq!(reason(&status), "TOKEN_REVOKED");

    // Now only an admin manages it, and it gets no secret.
    let status = update(
        &writer,
        &["description"],
        pb::Client {
            client_id: "migrating".to_owned(),
            description: "mine now".to_owned(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");
    let rotate = |token: &str| {
        let mut admin = app.client_admin();
        let request = with_bearer(
            RotateClientSecretRequest {
                client_id: "migrating".to_owned(),
                grace_period: None,
            },
            token,
        );
        async move { admin.rotate_client_secret(request).await }
    };
    assert_eq!(
        reason(&rotate(&writer).await.unwrap_err()),
        "INSUFFICIENT_SCOPE"
    );
    let status = rotate(&admin).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Values are checked, naming the entry.
    for (client, field) in [
        (
            pb::Client {
                client_id: "bad".to_owned(),
                tls_client_auth_sans: vec![PAYMENTS.to_owned(), "not a name".to_owned()],
                ..Default::default()
            },
            "client.tls_client_auth_sans[1]",
        ),
        (
            pb::Client {
                client_id: "bad".to_owned(),
                tls_client_auth_subject_dn: "NOPE=x".to_owned(),
                ..Default::default()
            },
            "client.tls_client_auth_subject_dn",
        ),
        (
            pb::Client {
                client_id: "bad".to_owned(),
                tls_client_certificate_sha256: vec!["abcd".to_owned()],
                ..Default::default()
            },
            "client.tls_client_certificate_sha256[0]",
        ),
    ] {
        let status = create(&app, &admin, client).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&status), field);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_certificate_and_an_untrusted_one_is_ignored() {
    let hash = "3b".repeat(32);
    let forwarded = format!("By=spiffe://mesh/keystone;Hash={hash};URI={PAYMENTS}");
    let for_proxy = |token: &str, xfcc: &str| {
        let mut request = with_bearer(AuthenticateRequest::default(), token);
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", xfcc.parse().unwrap());
        request
    };
    let issue = |xfcc: &str, secret: &str| {
        let mut request = tonic::Request::new(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                client_id: "reports".to_owned(),
                client_secret: secret.to_owned(),
                ..Default::default()
            })),
            audience: "orders".to_owned(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", xfcc.parse().unwrap());
        request
    };

    // Behind a trusted proxy: the token is bound to the forwarded certificate.
    let app = spawn_app_with(|s| {
        s.server.client_certificate_proxies =
            vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
    })
    .await;
    let secret = bound_reports_client(&app).await;
    let issued = app
        .auth()
        .issue_token(issue(&forwarded, &secret))
        .await
        .unwrap()
        .into_inner();
    let expected = URL_SAFE_NO_PAD.encode([0x3b; 32]);
    assert_eq!(cnf(&issued.access_token)["x5t#S256"], expected.as_str());
    let principal = app
        .auth()
        .authenticate(for_proxy(&issued.access_token, &forwarded))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(principal.certificate_thumbprint, expected);
    let other = format!("Hash={}", "4c".repeat(32));
    let status = app
        .auth()
        .authenticate(for_proxy(&issued.access_token, &other))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "TOKEN_BINDING_MISMATCH");

    // Envoy's Check reads the certificate Envoy's client presented.
    let pem_of = |leaf: &Leaf| {
        percent_encoding::utf8_percent_encode(&leaf.cert, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    };
    let leaf = Ca::new("mesh CA").client("reports");
    let bound = app
        .auth()
        .issue_token(issue(
            &format!("Hash={}", hex(&sha256(&leaf.der()))),
            &secret,
        ))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let check = |certificate: String| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                certificate,
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: "api.example.com".into(),
                    path: "/orders".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {bound}"))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut envoy = AuthorizationClient::new(app.channel.clone());
    let allowed = envoy
        .check(check(pem_of(&leaf)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.status.unwrap().code, 0);
    for (certificate, what) in [
        (String::new(), "no certificate"),
        (pem_of(&Ca::new("mesh CA").client("reports")), "another"),
        ("%%garbage".to_owned(), "unreadable"),
    ] {
        let denied = envoy.check(check(certificate)).await.unwrap().into_inner();
        assert_eq!(
            denied.status.unwrap().code,
            Code::Unauthenticated as i32,
            "{what}"
        );
        let Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
                denied,
            ),
        ) = denied.http_response
        else {
            panic!("{what}: not a denial");
        };
        assert_eq!(denied.status.unwrap().code, 401, "{what}");
    }
    app.stop().await.unwrap();

    // From a peer that is no `server.client_certificate_proxies`, the header is nobody's word,
    // even one whose `X-Forwarded-For` is believed.
    let app = spawn_app_with(|s| {
        s.server.trusted_proxies =
            vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
    })
    .await;
    let secret = bound_reports_client(&app).await;
    let status = app
        .auth()
        .issue_token(issue(&forwarded, &secret))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "no certificate to bind to"
    );
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    app.stop().await.unwrap();
}

/// Creates `reports`, a client whose tokens are bound to its certificate; its secret.
async fn bound_reports_client(app: &TestApp) -> String {
    let admin = app.admin_token().await;
    create(
        app,
        &admin,
        pb::Client {
            client_id: "reports".to_owned(),
            allowed_audiences: vec!["orders".to_owned()],
            certificate_bound_tokens: true,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .client_secret
}

/// `POST path` with a form over HTTPS, presenting `leaf` if given.
async fn https_post(
    addr: SocketAddr,
    ca: &Ca,
    leaf: Option<&Leaf>,
    path: &str,
    form: &str,
) -> HttpResponse {
    https(
        addr,
        ca,
        leaf,
        "POST",
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    )
    .await
}

/// One HTTP/1.1 request over HTTPS (the server's name `localhost`), presenting `leaf` if
/// given.
pub(crate) async fn https(
    addr: SocketAddr,
    ca: &Ca,
    leaf: Option<&Leaf>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    use http_body_util::Full;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    read_response(sender.send_request(request).await.unwrap()).await
}
