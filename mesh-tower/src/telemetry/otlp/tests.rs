#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use http::{HeaderName, HeaderValue};
use mesh_core::telemetry::{MetricProfile, PeerLabels, ServiceLabels};
use proptest::prelude::*;

use super::config::parse_headers;
use super::*;
use crate::flags::ResponseFlags;
use crate::telemetry::metrics::{Labels, Reporter, Sample, Security};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A case of the environment table: what, for which signal, the variables, the outcome.
type Case = (
    &'static str,
    Signal,
    Vec<(&'static str, &'static str)>,
    Option<Seen>,
);

/// What a configuration comes to: endpoint, protocol, headers (in order), timeout (ms).
type Seen = (String, &'static str, Vec<(String, String)>, u128);

fn seen(c: &OtlpConfig) -> Seen {
    (
        c.endpoint().to_string(),
        c.protocol().as_str(),
        c.headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect(),
        c.timeout().as_millis(),
    )
}

fn s(endpoint: &str, protocol: &'static str, headers: &[(&str, &str)], ms: u128) -> Option<Seen> {
    Some((
        endpoint.to_string(),
        protocol,
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ms,
    ))
}

#[test]
fn the_environment_configures_each_signal_as_the_specification_says() {
    use Signal::{Metrics as M, Traces as T};
    let h = "http/protobuf";
    let cases: Vec<Case> = vec![
        ("nothing set: no export", T, vec![], None),
        (
            "only a protocol: no export",
            T,
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            None,
        ),
        (
            "empty values count as unset",
            T,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
                ("OTEL_TRACES_EXPORTER", ""),
            ],
            None,
        ),
        (
            "the general endpoint gets the signal's path (http/protobuf by default)",
            T,
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
            s("http://collector:4318/v1/traces", h, &[], 10_000),
        ),
        (
            "after a trailing slash",
            M,
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")],
            s("http://collector:4318/v1/metrics", h, &[], 10_000),
        ),
        (
            "after the base path",
            T,
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp/")],
            s("http://collector:4318/otlp/v1/traces", h, &[], 10_000),
        ),
        (
            "before the query",
            M,
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector/base?tenant=a",
            )],
            s("http://collector/base/v1/metrics?tenant=a", h, &[], 10_000),
        ),
        (
            "gRPC uses the general endpoint as it is",
            T,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            s("http://collector:4317/", "grpc", &[], 10_000),
        ),
        (
            "the signal's endpoint is used as it is and wins",
            T,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:9999/custom",
                ),
            ],
            s("http://traces:9999/custom", h, &[], 10_000),
        ),
        (
            "the other signal keeps the general endpoint",
            M,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:9999/custom",
                ),
            ],
            s("http://general:4318/v1/metrics", h, &[], 10_000),
        ),
        (
            "a signal's endpoint alone does not export the other signal",
            M,
            vec![(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/v1/traces",
            )],
            None,
        ),
        (
            "the exporter variable alone: the default endpoint",
            T,
            vec![("OTEL_TRACES_EXPORTER", "otlp")],
            s("http://localhost:4318/v1/traces", h, &[], 10_000),
        ),
        (
            "the gRPC default endpoint",
            M,
            vec![
                ("OTEL_METRICS_EXPORTER", "prometheus, otlp"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ],
            s("http://localhost:4317/", "grpc", &[], 10_000),
        ),
        (
            "an exporter list without otlp turns it off",
            M,
            vec![
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ],
            None,
        ),
        (
            "none turns it off",
            T,
            vec![
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ],
            None,
        ),
        (
            "the SDK disabled turns everything off",
            T,
            vec![
                ("OTEL_SDK_DISABLED", "TRUE"),
                ("OTEL_TRACES_EXPORTER", "otlp"),
            ],
            None,
        ),
        (
            "OTEL_SDK_DISABLED other than true is false",
            T,
            vec![
                ("OTEL_SDK_DISABLED", "yes"),
                ("OTEL_TRACES_EXPORTER", "otlp"),
            ],
            s("http://localhost:4318/v1/traces", h, &[], 10_000),
        ),
        (
            "headers, percent-decoded, whitespace trimmed; timeout in ms",
            T,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    " api-key = a%20b%3Dc , X-Tenant=t1,",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ],
            s(
                "http://c:4318/v1/traces",
                h,
                &[("api-key", "a b=c"), ("x-tenant", "t1")],
                2_500,
            ),
        ),
        (
            "the signal's headers, protocol and timeout override the general ones",
            M,
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=2"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "200"),
            ],
            s("http://c:4317/", "grpc", &[("b", "2")], 200),
        ),
    ];
    for (what, signal, vars, want) in cases {
        let got = OtlpConfig::from_env(signal, env(&vars))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .as_ref()
            .map(seen);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn invalid_variables_are_clear_errors() {
    let base = ("OTEL_TRACES_EXPORTER", "otlp");
    let cases: [(&str, &str, &str); 14] = [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "OTLP/JSON is not supported",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "thrift",
            "not an OTLP protocol",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://c:4318",
            "https endpoints are not supported",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "c:4317",
            "expected an http:// URL",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://c",
            "expected an http:// URL",
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a b", "not a URL"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "/v1/traces",
            "expected an http:// URL",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "a=1,b",
            "`b` is not a key=value pair",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "bad key=1",
            "`bad key` is not a header name",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=%ff", "not UTF-8"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "a=x%0Ay",
            "cannot be sent in a header",
        ),
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "10s",
            "positive number of milliseconds",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "0",
            "positive number of milliseconds",
        ),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "gzip",
            "compression is not supported",
        ),
    ];
    for (var, value, reason) in cases {
        let err = OtlpConfig::from_env(Signal::Traces, env(&[base, (var, value)])).expect_err(var);
        assert_eq!(err.setting, var, "{err}");
        assert_eq!(err.value, value, "{err}");
        assert!(err.reason.contains(reason), "{var}={value}: {err}");
        assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
    }
    let err = OtlpEnv::from_env(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "-1")])).unwrap_err();
    assert_eq!(err.setting, "OTEL_BSP_MAX_QUEUE_SIZE");
}

