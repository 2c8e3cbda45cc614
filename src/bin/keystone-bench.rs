//! `keystone-bench`: a closed-loop gRPC load generator for Keystone. It seeds what it needs
//! through the admin API (a client with `keystone:introspect`, users with passwords, one
//! session per worker for refreshes), pre-mints tokens for the fresh-token scenario (enough
//! that none is presented twice), checks the status of every response (errors are counted per
//! code and never as throughput), and reports calls/s, latency percentiles and each scenario's
//! ratio to `grpc.health.v1.Health/Check` measured in the same run. The password scenario is
//! compared with the argon2 limit (cores ÷ one verification's time, measured here with the
//! server's parameters), and `password-flood` measures `Authenticate` at a steady rate, alone
//! and then under a flood of logins at twice that limit. With `--server-pid`, the server's CPU
//! seconds and peak RSS are read from `/proc`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use keystone::proto::pb::{
    AuthenticateRequest, Client, ClientCredentialsGrant, CreateClientRequest, CreateUserRequest,
    IntrospectRequest, IssueTokenRequest, PasswordGrant, RefreshTokenGrant,
    auth_client::AuthClient, client_admin_client::ClientAdminClient, issue_token_request::Grant,
    user_admin_client::UserAdminClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Load Keystone over gRPC and report what it sustains.
#[derive(Debug, Parser)]
#[command(name = "keystone-bench", version)]
struct Args {
    /// Keystone's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Scenarios, comma separated: health, authenticate, authenticate-fresh, check (Envoy
    /// ext_authz), introspect, client-credentials, password, refresh, password-flood (health
    /// always runs, as the ceiling the others are compared to).
    #[arg(
        long,
        default_value = "health,authenticate,authenticate-fresh,check,introspect,client-credentials,password,refresh,password-flood"
    )]
    scenarios: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Each scenario's time is measured in this many rounds, each right after a round of
    /// Health/Check as long; its ratio is to those rounds of Health/Check.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of warm-up before each scenario (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// An admin's username (to seed the bench client through the admin API).
    #[arg(long, env = "KEYSTONE_BENCH_ADMIN", default_value = "admin")]
    admin: String,
    /// The admin's password.
    #[arg(long, env = "KEYSTONE_BENCH_PASSWORD")]
    password: String,
    /// Tokens minted up front for `authenticate-fresh`; each is presented once, and the
    /// scenario ends early (measured over the time it ran) if they run out.
    #[arg(long, default_value_t = 200_000)]
    fresh_tokens: usize,
    /// Users seeded for the password scenarios (logins are spread over them, so lockout's
    /// limit on attempts in flight per name is not what is measured).
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// The server's argon2id memory cost in KiB (`auth.argon2.memory_kib`).
    #[arg(long, default_value_t = 19 * 1024)]
    argon2_memory_kib: u32,
    /// The server's argon2id passes (`auth.argon2.iterations`).
    #[arg(long, default_value_t = 2)]
    argon2_iterations: u32,
    /// The server's argon2id lanes (`auth.argon2.parallelism`).
    #[arg(long, default_value_t = 1)]
    argon2_parallelism: u32,
    /// `Authenticate` calls per second in `password-flood` (alone, then under the flood).
    #[arg(long, default_value_t = 5_000.0)]
    flood_authenticate_rate: f64,
    /// The server's process id, for CPU seconds and peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Wait until the server (`--server-pid`, just started) reports SERVING, print how long
    /// that took from its process start, and exit.
    #[arg(long, requires = "server_pid")]
    startup: bool,
    /// Seed a client, print its id, its secret and one of its tokens (a line each, for HTTP
    /// load tools), and exit.
    #[arg(long)]
    seed_only: bool,
}

/// What one scenario measured.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    scenario: String,
    calls: u64,
    calls_per_second: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    errors: BTreeMap<String, u64>,
    ratio_to_health: Option<f64>,
    /// For `password`: the argon2 limit (calls/s) and the ratio to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    argon2_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_argon2_limit: Option<f64>,
    /// For `password-flood`: the figures of the flood's phases.
    #[serde(skip_serializing_if = "Option::is_none")]
    flood: Option<Flood>,
    server_cpu_seconds: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

