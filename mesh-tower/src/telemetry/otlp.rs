//! OTLP export: the mesh's spans and Istio's standard metrics, sent to an OpenTelemetry
//! collector (or Jaeger, Tempo, …) over OTLP/gRPC or OTLP/HTTP with protobuf bodies.
//!
//! The request path never touches an OpenTelemetry SDK: it fills a plain [`SpanRecord`]
//! and hands it to [`SpanExporter::submit`], which only tries to push it on a bounded
//! queue — the batch span processor's, 2048 spans by default, dropped and counted when
//! full, so that a slow collector never slows a request. A background task batches the
//! queue (512 spans, or whatever is there every 5 s; it is woken only for a whole batch or
//! by its timer, so that a submitted span wakes no other thread), groups the spans by [`Resource`]
//! (one per workload), encodes them with `opentelemetry-proto`'s messages and sends them.
//! [`MetricsExporter`] reads the [`Metrics`] registry every 60 s and sends each series
//! as cumulative OTLP points under Istio's Prometheus names (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, …, `istio_request_messages_total` and
//! `istio_response_messages_total` for gRPC), so that Istio's dashboards and queries keep
//! working on a backend fed through a collector.
//!
//! [`OtlpEnv::from_env`] reads the standard variables (`OTEL_EXPORTER_OTLP_*`,
//! `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_*`). An export that fails is counted and logged —
//! at most once per 10 s per exporter — and never retried: the next batch is the next
//! try, so an unreachable collector costs one bounded request per batch.
//!
//! gRPC runs over HTTP/2 with prior knowledge through hyper-util's client and tonic's
//! codec, without tonic's own transport (the mesh connects by itself); OTLP/HTTP is a
//! `POST` of `application/x-protobuf`. Endpoints are plaintext `http://` URLs: a
//! collector on the same host or on the cluster's network.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::SystemTime;
//! use mesh_tower::telemetry::otlp::{
//!     OtlpEnv, Resource, SpanExporter, SpanKind, SpanRecord,
//! };
//!
//! let env = OtlpEnv::from_env(|name| std::env::var(name).ok())?;
//! if let Some(config) = env.traces {
//!     let spans = SpanExporter::start(config, env.batch)?;
//!     let resource = Arc::new(Resource::new([("service.name", "reviews.default")]));
//!     let now = SystemTime::now();
//!     spans.submit(SpanRecord {
//!         trace_id: [1; 16],
//!         span_id: [2; 8],
//!         parent_span_id: None,
//!         trace_state: None,
//!         name: "reviews.default.svc.cluster.local:9080/*".into(),
//!         kind: SpanKind::Server,
//!         start: now,
//!         end: now,
//!         attributes: vec![("http.status_code", 200.into())],
//!         error: false,
//!         resource,
//!     });
//!     spans.force_flush().await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod config;
mod transport;

pub use config::{
    BatchConfig, MetricReaderConfig, OtlpConfig, OtlpConfigError, OtlpEnv, Protocol, Signal,
};
use transport::Transport;

use super::metrics::{BUCKETS, HistogramReading, MessageReading, Metrics, SeriesReading};

use pb::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use pb::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use pb::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};

/// The instrumentation scope the mesh's spans and metrics are reported under.
pub const SCOPE_NAME: &str = "mesh-rs";

/// How often a failing exporter may log its failures.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why an export failed, or an exporter could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    /// No connection, or it broke.
    #[error("OTLP export to {endpoint} failed: {message}")]
    Transport {
        /// Where it was sent.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The collector refused it over OTLP/HTTP.
    #[error("OTLP export to {endpoint} failed: HTTP {status}{}", detail(message))]
    Http {
        /// Where it was sent.
        endpoint: String,
        /// The response's status.
        status: u16,
        /// The collector's message, if it gave one.
        message: String,
    },
    /// The collector answered a gRPC error.
    #[error(
        "OTLP export to {endpoint} failed: gRPC status {code}{}",
        detail(message)
    )]
    Grpc {
        /// Where it was sent.
        endpoint: String,
        /// The `grpc-status`.
        code: i32,
        /// The `grpc-message`.
        message: String,
    },
    /// No answer in time.
    #[error("OTLP export to {endpoint} failed: no answer within {timeout:?}")]
    Timeout {
        /// Where it was sent.
        endpoint: String,
        /// The time it had.
        timeout: Duration,
    },
    /// The exporter's task has stopped (its runtime shut down).
    #[error("the OTLP exporter has stopped")]
    Stopped,
    /// An exporter was started outside a tokio runtime.
    #[error("an OTLP exporter needs a tokio runtime to run in")]
    NoRuntime,
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// An error with its sources, `: `-separated.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// Logs an exporter's failures at most once per [`COMPLAINT_INTERVAL`].
#[derive(Debug)]
struct Complaints {
    signal: Signal,
    last: Option<Instant>,
    quiet: u64,
}

