//! OTLP export end to end: the mesh's exporters sending to a receiver that decodes what
//! a collector would, over gRPC and over HTTP — spans with their exact ids, parents,
//! kinds, attributes and resources; batching, the bounded queue, flushes; failures that
//! are counted, bounded in time and never panic; Istio's metrics from a real registry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use mesh_core::telemetry::{MetricProfile, PeerLabels, ServiceLabels};
use mesh_tower::ResponseFlags;
use mesh_tower::telemetry::metrics::BUCKETS;
use mesh_tower::telemetry::otlp::{
    AttributeValue, BatchConfig, MetricReaderConfig, MetricsExporter, OtlpConfig, OtlpEnv,
    OtlpError, Protocol, Resource, SpanExporter, SpanKind, SpanRecord,
};
use mesh_tower::telemetry::{Labels, Metrics, Reporter, Sample, Security};
use support::otlp::{
    self, AttrValue, Behavior, MetricKind, OtlpReceiver, PointValue, SpanStatus, Transport,
};

const WAIT: Duration = Duration::from_secs(10);

fn config(receiver: &OtlpReceiver, protocol: Protocol) -> OtlpConfig {
    let endpoint = match protocol {
        Protocol::Grpc => receiver.endpoint(),
        Protocol::HttpProtobuf => receiver.traces_url(),
    };
    OtlpConfig::new(&endpoint, protocol).unwrap()
}

fn transport(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Grpc => Transport::Grpc,
        Protocol::HttpProtobuf => Transport::Http,
    }
}

/// A port nothing listens on.
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn record(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    name: &str,
    kind: SpanKind,
    resource: &Arc<Resource>,
) -> SpanRecord {
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(id.into());
    SpanRecord {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: Some(format!("mesh=t{trace}")),
        name: name.to_string(),
        kind,
        start,
        end: start + Duration::from_micros(1_500),
        attributes: vec![
            ("component", AttributeValue::Static("proxy")),
            (
                "http.url",
                AttributeValue::Str(format!("http://reviews:9080/reviews/{id}")),
            ),
            (
                "istio.namespace",
                AttributeValue::Shared(Arc::from("default")),
            ),
            ("http.status_code", AttributeValue::Int(200 + i64::from(id))),
            ("error", AttributeValue::Bool(id == 3)),
        ],
        error: id == 3,
        resource: resource.clone(),
    }
}

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource::new([
        ("service.name", service),
        ("k8s.namespace.name", "default"),
    ]))
}