/// `Authenticate` at a steady rate, alone and under a login flood.
#[derive(Debug, serde::Serialize)]
struct Flood {
    authenticate_rate: f64,
    login_rate: f64,
    idle_p99_us: u64,
    idle_errors: BTreeMap<String, u64>,
    flood_p99_us: u64,
    flood_errors: BTreeMap<String, u64>,
    /// Flood p99 ÷ idle p99 (target ≤ 2).
    p99_ratio: f64,
    logins_ok: u64,
    logins_refused: BTreeMap<String, u64>,
}

/// What a scenario needs: a bench client's credentials, pre-minted tokens and users.
struct Fixtures {
    client_id: String,
    secret: String,
    token: String,
    fresh: Vec<String>,
    /// The next fresh token to present.
    next_fresh: AtomicUsize,
    /// Users and their password.
    users: Vec<String>,
    password: String,
}

/// What a worker carries from call to call: its session's refresh token.
#[derive(Default)]
struct WorkerState {
    refresh_token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.startup {
        return startup(&args).await;
    }
    let channels: Vec<Channel> = futures_channels(&args).await?;
    if args.seed_only {
        let fixtures = seed(&args, &channels[0]).await?;
        println!(
            "{}\n{}\n{}",
            fixtures.client_id, fixtures.secret, fixtures.token
        );
        return Ok(());
    }
    let fixtures = Arc::new(seed(&args, &channels[0]).await?);
    let mut scenarios: Vec<String> = args
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !scenarios.iter().any(|s| s == "health") {
        scenarios.insert(0, "health".to_owned());
    }
    let rounds = args.rounds.max(1);
    let slice = args.duration / rounds as f64;
    let mut outcomes = Vec::new();
    for scenario in &scenarios {
        let mut outcome = if scenario == "password-flood" {
            let (cpu_before, _) = server_usage(args.server_pid);
            let limit = argon2_limit(&args)?;
            let mut outcome = flood(&args, &channels, &fixtures, limit).await?;
            outcome.server_cpu_seconds = cpu_seconds_since(args.server_pid, cpu_before);
            outcome
        } else {
            // Fresh tokens are each presented once: none is spent on warming up.
            if scenario != "authenticate-fresh" {
                run(&args, &channels, &fixtures, scenario, args.warmup).await?;
            }
            // In rounds, each right after a round of Health/Check as long: the ratio compares
            // the two under the same conditions, on a machine whose speed drifts.
            let mut sample = Sample::default();
            let mut health = Sample::default();
            let mut cpu = 0.0;
            for _ in 0..rounds {
                if scenario != "health" {
                    health.merge(run(&args, &channels, &fixtures, "health", slice).await?);
                }
                let (cpu_before, _) = server_usage(args.server_pid);
                sample.merge(run(&args, &channels, &fixtures, scenario, slice).await?);
                cpu += cpu_seconds_since(args.server_pid, cpu_before).unwrap_or(0.0);
            }
            let mut outcome = summarize(scenario, sample);
            outcome.server_cpu_seconds = args.server_pid.map(|_| cpu);
            outcome.ratio_to_health = Some(if scenario == "health" {
                1.0
            } else {
                outcome.calls_per_second / health.calls_per_second().max(f64::EPSILON)
            });
            outcome
        };
        if scenario == "password" {
            let limit = argon2_limit(&args)?;
            outcome.argon2_limit = Some(limit);
            outcome.ratio_to_argon2_limit = Some(outcome.calls_per_second / limit);
        }
        outcome.server_peak_rss_mib = server_usage(args.server_pid).1;
        outcomes.push(outcome);
    }
    // The flood is compared with the Health/Check row.
    let health = outcomes
        .iter()
        .find(|o| o.scenario == "health")
        .map(|o| o.calls_per_second);
    for outcome in &mut outcomes {
        if outcome.ratio_to_health.is_none() {
            outcome.ratio_to_health = health
                .filter(|h| *h > 0.0)
                .map(|h| outcome.calls_per_second / h);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        println!(
            "{:<20} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7}  errors",
            "scenario", "calls/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "ratio"
        );
        for o in &outcomes {
            println!(
                "{:<20} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>7}  {:?}",
                o.scenario,
                o.calls_per_second,
                o.p50_us,
                o.p90_us,
                o.p99_us,
                o.p999_us,
                o.ratio_to_health
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_default(),
                o.errors
            );
        }
        for o in &outcomes {
            if let (Some(limit), Some(ratio)) = (o.argon2_limit, o.ratio_to_argon2_limit) {
                println!(
                    "{}: argon2 limit {limit:.0}/s (cores ÷ one verification), ratio {ratio:.2}",
                    o.scenario
                );
            }
            if let Some(flood) = &o.flood {
                println!(
                    "{}: Authenticate at {:.0}/s, p99 {} µs alone {:?}, {} µs under {:.0} logins/s {:?} \
                     (×{:.2}); logins ok {}, refused {:?}",
                    o.scenario,
                    flood.authenticate_rate,
                    flood.idle_p99_us,
                    flood.idle_errors,
                    flood.flood_p99_us,
                    flood.login_rate,
                    flood.flood_errors,
                    flood.p99_ratio,
                    flood.logins_ok,
                    flood.logins_refused
                );
            }
        }
        if let Some(rss) = outcomes
            .iter()
            .filter_map(|o| o.server_peak_rss_mib)
            .reduce(f64::max)
        {
            println!("server peak RSS: {rss:.1} MiB");
        }
    }
    Ok(())
}

async fn futures_channels(args: &Args) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(args.connections.max(1));
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.addr.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", args.addr))?,
        );
    }
    Ok(channels)
}

