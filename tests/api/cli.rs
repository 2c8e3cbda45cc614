//! The `keystone` binary itself: settings errors, migrations on both databases, and a real
//! `keystone serve` that says where it listens and stops cleanly on SIGTERM.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::Duration,
};

use sea_orm::{ConnectionTrait as _, Database};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TestDatabase, postgres_url, say_skipped};

/// The built binary, with a clean environment: only what the test sets.
pub fn keystone() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keystone"));
    // In a directory of its own, so that a default SQLite file would land nowhere that matters.
    command
        .env_clear()
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    command
}

/// Runs a command that must end by itself, killing it after 60 seconds.
pub fn run(command: &mut Command) -> (i32, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the keystone binary runs");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("keystone did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

/// [`run`] for async tests: off the test's thread, so that a Keystone running in the test's
/// own runtime goes on serving (and releasing its locks) while the command runs. Blocking that
/// thread froze the server, holding whatever it held: `keys revoke` then waited 30 s for the
/// key lock and failed.
pub fn run_beside(command: &mut Command) -> impl Future<Output = (i32, String, String)> + use<> {
    // Taken now: the future owns it.
    let mut command = std::mem::replace(command, Command::new("true"));
    async move {
        tokio::task::spawn_blocking(move || run(&mut command))
            .await
            .expect("the command's thread")
    }
}

#[test]
fn a_bad_setting_stops_the_process_naming_the_setting_and_the_value() {
    let (code, _, stderr) = run(keystone()
        .args(["migrate", "status"])
        .env("KEYSTONE_AUTH__PASSWORD_MIN_LENGTH", "4"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("auth.password_min_length"), "{stderr}");
    assert!(stderr.contains("`4`"), "{stderr}");
}

#[test]
fn a_malformed_duration_in_the_config_file_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keystone.toml");
    std::fs::write(&file, "[tokens]\naccess_ttl = \"forever\"\n").unwrap();
    let (code, _, stderr) = run(keystone()
        .arg("--config")
        .arg(&file)
        .args(["migrate", "status"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("tokens.access_ttl"), "{stderr}");
    assert!(stderr.contains("forever"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let (code, _, stderr) = run(keystone().env("KEYSTONE_CONFIG", "/nonexistent/keystone.toml"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/keystone.toml"), "{stderr}");
}

#[test]
fn a_bad_database_url_is_reported_without_its_password() {
    let (code, _, stderr) = run(keystone()
        .args(["migrate", "status"])
        .env("KEYSTONE_DATABASE_URL", "mysql://root:hunter2@db/keystone"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("database_url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[test]
fn a_variable_naming_no_setting_stops_the_start_and_kubernetes_names_do_not() {
    let (code, _, stderr) = run(keystone()
        .args(["migrate", "status"])
        .env("KEYSTONE_TSL__CERT_FILE", "/etc/keystone/tls.crt"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("KEYSTONE_TSL__CERT_FILE"), "{stderr}");
    // What Kubernetes injects for a Service named `keystone` is no setting of Keystone's.
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(keystone()
        .args(["migrate", "status"])
        .env(
            "KEYSTONE_DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display()),
        )
        .env("KEYSTONE_SERVICE_HOST", "10.0.0.7")
        .env("KEYSTONE_SERVICE_PORT", "50051")
        .env("KEYSTONE_PORT", "tcp://10.0.0.7:50051")
        .env("KEYSTONE_PORT_50051_TCP", "tcp://10.0.0.7:50051")
        .env("KEYSTONE_PORT_50051_TCP_ADDR", "10.0.0.7"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("pending"), "{stdout}");
}

#[test]
fn a_clustered_node_without_redis_refuses_to_start() {
    let (code, _, stderr) = run(keystone().env("KEYSTONE_CLUSTER__ENABLED", "true"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cluster.enabled"), "{stderr}");
}

#[test]
fn help_lists_the_commands() {
    let (code, stdout, _) = run(keystone().arg("--help"));
    assert_eq!(code, 0);
    for command in ["serve", "migrate"] {
        assert!(
            stdout.contains(command),
            "{command} missing from --help:\n{stdout}"
        );
    }
}

/// How many migrations Keystone has.
const MIGRATIONS: usize = 13;

/// `migrate up`, `down` and `status` against one database, checked in the database itself.
async fn migrations_go_up_and_down(database: &TestDatabase) {
    let migrate = |args: &[&str]| {
        let (code, stdout, stderr) = run(keystone()
            .arg("migrate")
            .args(args)
            .env("KEYSTONE_DATABASE_URL", database.url()));
        assert_eq!(code, 0, "migrate {args:?}: {stderr}");
        stdout
    };
    let status = migrate(&["status"]);
    assert!(
        !status.contains("applied"),
        "a fresh database has nothing applied:\n{status}"
    );
    assert_eq!(
        status.lines().filter(|l| l.starts_with("pending")).count(),
        MIGRATIONS,
        "{status}"
    );

    migrate(&["up"]);
    let status = migrate(&["status"]);
    assert_eq!(
        status.lines().filter(|l| l.starts_with("applied")).count(),
        MIGRATIONS,
        "{status}"
    );

    let db = Database::connect(database.url()).await.unwrap();
    let seeded = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM roles r JOIN role_scopes rs ON rs.role_id = r.id \
             JOIN scopes s ON s.id = rs.scope_id WHERE r.name = 'admin' AND s.name = 'keystone:admin'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seeded.try_get::<i64>("", "n").unwrap(),
        1,
        "the admin role holds keystone:admin"
    );

    migrate(&["down", "-n", &MIGRATIONS.to_string()]);
    let status = migrate(&["status"]);
    assert_eq!(
        status.lines().filter(|l| l.starts_with("pending")).count(),
        MIGRATIONS,
        "{status}"
    );
    let gone = db.execute_unprepared("SELECT 1 FROM users").await;
    assert!(gone.is_err(), "rolling back drops the tables");

    migrate(&["up"]);
    let status = migrate(&["status"]);
    assert_eq!(
        status.lines().filter(|l| l.starts_with("applied")).count(),
        MIGRATIONS,
        "{status}"
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn migrations_go_up_and_down_on_sqlite() {
    migrations_go_up_and_down(&TestDatabase::fresh_sqlite()).await;
}

#[tokio::test]
async fn migrations_go_up_and_down_on_postgres() {
    let Some(server_url) = postgres_url() else {
        say_skipped(
            "migrations_go_up_and_down_on_postgres",
            "KEYSTONE_TEST_DATABASE_URL is not set",
        );
        return;
    };
    migrations_go_up_and_down(&TestDatabase::fresh_postgres(&server_url).await).await;
}

#[tokio::test]
async fn keystone_serve_says_where_it_listens_and_stops_on_sigterm() {
    let database = TestDatabase::fresh().await;
    let mut child = keystone()
        .arg("serve")
        .env("KEYSTONE_DATABASE_URL", database.url())
        .env("KEYSTONE_GRPC_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_HTTP_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_SECRETS__PEPPER", crate::helpers::TEST_PEPPER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines_rx.recv().await {
            log.push(line.clone());
            if let Some(rest) = line.split("serving gRPC on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("keystone exited before serving: {log:?}");
    })
    .await
    .expect("keystone says where it listens");

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    drop(health);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exit.success(),
        "keystone exits cleanly on SIGTERM: {exit:?}"
    );
    // The reader thread ends at end of output, which closes the channel.
    let mut rest = Vec::new();
    while let Some(line) = lines_rx.recv().await {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|line| line.contains("Keystone stopped")),
        "keystone logs its stop: {rest:?}"
    );
}
