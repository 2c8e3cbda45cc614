//! Token exchange (RFC 8693) through the real gRPC and HTTP APIs: a user's token for the
//! `orders` service is exchanged by `orders` for one to `payments`, and by `payments` for one
//! to `ledger`. The subject, session and roles stay; scopes narrow to what every hop holds; the
//! chain shows in Authenticate, Introspect, Envoy's headers and the audit trail; every rule
//! that is broken is refused with its reason; and ending the session, or revoking a client of
//! the chain, ends the exchanged tokens.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use keystone::proto::pb::{
    self, IssueTokenRequest, TokenExchangeGrant, TokenResponse, issue_token_request::Grant,
};
use tonic::Code;

use crate::helpers::{
    ADMIN_PASSWORD, TestApp, assert_refused, bad_field, http, spawn_app_with, with_bearer,
};

/// The access token type of RFC 8693 section 3.
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The scopes of the scene.
const SCOPES: [&str; 5] = [
    "orders:read",
    "orders:write",
    "payments:read",
    "invoices:read",
    "ledger:read",
];

/// The scene: alice (orders:write, payments:read, invoices:read) and three services.
struct Scene {
    app: TestApp,
    admin: String,
    /// Alice's login for the `orders` service.
    alice: TokenResponse,
    /// Alice's user id.
    alice_id: String,
    /// `orders`: may exchange; orders:read and payments:read; to `payments`; tokens 5 min.
    orders: String,
    /// `payments`: may exchange; payments:read and ledger:read; to `ledger`.
    payments: String,
    /// `plain`: as `orders`, without `token_exchange`.
    plain: String,
}

/// Creates a client through `ClientAdmin` as `admin`; its secret.
pub(crate) async fn create_client(
    app: &TestApp,
    admin: &str,
    client: pb::Client,
) -> Result<String, tonic::Status> {
    app.client_admin()
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(client),
            },
            admin,
        ))
        .await
        .map(|response| response.into_inner().client_secret)
}

/// A client that may exchange tokens, created by `admin` (who holds `keystone:admin`).
pub(crate) async fn exchanging_client(
    app: &TestApp,
    admin: &str,
    client_id: &str,
    scopes: &[&str],
    audiences: &[&str],
) -> String {
    create_client(
        app,
        admin,
        pb::Client {
            client_id: client_id.into(),
            allowed_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            allowed_audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
            token_exchange: true,
            ..Default::default()
        },
    )
    .await
    .expect("an admin creates a client that may exchange tokens")
}

async fn scene_with(configure: impl FnOnce(&mut keystone::config::Settings)) -> Scene {
    let app = spawn_app_with(|settings| {
        settings.tokens.user_audiences = vec!["orders".into(), "plain".into()];
        configure(settings);
    })
    .await;
    let admin = app.admin_token().await;
    for scope in SCOPES {
        app.user_admin()
            .create_scope(with_bearer(
                pb::CreateScopeRequest {
                    scope: Some(pb::Scope {
                        name: scope.into(),
                        description: String::new(),
                    }),
                },
                &admin,
            ))
            .await
            .unwrap();
    }
    app.token_with_scopes("alice", &["orders:write", "payments:read", "invoices:read"])
        .await;
    let alice = app
        .login_with("alice", ADMIN_PASSWORD, &[], "orders")
        .await
        .unwrap();
    let alice_id = principal(&app, &alice.access_token, "orders")
        .await
        .unwrap()
        .subject;
    let orders = create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "orders".into(),
            allowed_scopes: vec![
                "orders:read".into(),
                "payments:read".into(),
                "ledger:read".into(),
            ],
            allowed_audiences: vec!["payments".into(), "keystone".into()],
            access_token_ttl: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            token_exchange: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let payments = exchanging_client(
        &app,
        &admin,
        "payments",
        &["payments:read", "ledger:read"],
        &["ledger"],
    )
    .await;
    let plain = create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "plain".into(),
            allowed_scopes: vec!["orders:read".into(), "payments:read".into()],
            allowed_audiences: vec!["payments".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Scene {
        app,
        admin,
        alice,
        alice_id,
        orders,
        payments,
        plain,
    }
}

async fn scene() -> Scene {
    scene_with(|_| {}).await
}

/// A token exchange grant of `subject` by `client_id`.
pub(crate) fn grant(client_id: &str, secret: &str, subject: &str) -> TokenExchangeGrant {
    TokenExchangeGrant {
        subject_token: subject.to_owned(),
        subject_token_type: ACCESS_TOKEN.to_owned(),
        client_id: client_id.to_owned(),
        client_secret: secret.to_owned(),
        ..Default::default()
    }
}

/// Exchanges with `grant` for `audience` and `scopes`.
pub(crate) async fn exchange_with(
    app: &TestApp,
    grant: TokenExchangeGrant,
    audience: &str,
    scopes: &[&str],
) -> Result<TokenResponse, tonic::Status> {
    app.auth()
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::TokenExchange(grant)),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            audience: audience.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn exchange(
    app: &TestApp,
    client_id: &str,
    secret: &str,
    subject: &str,
    audience: &str,
) -> Result<TokenResponse, tonic::Status> {
    exchange_with(app, grant(client_id, secret, subject), audience, &[]).await
}

async fn principal(
    app: &TestApp,
    token: &str,
    audience: &str,
) -> Result<pb::Principal, tonic::Status> {
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: token.to_owned(),
            audience: audience.to_owned(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().principal.unwrap())
}

fn actors(principal: &pb::Principal) -> Vec<(&str, &str)> {
    principal
        .delegation
        .iter()
        .map(|actor| (actor.subject.as_str(), actor.client_id.as_str()))
        .collect()
}

/// A refused exchange: what it is, the grant, the audience and scopes asked, and the status.
type Refusal<'a> = (
    &'a str,
    TokenExchangeGrant,
    &'a str,
    Vec<&'a str>,
    Code,
    &'a str,
);

