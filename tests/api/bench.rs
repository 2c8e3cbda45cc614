//! `keystone-bench` against a real server: it seeds through the admin API, runs every
//! scenario, and reports each with its ratio to Health/Check and no error (logins turned away
//! as overload during the flood excepted).

use std::process::Command;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn keystone_bench_runs_every_scenario_without_errors() {
    // Where the bench serves the key set of the issuer it plays (client-credentials-federated).
    let jwks_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(move |settings| {
        settings
            .federation
            .issuers
            .push(keystone::config::TrustedIssuerSettings {
                name: "keystone-bench".into(),
                issuer: "https://kubernetes.keystone-bench.invalid".into(),
                jwks_uri: format!("http://{jwks_addr}/jwks"),
                jwks_file: String::new(),
                ca_file: String::new(),
                bearer_token_file: String::new(),
                audience: String::new(),
                max_assertion_age: std::time::Duration::from_secs(3600),
            });
        settings.bootstrap_admin_username = Some("admin".into());
        settings.bootstrap_admin_password = Some("correct horse battery staple".to_owned().into());
        // A benchmark measures capacity: every call comes from one address and a few names.
        settings.limits = keystone::config::LimitSettings::off();
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
                "200",
                // Enough names that the flood never has more logins of one name in flight
                // than the lockout threshold (those are refused as a lock would be).
                "--users",
                "32",
                "--server-pid",
                &std::process::id().to_string(),
                "--jwks-addr",
                &jwks_addr.to_string(),
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
            "check",
            "introspect",
            "client-credentials",
            "client-credentials-pkjwt",
            "client-credentials-federated",
            "token-exchange",
            "password",
            "refresh",
            "password-flood",
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
    let find = |name: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["scenario"] == name)
            .unwrap()
            .clone()
    };
    let password = find("password");
    assert!(
        password["argon2_limit"].as_f64().unwrap() > 0.0,
        "{password}"
    );
    assert!(password["ratio_to_argon2_limit"].as_f64().is_some());
    // The flood: logins either pass or are turned away as overload, nothing else.
    let flood = find("password-flood")["flood"].clone();
    assert!(flood["idle_p99_us"].as_u64().unwrap() > 0, "{flood}");
    assert!(flood["logins_ok"].as_u64().unwrap() > 0, "{flood}");
    for (code, _) in flood["logins_refused"].as_object().unwrap() {
        assert_eq!(code, "ResourceExhausted", "{flood}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn keystone_bench_runs_the_tls_scenarios_without_errors() {
    use crate::tls::{Ca, Files, presenting, trusting};

    let (ca, workloads) = (Ca::new("keystone test CA"), Ca::new("workloads CA"));
    let files = Files::new(&ca.server(), Some(&workloads));
    let leaf = workloads.client("keystone-bench");
    std::fs::write(files.path("ca.pem"), &ca.pem).unwrap();
    std::fs::write(files.path("bench.crt"), &leaf.cert).unwrap();
    std::fs::write(files.path("bench.key"), &leaf.key).unwrap();
    let app = crate::helpers::spawn_app_tls(
        |settings| {
            files.configure(settings, Some(keystone::config::ClientAuth::Optional));
            settings.bootstrap_admin_username = Some("admin".into());
            settings.bootstrap_admin_password =
                Some("correct horse battery staple".to_owned().into());
            settings.limits = keystone::config::LimitSettings::off();
        },
        presenting(trusting(&ca), &leaf),
    )
    .await;
    // The bench dates its DPoP proofs by the machine's clock.
    app.clock.set(chrono::Utc::now());
    let (addr, http_addr) = (
        format!("https://localhost:{}", app.addr.port()),
        format!("https://localhost:{}", app.http_addr.port()),
    );
    let (ca_file, cert_file, key_file) = (
        files.path("ca.pem"),
        files.path("bench.crt"),
        files.path("bench.key"),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keystone-bench"))
            .args(["--addr", &addr, "--http-addr", &http_addr])
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--cert-file")
            .arg(&cert_file)
            .arg("--key-file")
            .arg(&key_file)
            .args([
                "--scenarios",
                "tls-handshake,tls-resumed,client-credentials-mtls,authenticate-dpop",
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
                "200",
                "--users",
                "1",
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
            "tls-handshake",
            "tls-resumed",
            "client-credentials-mtls",
            "authenticate-dpop",
        ]
    );
    for outcome in report.as_array().unwrap() {
        assert!(outcome["calls"].as_u64().unwrap() > 0, "{outcome}");
        assert_eq!(outcome["errors"], serde_json::json!({}), "{outcome}");
    }
    app.stop().await.unwrap();
}
