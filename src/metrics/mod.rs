//! Prometheus metrics, served at `GET /metrics` on the HTTP listener, and, with
//! `log.otlp_endpoint`, the same metrics pushed over OTLP ([`otlp`]). The `metrics` facade
//! keeps one recorder per process (its design, and the one global Keystone has): the first
//! [`install`] sets it up, later ones (several servers in one test process) share it.
//!
//! Names (the Grafana dashboard in `helm/keystone/dashboards` reads them; a test checks that
//! each one it reads exists; `docs/operations.md` says what each means):
//! `keystone_grpc_requests_total{method,code}`, `keystone_grpc_request_duration_seconds
//! {method}`, `keystone_http_requests_total{route,method,status}`,
//! `keystone_http_request_duration_seconds{route}`, `keystone_tokens_issued_total{grant}`,
//! `keystone_authentication_failures_total{reason}`, `keystone_rate_limited_total{limit}`,
//! `keystone_password_hash_wait_seconds`, `keystone_password_hash_queue`,
//! `keystone_password_hash_refused_total`, `keystone_revocations`,
//! `keystone_revocation_staleness_seconds`, `keystone_database_up`, `keystone_redis_up`,
//! `keystone_signing_key_age_seconds`, `keystone_connections{listener}`,
//! `keystone_connections_refused_total{listener,reason}`,
//! `keystone_tls_handshake_failures_total{listener}`, `keystone_tls_reloads_total`,
//! `keystone_audit_events_written_total`, `keystone_audit_events_lost_total`,
//! `keystone_dpop_proofs_unconfirmed_total`, `keystone_client_assertions_unconfirmed_total`,
//! `keystone_retention_deleted_total{table}`, `keystone_federation_key_fetches_total{issuer,
//! outcome}`.
//!
//! Layer: adapter. Uses nothing of Keystone's; the adapters and the app install and feed it.

mod http;
mod otlp;

pub use self::http::{HttpRequests, method_name};

use std::{
    sync::OnceLock,
    task::{Context, Poll},
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The histograms' buckets, in seconds: from a cached `Authenticate` (tenths of a
/// millisecond) to a password hash waiting its turn (seconds).
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// Installs the Prometheus recorder (once per process) and returns its handle; `None` if
/// another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    install_with(None)
}

