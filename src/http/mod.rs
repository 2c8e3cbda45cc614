//! The HTTP listener (`http_addr`): what meshes, gateways and OAuth libraries expect beside
//! gRPC. Discovery (`/.well-known/jwks.json`, `/.well-known/openid-configuration`), the OAuth
//! endpoints (`/oauth2/token`, `/oauth2/introspect`, `/oauth2/revoke`) and the probes
//! (`/healthz`, `/readyz`), and Prometheus metrics (`/metrics`). Every verdict comes from the
//! same [`AuthService`] as gRPC's.
//!
//! Layer: adapter. Uses [`crate::service`], [`crate::listener`], [`crate::store`] (for
//! `/readyz`) and [`crate::token`] (the JWKS); decides nothing itself.

pub(crate) mod oauth;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    error_handling::HandleErrorLayer,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{client_ip::TrustedProxies, service::auth::AuthService, store::Store, token::KeyRing};

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The auth use cases.
    pub auth: AuthService,
    /// For `/readyz`.
    pub store: Store,
    /// For `/readyz`: a signing key must be loaded.
    pub ring: KeyRing,
    /// How long the JWKS may be cached: never longer than new keys are published ahead.
    pub jwks_max_age: Duration,
    /// The Prometheus recorder, if this process has it.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// True once shutdown has begun: `/readyz` says not ready then.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Requests handled at once (`server.concurrency_limit`); more are refused with 503.
    pub concurrency_limit: usize,
    /// Requests are cut after this long (`server.request_timeout`).
    pub request_timeout: Duration,
    /// Whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// How each listener takes connections (`server.max_connections`…).
    pub connection_limits: crate::listener::ConnectionLimits,
    /// How long a connection may wait for a request's head (`server.http_idle_timeout`).
    pub http_idle_timeout: Duration,
}

/// Which routes an HTTP listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything (no separate admin listener).
    All,
    /// All but `/metrics`.
    Public,
    /// `/metrics` and the probes (`admin_http_addr`).
    Admin,
}

/// The HTTP routes.
pub fn router(state: HttpState, routes: Routes) -> Router {
    // The gRPC side's protections: a deadline, a bound on requests at once, and shedding
    // (503) rather than queueing when the bound is reached. `Router::layer` wraps each route
    // on its own, so each call makes one semaphore for all the routes it wraps: one for the
    // OAuth and discovery endpoints together, another for the probes and `/metrics`, so that a
    // flood of the first never fails a liveness probe nor hides the metrics.
    let limits = || {
        tower::ServiceBuilder::new()
            .layer(HandleErrorLayer::new(refused))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                state.concurrency_limit.max(1),
            ))
            .timeout(state.request_timeout)
    };
    let mut probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if routes != Routes::Public {
        probes = probes.route("/metrics", get(metrics));
    }
    let mut router = probes.layer(limits());
    if routes != Routes::Admin {
        let endpoints = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/oauth-authorization-server", get(discovery))
            .route("/oauth2/token", post(oauth::token))
            .route("/oauth2/introspect", post(oauth::introspect))
            .route("/oauth2/revoke", post(oauth::revoke));
        router = router.merge(endpoints.layer(limits()));
    }
    let proxies = state.trusted_proxies.clone();
    router
        // Outside the limits, so that what they refuse is counted and traced too.
        .layer(crate::metrics::RedLayer::http())
        .layer(axum::middleware::from_fn(traced))
        .layer(tower::util::MapRequestLayer::new(
            move |request: axum::extract::Request| proxies.tag(request),
        ))
        .with_state(Arc::new(state))
}

/// A span per request, named by the route (never the raw path) and the method (an unknown
/// one is `other`), continuing the caller's trace when the request carries a W3C
/// `traceparent`.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unknown", |path| path.as_str());
    let method = crate::metrics::method_name(request.method());
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        method,
        route,
    );
    crate::trace_context::continue_trace(&span, request.headers());
    tracing::Instrument::instrument(next.run(request), span).await
}

/// The answer to a request the limits refused.
async fn refused(error: tower::BoxError) -> Response {
    let (status, description) = if error.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, "the request took too long")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is saturated; retry shortly",
        )
    };
    (
        status,
        Json(json!({ "error": "temporarily_unavailable", "error_description": description })),
    )
        .into_response()
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then lets the requests in flight
/// finish. A request's head must arrive within `server.http_idle_timeout` of the connection
/// being ready for one, so slow heads and idle keep-alive connections give their slot back
/// (see [`crate::listener`]). HTTP/2 is not spoken here: gRPC has its own port.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let name = if routes == Routes::Admin {
        "admin_http"
    } else {
        "http"
    };
    let mut connections =
        crate::listener::Connections::start(listener, name, state.connection_limits.clone());
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(state.http_idle_timeout);
    let app = router(state, routes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Dropped (when this task is aborted past the shutdown grace), it stops every connection.
    let mut serving = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            () = &mut shutdown => break,
            connection = connections.next() => connection,
        };
        while serving.try_join_next().is_some() {}
        let peer = connection.peer().clone();
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer.addr));
                request.extensions_mut().insert(peer.clone());
                request
            },
        );
        let served = graceful.watch(http1.serve_connection(
            hyper_util::rt::TokioIo::new(connection),
            hyper_util::service::TowerToHyperService::new(service),
        ));
        serving.spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(error = %error, "an HTTP connection ended with an error");
            }
        });
    }
    // No more connections: the listening socket closes.
    drop(connections);
    graceful.shutdown().await;
    Ok(())
}

/// RFC 7517: the public keys. Cacheable for less than the pre-publication lead, so that a
/// cache always holds a key before it signs.
async fn jwks(State(state): State<Arc<HttpState>>) -> Response {
    let keys = state.auth.jwks();
    let mut response = Json(json!({ "keys": keys })).into_response();
    let max_age = state.jwks_max_age.as_secs();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// RFC 8414 authorization server metadata (also served under the OpenID Connect name, where
/// libraries look for it).
async fn discovery(State(state): State<Arc<HttpState>>) -> Response {
    let issuer = state.auth.issuer().trim_end_matches('/').to_owned();
    let algorithms: Vec<&str> = state
        .auth
        .jwks()
        .iter()
        .map(|key| key.alg)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Json(json!({
        "issuer": state.auth.issuer(),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "grant_types_supported": [
            "client_credentials",
            "password",
            "refresh_token",
            oauth::TOKEN_EXCHANGE_GRANT,
        ],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "tls_client_auth",
            "self_signed_tls_client_auth",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": crate::token::dpop::ALGORITHM_NAMES,
        "tls_client_certificate_bound_access_tokens": true,
        "dpop_signing_alg_values_supported": crate::token::dpop::ALGORITHM_NAMES,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "bearer"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "access_token_signing_alg_values_supported": algorithms,
    }))
    .into_response()
}

/// Prometheus text exposition.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not recorded by this process",
        )
            .into_response(),
    }
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: the database answers, a signing key is loaded, and the revocation set is
/// confirmed fresh. 503 naming what is not.
async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let draining = *state.draining.borrow();
    let database = state.store.ping().await.is_ok();
    let keys = state.ring.snapshot().signing.is_some();
    let revocations = state.auth.authenticator().revocations_fresh().is_ok();
    let ready = !draining && database && keys && revocations;
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {
            "draining": draining,
            "database": database,
            "signing_key": keys,
            "revocations": revocations,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