/// Logs the admin in, creates a bench client, and mints tokens.
async fn seed(args: &Args, channel: &Channel) -> anyhow::Result<Fixtures> {
    let mut auth = AuthClient::new(channel.clone());
    let admin = auth
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::Password(PasswordGrant {
                username: args.admin.clone(),
                password: args.password.clone(),
            })),
            // Keystone's own scopes are never implied: asked for by name.
            scopes: vec!["keystone:admin".into()],
            ..Default::default()
        })
        .await
        .context("the admin cannot log in")?
        .into_inner()
        .access_token;
    let client_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut request = tonic::Request::new(CreateClientRequest {
        client: Some(Client {
            client_id: client_id.clone(),
            name: "keystone-bench".into(),
            allowed_scopes: vec!["keystone:introspect".into()],
            // Its tokens are for Keystone, so that it may see them active when it
            // introspects them (RFC 7662 section 4).
            allowed_audiences: vec!["keystone".into()],
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse()?);
    let secret = ClientAdminClient::new(channel.clone())
        .create_client(request)
        .await
        .context("cannot create the bench client")?
        .into_inner()
        .client_secret;
    let token = mint(&mut auth, &client_id, &secret).await?;
    let fresh = mint_many(
        channel,
        &client_id,
        &secret,
        args.fresh_tokens,
        args.concurrency,
    )
    .await
    .context("cannot mint the fresh tokens")?;
    let password = format!("bench {} horse staple", uuid::Uuid::new_v4().simple());
    let mut users = Vec::with_capacity(args.users.max(1));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    for n in 0..args.users.max(1) {
        let username = format!("bench{}u{n}", &run_id[..8]);
        let mut request = tonic::Request::new(CreateUserRequest {
            username: username.clone(),
            email: format!("{username}@bench.invalid"),
            password: password.clone(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {admin}").parse()?);
        UserAdminClient::new(channel.clone())
            .create_user(request)
            .await
            .context("cannot create a bench user")?;
        users.push(username);
    }
    Ok(Fixtures {
        client_id,
        secret,
        token,
        fresh,
        next_fresh: AtomicUsize::new(0),
        users,
        password,
    })
}

/// Mints `count` tokens with `workers` calls in flight.
async fn mint_many(
    channel: &Channel,
    client_id: &str,
    secret: &str,
    count: usize,
    workers: usize,
) -> anyhow::Result<Vec<String>> {
    let workers = workers.max(1);
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let share = count / workers + usize::from(worker < count % workers);
        let mut auth = AuthClient::new(channel.clone());
        let (client_id, secret) = (client_id.to_owned(), secret.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(share);
            for _ in 0..share {
                tokens.push(mint(&mut auth, &client_id, &secret).await?);
            }
            anyhow::Ok(tokens)
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// A password login of the `n`th user; its tokens.
async fn login(
    auth: &mut AuthClient<Channel>,
    fixtures: &Fixtures,
    n: usize,
) -> Result<keystone::proto::pb::TokenResponse, tonic::Status> {
    auth.issue_token(IssueTokenRequest {
        grant: Some(Grant::Password(PasswordGrant {
            username: fixtures.users[n % fixtures.users.len()].clone(),
            password: fixtures.password.clone(),
        })),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// The argon2 limit: cores ÷ the time of one verification with the server's parameters,
/// measured here right before it is used (the fastest of 15, one at a time: the highest
/// limit, so the hardest target).
fn argon2_limit(args: &Args) -> anyhow::Result<f64> {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};
    let params = argon2::Params::new(
        args.argon2_memory_kib,
        args.argon2_iterations,
        args.argon2_parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = argon2::password_hash::SaltString::encode_b64(b"keystone-bench-salt")
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2
        .hash_password(b"correct horse battery staple", &salt)
        .map_err(|e| anyhow::anyhow!("hash: {e}"))?;
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let started = Instant::now();
            let _ = argon2.verify_password(b"correct horse battery staple", &hash);
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // For the record: what every core verifying at once achieves (they share memory
    // bandwidth and cache, so it is less than the limit).
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| {
                for _ in 0..8 {
                    let _ = argon2.verify_password(b"correct horse battery staple", &hash);
                }
            });
        }
    });
    eprintln!(
        "argon2: one verification {:.1} ms; every core at once {:.0}/s",
        times[0] * 1000.0,
        (cores * 8) as f64 / started.elapsed().as_secs_f64()
    );
    Ok(cores as f64 / times[0])
}

async fn mint(
    auth: &mut AuthClient<Channel>,
    client_id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    Ok(auth
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                client_id: client_id.to_owned(),
                client_secret: secret.to_owned(),
            })),
            scopes: vec!["keystone:introspect".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .access_token)
}

/// Runs one scenario for `seconds` with `concurrency` calls in flight.
async fn run(
    args: &Args,
    channels: &[Channel],
    fixtures: &Arc<Fixtures>,
    scenario: &str,
    seconds: f64,
) -> anyhow::Result<Sample> {
    let until = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency.max(1));
    for worker in 0..args.concurrency.max(1) {
        let channel = channels[worker % channels.len()].clone();
        let fixtures = fixtures.clone();
        let scenario = scenario.to_owned();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut state = WorkerState::default();
            let mut next = worker;
            while Instant::now() < until {
                // What a call needs first (a session to refresh) is set up untimed.
                if let Err(code) = prepare(&channel, &fixtures, &scenario, next, &mut state).await {
                    *errors.entry(format!("setup {code:?}")).or_default() += 1;
                    next = next.wrapping_add(1);
                    continue;
                }
                let call = Instant::now();
                let result = call_once(&channel, &fixtures, &scenario, next, &mut state).await;
                next = next.wrapping_add(1);
                match result {
                    Ok(true) => latencies
                        .push(u64::try_from(call.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    // Out of fresh tokens: this worker is done.
                    Ok(false) => break,
                    Err(code) => *errors.entry(format!("{code:?}")).or_default() += 1,
                }
            }
            (latencies, errors, Instant::now())
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ended = started;
    for worker in workers {
        let (l, e, at) = worker.await?;
        latencies.extend(l);
        ended = ended.max(at);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    let elapsed = ended
        .duration_since(started)
        .as_secs_f64()
        .max(f64::EPSILON);
    if ended + Duration::from_millis(100) < until && seconds > 0.0 {
        eprintln!(
            "{scenario}: ran out of fresh tokens after {elapsed:.1} s (--fresh-tokens); \
             measured over that time"
        );
    }
    Ok(Sample {
        latencies,
        errors,
        elapsed,
    })
}

/// What one stretch of calls measured.
#[derive(Default)]
struct Sample {
    latencies: Vec<u64>,
    errors: BTreeMap<String, u64>,
    elapsed: f64,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.elapsed += other.elapsed;
    }

    fn calls_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.max(f64::EPSILON)
    }
}

/// The server's CPU seconds since `before` (see [`server_usage`]).
fn cpu_seconds_since(pid: Option<u32>, before: Option<f64>) -> Option<f64> {
    before.zip(server_usage(pid).0).map(|(b, a)| a - b)
}

/// Calls/s and percentiles of one scenario.
fn summarize(scenario: &str, sample: Sample) -> Outcome {
    let Sample {
        mut latencies,
        errors,
        elapsed,
    } = sample;
    let elapsed = elapsed.max(f64::EPSILON);
    latencies.sort_unstable();
    let percentile = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let index = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[index.min(latencies.len() - 1)]
    };
    Outcome {
        scenario: scenario.to_owned(),
        calls: latencies.len() as u64,
        calls_per_second: latencies.len() as f64 / elapsed,
        p50_us: percentile(0.50),
        p90_us: percentile(0.90),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
        errors,
        ratio_to_health: None,
        argon2_limit: None,
        ratio_to_argon2_limit: None,
        flood: None,
        server_cpu_seconds: None,
        server_peak_rss_mib: None,
    }
}

/// Calls at a steady `rate` for `seconds` (open loop: a call is sent on schedule whether or
/// not the earlier ones answered); each call's latency, from its scheduled start, and the
/// errors per code.
async fn steady<F, C>(
    rate: f64,
    seconds: f64,
    call: F,
) -> anyhow::Result<(Vec<u64>, BTreeMap<String, u64>)>
where
    F: Fn(usize) -> C,
    C: Future<Output = Result<(), tonic::Code>> + Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let mut calls = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        let scheduled = ticker.tick().await;
        let call = call(n);
        calls.push(tokio::spawn(async move {
            call.await
                .map(|()| u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX))
        }));
        n += 1;
    }
    let mut latencies = Vec::with_capacity(calls.len());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for handle in calls {
        match handle.await? {
            Ok(latency) => latencies.push(latency),
            Err(code) => *errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }
    Ok((latencies, errors))
}

/// `password-flood`: `Authenticate` at a steady rate alone, then with logins at twice the
/// argon2 limit beside it. The logins beyond capacity must be refused (RESOURCE_EXHAUSTED)
/// and `Authenticate` must keep its p99 within twice its idle one.
async fn flood(
    args: &Args,
    channels: &[Channel],
    fixtures: &Arc<Fixtures>,
    argon2_limit: f64,
) -> anyhow::Result<Outcome> {
    let authenticate = |n: usize| {
        let mut auth = AuthClient::new(channels[n % channels.len()].clone());
        let token = fixtures.token.clone();
        async move {
            auth.authenticate(AuthenticateRequest {
                token,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|status| status.code())
        }
    };
    let rate = args.flood_authenticate_rate;
    steady(rate, args.warmup, authenticate).await?;
    let (idle, idle_errors) = steady(rate, args.duration, authenticate).await?;
    let login_rate = 2.0 * argon2_limit;
    let logins = {
        let channels = channels.to_vec();
        let fixtures = fixtures.clone();
        let seconds = args.duration + args.warmup;
        tokio::spawn(async move {
            steady(login_rate, seconds, move |n| {
                let mut auth = AuthClient::new(channels[n % channels.len()].clone());
                let fixtures = fixtures.clone();
                async move {
                    login(&mut auth, &fixtures, n)
                        .await
                        .map(|_| ())
                        .map_err(|status| status.code())
                }
            })
            .await
        })
    };
    // The flood fills the login queue first; then Authenticate is measured beside it.
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let started = Instant::now();
    let (flooded, flood_errors) = steady(rate, args.duration, authenticate).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (logins_ok, logins_refused) = logins.await??;
    let idle_p99 = summarize(
        "idle",
        Sample {
            latencies: idle,
            errors: idle_errors.clone(),
            elapsed: 1.0,
        },
    )
    .p99_us;
    let mut outcome = summarize(
        "password-flood",
        Sample {
            latencies: flooded,
            errors: flood_errors.clone(),
            elapsed,
        },
    );
    outcome.flood = Some(Flood {
        authenticate_rate: rate,
        login_rate,
        idle_p99_us: idle_p99,
        idle_errors,
        flood_p99_us: outcome.p99_us,
        flood_errors,
        p99_ratio: outcome.p99_us as f64 / idle_p99.max(1) as f64,
        logins_ok: logins_ok.len() as u64,
        logins_refused,
    });
    Ok(outcome)
}

/// One call of the scenario: `Ok(false)` when there was nothing left to call with (fresh
/// tokens ran out), the status code when it failed.
async fn call_once(
    channel: &Channel,
    fixtures: &Fixtures,
    scenario: &str,
    n: usize,
    state: &mut WorkerState,
) -> Result<bool, tonic::Code> {
    let mut auth = AuthClient::new(channel.clone());
    let result = match scenario {
        "health" => HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ()),
        "authenticate" => auth
            .authenticate(AuthenticateRequest {
                token: fixtures.token.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "authenticate-fresh" => {
            let next = fixtures.next_fresh.fetch_add(1, Ordering::Relaxed);
            let Some(token) = fixtures.fresh.get(next) else {
                return Ok(false);
            };
            auth.authenticate(AuthenticateRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
        "check" => {
            let response = AuthorizationClient::new(channel.clone())
                .check(check_request(&fixtures.token))
                .await
                .map_err(|status| status.code())?
                .into_inner();
            let code = response.status.map_or(0, |status| status.code);
            return if code == 0 {
                Ok(true)
            } else {
                Err(tonic::Code::from(code))
            };
        }
        "introspect" => {
            let mut request = tonic::Request::new(IntrospectRequest {
                token: fixtures.token.clone(),
                token_type_hint: String::new(),
            });
            if let Ok(value) = format!("Bearer {}", fixtures.token).parse() {
                request.metadata_mut().insert("authorization", value);
            }
            auth.introspect(request).await.map(|_| ())
        }
        "client-credentials" => auth
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                    client_id: fixtures.client_id.clone(),
                    client_secret: fixtures.secret.clone(),
                })),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "password" => login(&mut auth, fixtures, n).await.map(|_| ()),
        "refresh" => {
            // Each worker keeps one session going (see `prepare`).
            let Some(refresh_token) = state.refresh_token.take() else {
                return Err(tonic::Code::FailedPrecondition);
            };
            let tokens = auth
                .issue_token(IssueTokenRequest {
                    grant: Some(Grant::RefreshToken(RefreshTokenGrant { refresh_token })),
                    ..Default::default()
                })
                .await
                .map_err(|status| status.code())?
                .into_inner();
            state.refresh_token = Some(tokens.refresh_token);
            Ok(())
        }
        _ => return Err(tonic::Code::InvalidArgument),
    };
    result.map(|()| true).map_err(|status| status.code())
}

/// Sets up, untimed, what the next call of the scenario needs: for `refresh`, a session
/// (a password login) when the worker has none yet or its last refresh failed.
async fn prepare(
    channel: &Channel,
    fixtures: &Fixtures,
    scenario: &str,
    n: usize,
    state: &mut WorkerState,
) -> Result<(), tonic::Code> {
    if scenario == "refresh" && state.refresh_token.is_none() {
        let tokens = login(&mut AuthClient::new(channel.clone()), fixtures, n)
            .await
            .map_err(|status| status.code())?;
        state.refresh_token = Some(tokens.refresh_token);
    }
    Ok(())
}

/// An Envoy `CheckRequest` for `GET /orders` with the token as a bearer.
fn check_request(token: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: "api.example.com".into(),
                    path: "/orders".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Polls `Health/Check` until SERVING; prints the time from the server process's start
/// (`/proc/<pid>/stat`, in clock ticks: 10 ms resolution) to the first SERVING answer.
async fn startup(args: &Args) -> anyhow::Result<()> {
    let pid = args.server_pid.context("--startup needs --server-pid")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not report SERVING in 30 s"
        );
        let serving = match Channel::from_shared(args.addr.clone())?.connect().await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1),
            Err(_) => false,
        };
        if serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let since_start = process_age(pid).context("cannot read the server's start time")?;
    if args.json {
        println!(r#"{{"start_to_serving_ms": {:.0}}}"#, since_start * 1000.0);
    } else {
        println!("start to SERVING: {:.0} ms", since_start * 1000.0);
    }
    Ok(())
}

/// Seconds since process `pid` started (Linux).
fn process_age(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // starttime is field 22 of stat: the 20th after the command name.
    let started_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - started_ticks / 100.0)
}

/// The server's CPU seconds (user + system) and peak RSS in MiB, from `/proc`.
fn server_usage(pid: Option<u32>) -> (Option<f64>, Option<f64>) {
    let Some(pid) = pid else {
        return (None, None);
    };
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name in parentheses; utime and stime are 14th and 15th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        });
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        });
    (cpu, rss)
}
