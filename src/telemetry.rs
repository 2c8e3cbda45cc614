//! The tracing subscriber: readable lines by default, JSON by setting (one object per line),
//! and, with `log.otlp_endpoint`, spans and metrics exported to an OpenTelemetry collector
//! (OTLP over gRPC): the spans as they end, the metrics every `log.otlp_metrics_interval`.
//! The output sink is a parameter so that tests can capture a whole run's logs and search
//! them for secrets.
//!
//! Layer: the top. Uses [`crate::config`] and [`crate::metrics`] (the meter it feeds).

use opentelemetry::{metrics::MeterProvider as _, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::{Sampler, SdkTracerProvider},
};
use tracing_subscriber::{
    EnvFilter, Layer as _, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{LogFormat, LogSettings};

/// Keeps the exporters running; dropping it flushes what is left.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("keystone: flushing traces failed: {error}");
        }
        if let Some(provider) = self.metrics.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("keystone: flushing metrics failed: {error}");
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
    let (traces, metrics) = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let resource = Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            // Every span is kept, whatever a caller's `traceparent` says of its own sampling:
            // a caller must not be able to hide its calls from Keystone's traces.
            let traces = SdkTracerProvider::builder()
                .with_sampler(Sampler::AlwaysOn)
                .with_batch_exporter(spans)
                .with_resource(resource.clone())
                .build();
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let metrics = SdkMeterProvider::builder()
                .with_reader(
                    PeriodicReader::builder(exporter)
                        .with_interval(settings.otlp_metrics_interval)
                        .build(),
                )
                .with_resource(resource)
                .build();
            (Some(traces), Some(metrics))
        }
        None => (None, None),
    };
    let tracing = traces
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
        .with(tracing)
        .try_init()?;
    // Before anything records a metric (the first recorder of a process is the one), after
    // the subscriber (so that a warning of its is printed).
    crate::metrics::install_with(metrics.as_ref().map(|provider| provider.meter("keystone")));
    Ok(Telemetry { traces, metrics })
}