async fn spans_arrive_exactly(protocol: Protocol) {
    let receiver = OtlpReceiver::start().await;
    let config = config(&receiver, protocol).with_header(
        HeaderName::from_static("x-tenant"),
        HeaderValue::from_static("t1"),
    );
    let exporter = SpanExporter::start(config, BatchConfig::default()).unwrap();
    let productpage = resource("productpage.default");
    let reviews = resource("reviews.default");
    let sent = vec![
        record(
            9,
            1,
            None,
            "productpage.default.svc.cluster.local:9080/*",
            SpanKind::Server,
            &productpage,
        ),
        record(
            9,
            2,
            Some(1),
            "reviews.default.svc.cluster.local:9080/*",
            SpanKind::Client,
            &productpage,
        ),
        record(
            9,
            3,
            Some(2),
            "reviews.default.svc.cluster.local:9080/*",
            SpanKind::Server,
            &reviews,
        ),
    ];
    for s in &sent {
        exporter.submit(s.clone());
    }
    exporter.force_flush().await.unwrap();
    assert_eq!(exporter.exported_spans(), 3);
    assert_eq!(
        (exporter.dropped_spans(), exporter.failed_batches()),
        (0, 0)
    );

    let got = receiver.wait_for_spans(3, WAIT).await;
    assert_eq!(got.len(), 3);
    // One export: the productpage resource's two spans, then the reviews one.
    let exports = receiver.exports();
    assert_eq!(exports.len(), 1);
    let e = &exports[0];
    assert_eq!(e.transport, transport(protocol));
    assert_eq!(e.items, 3);
    assert_eq!(e.headers["x-tenant"], "t1");
    match protocol {
        Protocol::Grpc => {
            assert_eq!(e.path, otlp::TRACE_EXPORT);
            assert_eq!(e.headers["content-type"], "application/grpc");
        }
        Protocol::HttpProtobuf => {
            assert_eq!(e.path, "/v1/traces");
            assert_eq!(e.headers["content-type"], "application/x-protobuf");
        }
    }
    let by_resource: Vec<(&str, [u8; 8])> = got
        .iter()
        .map(|s| (s.resource_attr("service.name").unwrap(), s.span_id))
        .collect();
    assert_eq!(
        by_resource,
        [
            ("productpage.default", [1; 8]),
            ("productpage.default", [2; 8]),
            ("reviews.default", [3; 8]),
        ]
    );
    for (s, r) in got.iter().zip(&sent) {
        assert_eq!(s.transport, transport(protocol));
        assert_eq!(s.scope, mesh_tower::telemetry::otlp::SCOPE_NAME);
        assert_eq!(s.name, r.name);
        assert_eq!(s.trace_id, r.trace_id);
        assert_eq!(s.span_id, r.span_id);
        assert_eq!(s.parent, r.parent_span_id);
        assert_eq!(s.trace_state, "mesh=t9");
        assert_eq!(
            s.kind,
            match r.kind {
                SpanKind::Client => otlp::SpanKind::Client,
                SpanKind::Server => otlp::SpanKind::Server,
            }
        );
        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert_eq!(
            (s.start_unix_nanos, s.end_unix_nanos),
            (nanos(r.start), nanos(r.end))
        );
        assert_eq!(
            s.resource,
            [
                (
                    "service.name".to_string(),
                    r.resource.get("service.name").unwrap().to_string()
                ),
                ("k8s.namespace.name".to_string(), "default".to_string()),
            ]
        );
        let id = i64::from(r.span_id[0]);
        assert_eq!(
            s.attrs,
            [
                ("component".to_string(), AttrValue::Str("proxy".into())),
                (
                    "http.url".to_string(),
                    AttrValue::Str(format!("http://reviews:9080/reviews/{id}"))
                ),
                (
                    "istio.namespace".to_string(),
                    AttrValue::Str("default".into())
                ),
                ("http.status_code".to_string(), AttrValue::Int(200 + id)),
                ("error".to_string(), AttrValue::Bool(id == 3)),
            ]
        );
        let status = if r.error {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        };
        assert_eq!(s.status, status, "{}", s.span_id_hex());
    }
    assert_eq!(got[0].trace_id_hex(), "09".repeat(16));
    assert_eq!(got[0].parent, None);
}

#[tokio::test]
async fn spans_arrive_over_grpc_with_their_ids_parents_and_resources() {
    spans_arrive_exactly(Protocol::Grpc).await;
}