#[test]
fn programmatic_endpoints_are_checked() {
    let c = OtlpConfig::new("http://otel-collector.istio-system:4317", Protocol::Grpc).unwrap();
    assert_eq!(c.endpoint().host(), Some("otel-collector.istio-system"));
    assert_eq!(c.timeout(), Duration::from_secs(10));
    assert!(c.headers().is_empty());
    let c = c.with_timeout(Duration::from_millis(50)).with_header(
        HeaderName::from_static("x-a"),
        HeaderValue::from_static("1"),
    );
    assert_eq!(c.timeout(), Duration::from_millis(50));
    assert_eq!(c.headers()["x-a"], "1");
    for bad in ["https://c:4317", "c:4317", "", "http://", "http:///x"] {
        let err = OtlpConfig::new(bad, Protocol::HttpProtobuf).unwrap_err();
        assert_eq!(err.setting, "endpoint", "{bad}: {err}");
    }
}

#[test]
fn batch_and_reader_settings_have_the_specifications_defaults() {
    let d = BatchConfig::from_env(env(&[])).unwrap();
    assert_eq!(
        (
            d.max_queue_size,
            d.max_export_batch_size,
            d.scheduled_delay.as_millis(),
            d.export_timeout.as_millis()
        ),
        (2048, 512, 5000, 30000)
    );
    let r = MetricReaderConfig::from_env(env(&[])).unwrap();
    assert_eq!(
        (r.interval.as_millis(), r.timeout.as_millis()),
        (60000, 30000)
    );

    let b = BatchConfig::from_env(env(&[
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
        ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
    ]))
    .unwrap();
    // The default batch shrinks to a smaller queue.
    assert_eq!(
        (
            b.max_queue_size,
            b.max_export_batch_size,
            b.scheduled_delay.as_millis(),
            b.export_timeout.as_millis()
        ),
        (100, 100, 250, 1000)
    );
    let r = MetricReaderConfig::from_env(env(&[
        ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "700"),
    ]))
    .unwrap();
    assert_eq!((r.interval.as_millis(), r.timeout.as_millis()), (1500, 700));

    let errors = [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"), // larger than the default queue
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "many"),
        ("OTEL_BSP_SCHEDULE_DELAY", "-5"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "1.5"),
    ];
    for (var, value) in errors {
        let err = BatchConfig::from_env(env(&[(var, value)])).unwrap_err();
        assert_eq!((err.setting.as_str(), err.value.as_str()), (var, value));
    }
    let err =
        MetricReaderConfig::from_env(env(&[("OTEL_METRIC_EXPORT_INTERVAL", "0")])).unwrap_err();
    assert_eq!(err.setting, "OTEL_METRIC_EXPORT_INTERVAL");

    let all = OtlpEnv::from_env(env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
    ]))
    .unwrap();
    assert_eq!(
        all.traces.map(|t| t.endpoint().to_string()).as_deref(),
        Some("http://c:4318/v1/traces")
    );
    assert_eq!(all.metrics, None);
    assert_eq!(all.batch.max_export_batch_size, 64);
    assert_eq!(all.metric_reader, MetricReaderConfig::default());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(10), ..ProptestConfig::default() })]

    /// Any header text is parsed or refused, never a panic.
    #[test]
    fn header_text_never_panics(text in "\\PC{0,40}") {
        let _ = parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &text);
    }

    /// Percent-encoded values come back as they were.
    #[test]
    fn percent_encoded_values_round_trip(
        pairs in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 1..5)
    ) {
        let text = pairs
            .iter()
            .map(|(k, v)| {
                let enc = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC);
                format!("{k}={enc}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let headers = parse_headers("H", &text).unwrap();
        let got: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        // Header maps group values by name, in order of the names' first appearance.
        let mut want: Vec<(String, String)> = Vec::new();
        let mut names: Vec<&String> = Vec::new();
        for (k, _) in &pairs {
            if !names.contains(&k) {
                names.push(k);
            }
        }
        for n in names {
            for (k, v) in &pairs {
                if k == n {
                    want.push((k.clone(), v.trim().to_string()));
                }
            }
        }
        prop_assert_eq!(got, want);
    }
}

fn span(id: u8, parent: Option<u8>, resource: &Arc<Resource>, kind: SpanKind) -> SpanRecord {
    SpanRecord {
        trace_id: [7; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: (id == 1).then(|| "vendor=x".to_string()),
        name: format!("span-{id}"),
        kind,
        start: UNIX_EPOCH + Duration::from_nanos(1_000 + u64::from(id)),
        end: UNIX_EPOCH + Duration::from_nanos(2_000 + u64::from(id)),
        attributes: vec![
            ("http.method", "GET".into()),
            ("http.status_code", 503i64.into()),
            (
                "upstream_cluster",
                Arc::<str>::from("outbound|9080||r").into(),
            ),
            ("guid:x-request-id", format!("req-{id}").into()),
            ("error", true.into()),
        ],
        error: id == 2,
        resource: resource.clone(),
    }
}

#[test]
fn spans_are_grouped_by_resource_with_their_fields() {
    use pb::trace::v1::span::SpanKind as Kind;
    let a = Arc::new(Resource::new([("service.name", "productpage.default")]));
    let b = Arc::new(Resource::new([("service.name", "reviews.default")]));
    // Equal to `a`, another allocation.
    let a2 = Arc::new(Resource::new([("service.name", "productpage.default")]));
    let req = encode_spans(vec![
        span(1, None, &a, SpanKind::Server),
        span(2, Some(1), &b, SpanKind::Client),
        span(3, Some(1), &a2, SpanKind::Client),
    ]);
    assert_eq!(req.resource_spans.len(), 2);
    let names: Vec<Vec<&str>> = req
        .resource_spans
        .iter()
        .map(|rs| {
            assert_eq!(rs.scope_spans.len(), 1);
            let scope = rs.scope_spans[0].scope.as_ref().unwrap();
            assert_eq!(scope.name, SCOPE_NAME);
            rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.as_str())
                .collect()
        })
        .collect();
    assert_eq!(names, [vec!["span-1", "span-3"], vec!["span-2"]]);
    let res = req.resource_spans[0].resource.as_ref().unwrap();
    assert_eq!(
        res.attributes,
        vec![string_attribute("service.name", "productpage.default")]
    );

    let first = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(first.trace_id, vec![7; 16]);
    assert_eq!(first.span_id, vec![1; 8]);
    assert!(first.parent_span_id.is_empty());
    assert_eq!(first.trace_state, "vendor=x");
    assert_eq!(first.kind, Kind::Server as i32);
    assert_eq!(
        (first.start_time_unix_nano, first.end_time_unix_nano),
        (1_001, 2_001)
    );
    assert_eq!(first.status, None);
    let attr = |k: &str| {
        first
            .attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        attr("http.method"),
        Some(any_value::Value::StringValue("GET".into()))
    );
    assert_eq!(
        attr("http.status_code"),
        Some(any_value::Value::IntValue(503))
    );
    assert_eq!(
        attr("upstream_cluster"),
        Some(any_value::Value::StringValue("outbound|9080||r".into()))
    );
    assert_eq!(
        attr("guid:x-request-id"),
        Some(any_value::Value::StringValue("req-1".into()))
    );
    assert_eq!(attr("error"), Some(any_value::Value::BoolValue(true)));
    assert_eq!(first.attributes.len(), 5);

    let second = &req.resource_spans[1].scope_spans[0].spans[0];
    assert_eq!(second.parent_span_id, vec![1; 8]);
    assert_eq!(second.kind, Kind::Client as i32);
    assert_eq!(second.trace_state, "");
    assert_eq!(
        second.status.as_ref().map(|s| s.code),
        Some(pb::trace::v1::status::StatusCode::Error as i32)
    );
    // Before the epoch: 0, not a panic.
    assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
}

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

#[test]
fn metrics_are_cumulative_points_with_istios_names_and_labels() {
    use pb::metrics::v1::metric::Data;
    use pb::metrics::v1::number_data_point::Value;
    let metrics = Metrics::new();
    let source = peer("productpage-v1", "productpage", "v1");
    let destination = peer("reviews-v2", "reviews", "v2");
    let service = Arc::new(ServiceLabels::new(
        "reviews.default.svc.cluster.local",
        "default",
    ));
    let standard = Arc::new(MetricProfile::standard());
    // The destination side reports no duration histogram.
    let mut without_duration = MetricProfile::standard();
    without_duration.shapes[1].enabled = false;
    let without_duration = Arc::new(without_duration);
    let labels = Labels {
        reporter: Reporter::Source,
        source: &source,
        source_principal: true,
        destination: &destination,
        destination_principal: true,
        service: &service,
        grpc: false,
        code: 200,
        grpc_status: None,
        flags: ResponseFlags::NONE,
        security: Security::Unknown,
        profile: &standard,
    };
    let sample = |ms: u64, req: u64, resp: u64| Sample {
        duration: Duration::from_millis(ms),
        request_bytes: req,
        response_bytes: resp,
    };
    metrics.record(&labels, sample(3, 100, 2_000));
    metrics.record(&labels, sample(30, 200, 700));
    metrics.record(&labels, sample(4_000_000, 0, 0));
    let destination_side = Labels {
        reporter: Reporter::Destination,
        security: Security::MutualTls,
        profile: &without_duration,
        ..labels
    };
    metrics.record(&destination_side, sample(2, 50, 60));

    let resource = Resource::new([("service.name", "bookinfo")]);
    let (req, points) = encode_metrics(&metrics.read(), &[], &resource, 111, 222);
    // 2 series × 4 metrics, less the disabled one.
    assert_eq!(points, 7);
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    assert_eq!(
        rm.resource.as_ref().unwrap().attributes,
        vec![string_attribute("service.name", "bookinfo")]
    );
    let sm = &rm.scope_metrics[0];
    assert_eq!(sm.scope.as_ref().unwrap().name, SCOPE_NAME);
    let names: Vec<(&str, &str)> = sm
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.unit.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("istio_requests_total", ""),
            ("istio_request_duration_milliseconds", "ms"),
            ("istio_request_bytes", "By"),
            ("istio_response_bytes", "By"),
        ]
    );
    let reporter = |attrs: &[KeyValue]| {
        attrs
            .iter()
            .find(|kv| kv.key == "reporter")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    let source_reporter = Some(any_value::Value::StringValue("source".into()));

    let Some(Data::Sum(sum)) = &sm.metrics[0].data else {
        panic!("{:?}", sm.metrics[0]);
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        pb::metrics::v1::AggregationTemporality::Cumulative as i32
    );
    assert_eq!(sum.data_points.len(), 2);
    let src = sum
        .data_points
        .iter()
        .find(|p| reporter(&p.attributes) == source_reporter)
        .unwrap();
    assert_eq!(src.value, Some(Value::AsInt(3)));
    assert_eq!((src.start_time_unix_nano, src.time_unix_nano), (111, 222));
    // Istio's 25 labels, in Istio's order.
    let keys: Vec<&str> = src.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, mesh_core::telemetry::ISTIO_LABELS);
    let value = |k: &str| {
        src.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        value("destination_version"),
        Some(any_value::Value::StringValue("v2".into()))
    );
    assert_eq!(
        value("response_code"),
        Some(any_value::Value::StringValue("200".into()))
    );

    // The duration histogram: only the source's series.
    let Some(Data::Histogram(duration)) = &sm.metrics[1].data else {
        panic!("{:?}", sm.metrics[1]);
    };
    assert_eq!(duration.data_points.len(), 1);
    let d = &duration.data_points[0];
    assert_eq!(reporter(&d.attributes), source_reporter);
    assert_eq!(d.explicit_bounds, BUCKETS.to_vec());
    assert_eq!(d.bucket_counts.len(), BUCKETS.len() + 1);
    let mut want = vec![0u64; BUCKETS.len() + 1];
    want[2] = 1; // 3 ms in (1, 5]
    want[5] = 1; // 30 ms in (25, 50]
    want[BUCKETS.len()] = 1; // 4 000 000 ms above every bound
    assert_eq!(d.bucket_counts, want);
    assert_eq!((d.count, d.sum), (3, Some(4_000_033.0)));

    let Some(Data::Histogram(request_bytes)) = &sm.metrics[2].data else {
        panic!("{:?}", sm.metrics[2]);
    };
    assert_eq!(request_bytes.data_points.len(), 2);
    let sums: Vec<(u64, Option<f64>)> = request_bytes
        .data_points
        .iter()
        .map(|p| (p.count, p.sum))
        .collect();
    assert!(sums.contains(&(3, Some(300.0))), "{sums:?}");
    assert!(sums.contains(&(1, Some(50.0))), "{sums:?}");

    // An empty registry sends nothing.
    let (empty, points) = encode_metrics(&Metrics::new().read(), &[], &resource, 0, 0);
    assert_eq!((empty.resource_metrics.len(), points), (0, 0));
}

