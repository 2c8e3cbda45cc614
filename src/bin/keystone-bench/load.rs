//! Running a scenario: closed loops of calls in flight, the open-loop flood, and what each
//! call of each scenario is.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use keystone::proto::pb::{
    AuthenticateRequest, ClientCredentialsGrant, IntrospectRequest, IssueTokenRequest,
    RefreshTokenGrant, TokenExchangeGrant, auth_client::AuthClient, issue_token_request::Grant,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{Args, Fixtures, Flood, Outcome, WorkerState, seed::login};

/// Runs one scenario for `seconds` with `concurrency` calls in flight.
pub(crate) async fn run(
    args: &Args,
    channels: &[Channel],
    fixtures: &Arc<Fixtures>,
    scenario: &str,
    seconds: f64,
) -> anyhow::Result<Sample> {
    let until = keystone::clock::monotonic() + Duration::from_secs_f64(seconds.max(0.0));
    let started = keystone::clock::monotonic();
    let mut workers = Vec::with_capacity(args.concurrency.max(1));
    for worker in 0..args.concurrency.max(1) {
        let channel = channels[worker % channels.len()].clone();
        let fixtures = fixtures.clone();
        let scenario = scenario.to_owned();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut state = WorkerState::default();
            if scenario == "refresh" {
                state.refresh_token = fixtures
                    .sessions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
            }
            let mut next = worker;
            while keystone::clock::monotonic() < until {
                // What a call needs first (a session to refresh) is set up untimed.
                if let Err(code) = prepare(&channel, &fixtures, &scenario, next, &mut state).await {
                    *errors.entry(format!("setup {code:?}")).or_default() += 1;
                    next = next.wrapping_add(1);
                    continue;
                }
                let call = keystone::clock::monotonic();
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
            let ended = keystone::clock::monotonic();
            if let Some(session) = state.refresh_token.take() {
                fixtures
                    .sessions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(session);
            }
            (latencies, errors, ended)
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
pub(crate) struct Sample {
    latencies: Vec<u64>,
    errors: BTreeMap<String, u64>,
    elapsed: f64,
}

impl Sample {
    pub(crate) fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.elapsed += other.elapsed;
    }

    pub(crate) fn calls_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.max(f64::EPSILON)
    }
}

/// Calls/s and percentiles of one scenario.
pub(crate) fn summarize(scenario: &str, sample: Sample) -> Outcome {
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
        pgbench_tps: None,
        ratio_to_pgbench: None,
        flood: None,
        server_cpu_seconds: None,
        server_cpu_us_per_call: None,
        server_peak_rss_mib: None,
    }
}

/// Calls at a steady `rate` for `seconds` (open loop: a call is sent on schedule whether or
/// not the earlier ones answered); each call's latency, from its scheduled start, and the
/// errors per code.
pub(crate) async fn steady<F, C>(
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
    let until = keystone::clock::monotonic() + Duration::from_secs_f64(seconds.max(0.0));
    let mut calls = Vec::new();
    let mut n = 0;
    while keystone::clock::monotonic() < until {
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
pub(crate) async fn flood(
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
    let started = keystone::clock::monotonic();
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
pub(crate) async fn call_once(
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
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "token-exchange" => auth
            .issue_token(IssueTokenRequest {
                grant: Some(Grant::TokenExchange(TokenExchangeGrant {
                    subject_token: fixtures.exchange.subject_token.clone(),
                    subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
                    client_id: fixtures.exchange.client_id.clone(),
                    client_secret: fixtures.exchange.secret.clone(),
                    ..Default::default()
                })),
                audience: "bench-downstream".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "client-credentials-mtls" => {
            let Some(client_id) = &fixtures.mtls_client_id else {
                return Err(tonic::Code::FailedPrecondition);
            };
            auth.issue_token(IssueTokenRequest {
                grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                    client_id: client_id.clone(),
                    client_secret: String::new(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
        // A client assertion: a pod's service-account token (used again and again), or one
        // signed by the client's own key (each used once).
        "client-credentials-federated" | "client-credentials-pkjwt" => {
            let (client_id, assertion) = if scenario == "client-credentials-federated" {
                let Some(federated) = &fixtures.federated else {
                    return Err(tonic::Code::FailedPrecondition);
                };
                (federated.client_id.clone(), federated.token.clone())
            } else {
                let Some(pkjwt) = &fixtures.pkjwt else {
                    return Err(tonic::Code::FailedPrecondition);
                };
                let Some(assertion) = pkjwt.assertions.take() else {
                    return Ok(false);
                };
                (String::new(), assertion)
            };
            auth.issue_token(IssueTokenRequest {
                grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                    client_id,
                    client_assertion: assertion,
                    client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                        .into(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
        "authenticate-dpop" => {
            let Some(dpop) = &fixtures.dpop else {
                return Err(tonic::Code::FailedPrecondition);
            };
            let Some(proof) = dpop.proofs.take() else {
                return Ok(false);
            };
            auth.authenticate(AuthenticateRequest {
                token: dpop.token.clone(),
                dpop_proof: proof,
                http_method: "GET".to_owned(),
                http_uri: crate::dpop::RESOURCE.to_owned(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
        "password" => login(&mut auth, fixtures, n).await.map(|_| ()),
        "tls-handshake" | "tls-resumed" => {
            let Some(tls) = &fixtures.tls else {
                return Err(tonic::Code::FailedPrecondition);
            };
            let resuming = if scenario == "tls-resumed" {
                // `prepare` made it.
                Some(
                    state
                        .tls_resuming
                        .as_ref()
                        .ok_or(tonic::Code::FailedPrecondition)?,
                )
            } else {
                None
            };
            return tls.handshake(resuming).await.map(|()| true);
        }
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
pub(crate) async fn prepare(
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
    if scenario == "tls-resumed"
        && state.tls_resuming.is_none()
        && let Some(tls) = &fixtures.tls
    {
        // A first, full handshake gives the worker a session to resume.
        let resuming = tls.resuming().map_err(|_| tonic::Code::Internal)?;
        match tls.handshake(Some(&resuming)).await {
            Ok(()) | Err(tonic::Code::FailedPrecondition) => {}
            Err(code) => return Err(code),
        }
        state.tls_resuming = Some(resuming);
    }
    Ok(())
}

/// An Envoy `CheckRequest` for `GET /orders` with the token as a bearer.
pub(crate) fn check_request(token: &str) -> CheckRequest {
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