#[tokio::test]
async fn spans_arrive_over_http_with_their_ids_parents_and_resources() {
    spans_arrive_exactly(Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn the_environment_points_the_exporter_at_the_collector() {
    let receiver = OtlpReceiver::start().await;
    // The general endpoint, the default protocol (http/protobuf): `/v1/traces` appended.
    let base = receiver.endpoint();
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let env = OtlpEnv::from_env(lookup).unwrap();
    let traces = env.traces.unwrap();
    assert_eq!(traces.endpoint().to_string(), receiver.traces_url());
    assert_eq!(env.batch.scheduled_delay, Duration::from_millis(50));
    let exporter = SpanExporter::start(traces, env.batch).unwrap();
    exporter.submit(record(
        1,
        1,
        None,
        "root",
        SpanKind::Server,
        &resource("a.default"),
    ));
    // No flush: the schedule delay sends it.
    let got = receiver.wait_for_spans(1, WAIT).await;
    assert_eq!(got[0].name, "root");
    let exports = receiver.exports();
    assert_eq!(exports[0].path, "/v1/traces");
    assert_eq!(exports[0].headers["authorization"], "Bearer abc");

    // The metrics endpoint follows from the same base.
    let metrics = env.metrics.unwrap();
    assert_eq!(metrics.endpoint().to_string(), receiver.metrics_url());
}

#[tokio::test]
async fn a_grpc_endpoints_path_is_not_the_methods() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = format!("{}/otlp/ignored?tenant=a", receiver.endpoint());
    let config = OtlpConfig::new(&endpoint, Protocol::Grpc).unwrap();
    let exporter = SpanExporter::start(config, BatchConfig::default()).unwrap();
    exporter.submit(record(
        1,
        1,
        None,
        "s",
        SpanKind::Client,
        &resource("a.default"),
    ));
    exporter.force_flush().await.unwrap();
    assert_eq!(receiver.exports()[0].path, otlp::TRACE_EXPORT);
    assert_eq!(receiver.spans().len(), 1);
}

#[tokio::test]
async fn batches_hold_at_most_the_batch_size() {
    let receiver = OtlpReceiver::start().await;
    let batch = BatchConfig {
        max_export_batch_size: 2,
        ..BatchConfig::default()
    };
    let exporter = SpanExporter::start(config(&receiver, Protocol::Grpc), batch).unwrap();
    let r = resource("a.default");
    for id in 1..=5 {
        exporter.submit(record(1, id, None, "s", SpanKind::Client, &r));
    }
    exporter.force_flush().await.unwrap();
    let sizes: Vec<usize> = receiver.exports().iter().map(|e| e.items).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let ids: Vec<u8> = receiver.spans().iter().map(|s| s.span_id[0]).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(exporter.exported_spans(), 5);
    // Nothing queued: a flush sends nothing.
    exporter.force_flush().await.unwrap();
    assert_eq!(receiver.exports().len(), 3);
}

/// A whole batch is exported at once, without waiting for the timer; a partial one waits
/// for the timer (or a flush): a span submitted alone wakes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_batch_goes_at_once_and_a_partial_one_waits_for_the_timer() {
    let receiver = OtlpReceiver::start().await;
    let batch = BatchConfig {
        max_export_batch_size: 2,
        scheduled_delay: Duration::from_secs(3600),
        ..BatchConfig::default()
    };
    let exporter = SpanExporter::start(config(&receiver, Protocol::Grpc), batch).unwrap();
    let r = resource("a.default");
    exporter.submit(record(1, 1, None, "s", SpanKind::Client, &r));
    exporter.submit(record(1, 2, None, "s", SpanKind::Client, &r));
    let spans = receiver.wait_for_spans(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2);
    exporter.submit(record(1, 3, None, "s", SpanKind::Client, &r));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sizes = || -> Vec<usize> { receiver.exports().iter().map(|e| e.items).collect() };
    assert_eq!(sizes(), [2], "the third span waits");
    assert_eq!(exporter.queued_spans(), 1);
    exporter.force_flush().await.unwrap();
    assert_eq!(sizes(), [2, 1]);
}

/// A current-thread runtime: the exporter's task cannot run while the test submits, so
/// the queue fills exactly.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts_and_a_dead_collector_counts_failures() {
    let config = OtlpConfig::new(&dead_endpoint(), Protocol::Grpc)
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let batch = BatchConfig {
        max_queue_size: 4,
        max_export_batch_size: 4,
        ..BatchConfig::default()
    };
    let exporter = SpanExporter::start(config, batch).unwrap();
    let r = resource("a.default");
    for id in 0..10 {
        exporter.submit(record(1, id, None, "s", SpanKind::Client, &r));
    }
    assert_eq!(exporter.dropped_spans(), 6);
    assert_eq!(exporter.queued_spans(), 4);
    let started = Instant::now();
    let err = exporter.force_flush().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let OtlpError::Transport { message, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("Connection refused"), "{err}");
    assert_eq!(exporter.failed_batches(), 1);
    assert_eq!(exporter.failed_spans(), 4);
    assert_eq!(exporter.exported_spans(), 0);
    assert_eq!(exporter.queued_spans(), 0);
    // The exporter goes on: later spans are queued again.
    exporter.submit(record(1, 20, None, "s", SpanKind::Client, &r));
    assert_eq!(exporter.queued_spans(), 1);
    assert!(exporter.force_flush().await.is_err());
    assert_eq!((exporter.failed_batches(), exporter.failed_spans()), (2, 5));
    assert_eq!(exporter.dropped_spans(), 6);
}

