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

mod ahead;
mod assertion;
mod dpop;
mod federated;
mod load;
mod process;
mod seed;
mod tls;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicUsize},
};

use anyhow::Context as _;
use clap::Parser;
use tonic::transport::Channel;

use crate::{
    load::{Sample, flood, run, summarize},
    process::{cpu_seconds_since, pgbench, server_usage, startup},
    seed::{argon2_limit, seed},
};

/// Load Keystone over gRPC and report what it sustains.
#[derive(Debug, Parser)]
#[command(name = "keystone-bench", version)]
struct Args {
    /// Keystone's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Another replica of the same cluster (repeatable): the connections are spread over
    /// `--addr` and these, and calls/s, latencies and errors cover them all (CPU and RSS are
    /// `--server-pid`'s alone). Fixtures are made through `--addr`.
    #[arg(long = "replica-addr", value_name = "ADDR")]
    replica_addrs: Vec<String>,
    /// Scenarios, comma separated: health, authenticate, authenticate-fresh, check (Envoy
    /// ext_authz), introspect, client-credentials, token-exchange (RFC 8693: one token, meant
    /// for a relay client, exchanged by it for another audience), password, refresh,
    /// password-flood; client-credentials-pkjwt (a client assertion signed by the client's
    /// own key, RFC 7523; each used once, signed ahead); client-credentials-federated (a Kubernetes
    /// service-account token from an issuer the bench plays, its keys served at --jwks-addr and
    /// cached by the server); tls-handshake and tls-resumed (with --ca-file), client-credentials-mtls (with
    /// --cert-file), authenticate-dpop (a DPoP-bound token, from --http-addr). Health always
    /// runs, as the ceiling the others are compared to.
    #[arg(
        long,
        default_value = "health,authenticate,authenticate-fresh,check,introspect,client-credentials,client-credentials-pkjwt,client-credentials-federated,token-exchange,password,refresh,password-flood"
    )]
    scenarios: String,
    /// Where the bench serves the key set of the issuer it plays for
    /// `client-credentials-federated` (`/jwks`): the server's `[[federation.issuers]]` named
    /// `keystone-bench`, with `issuer = "https://kubernetes.keystone-bench.invalid"`, must
    /// fetch it there (scripts/bench.sh sets this up).
    #[arg(long, default_value = "127.0.0.1:20559")]
    jwks_addr: std::net::SocketAddr,
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
    /// Speak TLS (with an `https://` address), trusting the CA certificates in this PEM file;
    /// also what the `tls-handshake` and `tls-resumed` scenarios need.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// The name the server's certificate is checked against.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// A client certificate (PEM) every connection presents; a client authenticating by it
    /// (its thumbprint registered) is seeded for `client-credentials-mtls`.
    #[arg(long, requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// The key of `--cert-file` (PEM).
    #[arg(long, requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// The database Keystone runs on, as a libpq connection string to a database on the same
    /// server holding pgbench's tables (`pgbench -i`): each round of `refresh` is followed by
    /// as long a round of `pgbench -N` there (`--concurrency` clients, 2 threads), and refresh
    /// is also reported as a ratio to it. `scripts/bench.sh` sets it on PostgreSQL.
    #[arg(long)]
    pgbench: Option<String>,
    /// Keystone's HTTP address, where `authenticate-dpop` gets its token
    /// (`https://` with `--ca-file`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http_addr: String,
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
    /// For `refresh` with `--pgbench`: `pgbench -N` transactions/s over the same rounds, and
    /// the ratio to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pgbench_tps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_pgbench: Option<f64>,
    /// For `password-flood`: the figures of the flood's phases.
    #[serde(skip_serializing_if = "Option::is_none")]
    flood: Option<Flood>,
    server_cpu_seconds: Option<f64>,
    /// The server's CPU time per call (`--server-pid`): what a call costs Keystone itself,
    /// whatever the load generator beside it costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_call: Option<f64>,
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
    /// TLS, for the handshake scenarios.
    tls: Option<Arc<tls::TlsClient>>,
    /// For `client-credentials-mtls`: the client that authenticates by `--cert-file`.
    mtls_client_id: Option<String>,
    /// For `authenticate-dpop`.
    dpop: Option<Dpop>,
    /// For `token-exchange`: the relay client that may exchange, and a token meant for it.
    exchange: seed::Exchange,
    /// For `client-credentials-pkjwt`: a client with a key, and assertions signed ahead.
    pkjwt: Option<assertion::Pkjwt>,
    /// For `client-credentials-federated`: a workload client and its pod's token.
    federated: Option<federated::Federated>,
    /// For `refresh`: the sessions workers hand on from round to round, so that a round does
    /// not begin with logins (argon2 verifications that would count in its time and CPU).
    sessions: std::sync::Mutex<Vec<String>>,
}

/// A DPoP key, a token bound to it, and proofs made right before the scenario runs (each used
/// once).
struct Dpop {
    key: dpop::DpopKey,
    token: String,
    proofs: ahead::MadeAhead,
}

