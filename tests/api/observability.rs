//! What operators watch: the HTTP listener's RED metrics, and the Grafana dashboard the Helm
//! chart ships (`helm/keystone/dashboards/keystone.json`): every query in it parses as
//! PromQL, and every metric it reads is one a running Keystone exports.

use std::{collections::BTreeSet, time::Duration};

use keystone::{config::Quota, proto::pb};
use promql_parser::parser::{self, Expr};

use crate::helpers::{TEST_REDIS_URL, TestApp, http, say_skipped, spawn_app_with, with_bearer};

/// The value of one series (`name{labels}` exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The names of the series in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(app: &TestApp) -> String {
    let metrics = http(app.http_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    metrics.body
}

#[tokio::test]
async fn http_requests_are_counted_by_route_method_and_status() {
    let app = spawn_app_with(|_| {}).await;
    let token = r#"keystone_http_requests_total{route="/oauth2/token",method="POST",status="401"}"#;
    let healthz = r#"keystone_http_request_duration_seconds_count{route="/healthz"}"#;
    let before = scrape(&app).await;
    // Counted once answered: the first scrape cannot see itself.
    let token_before = sample(&before, token).unwrap_or(0.0);
    let healthz_before = sample(&before, healthz).unwrap_or(0.0);
    let bad_client = http(
        app.http_addr,
        "POST",
        "/oauth2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", "Basic bm9ib2R5Om5vdGhpbmc="),
        ],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(bad_client.status, 401);
    for _ in 0..2 {
        assert_eq!(
            http(app.http_addr, "GET", "/healthz", &[], "").await.status,
            200
        );
    }
    // A path nobody routes is one series, whatever the path: callers cannot grow them.
    for path in ["/no/such/path", "/another-one", "/.env"] {
        assert_eq!(http(app.http_addr, "GET", path, &[], "").await.status, 404);
    }
    let after = scrape(&app).await;
    assert_eq!(sample(&after, token), Some(token_before + 1.0), "{after}");
    assert!(
        sample(&after, healthz).is_some_and(|count| count >= healthz_before + 2.0),
        "{after}"
    );
    assert!(
        sample(
            &after,
            r#"keystone_http_requests_total{route="unknown",method="GET",status="404"}"#
        )
        .is_some_and(|count| count >= 3.0),
        "{after}"
    );
    for path in ["/no/such/path", "/another-one", "/.env"] {
        assert!(!after.contains(path), "{path} became a label: {after}");
    }
    app.stop().await.unwrap();
}

/// Every metric name `expr` reads.
fn metric_names(expr: &Expr, names: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            metric_names(&aggregate.expr, names);
            if let Some(param) = &aggregate.param {
                metric_names(param, names);
            }
        }
        Expr::Unary(unary) => metric_names(&unary.expr, names),
        Expr::Binary(binary) => {
            metric_names(&binary.lhs, names);
            metric_names(&binary.rhs, names);
        }
        Expr::Paren(paren) => metric_names(&paren.expr, names),
        Expr::Subquery(subquery) => metric_names(&subquery.expr, names),
        Expr::VectorSelector(selector) => {
            names.extend(selector.name.clone());
        }
        Expr::MatrixSelector(matrix) => {
            names.extend(matrix.vs.name.clone());
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                metric_names(arg, names);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The dashboard's queries (panels and template variables), as Prometheus would get them
/// from Grafana: its interval variable filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/keystone/dashboards/keystone.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: its id is unique"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title} fits the grid"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title} reads the chosen data source"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has a query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(r#"namespace=~"$namespace""#) && expr.contains(r#"job=~"$job""#),
                "{title} follows the namespace and job chosen: {expr}"
            );
            queries.push((title.clone(), expr.replace("$__rate_interval", "5m")));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(<selector>, <label>)
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map(|(selector, _)| selector.to_owned())
                .unwrap_or_else(|| panic!("a label_values query: {query}"));
            queries.push((format!("variable {}", variable["name"]), selector));
        }
    }
    queries
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_reads_is_exported() {
    let mut wanted = BTreeSet::new();
    for (title, query) in dashboard_queries() {
        let expr = parser::parse(&query)
            .unwrap_or_else(|error| panic!("{title}: {query} is not PromQL: {error}"));
        let mut names = BTreeSet::new();
        metric_names(&expr, &mut names);
        assert!(!names.is_empty(), "{title} reads a metric: {query}");
        wanted.extend(names);
    }
    assert!(wanted.len() >= 15, "{wanted:?}");

    let redis = std::env::var(TEST_REDIS_URL)
        .ok()
        .filter(|url| !url.is_empty());
    let app = spawn_app_with(|settings| {
        // The gauges the upkeep and health loops set, soon.
        settings.database.health_check_interval = Duration::from_millis(100);
        settings.keys.reload_interval = Duration::from_millis(100);
        settings.limits.per_username = Quota {
            rate: 1,
            per: Duration::from_secs(3600),
            burst: 2,
        };
        if let Some(redis) = &redis {
            settings.redis_url = Some(redis.clone().into());
            settings.cluster.enabled = true;
            settings.cluster.name = format!("dashboard-{}", uuid::Uuid::new_v4().simple());
        }
    })
    .await;
    // What a day brings: logins (password hashing, tokens), a refused token, a caller over
    // its limit, audit events, HTTP requests.
    let admin = app.admin_token().await;
    let _ = pb::auth_client::AuthClient::new(app.channel.clone())
        .authenticate(pb::AuthenticateRequest {
            token: "not-a-token".to_owned(),
            ..Default::default()
        })
        .await;
    app.create_user("dashboard-user", "a long passphrase for the dashboard", &[])
        .await;
    let mut limited = false;
    for _ in 0..4 {
        if let Err(status) = app
            .login("dashboard-user", "a long passphrase for the dashboard")
            .await
            && status.code() == tonic::Code::ResourceExhausted
        {
            limited = true;
        }
    }
    assert!(limited, "the username limit refused a login");
    let _ = app
        .user_admin()
        .list_users(with_bearer(pb::ListUsersRequest::default(), &admin))
        .await
        .unwrap();
    assert_eq!(
        http(app.http_addr, "GET", "/.well-known/jwks.json", &[], "")
            .await
            .status,
        200
    );

    let mut missing = BTreeSet::new();
    for _ in 0..100 {
        let exported = exported_names(&scrape(&app).await);
        missing = wanted
            .iter()
            .filter(|name| !exported.contains(*name))
            .cloned()
            .collect();
        // Without Redis, a single Keystone has no `keystone_redis_up` at all (a 0 would say
        // that Redis is down).
        if redis.is_none() {
            missing.remove("keystone_redis_up");
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics Keystone does not export: {missing:?}"
    );
    if redis.is_none() {
        say_skipped(
            "every_metric_the_grafana_dashboard_reads_is_exported (keystone_redis_up only)",
            "KEYSTONE_TEST_REDIS_URL is not set",
        );
    }
    app.stop().await.unwrap();
}