#[tokio::test]
async fn a_dead_http_collector_counts_failures() {
    let url = format!("{}/v1/traces", dead_endpoint());
    let config = OtlpConfig::new(&url, Protocol::HttpProtobuf).unwrap();
    let exporter = SpanExporter::start(config, BatchConfig::default()).unwrap();
    exporter.submit(record(
        1,
        1,
        None,
        "s",
        SpanKind::Client,
        &resource("a.default"),
    ));
    let err = exporter.force_flush().await.unwrap_err();
    let OtlpError::Transport { endpoint, message } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(endpoint, &url);
    assert!(message.contains("Connection refused"), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("OTLP export to {url} failed: ")),
        "{err}"
    );
    assert_eq!((exporter.failed_batches(), exporter.failed_spans()), (1, 1));
}

async fn hanging_collector_times_out(protocol: Protocol) {
    let receiver = OtlpReceiver::start().await;
    receiver.set_behavior(Behavior::Hang);
    let config = config(&receiver, protocol).with_timeout(Duration::from_millis(300));
    let exporter = SpanExporter::start(config, BatchConfig::default()).unwrap();
    exporter.submit(record(
        1,
        1,
        None,
        "s",
        SpanKind::Client,
        &resource("a.default"),
    ));
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), exporter.force_flush())
        .await
        .expect("the flush is bounded by the export timeout")
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    match err {
        OtlpError::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_millis(300)),
        // tonic enforces the `grpc-timeout` it sends as well.
        OtlpError::Grpc { code, .. } if protocol == Protocol::Grpc => assert_eq!(code, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(exporter.failed_batches(), 1);
    assert_eq!(receiver.exports().len(), 1);
    assert!(receiver.spans().is_empty());
}

#[tokio::test]
async fn a_hanging_grpc_collector_times_out() {
    hanging_collector_times_out(Protocol::Grpc).await;
}

#[tokio::test]
async fn a_hanging_http_collector_times_out() {
    hanging_collector_times_out(Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn a_refusing_collector_is_a_counted_failure_with_its_message() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = OtlpReceiver::start().await;
        receiver.set_behavior(Behavior::Refuse);
        let exporter =
            SpanExporter::start(config(&receiver, protocol), BatchConfig::default()).unwrap();
        exporter.submit(record(
            1,
            1,
            None,
            "s",
            SpanKind::Client,
            &resource("a.default"),
        ));
        let err = exporter.force_flush().await.unwrap_err();
        match (protocol, &err) {
            (
                Protocol::Grpc,
                OtlpError::Grpc {
                    code: 14, message, ..
                },
            )
            | (
                Protocol::HttpProtobuf,
                OtlpError::Http {
                    status: 503,
                    message,
                    ..
                },
            ) => {
                assert_eq!(message, "the receiver refuses exports");
            }
            _ => panic!("{protocol:?}: {err:?}"),
        }
        assert_eq!(
            (exporter.failed_batches(), exporter.exported_spans()),
            (1, 0)
        );
        // Once it accepts again, the next batch goes through.
        receiver.set_behavior(Behavior::Accept);
        exporter.submit(record(
            1,
            2,
            None,
            "s",
            SpanKind::Client,
            &resource("a.default"),
        ));
        exporter.force_flush().await.unwrap();
        assert_eq!(exporter.exported_spans(), 1);
        assert_eq!(receiver.wait_for_spans(1, WAIT).await[0].span_id, [2; 8]);
    }
}

