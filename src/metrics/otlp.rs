//! The `metrics` facade on an OpenTelemetry meter, so that what Prometheus scrapes is also
//! pushed over OTLP. Each series (a name and its labels) gets its instrument once, kept in
//! `metrics-util`'s registry: the facade asks the recorder for a handle on every
//! `counter!`, and building an OpenTelemetry instrument each time would cost the hot path
//! a lock and an allocation, and would lose a gauge's value between increments.

use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};
use opentelemetry::{KeyValue, metrics::Meter};

/// Records every metric on an OpenTelemetry meter.
pub(super) struct OtlpRecorder {
    registry: Registry<Key, Instruments>,
}

impl OtlpRecorder {
    /// Histograms get `buckets` (in seconds), as Prometheus does.
    pub(super) fn new(meter: Meter, buckets: &[f64]) -> Self {
        Self {
            registry: Registry::new(Instruments {
                meter,
                buckets: buckets.to_vec(),
            }),
        }
    }
}

impl Recorder for OtlpRecorder {
    // Keystone describes its metrics in the module documentation, not to the recorder.
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |counter| Counter::from_arc(counter.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |gauge| Gauge::from_arc(gauge.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |histogram| Histogram::from_arc(histogram.clone()))
    }
}

/// Makes the instrument of a new series.
struct Instruments {
    meter: Meter,
    buckets: Vec<f64>,
}

impl Storage<Key> for Instruments {
    type Counter = Arc<OtlpCounter>;
    type Gauge = Arc<OtlpGauge>;
    type Histogram = Arc<OtlpHistogram>;

    fn counter(&self, key: &Key) -> Self::Counter {
        Arc::new(OtlpCounter {
            instrument: self.meter.u64_counter(key.name().to_owned()).build(),
            attributes: attributes(key),
        })
    }

    fn gauge(&self, key: &Key) -> Self::Gauge {
        Arc::new(OtlpGauge {
            instrument: self.meter.f64_gauge(key.name().to_owned()).build(),
            attributes: attributes(key),
            value: Mutex::new(0.0),
        })
    }

    fn histogram(&self, key: &Key) -> Self::Histogram {
        let mut builder = self
            .meter
            .f64_histogram(key.name().to_owned())
            .with_boundaries(self.buckets.clone());
        if key.name().ends_with("_seconds") {
            builder = builder.with_unit("s");
        }
        Arc::new(OtlpHistogram {
            instrument: builder.build(),
            attributes: attributes(key),
        })
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|label| KeyValue::new(label.key().to_owned(), label.value().to_owned()))
        .collect()
}

/// A monotonic sum.
pub(super) struct OtlpCounter {
    instrument: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
}

impl CounterFn for OtlpCounter {
    fn increment(&self, value: u64) {
        self.instrument.add(value, &self.attributes);
    }

    // Keystone never sets a counter outright; OpenTelemetry's counters only add.
    fn absolute(&self, _: u64) {}
}

/// A last value. OpenTelemetry's gauges only record, so the value is kept here for the
/// facade's increments (open connections); the lock keeps each change and its record in one
/// order, so the last value recorded is the last value.
pub(super) struct OtlpGauge {
    instrument: opentelemetry::metrics::Gauge<f64>,
    attributes: Vec<KeyValue>,
    value: Mutex<f64>,
}

impl OtlpGauge {
    fn update(&self, change: impl Fn(f64) -> f64) {
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        *value = change(*value);
        self.instrument.record(*value, &self.attributes);
    }
}

impl GaugeFn for OtlpGauge {
    fn increment(&self, value: f64) {
        self.update(|now| now + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|now| now - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

/// A distribution in [`super::BUCKETS`].
pub(super) struct OtlpHistogram {
    instrument: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for OtlpHistogram {
    fn record(&self, value: f64) {
        self.instrument.record(value, &self.attributes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    };

    use super::*;

    /// One series is one instrument whatever the number of handles asked for, and a gauge
    /// moved by increments ends at their sum.
    #[test]
    fn series_keep_their_values_across_handles() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(exporter.clone())
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        let recorder = OtlpRecorder::new(provider.meter("test"), &[0.1, 1.0]);
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        let key = Key::from_parts("requests_total", vec![metrics::Label::new("code", "OK")]);
        for _ in 0..3 {
            recorder.register_counter(&key, &metadata).increment(2);
        }
        let open = Key::from_name("connections");
        recorder.register_gauge(&open, &metadata).increment(1.0);
        recorder.register_gauge(&open, &metadata).increment(1.0);
        recorder.register_gauge(&open, &metadata).decrement(1.0);
        recorder
            .register_histogram(&Key::from_name("wait_seconds"), &metadata)
            .record(0.5);
        provider.force_flush().unwrap();

        let exported = exporter.get_finished_metrics().unwrap();
        let metrics: Vec<_> = exported
            .iter()
            .flat_map(|resource| resource.scope_metrics())
            .flat_map(|scope| scope.metrics())
            .collect();
        let find = |name: &str| {
            metrics
                .iter()
                .find(|metric| metric.name() == name)
                .unwrap_or_else(|| panic!("{name} exported"))
        };
        match find("requests_total").data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                let points: Vec<_> = sum.data_points().collect();
                assert_eq!(points.len(), 1);
                assert_eq!(points[0].value(), 6);
                assert!(
                    points[0]
                        .attributes()
                        .any(|kv| kv.key.as_str() == "code" && kv.value.as_str() == "OK")
                );
            }
            other => panic!("a sum: {other:?}"),
        }
        match find("connections").data() {
            AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
                let points: Vec<_> = gauge.data_points().collect();
                assert_eq!(points[0].value(), 1.0);
            }
            other => panic!("a gauge: {other:?}"),
        }
        let histogram = find("wait_seconds");
        assert_eq!(histogram.unit(), "s");
        match histogram.data() {
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                let points: Vec<_> = histogram.data_points().collect();
                assert_eq!(points[0].count(), 1);
                assert_eq!(points[0].bounds().collect::<Vec<_>>(), vec![0.1, 1.0]);
            }
            other => panic!("a histogram: {other:?}"),
        }
    }
}
