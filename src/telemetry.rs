//! The tracing subscriber: readable lines by default, JSON by setting, and, with
//! `log.otlp_endpoint`, spans exported to an OpenTelemetry collector (OTLP over gRPC). The
//! output sink is a parameter so that tests can capture a whole run's logs and search them
//! for secrets.
//!
//! Layer: the top. Uses [`crate::config`] only.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{LogFormat, LogSettings};

/// Keeps the trace exporter running; dropping it flushes what is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("keystone: flushing traces failed: {error}");
        }
    }
}

/// Installs the global subscriber, writing to `sink` (with colours only if `ansi`). `RUST_LOG`,
/// when set, overrides the configured filter. Fails if a subscriber is installed already. Call
/// it inside the Tokio runtime: the OTLP exporter runs on it.
pub fn init<W>(settings: &LogSettings, sink: W, ansi: bool) -> anyhow::Result<Telemetry>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => EnvFilter::try_new(filter)?,
        _ => EnvFilter::try_new(&settings.filter)?,
    };
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(settings.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("keystone")));
    let logs = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(sink)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(sink)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()?;
    Ok(Telemetry { provider })
}
