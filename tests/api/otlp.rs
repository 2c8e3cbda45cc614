//! Trace export: with `log.otlp_endpoint`, the real binary sends its spans (one per RPC) to an
//! OpenTelemetry collector over OTLP/gRPC. The collector here is a stub the test serves.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{cli::keystone, helpers::TestDatabase};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn spans_go_to_the_otlp_collector_when_one_is_set() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn({
        let collector = collector.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
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
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.split("serving gRPC on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("keystone exited before serving");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
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
    let _ = keystone::proto::pb::auth_client::AuthClient::new(channel)
        .authenticate(keystone::proto::pb::AuthenticateRequest {
            token: "not-a-token".into(),
            ..Default::default()
        })
        .await;

    // SIGTERM: the exporter flushes on the way out.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(|(_, name)| name == "Authenticate"),
        "{spans:?}"
    );
    assert!(
        spans
            .iter()
            .all(|(service, _)| service.contains("keystone-under-test")),
        "{spans:?}"
    );
}
