//! Faults with real processes: a PostgreSQL server of the test's own stopped and started
//! again under a running Keystone, and a Redis server of its own stopped, slowed and flushed
//! under two replicas. (The cluster tests make outages with TCP proxies; these stop the
//! servers themselves.)

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keystone::proto::pb;
use tonic::Code;

use crate::helpers::{TestDatabase, reason, say_skipped, spawn_app_on};

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
        let server = Self { bin, dir };
        server.resume()?;
        Ok(server)
    }

    /// Over its Unix socket in the temporary directory: no port to race other tests for.
    fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.dir.path().display()
        )
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
            "-k {} -c listen_addresses= -c fsync=off",
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

/// What `redis-cli` answers on the server at `socket`.
fn redis_cli(socket: &Path, args: &[&str]) -> String {
    Command::new("redis-cli")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A Redis server of the test's own, on a Unix socket in a temporary directory.
struct PrivateRedis {
    child: Child,
    socket: PathBuf,
}

impl PrivateRedis {
    fn start(dir: &Path) -> Result<Self, String> {
        let socket = dir.join("redis.sock");
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(format!("redis-server exited: {exit}"));
            }
            if redis_cli(&socket, &["PING"]) == "PONG" {
                return Ok(Self { child, socket });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-server did not answer".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// What `redis-cli` answers.
    fn cli(&self, args: &[&str]) -> String {
        redis_cli(&self.socket, args)
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

async fn login(node: &crate::cluster::Replica, name: &str) -> tonic::Status {
    node.login(name, "guess guess guess")
        .await
        .expect_err("nobody has the name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_redis_slowed_flushed_stopped_and_back() {
    let test = "replicas_ride_out_redis_slowed_flushed_stopped_and_back";
    let Some(postgres) = crate::helpers::postgres_url() else {
        say_skipped(test, "needs PostgreSQL (KEYSTONE_TEST_DATABASE_URL)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut redis = match PrivateRedis::start(dir.path()) {
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
    // One login per name and hour: a name's quota is shared only through Redis.
    let settings = [
        ("KEYSTONE_REVOCATION__MAX_STALENESS", "3s"),
        ("KEYSTONE_REVOCATION__POLL_INTERVAL", "200ms"),
        ("KEYSTONE_LIMITS__PER_USERNAME", "1/1h burst 1"),
    ];
    let nodes = crate::cluster::replicas(&database, &redis.url(), 2, &settings).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let admin = a.admin_login().await;
    let secret = a.create_client(&admin, "reporting").await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(a.client_token("reporting", &secret).await);
    }
    assert_eq!(reason(&login(a, "mallory").await), "INVALID_CREDENTIALS");
    assert_eq!(
        reason(&login(b, "mallory").await),
        "RATE_LIMITED",
        "the quota is shared through Redis"
    );

    // Slow: Redis stalls for two seconds; calls that count in Redis are answered meanwhile
    // (counted in the process after the Redis budget).
    let stalled = {
        let socket = redis.socket.clone();
        std::thread::spawn(move || redis_cli(&socket, &["DEBUG", "SLEEP", "2"]))
    };
    // The stall has begun when a PING gets no answer within 300 ms.
    let stall_began = Instant::now();
    loop {
        let answered = Command::new("timeout")
            .arg("0.3")
            .arg("redis-cli")
            .arg("-s")
            .arg(&redis.socket)
            .arg("PING")
            .output()
            .is_ok_and(|out| out.status.success());
        if !answered {
            break;
        }
        assert!(
            stall_began.elapsed() < Duration::from_secs(5),
            "Redis never stalled"
        );
    }
    let started = Instant::now();
    a.client_token("reporting", &secret).await;
    assert_eq!(reason(&login(b, "sybil").await), "INVALID_CREDENTIALS");
    b.authenticate(&tokens[2])
        .await
        .expect("served while Redis stalls");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stalled.join().unwrap(), "OK", "DEBUG SLEEP ran");

    // Flushed: shared quotas start again; revocations, kept in PostgreSQL too, still travel.
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    assert_eq!(reason(&login(b, "mallory").await), "INVALID_CREDENTIALS");
    a.revoke(&tokens[0]).await;
    b.until_revoked(&tokens[0], Duration::from_secs(5)).await;

    // Stopped: revocations travel through PostgreSQL; quotas are counted per process.
    redis.kill();
    a.revoke(&tokens[1]).await;
    b.until_revoked(&tokens[1], Duration::from_secs(5)).await;
    b.authenticate(&tokens[2])
        .await
        .expect("PostgreSQL keeps the set confirmed");
    assert_eq!(reason(&login(b, "trudy").await), "INVALID_CREDENTIALS");
    assert_eq!(reason(&login(b, "trudy").await), "RATE_LIMITED");

    // Back: the replicas reconnect, and quotas are shared again.
    let _redis = PrivateRedis::start(dir.path()).expect("Redis starts again");
    let back = Instant::now();
    for n in 0.. {
        let name = format!("victor{n}");
        assert_eq!(reason(&login(a, &name).await), "INVALID_CREDENTIALS");
        if reason(&login(b, &name).await) == "RATE_LIMITED" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the replicas never counted in Redis again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.authenticate(&tokens[2]).await.expect("still served");
}