/// [`install`], with every metric also recorded on `otlp` (an OpenTelemetry meter whose
/// provider pushes them to a collector). Only the first install of a process decides: a
/// meter given later is not used, and a warning says so.
pub fn install_with(otlp: Option<opentelemetry::metrics::Meter>) -> Option<PrometheusHandle> {
    let mut otlp = otlp;
    let handle = HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            let installed = match otlp.take() {
                None => metrics::set_global_recorder(recorder).map_err(|error| error.to_string()),
                Some(meter) => metrics::set_global_recorder(
                    metrics_util::layers::FanoutBuilder::default()
                        .add_recorder(recorder)
                        .add_recorder(otlp::OtlpRecorder::new(meter, BUCKETS))
                        .build(),
                )
                .map_err(|error| error.to_string()),
            };
            match installed {
                Ok(()) => {
                    // The counters of rare events exist from the start, at zero, so that a
                    // dashboard or an alert reading them sees 0 rather than nothing.
                    for name in [
                        "keystone_password_hash_refused_total",
                        "keystone_audit_events_written_total",
                        "keystone_audit_events_lost_total",
                    ] {
                        metrics::counter!(name).increment(0);
                    }
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .clone();
    if otlp.is_some() {
        tracing::warn!("metrics were being recorded already: they are not exported over OTLP");
    }
    handle
}

/// Drains histogram samples into their summaries; run it periodically (the upkeep loop does),
/// so that memory stays bounded when nobody scrapes `/metrics`.
pub fn run_upkeep() {
    if let Some(Some(handle)) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// How a call observed by a [`RedLayer`] ended.
#[derive(Debug)]
pub enum Outcome<'a, R> {
    /// Answered (its status may still say that it failed).
    Answered(&'a ::http::Response<R>),
    /// Shed by the concurrency limit before any service saw it.
    Shed,
    /// The layers below failed it without an answer.
    Failed,
}

/// What a [`RedLayer`] records of one call: what it keeps from the request, and what it
/// counts once the call has ended.
pub trait Observe: Clone {
    /// Kept from the request until the answer (its labels).
    type Call: Send + 'static;

    /// Reads the request before it goes in.
    fn begin<B>(&self, request: &::http::Request<B>) -> Self::Call;

    /// Counts the outcome, `elapsed` after the request came.
    fn end<R>(call: Self::Call, outcome: Outcome<'_, R>, elapsed: Duration);
}

/// Rate, errors and duration of every call, as `O` labels them: [`RedLayer::grpc`] and
/// [`RedLayer::http`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RedLayer<O> {
    observe: O,
}

impl RedLayer<GrpcCalls> {
    /// `keystone_grpc_requests_total{method,code}` and
    /// `keystone_grpc_request_duration_seconds{method}`.
    pub fn grpc() -> Self {
        Self { observe: GrpcCalls }
    }
}

impl RedLayer<HttpRequests> {
    /// `keystone_http_requests_total{route,method,status}` and
    /// `keystone_http_request_duration_seconds{route}`. Put it on the router with
    /// `Router::layer`, outside the limits, so that a request they refuse is counted too.
    pub fn http() -> Self {
        Self {
            observe: HttpRequests,
        }
    }
}

impl<S, O: Clone> Layer<S> for RedLayer<O> {
    type Service = Red<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Red {
            inner,
            observe: self.observe.clone(),
        }
    }
}

/// The service of [`RedLayer`].
#[derive(Debug, Clone)]
pub struct Red<S, O> {
    inner: S,
    observe: O,
}

impl<S, O, B, R> Service<::http::Request<B>> for Red<S, O>
where
    S: Service<::http::Request<B>, Response = ::http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    O: Observe,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ::http::Request<B>) -> Self::Future {
        let observed = self.observe.begin(&request);
        let started = crate::clock::monotonic();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let outcome = match &result {
                Ok(response) => Outcome::Answered(response),
                Err(error) if is_overload(error) => Outcome::Shed,
                Err(_) => Outcome::Failed,
            };
            O::end(observed, outcome, started.elapsed());
            result
        })
    }
}

/// Whether `error` is the load shedder's refusal (tonic answers it `RESOURCE_EXHAUSTED`).
fn is_overload<E: 'static>(error: &E) -> bool {
    let error = error as &dyn std::any::Any;
    error.is::<tower::load_shed::error::Overloaded>()
        || error
            .downcast_ref::<tower::BoxError>()
            .is_some_and(|error| error.is::<tower::load_shed::error::Overloaded>())
}

/// Labels gRPC calls by method and status code.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcCalls;

impl Observe for GrpcCalls {
    type Call = String;

    fn begin<B>(&self, request: &::http::Request<B>) -> String {
        // `/package.Service/Method` → `Service/Method`.
        request
            .uri()
            .path()
            .rsplit('/')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|part| part.rsplit('.').next().unwrap_or(part))
            .collect::<Vec<_>>()
            .join("/")
    }

    fn end<R>(method: String, outcome: Outcome<'_, R>, elapsed: Duration) {
        // An error travels in the headers (trailers-only); a success's status comes in the
        // trailers, after the body: counted as OK. A shed call is answered
        // RESOURCE_EXHAUSTED by tonic.
        let (answered, code) = match outcome {
            Outcome::Answered(response) => (
                true,
                response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or("OK", |code| code_name(tonic::Code::from(code))),
            ),
            Outcome::Shed => (false, "RESOURCE_EXHAUSTED"),
            Outcome::Failed => (false, "UNAVAILABLE"),
        };
        // Paths come from callers: only a call a service answered keeps its path as a label
        // (an unknown path is UNIMPLEMENTED; a shed call was never routed), so that nobody
        // can grow the series without bound.
        let method = if !answered || code == "UNIMPLEMENTED" {
            "unknown".to_owned()
        } else {
            method
        };
        metrics::counter!("keystone_grpc_requests_total", "method" => method.clone(), "code" => code)
            .increment(1);
        metrics::histogram!("keystone_grpc_request_duration_seconds", "method" => method)
            .record(elapsed.as_secs_f64());
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
