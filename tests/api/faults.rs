//! Faults with real processes: a PostgreSQL server of the test's own stopped and started
//! again under a running Keystone, and a Redis server of its own stopped, slowed and flushed
//! under two replicas. (The cluster tests make outages with TCP proxies; these stop the
//! servers themselves.)

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keystone::proto::pb;
use tonic::Code;

use crate::helpers::{TestDatabase, reason, say_skipped, spawn_app_on};

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Runs a command, as the `postgres` user when this process is root (PostgreSQL refuses
/// to run as root).
fn as_postgres(program: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    let mut command = if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command.args(args).stdin(Stdio::null()).output()
}

/// A PostgreSQL server of the test's own, in a temporary directory.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Starts one, or says why it cannot.
    fn start() -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // The postgres user must own its directory.
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let server = Self {
            bin,
            dir,
            port: free_port(),
        };
        server.resume()?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap_or_default(), "-w", "-t", "30"];
        all.extend_from_slice(args);
        let out = as_postgres(&self.bin.join("pg_ctl"), &all).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts (again) on the same port.
    fn resume(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.pg_ctl(&[
            "-o",
            &options,
            "-l",
            log.to_str().unwrap_or_default(),
            "start",
        ])
    }

    /// Stops at once, as a crash would (`immediate`: no checkpoint, connections dropped).
    fn crash(&self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.crash();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_rides_out_a_database_restart() {
    let test = "keystone_rides_out_a_database_restart";
    let postgres = match PrivatePostgres::start() {
        Ok(postgres) => postgres,
        Err(why) => {
            say_skipped(
                test,
                &format!("cannot run a PostgreSQL server of its own: {why}"),
            );
            return;
        }
    };
    let database = TestDatabase::fresh_postgres(&postgres.url()).await;
    let app = spawn_app_on(database, |settings| {
        settings.database.acquire_timeout = Duration::from_secs(1);
        settings.database.connect_timeout = Duration::from_secs(1);
        settings.database.health_check_interval = Duration::from_millis(200);
    })
    .await;
    app.create_user("alice", "correct horse battery staple", &[])
        .await;
    let token = app
        .login("alice", "correct horse battery staple")
        .await
        .expect("the login works")
        .access_token;

    postgres.crash();
    // What needs the database answers UNAVAILABLE, in about the acquire timeout.
    let started = Instant::now();
    let status = app
        .login("alice", "correct horse battery staple")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Checking a token needs no database.
    app.auth()
        .authenticate(pb::AuthenticateRequest {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .expect("tokens are checked without the database");
    // Health follows the database.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let serving = |health: &mut tonic_health::pb::health_client::HealthClient<_>| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or_default()
        }
    };
    let until = |want: i32, mut health: tonic_health::pb::health_client::HealthClient<_>| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        while serving(&mut health).await != want {
            assert!(Instant::now() < deadline, "health never became {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until(2, health.clone()).await; // NOT_SERVING

    postgres.resume().expect("PostgreSQL starts again");
    until(1, health.clone()).await; // SERVING
    // The same process logs in again, on new connections.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match app.login("alice", "correct horse battery staple").await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "never recovered: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let _ = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    app.stop().await.unwrap();
}

/// A Redis server of the test's own.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not listen".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .status();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_redis_slowed_flushed_stopped_and_back() {
    let test = "replicas_ride_out_redis_slowed_flushed_stopped_and_back";
    let Some(postgres) = crate::helpers::postgres_url() else {
        say_skipped(test, "needs PostgreSQL (KEYSTONE_TEST_DATABASE_URL)");
        return;
    };
    let port = free_port();
    let mut redis = match PrivateRedis::start(port) {
        Ok(redis) => redis,
        Err(why) => {
            say_skipped(
                test,
                &format!("cannot run a Redis server of its own: {why}"),
            );
            return;
        }
    };
    let database = TestDatabase::fresh_postgres(&postgres).await;
    let settings = [
        ("KEYSTONE_REVOCATION__MAX_STALENESS", "3s"),
        ("KEYSTONE_REVOCATION__POLL_INTERVAL", "200ms"),
    ];
    let nodes = crate::cluster::replicas(&database, &redis.url(), 2, &settings).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let admin = a.admin_login().await;
    let secret = a.create_client(&admin, "reporting").await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(a.client_token("reporting", &secret).await);
    }

    // Slow: Redis stalls for two seconds; calls are answered meanwhile.
    let stalled = {
        let port = redis.port;
        std::thread::spawn(move || {
            let _ = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "2"])
                .stdout(Stdio::null())
                .status();
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    b.authenticate(&tokens[3])
        .await
        .expect("served while Redis stalls");
    a.client_token("reporting", &secret).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stalled.join().unwrap();

    // Flushed: the revocation set lives in PostgreSQL as well; new revocations still travel.
    redis.cli(&["FLUSHALL"]);
    a.revoke(&tokens[0]).await;
    b.until_revoked(&tokens[0], Duration::from_secs(5)).await;

    // Stopped: revocations travel through PostgreSQL.
    redis.kill();
    a.revoke(&tokens[1]).await;
    b.until_revoked(&tokens[1], Duration::from_secs(5)).await;
    b.authenticate(&tokens[3])
        .await
        .expect("PostgreSQL keeps the set confirmed");

    // Back, on the same port: the replicas reconnect and go on.
    let _redis = PrivateRedis::start(port).expect("Redis starts again");
    tokio::time::sleep(Duration::from_secs(4)).await;
    a.revoke(&tokens[2]).await;
    b.until_revoked(&tokens[2], Duration::from_secs(5)).await;
    b.authenticate(&tokens[3]).await.expect("still served");
}
