//! `keystone-bench` against a real server: it seeds through the admin API, runs every
//! scenario, and reports each with its ratio to Health/Check and no error.

use std::process::Command;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn keystone_bench_runs_every_scenario_without_errors() {
    let app = spawn_app_with(|settings| {
        settings.bootstrap_admin_username = Some("admin".into());
        settings.bootstrap_admin_password = Some("correct horse battery staple".to_owned().into());
    })
    .await;
    let addr = format!("http://{}", app.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keystone-bench"))
            .args([
                "--addr",
                &addr,
                "--password",
                "correct horse battery staple",
                "--duration",
                "0.3",
                "--warmup",
                "0.1",
                "--connections",
                "1",
                "--concurrency",
                "2",
                "--fresh-tokens",
                "20",
                "--server-pid",
                &std::process::id().to_string(),
                "--json",
            ])
            .output()
            .expect("keystone-bench runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let scenarios: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        scenarios,
        [
            "health",
            "authenticate",
            "authenticate-fresh",
            "introspect",
            "client-credentials"
        ]
    );
    for outcome in report.as_array().unwrap() {
        assert!(outcome["calls"].as_u64().unwrap() > 0, "{outcome}");
        assert_eq!(outcome["errors"], serde_json::json!({}), "{outcome}");
        assert!(outcome["ratio_to_health"].as_f64().is_some(), "{outcome}");
        assert!(
            outcome["server_peak_rss_mib"].as_f64().is_some(),
            "{outcome}"
        );
    }
    app.stop().await.unwrap();
}
