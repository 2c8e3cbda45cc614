//! OpenTelemetry export: with `log.otlp_endpoint`, the real binary sends its spans (one per
//! RPC and per HTTP request) and its metrics to a collector over OTLP/gRPC, and a call that
//! carries a W3C `traceparent` continues the caller's trace. The collector here is a stub the
//! test serves.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    resource::v1::Resource,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    cli::keystone,
    helpers::{TestDatabase, address_after, http},
};

/// What the stub collector received.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// (service.name, metric name).
    metrics: Arc<Mutex<Vec<(String, String)>>>,
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = service_name(resource.resource.as_ref());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            let service = service_name(resource.resource.as_ref());
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    metrics.push((service.clone(), metric.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const HTTP_CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const UNSAMPLED_TRACE: &str = "5c1d1f0e9a3b4c2d8e7f6a5b4c3d2e1f";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn spans_and_metrics_go_to_the_otlp_collector_under_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn({
        let collector = collector.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        }
    });

    let database = TestDatabase::fresh_sqlite();
    let mut child = keystone()
        .arg("serve")
        .env("KEYSTONE_DATABASE_URL", database.url())
        .env("KEYSTONE_GRPC_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_HTTP_ADDR", "127.0.0.1:0")
        .env("KEYSTONE_SECRETS__PEPPER", crate::helpers::TEST_PEPPER)
        .env(
            "KEYSTONE_LOG__OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("KEYSTONE_LOG__SERVICE_NAME", "keystone-under-test")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (http_addr, grpc_addr) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut http_addr = None;
        while let Some(line) = rx.recv().await {
            if let Some(addr) = address_after(&line, "serving HTTP on ") {
                http_addr = Some(addr);
            }
            if let Some(addr) = address_after(&line, "serving gRPC on ") {
                return (http_addr.expect("HTTP is announced first"), addr);
            }
        }
        panic!("keystone exited before serving");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    // A call from inside the caller's trace, as its gRPC instrumentation sends it.
    let mut request = tonic::Request::new(keystone::proto::pb::AuthenticateRequest {
        token: "not-a-token".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
            .parse()
            .unwrap(),
    );
    let _ = keystone::proto::pb::auth_client::AuthClient::new(channel)
        .authenticate(request)
        .await;
    // And an HTTP request from another trace, as a mesh's sidecar sends it.
    let traceparent = format!("00-{HTTP_CALLER_TRACE}-{CALLER_SPAN}-01");
    let jwks = http(
        http_addr,
        "GET",
        "/.well-known/jwks.json",
        &[("traceparent", traceparent.as_str())],
        "",
    )
    .await;
    assert_eq!(jwks.status, 200);
    // A caller that says it does not sample its own trace cannot hide the call from
    // Keystone's: the span is kept, in the caller's trace.
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00");
    let discovery = http(
        http_addr,
        "GET",
        "/.well-known/openid-configuration",
        &[("traceparent", unsampled.as_str())],
        "",
    )
    .await;
    assert_eq!(discovery.status, 200);
    // A header that does not parse starts a trace of its own, and nothing fails.
    let garbled = http(
        http_addr,
        "GET",
        "/healthz",
        &[("traceparent", "00-not-a-trace-01")],
        "",
    )
    .await;
    assert_eq!(garbled.status, 200);

    // SIGTERM: the exporters flush on the way out, spans and metrics alike.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());

    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans
            .iter()
            .all(|span| span.service.contains("keystone-under-test")),
        "{spans:?}"
    );
    // The call's own span continues the caller's trace, under the caller's span; what
    // Keystone did for it (Authenticate) sits in the same trace.
    let rpc = spans
        .iter()
        .find(|span| span.name == "rpc" && span.trace_id == hex(CALLER_TRACE))
        .unwrap_or_else(|| panic!("the gRPC call's span is in the caller's trace: {spans:?}"));
    assert_eq!(rpc.parent_span_id, hex(CALLER_SPAN));
    assert!(
        spans
            .iter()
            .any(|span| span.name == "Authenticate" && span.trace_id == hex(CALLER_TRACE)),
        "{spans:?}"
    );
    let request = spans
        .iter()
        .find(|span| span.name == "GET /.well-known/jwks.json")
        .unwrap_or_else(|| panic!("the HTTP request has a span named by its route: {spans:?}"));
    assert_eq!(request.trace_id, hex(HTTP_CALLER_TRACE));
    assert_eq!(request.parent_span_id, hex(CALLER_SPAN));
    assert!(
        spans
            .iter()
            .any(|span| span.name == "GET /.well-known/openid-configuration"
                && span.trace_id == hex(UNSAMPLED_TRACE)),
        "the unsampled caller's request is traced all the same: {spans:?}"
    );
    let own = spans
        .iter()
        .find(|span| span.name == "GET /healthz")
        .unwrap_or_else(|| panic!("the request with a garbled header has a span: {spans:?}"));
    assert!(own.parent_span_id.is_empty(), "{own:?}");
    assert_ne!(own.trace_id, vec![0; 16]);

    // The metrics Prometheus scrapes, pushed too, under the same service name.
    let metrics = collector.metrics.lock().unwrap().clone();
    for name in [
        "keystone_grpc_requests_total",
        "keystone_grpc_request_duration_seconds",
        "keystone_http_requests_total",
        "keystone_http_request_duration_seconds",
        "keystone_authentication_failures_total",
        "keystone_connections",
    ] {
        assert!(
            metrics
                .iter()
                .any(|(service, metric)| metric == name && service.contains("keystone-under-test")),
            "{name} was exported: {metrics:?}"
        );
    }
}