#[test]
fn grpc_message_counts_are_cumulative_sums_with_istios_twenty_labels() {
    use pb::metrics::v1::metric::Data;
    use pb::metrics::v1::number_data_point::Value;
    let metrics = Metrics::new();
    let source = peer("productpage-v1", "productpage", "v1");
    let destination = peer("reviews-v2", "reviews", "v2");
    let service = Arc::new(ServiceLabels::new(
        "reviews.default.svc.cluster.local",
        "default",
    ));
    let standard = Arc::new(MetricProfile::standard());
    // The destination side: no response messages; its request messages gain a label.
    let grpc = mesh_core::telemetry::REQUEST_METRICS.len();
    let mut shaped = MetricProfile::standard();
    shaped.shapes[grpc + 1].enabled = false;
    shaped.shapes[grpc].added = vec![("stream".into(), "yes".into())];
    let shaped = Arc::new(shaped);
    let labels = Labels {
        reporter: Reporter::Source,
        source: &source,
        source_principal: true,
        destination: &destination,
        destination_principal: true,
        service: &service,
        grpc: true,
        code: 200,
        grpc_status: Some(0),
        flags: ResponseFlags::NONE,
        security: Security::Unknown,
        profile: &standard,
    };
    metrics.message_series(&labels).add(3, 13);
    // Another outcome, the same series: the counts carry no outcome.
    metrics
        .message_series(&Labels {
            code: 503,
            grpc_status: Some(14),
            ..labels
        })
        .add(5, 0);
    metrics
        .message_series(&Labels {
            reporter: Reporter::Destination,
            security: Security::MutualTls,
            profile: &shaped,
            ..labels
        })
        .add(8, 27);
    // A series that never counted a message is not exported.
    let _ = metrics.message_series(&Labels {
        service: &Arc::new(ServiceLabels::unknown()),
        ..labels
    });
    assert_eq!(metrics.message_series_count(), 2);

    let resource = Resource::new([("service.name", "bookinfo")]);
    let messages = metrics.read_messages();
    let (req, points) = encode_metrics(&[], &messages, &resource, 111, 222);
    // 2 series × 2 metrics, less the disabled one.
    assert_eq!(points, 3);
    let sm = &req.resource_metrics[0].scope_metrics[0];
    let names: Vec<&str> = sm.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "istio_request_messages_total",
            "istio_response_messages_total"
        ]
    );
    let point = |metric: usize, reporter: &str| {
        let Some(Data::Sum(sum)) = &sm.metrics[metric].data else {
            panic!("{:?}", sm.metrics[metric]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            pb::metrics::v1::AggregationTemporality::Cumulative as i32
        );
        sum.data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|kv| {
                    kv.key == "reporter"
                        && kv.value.as_ref().and_then(|v| v.value.clone())
                            == Some(any_value::Value::StringValue(reporter.into()))
                })
            })
            .cloned()
    };
    let src = point(0, "source").unwrap();
    assert_eq!(src.value, Some(Value::AsInt(8)));
    assert_eq!((src.start_time_unix_nano, src.time_unix_nano), (111, 222));
    let keys: Vec<&str> = src.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, mesh_core::telemetry::ISTIO_LABELS[..20]);
    assert_eq!(point(1, "source").unwrap().value, Some(Value::AsInt(13)));
    let dst = point(0, "destination").unwrap();
    assert_eq!(dst.value, Some(Value::AsInt(8)));
    assert_eq!(
        dst.attributes.last().map(|kv| kv.key.as_str()),
        Some("stream")
    );
    assert_eq!(dst.attributes.len(), 21);
    assert!(point(1, "destination").is_none());
}

#[test]
fn exporters_need_a_runtime() {
    let config = OtlpConfig::new("http://127.0.0.1:1", Protocol::Grpc).unwrap();
    assert_eq!(
        SpanExporter::start(config.clone(), BatchConfig::default()).unwrap_err(),
        OtlpError::NoRuntime
    );
    let err = MetricsExporter::start(
        Arc::new(Metrics::new()),
        Arc::new(Resource::default()),
        config,
        MetricReaderConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err, OtlpError::NoRuntime);
}