#[tokio::test]
async fn an_exchange_keeps_the_subject_narrows_the_scopes_and_shows_the_chain() {
    let Scene {
        app,
        admin,
        alice,
        alice_id,
        orders,
        payments,
        ..
    } = scene().await;
    let own = principal(&app, &alice.access_token, "orders")
        .await
        .unwrap();
    assert!(own.delegation.is_empty());

    // orders → payments, on alice's behalf.
    let first = exchange(&app, "orders", &orders, &alice.access_token, "payments")
        .await
        .unwrap();
    assert_eq!(first.issued_token_type, ACCESS_TOKEN);
    assert_eq!(first.token_type, "Bearer");
    assert!(first.refresh_token.is_empty());
    // alice holds orders:write (which covers orders:read), payments:read and invoices:read;
    // orders may have orders:read and payments:read.
    assert_eq!(first.scopes, ["orders:read", "payments:read"]);
    let hop = principal(&app, &first.access_token, "payments")
        .await
        .unwrap();
    assert_eq!(hop.subject, alice_id);
    assert_eq!(hop.kind, pb::PrincipalKind::User as i32);
    assert_eq!(hop.username, "alice");
    assert_eq!(hop.client_id, "orders");
    assert_eq!(hop.roles, own.roles);
    assert_eq!(hop.session_id, own.session_id);
    assert!(!hop.session_id.is_empty());
    assert_eq!(hop.audience, ["payments"]);
    assert_eq!(actors(&hop), [("orders", "orders")]);
    // The client's tokens live 5 minutes; alice's 15: the shorter wins.
    let seconds = |p: &pb::Principal| {
        p.expires_at.as_ref().unwrap().seconds - p.issued_at.as_ref().unwrap().seconds
    };
    assert_eq!(seconds(&hop), 300);
    assert_eq!(first.expires_in, 300);

    // payments → ledger: the chain grows, nearest first; the scopes narrow again.
    let second = exchange(&app, "payments", &payments, &first.access_token, "ledger")
        .await
        .unwrap();
    assert_eq!(second.scopes, ["payments:read"]);
    let hop2 = principal(&app, &second.access_token, "ledger")
        .await
        .unwrap();
    assert_eq!(hop2.subject, alice_id);
    assert_eq!(hop2.session_id, own.session_id);
    assert_eq!(hop2.client_id, "payments");
    assert_eq!(
        actors(&hop2),
        [("payments", "payments"), ("orders", "orders")]
    );
    // It never outlives the token it came from.
    assert!(hop2.expires_at.as_ref().unwrap().seconds <= hop.expires_at.as_ref().unwrap().seconds);

    // No audience asked: every audience the client may have, Keystone's own never.
    let anywhere = exchange(&app, "orders", &orders, &alice.access_token, "")
        .await
        .unwrap();
    let anywhere = principal(&app, &anywhere.access_token, "payments")
        .await
        .unwrap();
    assert_eq!(anywhere.audience, ["payments"]);

    // An asked lifetime within both is given as asked.
    let mut short = grant("payments", &payments, &first.access_token);
    short.ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let short = exchange_with(&app, short, "ledger", &[]).await.unwrap();
    assert_eq!(short.expires_in, 60);

    // Introspection shows `act` nested as in the token (RFC 8693 section 4.1).
    let introspected = app
        .auth()
        .introspect(with_bearer(
            pb::IntrospectRequest {
                token: second.access_token.clone(),
                token_type_hint: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(introspected.active);
    let act = introspected.act.expect("act");
    assert_eq!(
        (act.sub.as_str(), act.client_id.as_str()),
        ("payments", "payments")
    );
    let before = act.act.expect("the hop before");
    assert_eq!(before.sub, "orders");
    assert!(before.act.is_none());
    let json = http(
        app.http_addr,
        "POST",
        "/oauth2/introspect",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Bearer {admin}")),
        ],
        &format!("token={}", second.access_token),
    )
    .await
    .json();
    assert_eq!(
        json["act"],
        serde_json::json!({
            "sub": "payments", "client_id": "payments",
            "act": { "sub": "orders", "client_id": "orders" }
        })
    );
    // The claim as a JWT library reads it.
    let payload = second.access_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["act"], json["act"]);
    assert_eq!(claims["sub"], alice_id.as_str());

    // Envoy's upstream learns who acts, and a forged header does not survive.
    let check = |token: String| {
        let request = crate::ext_authz::check_request(
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-keystone-actor", "forged"),
            ],
            "/ledger",
            &[("keystone_audience", "ledger")],
        );
        let mut client = AuthorizationClient::new(app.channel.clone());
        async move { client.check(request).await.unwrap().into_inner() }
    };
    let headers = |response: envoy_types::pb::envoy::service::auth::v3::CheckResponse| {
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not allowed: {response:?}");
        };
        ok.headers
            .into_iter()
            .filter_map(|h| h.header)
            .map(|h| (h.key, h.value))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let upstream = headers(check(second.access_token.clone()).await);
    assert_eq!(upstream["x-keystone-actor"], "payments orders");
    assert_eq!(upstream["x-keystone-subject"], alice_id);
    let request = crate::ext_authz::check_request(
        &[
            ("authorization", &format!("Bearer {}", alice.access_token)),
            ("x-keystone-actor", "forged"),
        ],
        "/orders",
        &[("keystone_audience", "orders")],
    );
    let upstream = headers(
        AuthorizationClient::new(app.channel.clone())
            .check(request)
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        upstream["x-keystone-actor"], "",
        "no actor: the forged value is gone"
    );

    // Every exchange is an audit event naming the whole chain.
    let events = app.audit_events(&admin, "token.exchange").await;
    assert_eq!(events.len(), 4, "{events:?}");
    let newest = &events[0];
    assert_eq!(newest.outcome, "success");
    let hop2_event = events
        .iter()
        .find(|event| {
            event.actor == "payments"
                && event
                    .details
                    .get("act")
                    .is_some_and(|a| a == "payments < orders")
        })
        .expect("the second hop's event");
    assert_eq!(hop2_event.target, alice_id);
    assert_eq!(hop2_event.details["audience"], "ledger");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_actor_token_names_who_acts() {
    let Scene {
        app,
        admin,
        alice,
        orders,
        ..
    } = scene().await;
    // A workload's own token, meant for `orders`, which then acts with it.
    let robot = create_client(
        &app,
        &admin,
        pb::Client {
            client_id: "robot".into(),
            allowed_audiences: vec!["orders".into(), "payments".into()],
            // Its tokens live a minute: so does what is exchanged with one as the actor.
            access_token_ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let robot_token = app
        .client_token("robot", &robot, &[], "orders")
        .await
        .unwrap()
        .access_token;
    let mut with_actor = grant("orders", &orders, &alice.access_token);
    with_actor.actor_token = robot_token;
    with_actor.actor_token_type = ACCESS_TOKEN.into();
    let token = exchange_with(&app, with_actor, "payments", &[])
        .await
        .unwrap();
    let hop = principal(&app, &token.access_token, "payments")
        .await
        .unwrap();
    assert_eq!(actors(&hop), [("robot", "orders")]);
    assert_eq!(token.expires_in, 60, "no longer than the actor token");

    // An actor token meant for someone else proves nothing to `orders`.
    let elsewhere = app
        .client_token("robot", &robot, &[], "payments")
        .await
        .unwrap()
        .access_token;
    let mut wrong = grant("orders", &orders, &alice.access_token);
    wrong.actor_token = elsewhere;
    wrong.actor_token_type = ACCESS_TOKEN.into();
    assert_refused(
        exchange_with(&app, wrong, "payments", &[]).await,
        Code::PermissionDenied,
        "AUDIENCE_MISMATCH",
        "an actor token for another audience",
    );
    // The actor revoked: what it acted in ends, though `orders` and alice stand.
    app.client_admin()
        .revoke_client_tokens(with_bearer(
            pb::RevokeClientTokensRequest {
                client_id: "robot".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_refused(
        principal(&app, &token.access_token, "payments").await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
        "a token its revoked actor acted in",
    );
    principal(&app, &alice.access_token, "orders")
        .await
        .unwrap();

    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_broken_rule_is_refused_with_its_reason_and_issues_nothing() {
    let Scene {
        app,
        admin,
        alice,
        orders,
        plain,
        ..
    } = scene().await;
    let subject = alice.access_token.as_str();
    let for_plain = app
        .login_with("alice", ADMIN_PASSWORD, &[], "plain")
        .await
        .unwrap()
        .access_token;
    let forged = {
        let mut chars: Vec<char> = subject.chars().collect();
        let middle = chars.len() - 20;
        chars[middle] = if chars[middle] == 'x' { 'y' } else { 'x' };
        chars.into_iter().collect::<String>()
    };
    let unsigned = {
        let mut parts = subject.split('.');
        let mut header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap())
                .unwrap();
        header["alg"] = "none".into();
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts.next().unwrap()
        )
    };
    let ttl = |seconds| {
        let mut asked = grant("orders", &orders, subject);
        asked.ttl = Some(prost_types::Duration { seconds, nanos: 0 });
        asked
    };
    let typed = |subject_type: &str| {
        let mut asked = grant("orders", &orders, subject);
        asked.subject_token_type = subject_type.to_owned();
        asked
    };
    let mut lone_actor_type = grant("orders", &orders, subject);
    lone_actor_type.actor_token_type = ACCESS_TOKEN.into();
    let cases: Vec<Refusal> = vec![
        (
            "a client without token_exchange",
            grant("plain", &plain, &for_plain),
            "payments",
            vec![],
            Code::PermissionDenied,
            "UNAUTHORIZED_CLIENT",
        ),
        (
            "a wrong secret",
            grant("orders", "kss_wrong", subject),
            "payments",
            vec![],
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        ),
        (
            "a subject token meant for another service",
            grant("orders", &orders, &for_plain),
            "payments",
            vec![],
            Code::PermissionDenied,
            "AUDIENCE_MISMATCH",
        ),
        (
            "a forged subject token",
            grant("orders", &orders, &forged),
            "payments",
            vec![],
            Code::Unauthenticated,
            "TOKEN_INVALID",
        ),
        (
            "alg none",
            grant("orders", &orders, &unsigned),
            "payments",
            vec![],
            Code::Unauthenticated,
            "TOKEN_MALFORMED",
        ),
        (
            "garbage",
            grant("orders", &orders, "not-a-token"),
            "payments",
            vec![],
            Code::Unauthenticated,
            "TOKEN_MALFORMED",
        ),
        (
            "a refresh token as the subject",
            grant("orders", &orders, &alice.refresh_token),
            "payments",
            vec![],
            Code::Unauthenticated,
            "TOKEN_MALFORMED",
        ),
        (
            "a scope the client may not have",
            grant("orders", &orders, subject),
            "payments",
            vec!["orders:write"],
            Code::PermissionDenied,
            "INVALID_SCOPE",
        ),
        (
            "a scope the client may not have, which the subject holds",
            grant("orders", &orders, subject),
            "payments",
            vec!["invoices:read"],
            Code::PermissionDenied,
            "INVALID_SCOPE",
        ),
        (
            "a scope the client may have, which the subject does not hold",
            grant("orders", &orders, subject),
            "payments",
            vec!["ledger:read"],
            Code::PermissionDenied,
            "INVALID_SCOPE",
        ),
        (
            "Keystone's own scope",
            grant("orders", &orders, subject),
            "payments",
            vec!["keystone:admin"],
            Code::PermissionDenied,
            "INVALID_SCOPE",
        ),
        (
            "an audience the client may not have",
            grant("orders", &orders, subject),
            "ledger",
            vec![],
            Code::PermissionDenied,
            "INVALID_AUDIENCE",
        ),
        (
            "Keystone's own audience",
            grant("orders", &orders, subject),
            "keystone",
            vec![],
            Code::PermissionDenied,
            "INVALID_AUDIENCE",
        ),
        (
            "a life past the subject token's",
            ttl(3600),
            "payments",
            vec![],
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "a life past the client's tokens'",
            ttl(600),
            "payments",
            vec![],
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "a refresh token type",
            typed("urn:ietf:params:oauth:token-type:refresh_token"),
            "payments",
            vec![],
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "no token type",
            typed(""),
            "payments",
            vec![],
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "an actor token type without an actor token",
            lone_actor_type,
            "payments",
            vec![],
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ];
    for (case, grant, audience, scopes, code, expected) in cases {
        let result = exchange_with(&app, grant, audience, &scopes).await;
        if code == Code::InvalidArgument {
            let status = result.as_ref().expect_err(case);
            assert!(
                bad_field(status).starts_with("token_exchange."),
                "{case}: {status:?}"
            );
        }
        assert_refused(result, code, expected, case);
    }
    // Nothing was issued; each refusal after the client proved itself is on record.
    let events = app.audit_events(&admin, "token.exchange").await;
    assert!(
        events.iter().all(|event| event.outcome == "denied"),
        "{events:?}"
    );
    // Fourteen refusals came after `orders` proved itself (the wrong secret is a
    // `client.authenticate` event; malformed requests are refused before any credential).
    assert_eq!(events.len(), 14, "{events:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn ending_the_session_or_revoking_a_client_of_the_chain_ends_exchanged_tokens() {
    let Scene {
        app,
        admin,
        alice,
        orders,
        payments,
        ..
    } = scene().await;
    let first = exchange(&app, "orders", &orders, &alice.access_token, "payments")
        .await
        .unwrap()
        .access_token;
    let second = exchange(&app, "payments", &payments, &first, "ledger")
        .await
        .unwrap()
        .access_token;

    // Revoking an acting client's tokens reaches the tokens it acted in, not the subject's own.
    app.client_admin()
        .revoke_client_tokens(with_bearer(
            pb::RevokeClientTokensRequest {
                client_id: "orders".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    for (token, audience) in [(&first, "payments"), (&second, "ledger")] {
        assert_refused(
            principal(&app, token, audience).await,
            Code::Unauthenticated,
            "TOKEN_REVOKED",
            "a token `orders` acted in",
        );
    }
    principal(&app, &alice.access_token, "orders")
        .await
        .expect("alice's own token stands");

    // A revoked subject token cannot be exchanged; ending the session ends what came of it.
    app.clock.advance(chrono::Duration::seconds(1));
    let again = exchange(&app, "orders", &orders, &alice.access_token, "payments")
        .await
        .unwrap()
        .access_token;
    principal(&app, &again, "payments").await.unwrap();
    app.auth()
        .revoke(pb::RevokeRequest {
            token: alice.refresh_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    assert_refused(
        principal(&app, &again, "payments").await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
        "an exchanged token of an ended session",
    );
    assert_refused(
        exchange(&app, "orders", &orders, &alice.access_token, "payments").await,
        Code::Unauthenticated,
        "TOKEN_REVOKED",
        "a revoked subject token",
    );

    // An expired subject token cannot be exchanged.
    let fresh = app
        .login_with("alice", ADMIN_PASSWORD, &[], "orders")
        .await
        .unwrap()
        .access_token;
    app.clock.advance(chrono::Duration::hours(1));
    assert_refused(
        exchange(&app, "orders", &orders, &fresh, "payments").await,
        Code::Unauthenticated,
        "TOKEN_EXPIRED",
        "an expired subject token",
    );

    // Taking `token_exchange` away stops the client at once.
    let fresh = app
        .login_with("alice", ADMIN_PASSWORD, &[], "orders")
        .await
        .unwrap()
        .access_token;
    let admin = app.admin_relogin().await;
    app.client_admin()
        .update_client(with_bearer(
            pb::UpdateClientRequest {
                client: Some(pb::Client {
                    client_id: "orders".into(),
                    token_exchange: false,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["token_exchange".into()],
                }),
            },
            &admin,
        ))
        .await
        .unwrap();
    assert_refused(
        exchange(&app, "orders", &orders, &fresh, "payments").await,
        Code::PermissionDenied,
        "UNAUTHORIZED_CLIENT",
        "token_exchange taken away",
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_chain_longer_than_the_depth_cap_is_refused() {
    let Scene {
        app,
        alice,
        orders,
        payments,
        ..
    } = scene_with(|settings| settings.federation.max_delegation_depth = 1).await;
    let first = exchange(&app, "orders", &orders, &alice.access_token, "payments")
        .await
        .unwrap();
    assert_refused(
        exchange(&app, "payments", &payments, &first.access_token, "ledger").await,
        Code::PermissionDenied,
        "DELEGATION_TOO_DEEP",
        "a second hop with a cap of one",
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn only_an_admin_may_let_a_client_exchange_or_manage_one_that_may() {
    let Scene { app, admin, .. } = scene().await;
    let writer = app
        .token_with_scopes("ops", &["keystone:clients.write"])
        .await;
    assert_refused(
        create_client(
            &app,
            &writer,
            pb::Client {
                client_id: "sneaky".into(),
                token_exchange: true,
                ..Default::default()
            },
        )
        .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "creating a client that may exchange",
    );
    create_client(
        &app,
        &writer,
        pb::Client {
            client_id: "honest".into(),
            ..Default::default()
        },
    )
    .await
    .expect("a client that may not exchange is the writer's to create");
    let set_exchange = |client_id: &str, token: &str| {
        let request = with_bearer(
            pb::UpdateClientRequest {
                client: Some(pb::Client {
                    client_id: client_id.into(),
                    token_exchange: true,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["token_exchange".into()],
                }),
            },
            token,
        );
        let mut client = app.client_admin();
        async move { client.update_client(request).await.map(|r| r.into_inner()) }
    };
    assert_refused(
        set_exchange("honest", &writer).await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "letting a client exchange",
    );
    assert!(set_exchange("honest", &admin).await.unwrap().token_exchange);
    assert_refused(
        app.client_admin()
            .rotate_client_secret(with_bearer(
                pb::RotateClientSecretRequest {
                    client_id: "orders".into(),
                    ..Default::default()
                },
                &writer,
            ))
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
        "taking over a client that may exchange",
    );
    let read = app
        .client_admin()
        .get_client(with_bearer(
            pb::GetClientRequest {
                client_id: "orders".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(read.token_exchange);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_token_endpoint_exchanges_over_http() {
    let Scene {
        app,
        alice,
        orders,
        plain,
        ..
    } = scene().await;
    let form = |subject: &str| {
        format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &subject_token={subject}\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &audience=payments&scope=payments%3Aread"
        )
    };
    let basic = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let response = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("orders", &orders)),
        ],
        &form(&alice.access_token),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "payments:read");
    assert!(body.get("refresh_token").is_none());
    let hop = principal(&app, body["access_token"].as_str().unwrap(), "payments")
        .await
        .unwrap();
    assert_eq!(actors(&hop), [("orders", "orders")]);

    let refused = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("plain", &plain)),
        ],
        &form(&alice.access_token),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"], "unauthorized_client");

    let anonymous = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(&alice.access_token),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"], "invalid_client");

    // The client in the form works as well as HTTP Basic.
    let in_form = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!(
            "{}&client_id=orders&client_secret={orders}",
            form(&alice.access_token)
        ),
    )
    .await;
    assert_eq!(in_form.status, 200, "{}", in_form.body);

    // RFC 8693 section 2.2.2: a bad subject token is `invalid_request`; only access tokens
    // are issued.
    for (case, body) in [
        ("a forged subject token", form("eyJ.forged.token")),
        (
            "a refresh token asked for",
            format!(
                "{}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Arefresh_token",
                form(&alice.access_token)
            ),
        ),
    ] {
        let response = http(
            app.http_addr,
            "POST",
            "/oauth2/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic("orders", &orders)),
            ],
            &body,
        )
        .await;
        assert_eq!(response.status, 400, "{case}: {}", response.body);
        assert_eq!(response.json()["error"], "invalid_request", "{case}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_exchanged_token_never_outlives_its_subject() {
    let Scene {
        app,
        alice,
        alice_id,
        orders,
        ..
    } = scene_with(|settings| settings.tokens.access_ttl = Duration::from_secs(120)).await;
    // alice's token lives 2 minutes, orders' tokens 5: 20 s after 100 s.
    app.clock.advance(chrono::Duration::seconds(100));
    let exchanged = exchange(&app, "orders", &orders, &alice.access_token, "payments")
        .await
        .unwrap();
    assert_eq!(exchanged.expires_in, 20);
    let hop = principal(&app, &exchanged.access_token, "payments")
        .await
        .unwrap();
    let own = principal(&app, &alice.access_token, "orders")
        .await
        .unwrap();
    assert_eq!(hop.subject, alice_id);
    assert_eq!(hop.expires_at, own.expires_at);
    // Asking for a minute, within the client's five but past the subject's twenty seconds.
    let mut longer = grant("orders", &orders, &alice.access_token);
    longer.ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let status = exchange_with(&app, longer, "payments", &[])
        .await
        .expect_err("a life past the subject's");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "token_exchange.ttl");
    assert!(status.message().contains("outlive"), "{status:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn ending_a_session_on_one_replica_ends_its_exchanged_tokens_on_another() {
    let test = "ending_a_session_on_one_replica_ends_its_exchanged_tokens_on_another";
    let Some((postgres, redis)) = crate::cluster::backends(test) else {
        return;
    };
    let database = crate::helpers::TestDatabase::fresh_postgres(&postgres).await;
    // Users' tokens are for `relay` unless they ask otherwise.
    let nodes = crate::cluster::replicas(
        &database,
        &redis,
        2,
        &[("KEYSTONE_TOKENS__DEFAULT_AUDIENCE", "relay")],
    )
    .await;
    let admin = nodes[0].admin_login().await;
    let relay = nodes[0]
        .client_admin()
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "relay".into(),
                    allowed_audiences: vec!["downstream".into()],
                    token_exchange: true,
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    let login = || async {
        nodes[0]
            .auth()
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::Password(pb::PasswordGrant {
                    username: "admin".into(),
                    password: "correct horse battery staple".into(),
                })),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let exchange_on = |node: usize, subject: String| {
        let mut auth = nodes[node].auth();
        let grant = grant("relay", &relay, &subject);
        async move {
            auth.issue_token(IssueTokenRequest {
                grant: Some(Grant::TokenExchange(grant)),
                audience: "downstream".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
        }
    };

    // A session's token, exchanged on A, checked on B; the session ended on A.
    let session = login().await;
    let exchanged = exchange_on(0, session.access_token.clone()).await;
    nodes[1].authenticate(&exchanged).await.unwrap();
    nodes[0].revoke(&session.refresh_token).await;
    let took = nodes[1]
        .until_revoked(&exchanged, Duration::from_secs(5))
        .await;
    eprintln!("the session's end reached the exchanged token on the other replica in {took:?}");

    // The acting client's tokens revoked on B: what it exchanged on A is refused on A.
    let session = login().await;
    let exchanged = exchange_on(0, session.access_token.clone()).await;
    nodes[0].authenticate(&exchanged).await.unwrap();
    nodes[1]
        .client_admin()
        .revoke_client_tokens(with_bearer(
            pb::RevokeClientTokensRequest {
                client_id: "relay".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    nodes[0]
        .until_revoked(&exchanged, Duration::from_secs(5))
        .await;
    nodes[0]
        .authenticate(&session.access_token)
        .await
        .expect("the subject's own token stands");
}
