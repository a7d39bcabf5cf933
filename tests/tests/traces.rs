//! Traces of a running Bookinfo, exported over OTLP (gRPC) to a receiver of the test's
//! own: one product page is one trace — the gateway's span, then each hop's client span
//! (the caller's) and server span (the callee's) in the right parent/child structure,
//! although Bookinfo's services copy no tracing header (the mesh continues the request a
//! handler serves). The Telemetry API's sampling (0 % and 100 %), an incoming sampling
//! decision, custom tags and `disableSpanReporting` change what is reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh_tower::telemetry::otlp::{BatchConfig, OtlpConfig, Protocol, SpanExporter};
use support::Demo;
use support::otlp::{OtlpReceiver, ReceivedSpan, SpanKind};

/// Bookinfo exporting its spans to a fresh receiver, with the mesh-wide Telemetry
/// `tracing` given (it replaces the demo's mesh-wide access logging Telemetry).
async fn traced(tracing: &str) -> (Demo, OtlpReceiver, SpanExporter) {
    let receiver = OtlpReceiver::start().await;
    let demo = Demo::start().await;
    let config = OtlpConfig::new(&receiver.endpoint(), Protocol::Grpc).unwrap();
    let batch = BatchConfig {
        scheduled_delay: Duration::from_millis(50),
        ..BatchConfig::default()
    };
    let exporter = SpanExporter::start(config, batch).unwrap();
    demo.running()
        .live
        .runtime()
        .set_span_exporter(Some(exporter.clone()));
    let yaml = format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: mesh-default\n  \
         namespace: istio-system\nspec:\n  tracing:\n{tracing}"
    );
    demo.apply_settled("telemetry.yaml", &yaml).await;
    (demo, receiver, exporter)
}

/// A page for `jason` served by reviews v2 or v3 (those call ratings): asks until one is
/// (Bookinfo's default routing spreads reviews over the three versions), at most 30 times.
async fn page_with_ratings(demo: &Demo) {
    for _ in 0..30 {
        let page = demo.page(Some("jason")).await;
        if page.podname.as_deref().is_some_and(|p| p != "reviews-v1") {
            return;
        }
    }
    panic!("30 pages without reviews v2 or v3");
}

/// The service a span's resource names (`{canonical service}.{namespace}`).
fn service(s: &ReceivedSpan) -> &str {
    s.resource_attr("service.name").unwrap_or("")
}

/// The spans of each trace.
fn traces(spans: &[ReceivedSpan]) -> HashMap<[u8; 16], Vec<ReceivedSpan>> {
    let mut out: HashMap<[u8; 16], Vec<ReceivedSpan>> = HashMap::new();
    for s in spans {
        out.entry(s.trace_id).or_default().push(s.clone());
    }
    out
}

