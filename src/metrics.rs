//! Prometheus metrics, served at `GET /metrics` on the HTTP listener. The `metrics` facade
//! keeps one recorder per process (its design, and the one global Keystone has): the first
//! [`install`] sets it up, later ones (several servers in one test process) share it.
//!
//! Names: `keystone_grpc_requests_total{method,code}`, `keystone_grpc_request_duration_seconds
//! {method}`, `keystone_tokens_issued_total{grant}`, `keystone_authentication_failures_total
//! {reason}`, `keystone_password_hash_wait_seconds`, `keystone_password_hash_queue`,
//! `keystone_revocations`, `keystone_revocation_staleness_seconds`, `keystone_database_up`,
//! `keystone_redis_up`, `keystone_signing_key_age_seconds`.
//!
//! Layer: adapter. Uses nothing of Keystone's; the adapters and the app install and feed it.

use std::{
    sync::OnceLock,
    task::{Context, Poll},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle; `None` if
/// another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .clone()
}

/// Drains histogram samples into their summaries; run it periodically (the upkeep loop does),
/// so that memory stays bounded when nobody scrapes `/metrics`.
pub fn run_upkeep() {
    if let Some(Some(handle)) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// Counts every gRPC call by method and status code, and times it.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // `/package.Service/Method` → `Service/Method`.
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|part| part.rsplit('.').next().unwrap_or(part))
            .collect::<Vec<_>>()
            .join("/");
        let started = crate::clock::monotonic();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            // An error travels in the headers (trailers-only); a success's status comes in the
            // trailers, after the body: counted as OK.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or("OK", |code| code_name(tonic::Code::from(code))),
                Err(_) => "UNAVAILABLE",
            };
            // Paths come from callers: only a call a service answered keeps its path as a label
            // (an unknown path is UNIMPLEMENTED; a shed call was never routed), so that nobody
            // can grow the series without bound.
            let method = if result.is_err() || code == "UNIMPLEMENTED" {
                "unknown".to_owned()
            } else {
                method
            };
            metrics::counter!("keystone_grpc_requests_total", "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("keystone_grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
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