#[tokio::test]
async fn dropping_the_last_handle_exports_what_is_queued() {
    let receiver = OtlpReceiver::start().await;
    let batch = BatchConfig {
        scheduled_delay: Duration::from_secs(3600),
        ..BatchConfig::default()
    };
    let exporter = SpanExporter::start(config(&receiver, Protocol::Grpc), batch).unwrap();
    let clone = exporter.clone();
    clone.submit(record(
        1,
        1,
        None,
        "last",
        SpanKind::Server,
        &resource("a.default"),
    ));
    drop(clone);
    drop(exporter);
    let got = receiver.wait_for_spans(1, WAIT).await;
    assert_eq!(got[0].name, "last");
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

fn peer(name: &str, app: &str, version: &str) -> Arc<PeerLabels> {
    let labels: mesh_config::model::Labels = [("app", app), ("version", version)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(PeerLabels::new(
        Some(name),
        "default",
        &labels,
        &format!("spiffe://cluster.local/ns/default/sa/bookinfo-{app}"),
        "Kubernetes",
    ))
}

struct Registry {
    metrics: Arc<Metrics>,
    source: Arc<PeerLabels>,
    destination: Arc<PeerLabels>,
    service: Arc<ServiceLabels>,
    standard: Arc<MetricProfile>,
    /// `istio_request_bytes` disabled, `destination_version` removed from the count.
    shaped: Arc<MetricProfile>,
}

impl Registry {
    fn new() -> Self {
        let mut shaped = MetricProfile::standard();
        shaped.shapes[2].enabled = false;
        let version = mesh_core::telemetry::ISTIO_LABELS
            .iter()
            .position(|l| *l == "destination_version")
            .unwrap();
        shaped.shapes[0].removed |= 1 << version;
        Registry {
            metrics: Arc::new(Metrics::new()),
            source: peer("productpage-v1", "productpage", "v1"),
            destination: peer("reviews-v3", "reviews", "v3"),
            service: Arc::new(ServiceLabels::new(
                "reviews.default.svc.cluster.local",
                "default",
            )),
            standard: Arc::new(MetricProfile::standard()),
            shaped: Arc::new(shaped),
        }
    }

    fn record(&self, reporter: Reporter, code: u16, ms: u64, bytes: u64) {
        let (profile, security) = match reporter {
            Reporter::Source => (&self.standard, Security::Unknown),
            Reporter::Destination => (&self.shaped, Security::MutualTls),
        };
        let labels = Labels {
            reporter,
            source: &self.source,
            source_principal: true,
            destination: &self.destination,
            destination_principal: true,
            service: &self.service,
            grpc: false,
            code,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            security,
            profile,
        };
        self.metrics.record(
            &labels,
            Sample {
                duration: Duration::from_millis(ms),
                request_bytes: bytes,
                response_bytes: bytes * 10,
            },
        );
    }
}

fn buckets(values: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; BUCKETS.len() + 1];
    for v in values {
        counts[BUCKETS.partition_point(|b| b < v)] += 1;
    }
    counts
}

async fn metrics_arrive(protocol: Protocol) {
    let receiver = OtlpReceiver::start().await;
    let registry = Registry::new();
    registry.record(Reporter::Source, 200, 4, 100);
    registry.record(Reporter::Source, 200, 120, 300);
    registry.record(Reporter::Destination, 200, 3, 100);
    let endpoint = match protocol {
        Protocol::Grpc => receiver.endpoint(),
        Protocol::HttpProtobuf => receiver.metrics_url(),
    };
    let before = SystemTime::now();
    let exporter = MetricsExporter::start(
        registry.metrics.clone(),
        Arc::new(Resource::new([("service.name", "bookinfo")])),
        OtlpConfig::new(&endpoint, protocol).unwrap(),
        MetricReaderConfig::default(),
    )
    .unwrap();
    exporter.force_flush().await.unwrap();
    // 2 series × 4 metrics, less the disabled one.
    assert_eq!((exporter.exports(), exporter.exported_points()), (1, 7));
    let exports = receiver.exports();
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].transport, transport(protocol));
    let points = receiver.metrics();
    assert_eq!(points.len(), 7);
    let names: Vec<&str> = points.iter().map(|p| p.metric.as_str()).collect();
    assert_eq!(
        names,
        [
            "istio_requests_total",
            "istio_requests_total",
            "istio_request_duration_milliseconds",
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
            "istio_response_bytes",
        ]
    );
    let started = before.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    for p in &points {
        assert_eq!(
            p.resource,
            [("service.name".to_string(), "bookinfo".to_string())]
        );
        assert!(p.start_unix_nanos >= started, "{p:?}");
        assert!(p.time_unix_nanos >= p.start_unix_nanos, "{p:?}");
    }

    let point = |name: &str, reporter: &str| {
        points
            .iter()
            .find(|p| p.metric == name && p.attr("reporter") == Some(reporter))
            .unwrap_or_else(|| panic!("{name} reporter={reporter}: {points:#?}"))
    };
    let count = point("istio_requests_total", "source");
    assert_eq!(
        count.kind,
        MetricKind::Sum {
            monotonic: true,
            cumulative: true
        }
    );
    assert_eq!(count.value, PointValue::Int(2));
    let keys: Vec<&str> = count.attrs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, mesh_core::telemetry::ISTIO_LABELS);
    for (k, v) in [
        ("source_workload", "productpage-v1"),
        ("destination_workload", "reviews-v3"),
        ("destination_version", "v3"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("response_code", "200"),
        ("connection_security_policy", "unknown"),
    ] {
        assert_eq!(count.attr(k), Some(v), "{k}");
    }
    // The destination side's count, its `destination_version` removed.
    let dest = point("istio_requests_total", "destination");
    assert_eq!(dest.value, PointValue::Int(1));
    assert_eq!(dest.attr("destination_version"), None);
    assert_eq!(dest.attr("connection_security_policy"), Some("mutual_tls"));
    assert_eq!(dest.attrs.len(), 24);

    let duration = point("istio_request_duration_milliseconds", "source");
    assert_eq!(duration.unit, "ms");
    assert_eq!(duration.kind, MetricKind::Histogram { cumulative: true });
    assert_eq!(
        duration.value,
        PointValue::Histogram {
            count: 2,
            sum: Some(124.0),
            bucket_counts: buckets(&[4.0, 120.0]),
            bounds: BUCKETS.to_vec(),
        }
    );
    // `istio_request_bytes`: the source's only (disabled at the destination).
    let request_bytes: Vec<_> = points
        .iter()
        .filter(|p| p.metric == "istio_request_bytes")
        .collect();
    assert_eq!(request_bytes.len(), 1);
    assert_eq!(request_bytes[0].attr("reporter"), Some("source"));
    assert_eq!(request_bytes[0].unit, "By");
    let response = point("istio_response_bytes", "destination");
    assert_eq!(
        response.value,
        PointValue::Histogram {
            count: 1,
            sum: Some(1000.0),
            bucket_counts: buckets(&[1000.0]),
            bounds: BUCKETS.to_vec(),
        }
    );

    // Cumulative: the next export adds to the same start time.
    registry.record(Reporter::Source, 200, 7, 1);
    exporter.force_flush().await.unwrap();
    let latest = receiver.latest_points("istio_requests_total");
    let src = latest
        .iter()
        .find(|p| p.attr("reporter") == Some("source"))
        .unwrap();
    assert_eq!(src.value, PointValue::Int(3));
    assert_eq!(src.start_unix_nanos, count.start_unix_nanos);
    assert!(src.time_unix_nanos >= count.time_unix_nanos);
    assert_eq!(exporter.exports(), 2);
}

