//! The HTTP listener: discovery, probes, and the OAuth endpoints giving the same verdicts as
//! gRPC.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use keystone::proto::pb::{AuthenticateRequest, GetJwksRequest};

use crate::helpers::{TestApp, http, metric_sample, reason, spawn_app};

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> crate::helpers::HttpResponse {
    let mut all = vec![FORM];
    all.extend_from_slice(headers);
    http(app.http_addr, "POST", path, &all, body).await
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn authenticate(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.auth()
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn discovery_documents_and_probes_are_served() {
    let app = spawn_app().await;
    let jwks = http(app.http_addr, "GET", "/.well-known/jwks.json", &[], "").await;
    assert_eq!(jwks.status, 200);
    let cache = jwks.header("cache-control").unwrap_or_default().to_owned();
    let max_age: u64 = cache
        .split("max-age=")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{cache}"));
    assert!(
        max_age <= 25 * 60,
        "cached no longer than keys.publish_ahead: {cache}"
    );
    let kids: Vec<String> = jwks.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let grpc_kids: Vec<String> = app
        .auth()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, grpc_kids);

    let metadata = http(
        app.http_addr,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        "",
    )
    .await
    .json();
    let issuer = metadata["issuer"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    assert_eq!(
        metadata["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json")
    );
    assert_eq!(metadata["token_endpoint"], format!("{issuer}/oauth2/token"));
    assert_eq!(
        metadata["introspection_endpoint"],
        format!("{issuer}/oauth2/introspect")
    );
    assert_eq!(
        metadata["revocation_endpoint"],
        format!("{issuer}/oauth2/revoke")
    );
    assert!(
        metadata["grant_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "client_credentials")
    );

    assert_eq!(
        http(app.http_addr, "GET", "/healthz", &[], "").await.status,
        200
    );
    let ready = http(app.http_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["checks"]["database"], true);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_token_endpoint_issues_what_grpc_issues_and_maps_errors_to_oauth_codes() {
    let app = spawn_app().await;
    let secret = app
        .create_client("reporting", &["keystone:introspect"], &[], None, true)
        .await;

    // Client credentials, by HTTP Basic and by form.
    for (headers, body) in [
        (
            vec![("authorization", basic("reporting", &secret))],
            "grant_type=client_credentials&scope=keystone%3Aintrospect".to_owned(),
        ),
        (
            vec![],
            format!(
                "grant_type=client_credentials&client_id=reporting&client_secret={secret}\
                 &scope=keystone%3Aintrospect"
            ),
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = post(&app, "/oauth2/token", &headers, &body).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.header("cache-control"), Some("no-store"));
        let json = response.json();
        assert_eq!(json["token_type"], "Bearer");
        assert_eq!(json["scope"], "keystone:introspect");
        assert!(json.get("refresh_token").is_none());
        authenticate(&app, json["access_token"].as_str().unwrap())
            .await
            .expect("an HTTP token is a gRPC token");
    }
    let wrong = post(
        &app,
        "/oauth2/token",
        &[("authorization", &basic("reporting", "kss_wrong"))],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert!(
        wrong
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );

    // Password and refresh.
    app.create_user("alice", "violet tractor sunrise 7", &[])
        .await;
    let login = post(
        &app,
        "/oauth2/token",
        &[],
        "grant_type=password&username=alice&password=violet+tractor+sunrise+7",
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let refresh = login.json()["refresh_token"].as_str().unwrap().to_owned();
    let refreshed = post(
        &app,
        "/oauth2/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let reused = post(
        &app,
        "/oauth2/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    // Within tokens.refresh_retry_grace the same successor comes back; the test clock stands
    // still, so this is the retry case.
    assert_eq!(reused.status, 200, "{}", reused.body);
    let bad_password = post(
        &app,
        "/oauth2/token",
        &[],
        "grant_type=password&username=alice&password=wrong+wrong+wrong+wrong",
    )
    .await;
    assert_eq!(bad_password.status, 400);
    assert_eq!(bad_password.json()["error"], "invalid_grant");

    // Malformed requests.
    for (path, headers, body, error) in [
        (
            "/oauth2/token",
            vec![FORM],
            "grant_type=implicit",
            "unsupported_grant_type",
        ),
        ("/oauth2/token", vec![FORM], "scope=x", "invalid_request"),
        (
            "/oauth2/token?client_secret=leak",
            vec![FORM],
            "grant_type=client_credentials",
            "invalid_request",
        ),
        (
            "/oauth2/token",
            vec![("content-type", "application/json")],
            "{}",
            "invalid_request",
        ),
        (
            "/oauth2/token",
            vec![FORM],
            "grant_type=password&grant_type=password",
            "invalid_request",
        ),
    ] {
        let response = http(app.http_addr, "POST", path, &headers, body).await;
        assert_eq!(response.status, 400, "{path} {body}: {}", response.body);
        assert_eq!(response.json()["error"], error, "{path} {body}");
    }
    // One way of client authentication per request; a client that authenticates a user
    // grant must do so correctly.
    let both = post(
        &app,
        "/oauth2/token",
        &[("authorization", &basic("reporting", &secret))],
        &format!("grant_type=client_credentials&client_id=reporting&client_secret={secret}"),
    )
    .await;
    assert_eq!(both.status, 400);
    assert_eq!(both.json()["error"], "invalid_request");
    let bad_client = post(
        &app,
        "/oauth2/token",
        &[("authorization", &basic("reporting", "kss_wrong"))],
        "grant_type=password&username=alice&password=violet+tractor+sunrise+7",
    )
    .await;
    assert_eq!(bad_client.status, 401);
    assert_eq!(bad_client.json()["error"], "invalid_client");
    let scope = post(
        &app,
        "/oauth2/token",
        &[("authorization", &basic("reporting", &secret))],
        "grant_type=client_credentials&scope=keystone%3Aadmin",
    )
    .await;
    assert_eq!(scope.status, 400);
    assert_eq!(scope.json()["error"], "invalid_scope");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn introspection_needs_a_caller_and_revocation_works_over_http() {
    let app = spawn_app().await;
    // The mesh serves Keystone's default audience, the one `plain`'s tokens are for: it may
    // see them active (RFC 7662 section 4).
    let mesh = app
        .create_client("mesh", &["keystone:introspect"], &["keystone"], None, true)
        .await;
    let plain = app.create_client("plain", &[], &[], None, true).await;
    let mesh_token = app
        .client_token("mesh", &mesh, &["keystone:introspect"], "")
        .await
        .unwrap()
        .access_token;
    let plain_token = app
        .client_token("plain", &plain, &[], "")
        .await
        .unwrap()
        .access_token;
    let subject = app
        .client_token("plain", &plain, &[], "")
        .await
        .unwrap()
        .access_token;
    let body = format!("token={subject}");

    let anonymous = post(&app, "/oauth2/introspect", &[], &body).await;
    assert_eq!(anonymous.status, 401);
    let weak = post(
        &app,
        "/oauth2/introspect",
        &[("authorization", &format!("Bearer {plain_token}"))],
        &body,
    )
    .await;
    assert_eq!(weak.status, 403, "{}", weak.body);
    let weak_client = post(
        &app,
        "/oauth2/introspect",
        &[("authorization", &basic("plain", &plain))],
        &body,
    )
    .await;
    assert_eq!(weak_client.status, 403);

    for authorization in [format!("Bearer {mesh_token}"), basic("mesh", &mesh)] {
        let response = post(
            &app,
            "/oauth2/introspect",
            &[("authorization", &authorization)],
            &body,
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let json = response.json();
        assert_eq!(json["active"], true);
        assert_eq!(json["client_id"], "plain");
        assert_eq!(json["sub"], "plain");
    }

    // Revoke over HTTP: no other credential than the token; unknown tokens are fine too.
    let revoked = post(&app, "/oauth2/revoke", &[], &body).await;
    assert_eq!(revoked.status, 200);
    let status = authenticate(&app, &subject).await.unwrap_err();
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    assert_eq!(
        post(&app, "/oauth2/revoke", &[], "token=not-a-token")
            .await
            .status,
        200
    );
    let inactive = post(
        &app,
        "/oauth2/introspect",
        &[("authorization", &format!("Bearer {mesh_token}"))],
        &body,
    )
    .await;
    assert_eq!(inactive.json(), serde_json::json!({ "active": false }));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_calls() {
    let app = spawn_app().await;
    let secret = app
        .create_client("reporting", &["keystone:introspect"], &[], None, true)
        .await;
    let token = app
        .client_token("reporting", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    authenticate(&app, &token).await.unwrap();
    let ok = r#"keystone_grpc_requests_total{method="Auth/Authenticate",code="OK"}"#;
    let refused = r#"keystone_authentication_failures_total{reason="TOKEN_MALFORMED"}"#;
    let before = http(app.http_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain"))
    );
    // Every sample line is `name{labels} value`.
    for line in before
        .body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "{line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
    }
    let calls_before = metric_sample(&before.body, ok).expect("Authenticate was counted");
    authenticate(&app, &token).await.unwrap();
    authenticate(&app, &token).await.unwrap();
    let _ = authenticate(&app, "garbage").await;
    let after = http(app.http_addr, "GET", "/metrics", &[], "").await.body;
    assert!(
        metric_sample(&after, ok).unwrap() >= calls_before + 2.0,
        "{after}"
    );
    assert!(
        metric_sample(&after, refused).is_some_and(|v| v >= 1.0),
        "{after}"
    );
    assert!(
        metric_sample(
            &after,
            r#"keystone_tokens_issued_total{grant="client_credentials"}"#
        )
        .is_some_and(|v| v >= 1.0)
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn admin_apis_and_metrics_can_have_listeners_of_their_own() {
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.admin_grpc_addr = Some(([127, 0, 0, 1], 0).into());
        settings.admin_http_addr = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let admin = app.admin_token().await;
    let list = keystone::proto::pb::ListUsersRequest::default();

    // Not on the public port…
    let status = app
        .user_admin()
        .list_users(crate::helpers::with_bearer(list.clone(), &admin))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(
        http(app.http_addr, "GET", "/metrics", &[], "").await.status,
        404
    );
    // …but on their own.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.admin_grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let users = keystone::proto::pb::user_admin_client::UserAdminClient::new(channel)
        .list_users(crate::helpers::with_bearer(list, &admin))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    let metrics = http(app.admin_http_addr.unwrap(), "GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        http(
            app.admin_http_addr.unwrap(),
            "GET",
            "/.well-known/jwks.json",
            &[],
            ""
        )
        .await
        .status,
        404
    );
    // The public side still serves what callers need.
    assert_eq!(
        http(app.http_addr, "GET", "/.well-known/jwks.json", &[], "")
            .await
            .status,
        200
    );
    app.stop().await.unwrap();
}
