//! `keystone-bench`: a closed-loop gRPC load generator for Keystone. It seeds what it needs
//! through the admin API (a client with `keystone:introspect`), pre-mints tokens for the
//! fresh-token scenario, checks the status of every response (errors are counted per code and
//! never as throughput), and reports calls/s, latency percentiles and each scenario's ratio to
//! `grpc.health.v1.Health/Check` measured in the same run. With `--server-pid`, the server's
//! CPU seconds and peak RSS are read from `/proc`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use keystone::proto::pb::{
    AuthenticateRequest, Client, ClientCredentialsGrant, CreateClientRequest, IntrospectRequest,
    IssueTokenRequest, PasswordGrant, auth_client::AuthClient,
    client_admin_client::ClientAdminClient, issue_token_request::Grant,
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
    /// Scenarios, comma separated: health, authenticate, authenticate-fresh, introspect,
    /// client-credentials (health always runs, as the ceiling the others are compared to).
    #[arg(
        long,
        default_value = "health,authenticate,authenticate-fresh,introspect,client-credentials"
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
    /// Seconds of warm-up before each scenario (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// An admin's username (to seed the bench client through the admin API).
    #[arg(long, env = "KEYSTONE_BENCH_ADMIN", default_value = "admin")]
    admin: String,
    /// The admin's password.
    #[arg(long, env = "KEYSTONE_BENCH_PASSWORD")]
    password: String,
    /// Tokens minted up front for `authenticate-fresh` (each is presented once per round).
    #[arg(long, default_value_t = 20_000)]
    fresh_tokens: usize,
    /// The server's process id, for CPU seconds and peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    server_cpu_seconds: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

/// What a scenario needs: a bench client's credentials and pre-minted tokens.
struct Fixtures {
    client_id: String,
    secret: String,
    token: String,
    fresh: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channels: Vec<Channel> = futures_channels(&args).await?;
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
    let mut outcomes = Vec::new();
    for scenario in &scenarios {
        let (cpu_before, _) = server_usage(args.server_pid);
        run(&args, &channels, &fixtures, scenario, args.warmup).await?;
        let mut outcome = run(&args, &channels, &fixtures, scenario, args.duration).await?;
        let (cpu_after, rss) = server_usage(args.server_pid);
        outcome.server_cpu_seconds = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
        outcome.server_peak_rss_mib = rss;
        outcomes.push(outcome);
    }
    let health = outcomes
        .iter()
        .find(|o| o.scenario == "health")
        .map(|o| o.calls_per_second);
    for outcome in &mut outcomes {
        outcome.ratio_to_health = health
            .filter(|h| *h > 0.0)
            .map(|h| outcome.calls_per_second / h);
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
    let mut fresh = Vec::with_capacity(args.fresh_tokens.max(1));
    for _ in 0..args.fresh_tokens.max(1) {
        fresh.push(mint(&mut auth, &client_id, &secret).await?);
    }
    Ok(Fixtures {
        client_id,
        secret,
        token,
        fresh,
    })
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
) -> anyhow::Result<Outcome> {
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
            let mut next = worker;
            while Instant::now() < until {
                let call = Instant::now();
                let result = call_once(&channel, &fixtures, &scenario, next).await;
                next = next.wrapping_add(1);
                match result {
                    Ok(()) => latencies
                        .push(u64::try_from(call.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    Err(code) => *errors.entry(format!("{code:?}")).or_default() += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(f64::EPSILON);
    latencies.sort_unstable();
    let percentile = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let index = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[index.min(latencies.len() - 1)]
    };
    Ok(Outcome {
        scenario: scenario.to_owned(),
        calls: latencies.len() as u64,
        calls_per_second: latencies.len() as f64 / elapsed,
        p50_us: percentile(0.50),
        p90_us: percentile(0.90),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
        errors,
        ratio_to_health: None,
        server_cpu_seconds: None,
        server_peak_rss_mib: None,
    })
}

/// One call of the scenario; the status code when it failed.
async fn call_once(
    channel: &Channel,
    fixtures: &Fixtures,
    scenario: &str,
    n: usize,
) -> Result<(), tonic::Code> {
    let result = match scenario {
        "health" => HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ()),
        "authenticate" => AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                token: fixtures.token.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "authenticate-fresh" => AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                token: fixtures.fresh[n % fixtures.fresh.len()].clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "introspect" => {
            let mut request = tonic::Request::new(IntrospectRequest {
                token: fixtures.token.clone(),
                token_type_hint: String::new(),
            });
            if let Ok(value) = format!("Bearer {}", fixtures.token).parse() {
                request.metadata_mut().insert("authorization", value);
            }
            AuthClient::new(channel.clone())
                .introspect(request)
                .await
                .map(|_| ())
        }
        "client-credentials" => AuthClient::new(channel.clone())
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                    client_id: fixtures.client_id.clone(),
                    client_secret: fixtures.secret.clone(),
                })),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        _ => return Err(tonic::Code::InvalidArgument),
    };
    result.map_err(|status| status.code())
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