#[tokio::test]
async fn metrics_arrive_over_grpc_with_istios_names_labels_and_buckets() {
    metrics_arrive(Protocol::Grpc).await;
}

#[tokio::test]
async fn metrics_arrive_over_http_with_istios_names_labels_and_buckets() {
    metrics_arrive(Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn metrics_are_exported_every_interval_and_failures_are_counted() {
    let receiver = OtlpReceiver::start().await;
    let registry = Registry::new();
    let exporter = MetricsExporter::start(
        registry.metrics.clone(),
        Arc::new(Resource::default()),
        OtlpConfig::new(&receiver.endpoint(), Protocol::Grpc).unwrap(),
        MetricReaderConfig {
            interval: Duration::from_millis(100),
            ..MetricReaderConfig::default()
        },
    )
    .unwrap();
    // An empty registry sends nothing.
    exporter.force_flush().await.unwrap();
    assert_eq!(exporter.exports(), 0);
    assert!(receiver.exports().is_empty());
    registry.record(Reporter::Source, 503, 1, 1);
    let points = receiver.wait_for_metric("istio_requests_total", WAIT).await;
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].attr("response_code"), Some("503"));

    let dead = MetricsExporter::start(
        registry.metrics.clone(),
        Arc::new(Resource::default()),
        OtlpConfig::new(&dead_endpoint(), Protocol::HttpProtobuf).unwrap(),
        MetricReaderConfig::default(),
    )
    .unwrap();
    assert!(dead.force_flush().await.is_err());
    assert!(dead.force_flush().await.is_err());
    assert_eq!((dead.exports(), dead.failed_exports()), (0, 2));
}