/// What a worker carries from call to call: its session's refresh token.
#[derive(Default)]
struct WorkerState {
    refresh_token: Option<String>,
    /// For `tls-resumed`: the worker's own session cache.
    tls_resuming: Option<tokio_rustls::TlsConnector>,
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
    let mut scenarios: Vec<String> = args
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut fixtures = seed(&args, &channels[0]).await?;
    if scenarios.iter().any(|s| s == "authenticate-dpop") {
        let key = dpop::DpopKey::new()?;
        let token = dpop::bound_token(
            &args,
            fixtures.tls.as_ref(),
            &key,
            &fixtures.client_id,
            &fixtures.secret,
        )
        .await
        .context("cannot get a DPoP-bound token")?;
        fixtures.dpop = Some(Dpop {
            key,
            token,
            proofs: ahead::MadeAhead::default(),
        });
    }
    let fixtures = Arc::new(fixtures);
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
            // Proofs are good for a minute: made right before they are used, untimed.
            if scenario == "authenticate-dpop"
                && let Some(dpop) = &fixtures.dpop
            {
                dpop.proofs
                    .fill(dpop.key.proofs(&dpop.token, args.fresh_tokens)?);
            }
            if scenario == "client-credentials-pkjwt"
                && let Some(pkjwt) = &fixtures.pkjwt
            {
                pkjwt.assertions.fill(pkjwt.sign(args.fresh_tokens)?);
            }
            // Fresh tokens and proofs are each presented once: none is spent on warming up.
            if !matches!(
                scenario.as_str(),
                "authenticate-fresh" | "authenticate-dpop" | "client-credentials-pkjwt"
            ) {
                run(&args, &channels, &fixtures, scenario, args.warmup).await?;
            }
            // In rounds, each right after a round of Health/Check as long: the ratio compares
            // the two under the same conditions, on a machine whose speed drifts.
            let mut sample = Sample::default();
            let mut health = Sample::default();
            let mut cpu = 0.0;
            let ceiling = args.pgbench.as_deref().filter(|_| scenario == "refresh");
            let mut pgbench_tps = Vec::new();
            for _ in 0..rounds {
                if scenario != "health" {
                    health.merge(run(&args, &channels, &fixtures, "health", slice).await?);
                }
                let (cpu_before, _) = server_usage(args.server_pid);
                sample.merge(run(&args, &channels, &fixtures, scenario, slice).await?);
                cpu += cpu_seconds_since(args.server_pid, cpu_before).unwrap_or(0.0);
                if let Some(conninfo) = ceiling {
                    pgbench_tps.push(pgbench(conninfo, args.concurrency, slice).await?);
                }
            }
            let mut outcome = summarize(scenario, sample);
            if !pgbench_tps.is_empty() {
                let tps = pgbench_tps.iter().sum::<f64>() / pgbench_tps.len() as f64;
                outcome.pgbench_tps = Some(tps);
                outcome.ratio_to_pgbench = Some(outcome.calls_per_second / tps.max(f64::EPSILON));
            }
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
        // One server's CPU over all the calls: not with other replicas, nor for the flood
        // (whose calls are of two kinds).
        outcome.server_cpu_us_per_call = outcome
            .server_cpu_seconds
            .filter(|_| {
                outcome.calls > 0 && outcome.flood.is_none() && args.replica_addrs.is_empty()
            })
            .map(|cpu| cpu * 1e6 / outcome.calls as f64);
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
            "{:<20} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>11}  errors",
            "scenario", "calls/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "ratio", "cpu µs/call"
        );
        for o in &outcomes {
            println!(
                "{:<20} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>7} {:>11}  {:?}",
                o.scenario,
                o.calls_per_second,
                o.p50_us,
                o.p90_us,
                o.p99_us,
                o.p999_us,
                o.ratio_to_health
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_default(),
                o.server_cpu_us_per_call
                    .map(|us| format!("{us:.0}"))
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
            if let (Some(tps), Some(ratio)) = (o.pgbench_tps, o.ratio_to_pgbench) {
                println!(
                    "{}: the database's ceiling (pgbench -N, rounds beside it) {tps:.0} \
                     transactions/s, ratio {ratio:.2}",
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
    let addrs: Vec<&String> = std::iter::once(&args.addr)
        .chain(&args.replica_addrs)
        .collect();
    // At least one connection to each replica, taken in turn.
    let count = args.connections.max(addrs.len());
    let mut channels = Vec::with_capacity(count);
    for n in 0..count {
        let addr = addrs[n % addrs.len()];
        channels.push(
            endpoint(args, addr)?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
        );
    }
    Ok(channels)
}

/// Where a channel connects: `addr`, over TLS with `--ca-file`.
pub(crate) fn endpoint(args: &Args, addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    let endpoint = Channel::from_shared(addr.to_owned())?.tcp_nodelay(true);
    Ok(match tls_client(args)? {
        Some(tls) => {
            let mut config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
                .domain_name(args.tls_name.clone());
            if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
                config = config.identity(tonic::transport::Identity::from_pem(
                    std::fs::read(cert)
                        .with_context(|| format!("cannot read --cert-file {}", cert.display()))?,
                    std::fs::read(key)
                        .with_context(|| format!("cannot read --key-file {}", key.display()))?,
                ));
            }
            endpoint.tls_config(config)?
        }
        None => endpoint,
    })
}

/// The TLS client of `--ca-file`, if given.
fn tls_client(args: &Args) -> anyhow::Result<Option<Arc<tls::TlsClient>>> {
    let Some(ca_file) = &args.ca_file else {
        return Ok(None);
    };
    let url = url::Url::parse(&args.addr).context("--addr")?;
    let addr = url
        .socket_addrs(|| Some(50051))
        .context("--addr")?
        .into_iter()
        .next()
        .context("--addr names no address")?;
    Ok(Some(Arc::new(tls::TlsClient::new(
        ca_file,
        &args.tls_name,
        addr,
    )?)))
}