/// The one span of `trace` on `service`'s side `kind` named `name`.
fn one<'a>(trace: &'a [ReceivedSpan], svc: &str, kind: SpanKind, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = trace
        .iter()
        .filter(|s| service(s) == svc && s.kind == kind && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{svc} {kind:?} {name}: {found:#?}\nin {:#?}",
        trace
            .iter()
            .map(|s| (service(s), s.kind, &s.name))
            .collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_page_is_one_trace_with_a_client_and_a_server_span_per_hop() {
    let (demo, receiver, exporter) = traced(
        "  - providers:\n    - name: otel\n    randomSamplingPercentage: 100\n    customTags:\n      \
         team:\n        literal:\n          value: books\n      user-agent:\n        header:\n          \
         name: user-agent\n          defaultValue: none\n",
    )
    .await;
    page_with_ratings(&demo).await;
    exporter.force_flush().await.unwrap();
    let spans = receiver.spans();
    // The last page's trace is the one with a ratings server span and a gateway span.
    let all = traces(&spans);
    let (_, trace) = all
        .iter()
        .filter(|(_, t)| {
            t.iter()
                .any(|s| service(s) == "ratings.default" && s.kind == SpanKind::Server)
        })
        .max_by_key(|(_, t)| t.iter().map(|s| s.start_unix_nanos).max())
        .expect("a trace through ratings");
    assert_eq!(trace.len(), 8, "{trace:#?}");

    let gateway = one(
        trace,
        "istio-ingressgateway.istio-system",
        SpanKind::Client,
        "productpage.default.svc.cluster.local:9080/productpage",
    );
    assert_eq!(gateway.parent, None, "the gateway starts the trace");
    // The server side takes its caller's operation (Envoy's x-envoy-decorator-operation):
    // the gateway's route, an exact match on /productpage.
    let pp = one(
        trace,
        "productpage.default",
        SpanKind::Server,
        "productpage.default.svc.cluster.local:9080/productpage",
    );
    let pp_details = one(
        trace,
        "productpage.default",
        SpanKind::Client,
        "details.default.svc.cluster.local:9080/*",
    );
    let details = one(
        trace,
        "details.default",
        SpanKind::Server,
        "details.default.svc.cluster.local:9080/*",
    );
    let pp_reviews = one(
        trace,
        "productpage.default",
        SpanKind::Client,
        "reviews.default.svc.cluster.local:9080/*",
    );
    let reviews = one(
        trace,
        "reviews.default",
        SpanKind::Server,
        "reviews.default.svc.cluster.local:9080/*",
    );
    let reviews_ratings = one(
        trace,
        "reviews.default",
        SpanKind::Client,
        "ratings.default.svc.cluster.local:9080/*",
    );
    let ratings = one(
        trace,
        "ratings.default",
        SpanKind::Server,
        "ratings.default.svc.cluster.local:9080/*",
    );
    // Each hop: the callee's server span is a child of the caller's client span, and a
    // handler's client spans are children of the server span it serves.
    for (child, parent) in [
        (pp, gateway),
        (pp_details, pp),
        (details, pp_details),
        (pp_reviews, pp),
        (reviews, pp_reviews),
        (reviews_ratings, reviews),
        (ratings, reviews_ratings),
    ] {
        assert_eq!(
            child.parent,
            Some(parent.span_id),
            "{} {:?} should be a child of {} {:?}",
            child.name,
            child.kind,
            parent.name,
            parent.kind
        );
        assert!(child.start_unix_nanos >= parent.start_unix_nanos);
        assert!(child.end_unix_nanos <= parent.end_unix_nanos + 1_000_000);
    }
    // Istio's and Envoy's tags, and the Telemetry's custom ones.
    let request_id = gateway.attr_str("guid:x-request-id").unwrap().to_string();
    for s in trace {
        assert_eq!(s.attr_str("component"), Some("proxy"));
        assert_eq!(s.attr_str("http.status_code"), Some("200"), "{}", s.name);
        assert_eq!(s.attr_str("http.method"), Some("GET"));
        assert_eq!(s.attr_str("istio.mesh_id"), Some("cluster.local"));
        assert_eq!(s.attr_str("team"), Some("books"));
        assert_eq!(s.attr_str("guid:x-request-id"), Some(request_id.as_str()));
        // The test's client sends no user agent: the tag's default.
        assert_eq!(s.attr_str("user-agent"), Some("none"), "{}", s.name);
    }
    assert_eq!(reviews.attr_str("istio.canonical_service"), Some("reviews"));
    assert_eq!(
        reviews_ratings.attr_str("upstream_cluster"),
        Some("outbound|9080||ratings.default.svc.cluster.local")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_at_zero_reports_nothing_unless_the_caller_decided() {
    let (demo, receiver, exporter) =
        traced("  - providers:\n    - name: otel\n    randomSamplingPercentage: 0\n").await;
    for _ in 0..10 {
        demo.page(None).await;
    }
    exporter.force_flush().await.unwrap();
    assert_eq!(receiver.spans(), Vec::new(), "0 % samples nothing");

    // A caller's sampled trace is continued whatever the percentage.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let req = Request::get(format!("http://{}/productpage", demo.running().ingress))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = demo.send(req).await;
    assert_eq!(status, 200);
    exporter.force_flush().await.unwrap();
    let spans = receiver.wait_for_spans(6, Duration::from_secs(10)).await;
    assert!(
        spans.iter().all(|s| s.trace_id_hex() == trace),
        "{spans:#?}"
    );
    let gateway = spans
        .iter()
        .find(|s| service(s) == "istio-ingressgateway.istio-system")
        .expect("the gateway's span");
    assert_eq!(
        gateway.parent.map(|p| support::otlp::hex(&p)),
        Some(caller.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_with_span_reporting_disabled_reports_none_and_the_trace_goes_on() {
    let (demo, receiver, exporter) =
        traced("  - providers:\n    - name: otel\n    randomSamplingPercentage: 100\n").await;
    demo.apply_settled(
        "reviews-tracing.yaml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: reviews\n  \
         tracing:\n  - disableSpanReporting: true\n",
    )
    .await;
    page_with_ratings(&demo).await;
    exporter.force_flush().await.unwrap();
    let spans = receiver.spans();
    assert!(!spans.is_empty());
    assert!(
        spans.iter().all(|s| service(s) != "reviews.default"),
        "reviews reported spans"
    );
    // Ratings' server span still belongs to the page's trace.
    let ratings = spans
        .iter()
        .rfind(|s| service(s) == "ratings.default")
        .expect("ratings' span");
    assert!(spans.iter().any(
        |s| service(s) == "istio-ingressgateway.istio-system" && s.trace_id == ratings.trace_id
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_exports_spans_and_metrics_where_the_otlp_variables_say() {
    let receiver = OtlpReceiver::start().await;
    let vars: HashMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_string()),
    ]
    .into_iter()
    .collect();
    let otlp = mesh_tower::telemetry::otlp::OtlpEnv::from_env(|k| vars.get(k).cloned()).unwrap();
    // Bookinfo's own config/telemetry.yaml samples every request.
    let demo = Demo::start_with(|o| o.otlp = Some(otlp)).await;
    let page = demo.page(None).await;
    // The gateway, then a client and a server span per hop: 6 without ratings, 8 with.
    let want = if page.podname.as_deref() == Some("reviews-v1") {
        6
    } else {
        8
    };
    let spans = receiver.wait_for_spans(want, Duration::from_secs(15)).await;
    assert_eq!(spans.len(), want, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == spans[0].trace_id));
    assert!(
        receiver.exports().iter().any(|e| e.path == "/v1/traces"),
        "spans over OTLP/HTTP"
    );
    // Istio's metrics, from the registry, with their labels.
    let points = receiver
        .wait_for_metric("istio_requests_total", Duration::from_secs(15))
        .await;
    let served = points
        .iter()
        .find(|p| {
            p.attr("reporter") == Some("destination")
                && p.attr("destination_workload") == Some("productpage-v1")
                && p.attr("source_workload") == Some("istio-ingressgateway")
        })
        .unwrap_or_else(|| panic!("productpage's series: {points:#?}"));
    assert_eq!(served.value, support::otlp::PointValue::Int(1));
}
