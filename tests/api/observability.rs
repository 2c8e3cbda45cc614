//! What operators watch: the HTTP listener's RED metrics, and the Grafana dashboard the Helm
//! chart ships (`helm/keystone/dashboards/keystone.json`): every query in it parses as
//! PromQL, and every metric it reads is one a running Keystone exports.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use keystone::{config::Quota, proto::pb};
use promql_parser::parser::{self, Expr};

use crate::helpers::{
    TEST_REDIS_URL, TestApp, http, metric_sample, say_skipped, spawn_app_with, with_bearer,
};

/// The metrics of a Prometheus text exposition, each with the label names its series have.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        let Some((series, _value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, mut rest) = series.split_once('{').unwrap_or((series, ""));
        let labels = metrics.entry(name.to_owned()).or_default();
        // `a="x",b="y"}`: a value ends at the first quote that no backslash escapes.
        while let Some((label, value)) = rest.split_once("=\"") {
            labels.insert(label.trim_start_matches(',').to_owned());
            let mut escaped = false;
            let end = value
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(at, _)| at);
            rest = value.get(end + 1..).unwrap_or("");
        }
    }
    metrics
}

/// Labels every series has once Prometheus (or its operator) scraped it.
const TARGET_LABELS: &[&str] = &["namespace", "job", "pod", "instance", "service"];

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
    let token_before = metric_sample(&before, token).unwrap_or(0.0);
    let healthz_before = metric_sample(&before, healthz).unwrap_or(0.0);
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
    // Other tests of this process post to /oauth2/token too: at least this one more.
    assert!(
        metric_sample(&after, token).is_some_and(|count| count >= token_before + 1.0),
        "{after}"
    );
    assert!(
        metric_sample(&after, healthz).is_some_and(|count| count >= healthz_before + 2.0),
        "{after}"
    );
    assert!(
        metric_sample(
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

/// What a query reads: metric names, and the label names it matches or groups by.
#[derive(Default)]
struct Reads {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn reads(expr: &Expr, found: &mut Reads) {
    let mut selector = |selector: &promql_parser::parser::VectorSelector| {
        found.metrics.extend(selector.name.clone());
        for matcher in selector
            .matchers
            .matchers
            .iter()
            .chain(selector.matchers.or_matchers.iter().flatten())
        {
            if matcher.name != "__name__" {
                found.labels.insert(matcher.name.clone());
            }
        }
    };
    match expr {
        Expr::VectorSelector(vector) => selector(vector),
        Expr::MatrixSelector(matrix) => selector(&matrix.vs),
        Expr::Aggregate(aggregate) => {
            if let Some(modifier) = &aggregate.modifier {
                found
                    .labels
                    .extend(modifier.labels().labels.iter().cloned());
            }
            reads(&aggregate.expr, found);
            if let Some(param) = &aggregate.param {
                reads(param, found);
            }
        }
        Expr::Unary(unary) => reads(&unary.expr, found),
        Expr::Binary(binary) => {
            reads(&binary.lhs, found);
            reads(&binary.rhs, found);
        }
        Expr::Paren(paren) => reads(&paren.expr, found),
        Expr::Subquery(subquery) => reads(&subquery.expr, found),
        Expr::Call(call) => {
            for arg in &call.args.args {
                reads(arg, found);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// One query of the dashboard: where it is, its PromQL, and the labels its legend names.
struct Query {
    place: String,
    promql: String,
    legend: BTreeSet<String>,
}

/// The dashboard's queries (panels, in rows or not, and template variables), as Prometheus
/// would get them from Grafana: its interval variable filled in.
fn dashboard_queries() -> Vec<Query> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/keystone/dashboards/keystone.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
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
            // A collapsed row holds its panels.
            panels.extend(panel["panels"].as_array().into_iter().flatten());
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
            // `{{label}}` in the legend.
            let legend = target["legendFormat"]
                .as_str()
                .unwrap_or_default()
                .split("{{")
                .skip(1)
                .filter_map(|part| part.split_once("}}"))
                .map(|(label, _)| label.trim().to_owned())
                .collect();
            queries.push(Query {
                place: title.clone(),
                promql: expr.replace("$__rate_interval", "5m"),
                legend,
            });
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(<selector>, <label>)
            let (selector, label) = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|rest| rest.rsplit_once(','))
                .unwrap_or_else(|| panic!("a label_values query: {query}"));
            queries.push(Query {
                place: format!("variable {}", variable["name"]),
                promql: selector.to_owned(),
                legend: BTreeSet::from([label.trim().to_owned()]),
            });
        }
    }
    queries
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_reads_is_exported() {
    let mut checked = Vec::new();
    for query in dashboard_queries() {
        let expr = parser::parse(&query.promql).unwrap_or_else(|error| {
            panic!("{}: {} is not PromQL: {error}", query.place, query.promql)
        });
        let mut found = Reads::default();
        reads(&expr, &mut found);
        assert!(
            !found.metrics.is_empty(),
            "{} reads a metric: {}",
            query.place,
            query.promql
        );
        found.labels.extend(query.legend.iter().cloned());
        checked.push((query, found));
    }
    let wanted: BTreeSet<&String> = checked
        .iter()
        .flat_map(|(_, found)| &found.metrics)
        .collect();
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

    // Without Redis, a single Keystone has no `keystone_redis_up` at all (a 0 would say that
    // Redis is down).
    let absent_here = |name: &str| redis.is_none() && name == "keystone_redis_up";
    let mut problems = Vec::new();
    for _ in 0..100 {
        let exported = exported(&scrape(&app).await);
        problems.clear();
        for (query, found) in &checked {
            let mut labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
            for metric in &found.metrics {
                match exported.get(metric) {
                    Some(has) => labels.extend(has.iter().map(String::as_str)),
                    None if absent_here(metric) => {
                        labels.insert("pod");
                    }
                    None => problems.push(format!("{}: {metric} is not exported", query.place)),
                }
            }
            if found.metrics.iter().all(|metric| absent_here(metric)) {
                continue;
            }
            for label in &found.labels {
                if !labels.contains(label.as_str()) {
                    problems.push(format!(
                        "{}: no series of {:?} has the label {label}",
                        query.place, found.metrics
                    ));
                }
            }
        }
        if problems.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        problems.is_empty(),
        "the dashboard reads what Keystone does not export: {problems:#?}"
    );
    if redis.is_none() {
        say_skipped(
            "every_metric_the_grafana_dashboard_reads_is_exported (keystone_redis_up only)",
            "KEYSTONE_TEST_REDIS_URL is not set",
        );
    }
    app.stop().await.unwrap();
}
