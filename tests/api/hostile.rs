//! Hostile requests through gRPC and HTTP: bytes that are no message, invalid UTF-8, control
//! and bidi characters, look-alike names, extreme durations and timestamps, forged page tokens,
//! thousands of roles in one call. Each gets a clear status, and nothing is written.

use keystone::proto::pb::{self, ListUsersRequest};
use tonic::{Code, codegen::http::uri::PathAndQuery};

use crate::helpers::{TestApp, bad_field, http, reason, say_skipped, spawn_app, with_bearer};

/// `CreateUserRequest` with its username as raw bytes, to send what no client library would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateUser {
    #[prost(bytes = "vec", tag = "1")]
    username: Vec<u8>,
    #[prost(string, tag = "2")]
    email: String,
}

async fn user_count(app: &TestApp, admin: &str) -> usize {
    app.user_admin()
        .list_users(with_bearer(
            ListUsersRequest {
                page_size: 500,
                ..Default::default()
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .users
        .len()
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(status), "INVALID_ARGUMENT", "{status:?}");
    assert_eq!(bad_field(status), field, "{status:?}");
}

#[tokio::test]
async fn bytes_that_are_no_valid_message_are_invalid_arguments() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let before = user_count(&app, &admin).await;
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::CreateUserResponse, _>(
            with_bearer(
                RawCreateUser {
                    username: vec![b'a', 0xff, 0xfe, b'z'],
                    email: "x@example.com".to_owned(),
                },
                &admin,
            ),
            PathAndQuery::from_static("/keystone.v1.UserAdmin/CreateUser"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_invalid(&status, "request");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    assert_eq!(
        user_count(&app, &admin).await,
        before,
        "nothing was written"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn names_with_control_bidi_or_look_alike_characters_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user("coppa", "correct horse battery staple", &[])
        .await;
    let before = user_count(&app, &admin).await;
    for (username, expected) in [
        ("ali\u{0}ce", Code::InvalidArgument),
        ("ali\u{7}ce", Code::InvalidArgument),
        ("ali\u{202e}ecila", Code::InvalidArgument),
        ("zero\u{200b}width", Code::InvalidArgument),
        (" padded", Code::InvalidArgument),
        (&"a".repeat(10_000), Code::InvalidArgument),
        // Latin mixed with a Cyrillic `а`.
        ("copp\u{0430}", Code::InvalidArgument),
        // All Cyrillic, looking like `coppa`: the look-alike is taken.
        (
            "\u{0441}\u{043e}\u{0440}\u{0440}\u{0430}",
            Code::AlreadyExists,
        ),
        ("COPPA", Code::AlreadyExists),
    ] {
        let status = app
            .user_admin()
            .create_user(with_bearer(
                pb::CreateUserRequest {
                    username: username.to_owned(),
                    email: format!("u{}@example.com", username.len()),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), expected, "{username:?}: {status:?}");
    }
    assert_eq!(
        user_count(&app, &admin).await,
        before,
        "nothing was written"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn thousands_of_roles_forged_page_tokens_and_extreme_times_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let before = user_count(&app, &admin).await;

    let roles: Vec<String> = (0..5000).map(|n| format!("role-{n}")).collect();
    let status = app
        .user_admin()
        .create_user(with_bearer(
            pb::CreateUserRequest {
                username: "many".to_owned(),
                email: "many@example.com".to_owned(),
                roles,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_field(&status), "roles");

    for token in ["AAAA.BBBB", "not a token", "..", &"A".repeat(5000)] {
        let status = app
            .user_admin()
            .list_users(with_bearer(
                ListUsersRequest {
                    page_token: token.to_owned(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "page_token");
    }

    for seconds in [i64::MAX, i64::MIN, 253_402_300_800] {
        let status = app
            .user_admin()
            .list_audit_events(with_bearer(
                pb::ListAuditEventsRequest {
                    since: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "since");
    }
    let status = app
        .user_admin()
        .list_audit_events(with_bearer(
            pb::ListAuditEventsRequest {
                since: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_invalid(&status, "since");

    for ttl in [
        prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: -1,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: 1,
            nanos: 2_000_000_000,
        },
    ] {
        let status = app
            .client_admin()
            .create_client(with_bearer(
                pb::CreateClientRequest {
                    client: Some(pb::Client {
                        client_id: "extreme".to_owned(),
                        name: "extreme".to_owned(),
                        access_token_ttl: Some(ttl),
                        ..Default::default()
                    }),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{ttl:?}: {status:?}");
    }
    let clients = app
        .client_admin()
        .list_clients(with_bearer(pb::ListClientsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .clients;
    assert!(clients.is_empty(), "nothing was written: {clients:?}");
    assert_eq!(
        user_count(&app, &admin).await,
        before,
        "nothing was written"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_forms_get_oauth_errors_not_failures() {
    let app = spawn_app().await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for (body, expected) in [
        // Invalid UTF-8, percent-encoded.
        ("grant_type=password&username=%ff%fe&password=x", 400),
        // A NUL and a bidi override in the name.
        ("grant_type=password&username=a%00b&password=x", 400),
        (
            "grant_type=password&username=%E2%80%AEnimda&password=x",
            400,
        ),
        // The same parameter twice.
        ("grant_type=password&grant_type=client_credentials", 400),
        ("grant_type=no_such_grant", 400),
        ("%%%%=%%%", 400),
    ] {
        let response = http(app.http_addr, "POST", "/oauth2/token", &form, body).await;
        assert!(
            response.status == expected || response.status == 401,
            "{body}: {} {}",
            response.status,
            response.body
        );
        assert!(
            response.json()["error"].is_string(),
            "{body}: {}",
            response.body
        );
    }
    // Over the form limit.
    let big = format!("grant_type=password&username={}", "a".repeat(64 * 1024));
    let response = http(app.http_addr, "POST", "/oauth2/token", &form, &big).await;
    assert!(
        response.status == 400 || response.status == 413,
        "{} {}",
        response.status,
        response.body
    );
    // Garbage credentials.
    for authorization in [
        "Basic !!!!",
        "Basic",
        "Basic Og==",
        "Bearer",
        "Negotiate abc",
    ] {
        let response = http(
            app.http_addr,
            "POST",
            "/oauth2/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", authorization),
            ],
            "grant_type=client_credentials",
        )
        .await;
        assert!(
            response.status == 400 || response.status == 401,
            "{authorization}: {} {}",
            response.status,
            response.body
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn nul_characters_anywhere_are_the_callers_error_never_the_servers() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let nul = "a\u{0}b";
    let login = app.login(nul, "whatever password").await.unwrap_err();
    let client = app.client_token(nul, "kss_x", &[], "").await.unwrap_err();
    let users = app
        .user_admin()
        .list_users(with_bearer(
            ListUsersRequest {
                query: nul.to_owned(),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    let audit = app
        .user_admin()
        .list_audit_events(with_bearer(
            pb::ListAuditEventsRequest {
                actor: nul.to_owned(),
                action: nul.to_owned(),
                target: nul.to_owned(),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    let role = app
        .user_admin()
        .get_role(with_bearer(
            pb::GetRoleRequest {
                name: nul.to_owned(),
            },
            &admin,
        ))
        .await;
    let got_client = app
        .client_admin()
        .get_client(with_bearer(
            pb::GetClientRequest {
                client_id: nul.to_owned(),
            },
            &admin,
        ))
        .await;
    assert_eq!(login.code(), Code::InvalidArgument, "{login:?}");
    assert_eq!(client.code(), Code::InvalidArgument, "{client:?}");
    for (what, outcome) in [
        ("list users", users.map(|_| ())),
        ("list audit events", audit.map(|_| ())),
        ("get role", role.map(|_| ())),
        ("get client", got_client.map(|_| ())),
    ] {
        if let Err(status) = outcome {
            assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument | Code::NotFound | Code::Unauthenticated
                ),
                "{what}: {status:?}"
            );
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn text_the_database_cannot_store_is_an_invalid_argument_even_past_validation() {
    if crate::helpers::postgres_url().is_none() {
        say_skipped(
            "text_the_database_cannot_store_is_an_invalid_argument_even_past_validation",
            "needs PostgreSQL (KEYSTONE_TEST_DATABASE_URL): SQLite stores a NUL",
        );
        return;
    }
    let app = spawn_app().await;
    // Straight to the store, as a path that forgot to validate would: PostgreSQL refuses the
    // NUL, and that is the input's fault, not an internal error.
    let store = app.store().await;
    let error = store
        .find_login("a\u{0}b")
        .await
        .expect_err("PostgreSQL refuses a NUL");
    assert_eq!(
        error.reason(),
        keystone::error::Reason::InvalidArgument,
        "{error:?}"
    );
    store.close().await;
    app.stop().await.unwrap();
}
