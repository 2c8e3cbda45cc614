//! Envoy external authorization through the real gRPC API, with the `CheckRequest`s Envoy
//! sends (built with `envoy-types`): valid, expired, revoked, forged, wrong-audience tokens, a
//! missing header, forged `x-keystone-*` headers, too few scopes.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use keystone::proto::pb::RevokeRequest;
use tonic::Code;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

pub(crate) fn check_request(
    headers: &[(&str, &str)],
    path: &str,
    extensions: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: "api.example.com".into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
    }
}

async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(app.channel.clone())
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

fn code(response: &CheckResponse) -> Code {
    Code::from(response.status.as_ref().map(|s| s.code).unwrap_or(-1))
}

/// The HTTP status and headers of a denial.
fn denial(response: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not a denial: {response:?}");
    };
    let headers = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (
        denied.status.as_ref().map(|s| s.code).unwrap_or_default(),
        headers,
        denied.body.clone(),
    )
}

/// The headers an allowed request goes upstream with, and those removed.
fn allowed(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not allowed: {response:?}");
    };
    (
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect(),
        ok.headers_to_remove.clone(),
    )
}

#[tokio::test]
async fn check_gives_authenticates_verdict_with_headers_for_the_upstream() {
    let app = spawn_app().await;
    let secret = app
        .create_client(
            "billing",
            &["keystone:introspect"],
            &["https://api.example.com"],
            None,
            true,
        )
        .await;
    let token = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    let bearer = format!("Bearer {token}");

    // Valid, with forged x-keystone-* headers from the client: replaced or removed.
    let response = check(
        &app,
        check_request(
            &[
                ("authorization", &bearer),
                ("x-keystone-subject", "admin"),
                ("x-keystone-extra", "forged"),
            ],
            "/invoices",
            &[],
        ),
    )
    .await;
    assert_eq!(code(&response), Code::Ok);
    let (headers, removed) = allowed(&response);
    assert_eq!(headers["x-keystone-subject"], "billing");
    assert_eq!(headers["x-keystone-kind"], "service");
    assert_eq!(headers["x-keystone-client-id"], "billing");
    // Keystone's own scopes are never implied in a token for another audience.
    assert_eq!(headers["x-keystone-scopes"], "");
    assert_eq!(
        headers["x-keystone-username"], "",
        "emptied, not left forged"
    );
    assert!(
        removed.contains(&"x-keystone-extra".to_owned()),
        "{removed:?}"
    );
    assert!(!removed.contains(&"authorization".to_owned()));

    // Scopes and audience asked by the route's context extensions.
    let response = check(
        &app,
        check_request(
            &[("authorization", &bearer)],
            "/",
            &[("keystone_required_scopes", "keystone:admin")],
        ),
    )
    .await;
    assert_eq!(code(&response), Code::PermissionDenied);
    let (status, headers, body) = denial(&response);
    assert_eq!(status, 403);
    assert!(headers["www-authenticate"].contains("insufficient_scope"));
    assert!(body.contains("insufficient_scope"));
    let response = check(
        &app,
        check_request(
            &[("authorization", &bearer)],
            "/",
            &[("keystone_audience", "https://other.example.com")],
        ),
    )
    .await;
    assert_eq!(code(&response), Code::PermissionDenied);
    let response = check(
        &app,
        check_request(
            &[("authorization", &bearer)],
            "/",
            &[("keystone_audience", "https://api.example.com")],
        ),
    )
    .await;
    assert_eq!(code(&response), Code::Ok);

    // Missing, forged, revoked, expired: 401 invalid_token.
    let forged = {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let forged_header = format!("Bearer {forged}");
    let missing = check(&app, check_request(&[], "/", &[])).await;
    assert_eq!(code(&missing), Code::Unauthenticated);
    assert_eq!(denial(&missing).0, 401);
    for headers in [
        vec![("authorization", forged_header.as_str())],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
    ] {
        let response = check(&app, check_request(&headers, "/", &[])).await;
        assert_eq!(code(&response), Code::Unauthenticated, "{headers:?}");
        let (status, denied_headers, _) = denial(&response);
        assert_eq!(status, 401);
        assert!(denied_headers.contains_key("www-authenticate"));
    }
    let forged_response = check(
        &app,
        check_request(&[("authorization", forged_header.as_str())], "/", &[]),
    )
    .await;
    assert!(denial(&forged_response).1["www-authenticate"].contains("invalid_token"));

    app.auth()
        .revoke(RevokeRequest {
            token: token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    let revoked = check(&app, check_request(&[("authorization", &bearer)], "/", &[])).await;
    assert_eq!(code(&revoked), Code::Unauthenticated);
    assert!(denial(&revoked).2.contains("revoked"));

    let later = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    app.clock.advance(chrono::Duration::hours(2));
    let expired = check(
        &app,
        check_request(&[("authorization", &format!("Bearer {later}"))], "/", &[]),
    )
    .await;
    assert_eq!(code(&expired), Code::Unauthenticated);
    assert!(denial(&expired).2.contains("expired"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn routes_in_the_settings_say_what_a_path_needs_and_authorization_can_be_removed() {
    let app = spawn_app_with(|settings| {
        settings.ext_authz.remove_authorization = true;
        settings.ext_authz.routes = vec![keystone::config::ExtAuthzRoute {
            host: "api.example.com".into(),
            path_prefix: "/admin".into(),
            audience: String::new(),
            scopes: vec!["keystone:admin".into()],
            case_insensitive: false,
            roles: Vec::new(),
        }];
    })
    .await;
    let secret = app
        .create_client("billing", &["keystone:introspect"], &[], None, true)
        .await;
    let token = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    let bearer = format!("Bearer {token}");
    let open = check(
        &app,
        check_request(&[("authorization", &bearer)], "/invoices", &[]),
    )
    .await;
    assert_eq!(code(&open), Code::Ok);
    assert!(allowed(&open).1.contains(&"authorization".to_owned()));
    let admin = check(
        &app,
        check_request(&[("authorization", &bearer)], "/admin/users?x=1", &[]),
    )
    .await;
    assert_eq!(code(&admin), Code::PermissionDenied);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn ambiguous_paths_are_refused_and_unrouted_paths_need_the_defaults() {
    let app = spawn_app_with(|settings| {
        settings.ext_authz.routes = vec![keystone::config::ExtAuthzRoute {
            path_prefix: "/public".into(),
            ..Default::default()
        }];
        settings.ext_authz.default_audience = "https://api.example.com".into();
    })
    .await;
    let secret = app
        .create_client("billing", &[], &["https://api.example.com"], None, true)
        .await;
    let token = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    let other = app.create_client("other", &[], &[], None, true).await;
    let other = app
        .client_token("other", &other, &[], "")
        .await
        .unwrap()
        .access_token;
    let bearer = format!("Bearer {token}");
    for path in [
        "/static/..;/admin",
        "/admin%2Fusers",
        "/ADMIN%5c",
        "/a/../admin",
        "//admin",
    ] {
        let response = check(
            &app,
            check_request(&[("authorization", &bearer)], path, &[]),
        )
        .await;
        assert_eq!(code(&response), Code::InvalidArgument, "{path}");
        assert_eq!(denial(&response).0, 400, "{path}");
    }
    // No route: the default audience is needed.
    let response = check(
        &app,
        check_request(&[("authorization", &bearer)], "/orders", &[]),
    )
    .await;
    assert_eq!(code(&response), Code::Ok);
    let other_bearer = format!("Bearer {other}");
    let response = check(
        &app,
        check_request(&[("authorization", &other_bearer)], "/orders", &[]),
    )
    .await;
    assert_eq!(code(&response), Code::PermissionDenied);
    // A route that asks nothing: any valid token; a longer name is not under it.
    let response = check(
        &app,
        check_request(&[("authorization", &other_bearer)], "/public/x", &[]),
    )
    .await;
    assert_eq!(code(&response), Code::Ok);
    let response = check(
        &app,
        check_request(&[("authorization", &other_bearer)], "/public-internal", &[]),
    )
    .await;
    assert_eq!(code(&response), Code::PermissionDenied);
    app.stop().await.unwrap();
}