impl Complaints {
    fn new(signal: Signal) -> Self {
        Complaints {
            signal,
            last: None,
            quiet: 0,
        }
    }

    fn failed(&mut self, error: &OtlpError, items: u64) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < COMPLAINT_INTERVAL)
        {
            self.quiet += 1;
            return;
        }
        tracing::warn!(
            signal = self.signal.as_str(),
            %error,
            items,
            failures_not_logged = self.quiet,
            "OTLP export failed; the data is dropped"
        );
        self.last = Some(now);
        self.quiet = 0;
    }

    fn rejected(&mut self, rejected: i64, message: &str) {
        if rejected > 0 || !message.is_empty() {
            tracing::debug!(
                signal = self.signal.as_str(),
                rejected,
                message,
                "the OTLP collector rejected part of an export"
            );
        }
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    }
}

// ---------------------------------------------------------------------------------------
// Spans
// ---------------------------------------------------------------------------------------

/// The attributes of the process and workload a span or metric comes from
/// (`service.name`, `k8s.namespace.name`, …): one value per workload, shared by its spans.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resource {
    /// The attributes, in order.
    pub attributes: Vec<(String, String)>,
}

impl Resource {
    /// A resource with `attributes`.
    pub fn new<K: Into<String>, V: Into<String>>(
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Resource {
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of attribute `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn encode(&self) -> pb::resource::v1::Resource {
        pb::resource::v1::Resource {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| string_attribute(k, v))
                .collect(),
            ..pb::resource::v1::Resource::default()
        }
    }
}

/// Which side of a request a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// The caller's (the outbound side, the gateway's).
    Client,
    /// The server's (the inbound side).
    Server,
}

/// A span attribute's value. The variants let the request path pass what it has
/// without copying: a constant, a string of its own, or one shared by configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    /// A constant string.
    Static(&'static str),
    /// An owned string.
    Str(String),
    /// A shared string (a workload's or a service's name).
    Shared(Arc<str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl AttributeValue {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::Static(s) => Some(s),
            AttributeValue::Str(s) => Some(s),
            AttributeValue::Shared(s) => Some(s),
            AttributeValue::Int(_) | AttributeValue::Bool(_) => None,
        }
    }

    fn encode(self) -> AnyValue {
        let value = match self {
            AttributeValue::Static(s) => any_value::Value::StringValue(s.to_string()),
            AttributeValue::Str(s) => any_value::Value::StringValue(s),
            AttributeValue::Shared(s) => any_value::Value::StringValue(s.to_string()),
            AttributeValue::Int(i) => any_value::Value::IntValue(i),
            AttributeValue::Bool(b) => any_value::Value::BoolValue(b),
        };
        AnyValue { value: Some(value) }
    }
}

impl From<&'static str> for AttributeValue {
    fn from(s: &'static str) -> Self {
        AttributeValue::Static(s)
    }
}

impl From<String> for AttributeValue {
    fn from(s: String) -> Self {
        AttributeValue::Str(s)
    }
}

impl From<Arc<str>> for AttributeValue {
    fn from(s: Arc<str>) -> Self {
        AttributeValue::Shared(s)
    }
}

impl From<i64> for AttributeValue {
    fn from(i: i64) -> Self {
        AttributeValue::Int(i)
    }
}

impl From<bool> for AttributeValue {
    fn from(b: bool) -> Self {
        AttributeValue::Bool(b)
    }
}

/// One finished span, as the request path records it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// The trace it belongs to.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// Its parent's id; `None` for a trace's root.
    pub parent_span_id: Option<[u8; 8]>,
    /// The W3C `tracestate` it was recorded with.
    pub trace_state: Option<String>,
    /// Its name (Envoy's: the route's host and path).
    pub name: String,
    /// Which side it is.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// The request failed (status `ERROR`; otherwise the status is unset, as Envoy's).
    pub error: bool,
    /// The workload it comes from.
    pub resource: Arc<Resource>,
}

impl SpanRecord {
    fn encode(self) -> pb::trace::v1::Span {
        use pb::trace::v1::{Span, Status, span, status};
        let kind = match self.kind {
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Server => span::SpanKind::Server,
        };
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state.unwrap_or_default(),
            parent_span_id: self.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            // The W3C trace flags: an exported span was sampled.
            flags: 0x01,
            name: self.name,
            kind: kind as i32,
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(self.end),
            attributes: self
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue {
                    key: k.to_string(),
                    value: Some(v.encode()),
                    ..KeyValue::default()
                })
                .collect(),
            status: self.error.then(|| Status {
                code: status::StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Span::default()
        }
    }
}

/// The export request of `spans`: one `ResourceSpans` per resource (equal resources
/// together), in the order they first appear, each with one scope.
fn encode_spans(spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Arc<Resource>, Vec<pb::trace::v1::Span>)> = Vec::new();
    for s in spans {
        let at = groups
            .iter()
            .position(|(r, _)| Arc::ptr_eq(r, &s.resource) || **r == *s.resource);
        let resource = s.resource.clone();
        let span = s.encode();
        match at.and_then(|i| groups.get_mut(i)) {
            Some((_, group)) => group.push(span),
            None => groups.push((resource, vec![span])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(r, spans)| pb::trace::v1::ResourceSpans {
                resource: Some(r.encode()),
                scope_spans: vec![pb::trace::v1::ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

#[derive(Debug, Default)]
struct SpanStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
    failed_spans: AtomicU64,
}

/// A request to export what is queued, answered when it is done.
type Flush = oneshot::Sender<Result<(), OtlpError>>;

/// Asks an exporter's task to export now and waits for its answer.
async fn flush_through(flushes: &mpsc::Sender<Flush>) -> Result<(), OtlpError> {
    let (tx, rx) = oneshot::channel();
    flushes.send(tx).await.map_err(|_| OtlpError::Stopped)?;
    rx.await.map_err(|_| OtlpError::Stopped)?
}

/// Exports spans over OTLP in batches (see the module documentation). Cheap to clone;
/// the background task stops, after exporting what is queued, when the last clone is
/// dropped.
#[derive(Debug, Clone)]
pub struct SpanExporter {
    queue: mpsc::Sender<SpanRecord>,
    /// Also how the task learns that every handle is gone: this channel closes.
    flushes: mpsc::Sender<Flush>,
    /// Wakes the task when a whole batch is queued; otherwise it wakes on its timer
    /// only, so that a submitted span does not wake another thread.
    batch_queued: Arc<tokio::sync::Notify>,
    batch_size: usize,
    stats: Arc<SpanStats>,
}

impl SpanExporter {
    /// Starts exporting to `config`'s collector, batching as `batch` says (a size of 0
    /// counts as 1; a batch larger than the queue, as the queue).
    ///
    /// # Errors
    ///
    /// [`OtlpError::NoRuntime`] outside a tokio runtime.
    pub fn start(config: OtlpConfig, batch: BatchConfig) -> Result<Self, OtlpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let queue_size = batch.max_queue_size.max(1);
        let batch = BatchConfig {
            max_queue_size: queue_size,
            max_export_batch_size: batch.max_export_batch_size.clamp(1, queue_size),
            scheduled_delay: batch.scheduled_delay.max(Duration::from_millis(1)),
            export_timeout: batch.export_timeout,
        };
        let (queue, spans) = mpsc::channel(queue_size);
        let (flushes, flush_rx) = mpsc::channel(16);
        let stats = Arc::new(SpanStats::default());
        let batch_queued = Arc::new(tokio::sync::Notify::new());
        let batch_size = batch.max_export_batch_size;
        let task = SpanTask {
            spans,
            flushes: flush_rx,
            batch_queued: batch_queued.clone(),
            transport: Transport::new(
                Signal::Traces,
                &config,
                config.timeout().min(batch.export_timeout),
            ),
            batch,
            stats: stats.clone(),
            complaints: Complaints::new(Signal::Traces),
        };
        runtime.spawn(task.run());
        Ok(SpanExporter {
            queue,
            flushes,
            batch_queued,
            batch_size,
            stats,
        })
    }

    /// Queues `span` for export, or drops and counts it when the queue is full. Never
    /// blocks, and wakes the exporter's task only when a whole batch is queued.
    pub fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        if self.queued_spans() >= self.batch_size {
            self.batch_queued.notify_one();
        }
    }

    /// Exports what is queued now, in batches; done when every batch has been answered
    /// (or failed: the last failure is returned).
    ///
    /// # Errors
    ///
    /// A batch failed, or the exporter has stopped.
    pub async fn force_flush(&self) -> Result<(), OtlpError> {
        flush_through(&self.flushes).await
    }

    /// Spans the collector accepted.
    pub fn exported_spans(&self) -> u64 {
        self.stats.exported.load(Relaxed)
    }

    /// Spans dropped because the queue was full (or the exporter had stopped).
    pub fn dropped_spans(&self) -> u64 {
        self.stats.dropped.load(Relaxed)
    }

    /// Exports that failed.
    pub fn failed_batches(&self) -> u64 {
        self.stats.failed_batches.load(Relaxed)
    }

    /// Spans lost in exports that failed.
    pub fn failed_spans(&self) -> u64 {
        self.stats.failed_spans.load(Relaxed)
    }

    /// Spans waiting in the queue.
    pub fn queued_spans(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// The background side of a [`SpanExporter`].
struct SpanTask {
    spans: mpsc::Receiver<SpanRecord>,
    flushes: mpsc::Receiver<Flush>,
    batch_queued: Arc<tokio::sync::Notify>,
    transport: Transport,
    batch: BatchConfig,
    stats: Arc<SpanStats>,
    complaints: Complaints,
}

impl SpanTask {
    async fn run(mut self) {
        let delay = self.batch.scheduled_delay;
        let mut pending: Vec<SpanRecord> = Vec::new();
        let mut deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                reply = self.flushes.recv() => {
                    let result = self.flush(&mut pending).await;
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        // Every handle is gone: what was left is exported; stop.
                        None => return,
                    }
                    deadline = Instant::now() + delay;
                }
                () = self.batch_queued.notified() => {
                    // Whole batches only; the rest waits for the timer.
                    while self.spans.len() >= self.batch.max_export_batch_size {
                        self.take(&mut pending, self.batch.max_export_batch_size);
                        let _ = self.export(std::mem::take(&mut pending)).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.flush(&mut pending).await;
                    deadline = Instant::now() + delay;
                }
            }
        }
    }

    /// Moves up to `n` queued spans to `pending`.
    fn take(&mut self, pending: &mut Vec<SpanRecord>, n: usize) {
        while pending.len() < n {
            match self.spans.try_recv() {
                Ok(span) => pending.push(span),
                Err(_) => break,
            }
        }
    }

    /// Exports `pending` and what is queued now (not what arrives meanwhile).
    async fn flush(&mut self, pending: &mut Vec<SpanRecord>) -> Result<(), OtlpError> {
        let max = self.batch.max_export_batch_size;
        let mut queued = self.spans.len();
        let mut result = Ok(());
        loop {
            while pending.len() < max && queued > 0 {
                let Ok(span) = self.spans.try_recv() else {
                    queued = 0;
                    break;
                };
                pending.push(span);
                queued -= 1;
            }
            if pending.is_empty() {
                return result;
            }
            if let Err(e) = self.export(std::mem::take(pending)).await {
                result = Err(e);
            }
        }
    }

    async fn export(&mut self, spans: Vec<SpanRecord>) -> Result<(), OtlpError> {
        let n = spans.len() as u64;
        let request = encode_spans(spans);
        match self
            .transport
            .send::<_, ExportTraceServiceResponse>(request)
            .await
        {
            Ok(resp) => {
                self.stats.exported.fetch_add(n, Relaxed);
                if let Some(p) = resp.partial_success {
                    self.complaints.rejected(p.rejected_spans, &p.error_message);
                }
                Ok(())
            }
            Err(e) => {
                self.stats.failed_batches.fetch_add(1, Relaxed);
                self.stats.failed_spans.fetch_add(n, Relaxed);
                self.complaints.failed(&e, n);
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// Istio's request metrics as exported, in the order of `SeriesReading::reported`:
/// name, unit, description. The names are Istio's Prometheus names, unchanged, so that
/// a collector's Prometheus exporter writes what Istio's dashboards query (it adds no
/// `_total` or unit suffix a name already ends with).
pub const METRICS: [(&str, &str, &str); 4] = [
    (
        "istio_requests_total",
        "",
        "Requests, counted when their response ends.",
    ),
    (
        "istio_request_duration_milliseconds",
        "ms",
        "From a request's arrival to its response's end.",
    ),
    (
        "istio_request_bytes",
        "By",
        "Request sizes, headers and body.",
    ),
    (
        "istio_response_bytes",
        "By",
        "Response sizes, headers and body.",
    ),
];

/// The gRPC message counts as exported, in the order of `MessageReading::reported`:
/// name, unit, description (see [`METRICS`]).
pub const MESSAGE_METRICS: [(&str, &str, &str); 2] = [
    (
        "istio_request_messages_total",
        "",
        "gRPC messages the callers sent, counted as they stream.",
    ),
    (
        "istio_response_messages_total",
        "",
        "gRPC messages the servers answered, counted as they stream.",
    ),
];

fn histogram_point(
    h: &HistogramReading,
    attributes: Vec<KeyValue>,
    start: u64,
    now: u64,
) -> pb::metrics::v1::HistogramDataPoint {
    pb::metrics::v1::HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: h.count(),
        sum: Some(h.sum),
        bucket_counts: h.counts.to_vec(),
        explicit_bounds: BUCKETS.to_vec(),
        ..pb::metrics::v1::HistogramDataPoint::default()
    }
}

/// A cumulative, monotonic sum of `points`, `None` without points.
/// One exported metric with its points.
fn metric(
    name: &str,
    unit: &str,
    description: &str,
    data: pb::metrics::v1::metric::Data,
) -> pb::metrics::v1::Metric {
    pb::metrics::v1::Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(data),
        ..pb::metrics::v1::Metric::default()
    }
}

fn sum(points: Vec<pb::metrics::v1::NumberDataPoint>) -> Option<pb::metrics::v1::metric::Data> {
    use pb::metrics::v1::{AggregationTemporality, Sum, metric::Data};
    (!points.is_empty()).then_some(Data::Sum(Sum {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    }))
}

/// A counter's point, cumulative since `start`.
fn count_point(
    value: u64,
    attributes: Vec<KeyValue>,
    start: u64,
    now: u64,
) -> pb::metrics::v1::NumberDataPoint {
    use pb::metrics::v1::{NumberDataPoint, number_data_point};
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
        ..NumberDataPoint::default()
    }
}

/// The export request of `readings` and of the gRPC message counts `messages`: one
/// point per series and reported metric, cumulative since `start`; metrics without
/// points are left out. Also the number of points.
fn encode_metrics(
    readings: &[SeriesReading],
    messages: &[MessageReading],
    resource: &Resource,
    start: u64,
    now: u64,
) -> (ExportMetricsServiceRequest, u64) {
    use pb::metrics::v1::{AggregationTemporality, Histogram, metric::Data};
    let cumulative = AggregationTemporality::Cumulative as i32;
    let mut metrics = Vec::with_capacity(METRICS.len() + MESSAGE_METRICS.len());
    let mut points = 0u64;
    for (m, (name, unit, description)) in METRICS.iter().enumerate() {
        let reported = readings.iter().filter_map(|r| {
            let pairs = r.reported.get(m)?.as_ref()?;
            let attributes = pairs.iter().map(|(k, v)| string_attribute(k, v)).collect();
            Some((r, attributes))
        });
        let data = if m == 0 {
            let data_points: Vec<_> = reported
                .map(|(r, attributes)| count_point(r.requests, attributes, start, now))
                .collect();
            points += data_points.len() as u64;
            sum(data_points)
        } else {
            let data_points: Vec<_> = reported
                .map(|(r, attributes)| {
                    let h = match m {
                        1 => &r.duration_ms,
                        2 => &r.request_bytes,
                        _ => &r.response_bytes,
                    };
                    histogram_point(h, attributes, start, now)
                })
                .collect();
            points += data_points.len() as u64;
            (!data_points.is_empty()).then_some(Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: cumulative,
            }))
        };
        if let Some(data) = data {
            metrics.push(metric(name, unit, description, data));
        }
    }
    for (m, (name, unit, description)) in MESSAGE_METRICS.iter().enumerate() {
        let data_points: Vec<_> = messages
            .iter()
            .filter_map(|r| {
                let pairs = r.reported.get(m)?.as_ref()?;
                let attributes = pairs.iter().map(|(k, v)| string_attribute(k, v)).collect();
                let value = if m == 0 {
                    r.request_messages
                } else {
                    r.response_messages
                };
                Some(count_point(value, attributes, start, now))
            })
            .collect();
        points += data_points.len() as u64;
        if let Some(data) = sum(data_points) {
            metrics.push(metric(name, unit, description, data));
        }
    }
    let request = ExportMetricsServiceRequest {
        resource_metrics: if metrics.is_empty() {
            Vec::new()
        } else {
            vec![pb::metrics::v1::ResourceMetrics {
                resource: Some(resource.encode()),
                scope_metrics: vec![pb::metrics::v1::ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }]
        },
    };
    (request, points)
}

#[derive(Debug, Default)]
struct MetricStats {
    exports: AtomicU64,
    points: AtomicU64,
    failed: AtomicU64,
}

/// Exports a [`Metrics`] registry over OTLP periodically (see the module
/// documentation): cumulative sums and explicit-bucket histograms (Envoy's buckets)
/// whose start time is the exporter's. Cheap to clone; the background task stops, after
/// one last export, when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MetricsExporter {
    flushes: mpsc::Sender<Flush>,
    stats: Arc<MetricStats>,
}

impl MetricsExporter {
    /// Starts exporting `metrics`, as `resource` (the process: its series name their
    /// workloads), to `config`'s collector every `reader.interval`.
    ///
    /// # Errors
    ///
    /// [`OtlpError::NoRuntime`] outside a tokio runtime.
    pub fn start(
        metrics: Arc<Metrics>,
        resource: Arc<Resource>,
        config: OtlpConfig,
        reader: MetricReaderConfig,
    ) -> Result<Self, OtlpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let (flushes, flush_rx) = mpsc::channel(16);
        let stats = Arc::new(MetricStats::default());
        let task = MetricsTask {
            metrics,
            resource,
            start: unix_nanos(SystemTime::now()),
            transport: Transport::new(
                Signal::Metrics,
                &config,
                config.timeout().min(reader.timeout),
            ),
            stats: stats.clone(),
            complaints: Complaints::new(Signal::Metrics),
        };
        runtime.spawn(task.run(flush_rx, reader.interval.max(Duration::from_millis(1))));
        Ok(MetricsExporter { flushes, stats })
    }

    /// Exports the registry now; done when the collector has answered.
    ///
    /// # Errors
    ///
    /// The export failed, or the exporter has stopped.
    pub async fn force_flush(&self) -> Result<(), OtlpError> {
        flush_through(&self.flushes).await
    }

    /// Exports the collector accepted (an empty registry is not sent).
    pub fn exports(&self) -> u64 {
        self.stats.exports.load(Relaxed)
    }

    /// Data points the collector accepted.
    pub fn exported_points(&self) -> u64 {
        self.stats.points.load(Relaxed)
    }

    /// Exports that failed.
    pub fn failed_exports(&self) -> u64 {
        self.stats.failed.load(Relaxed)
    }
}

/// The background side of a [`MetricsExporter`].
struct MetricsTask {
    metrics: Arc<Metrics>,
    resource: Arc<Resource>,
    start: u64,
    transport: Transport,
    stats: Arc<MetricStats>,
    complaints: Complaints,
}

impl MetricsTask {
    async fn run(mut self, mut flushes: mpsc::Receiver<Flush>, interval: Duration) {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                flush = flushes.recv() => match flush {
                    Some(reply) => {
                        let result = self.export().await;
                        let _ = reply.send(result);
                    }
                    None => {
                        let _ = self.export().await;
                        return;
                    }
                },
                _ = ticks.tick() => {
                    let _ = self.export().await;
                }
            }
        }
    }

    async fn export(&mut self) -> Result<(), OtlpError> {
        let readings = self.metrics.read();
        let messages = self.metrics.read_messages();
        let now = unix_nanos(SystemTime::now());
        let (request, points) =
            encode_metrics(&readings, &messages, &self.resource, self.start, now);
        if points == 0 {
            return Ok(());
        }
        match self
            .transport
            .send::<_, ExportMetricsServiceResponse>(request)
            .await
        {
            Ok(resp) => {
                self.stats.exports.fetch_add(1, Relaxed);
                self.stats.points.fetch_add(points, Relaxed);
                if let Some(p) = resp.partial_success {
                    self.complaints
                        .rejected(p.rejected_data_points, &p.error_message);
                }
                Ok(())
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Relaxed);
                self.complaints.failed(&e, points);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
