//! Istio's standard metrics of a running Bookinfo, read from its admin endpoint's
//! `/stats/prometheus` as a scraper reads them: both reporters of every hop, Istio's
//! labels in Istio's order, the histograms consistent with the counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::Demo;
use support::prom::{self, Sample};

/// Istio's labels of its request metrics, in the order its proxies write them.
const ISTIO_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

const REQUESTS: &str = "istio_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_is_reported_by_both_sides_with_istios_labels() {
    let demo = Demo::start().await;
    const N: usize = 24;
    for _ in 0..N {
        let (status, body) = demo.get("/productpage", None).await;
        assert_eq!(status, 200, "{body}");
    }
    let n = N as f64;
    let gateway_to_productpage = [
        ("source_workload", "istio-ingressgateway"),
        ("destination_workload", "productpage-v1"),
        (
            "destination_service",
            "productpage.default.svc.cluster.local",
        ),
        ("response_code", "200"),
    ];
    let samples = demo
        .metrics_when(|s| {
            prom::sum(
                s,
                REQUESTS,
                &[("reporter", "source")]
                    .iter()
                    .chain(&gateway_to_productpage)
                    .copied()
                    .collect::<Vec<_>>(),
            ) == n
        })
        .await;

    // Every series carries Istio's 25 labels, in Istio's order.
    for s in samples.iter().filter(|s| s.name == REQUESTS) {
        assert_eq!(s.order, ISTIO_LABELS, "{s:?}");
    }

    // The gateway → productpage hop, from both sides: the server names the gateway from
    // its baggage and its mutual TLS identity.
    let from_gateway: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == REQUESTS && s.has(&gateway_to_productpage))
        .collect();
    assert_eq!(from_gateway.len(), 2, "{from_gateway:#?}");
    for s in &from_gateway {
        assert_eq!(s.value, n);
        assert_eq!(s.label("source_canonical_service"), "istio-ingressgateway");
        assert_eq!(s.label("source_canonical_revision"), "latest");
        assert_eq!(s.label("source_workload_namespace"), "istio-system");
        assert_eq!(s.label("source_app"), "istio-ingressgateway");
        assert_eq!(s.label("source_version"), "unknown");
        assert_eq!(s.label("source_cluster"), "Kubernetes");
        assert_eq!(s.label("destination_app"), "productpage");
        assert_eq!(s.label("destination_version"), "v1");
        assert_eq!(s.label("destination_canonical_service"), "productpage");
        assert_eq!(s.label("destination_canonical_revision"), "v1");
        assert_eq!(s.label("destination_service_name"), "productpage");
        assert_eq!(s.label("destination_service_namespace"), "default");
        assert_eq!(s.label("request_protocol"), "http");
        assert_eq!(s.label("grpc_response_status"), "");
        assert_eq!(s.label("response_flags"), "-");
        // Auto mTLS secures the hop: both principals are known on both sides.
        assert_eq!(
            s.label("source_principal"),
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        );
        assert_eq!(
            s.label("destination_principal"),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
    }
    let policy = |reporter: &str| {
        from_gateway
            .iter()
            .find(|s| s.label("reporter") == reporter)
            .map(|s| s.label("connection_security_policy").to_string())
    };
    assert_eq!(policy("source").as_deref(), Some("unknown"));
    assert_eq!(policy("destination").as_deref(), Some("mutual_tls"));

    // productpage → details, once per page, from both sides.
    for reporter in ["source", "destination"] {
        let details = [
            ("reporter", reporter),
            ("source_workload", "productpage-v1"),
            ("destination_workload", "details-v1"),
            ("destination_service", "details.default.svc.cluster.local"),
            ("response_code", "200"),
        ];
        assert_eq!(prom::sum(&samples, REQUESTS, &details), n, "{reporter}");
    }

    // productpage → reviews: the three versions share the pages; reviews v2 and v3 call
    // ratings once per page they serve, v1 never.
    let reviews = |reporter: &str, version: &str| {
        prom::sum(
            &samples,
            REQUESTS,
            &[
                ("reporter", reporter),
                ("source_workload", "productpage-v1"),
                ("destination_service", "reviews.default.svc.cluster.local"),
                ("destination_version", version),
            ],
        )
    };
    let ratings = |reporter: &str, version: &str| {
        prom::sum(
            &samples,
            REQUESTS,
            &[
                ("reporter", reporter),
                ("source_app", "reviews"),
                ("source_version", version),
                ("destination_service", "ratings.default.svc.cluster.local"),
                ("destination_workload", "ratings-v1"),
            ],
        )
    };
    let mut total = 0.0;
    for version in ["v1", "v2", "v3"] {
        let served = reviews("source", version);
        assert_eq!(reviews("destination", version), served, "reviews {version}");
        total += served;
        let expected_ratings = if version == "v1" { 0.0 } else { served };
        assert_eq!(
            ratings("source", version),
            expected_ratings,
            "ratings from {version}"
        );
        assert_eq!(
            ratings("destination", version),
            expected_ratings,
            "ratings from {version}"
        );
    }
    assert_eq!(total, n);

    // The histograms count what the counter counts; buckets are cumulative and end at
    // `+Inf`; sizes include the headers.
    for s in samples.iter().filter(|s| s.name == REQUESTS) {
        let same = |k: &str| (k.to_string(), s.label(k).to_string());
        let want: Vec<(String, String)> = ISTIO_LABELS.iter().map(|k| same(k)).collect();
        let want: Vec<(&str, &str)> = want.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for h in [
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
        ] {
            let b = prom::buckets(&samples, h, &want);
            assert_eq!(b.len(), 20, "{h}: Envoy's 19 bounds and +Inf");
            assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{h} not cumulative");
            assert_eq!(b.last().map(|x| x.1), Some(s.value), "{h} +Inf");
            assert_eq!(prom::sum(&samples, &format!("{h}_count"), &want), s.value);
            let sum = prom::sum(&samples, &format!("{h}_sum"), &want);
            if h != "istio_request_duration_milliseconds" {
                assert!(sum >= s.value * 10.0, "{h}: at least the headers: {sum}");
            }
        }
    }
    // The product page's responses are its HTML: more than 1000 bytes each.
    let page_bytes = prom::buckets(
        &samples,
        "istio_response_bytes",
        &[
            ("reporter", "destination"),
            ("destination_workload", "productpage-v1"),
        ],
    );
    let at_most_1000 = page_bytes.iter().find(|b| b.0 == 1000.0).map(|b| b.1);
    assert_eq!(at_most_1000, Some(0.0), "{page_bytes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_gateway_cannot_route_is_counted_with_its_flag() {
    let demo = Demo::start().await;
    // The Bookinfo gateway's VirtualService routes five paths; no rule matches others.
    let answer = demo.ingress("/nowhere").await;
    assert_eq!(answer.status, 404);
    let want = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        ("destination_workload", "unknown"),
        ("destination_service", "unknown"),
        ("response_code", "404"),
        ("response_flags", "NR"),
    ];
    let samples = demo
        .metrics_when(|s| prom::sum(s, REQUESTS, &want) == 1.0)
        .await;
    assert_eq!(
        prom::sum(&samples, REQUESTS, &[("response_code", "404")]),
        1.0
    );
}

/// The Telemetry API changes what is reported, live: a tag removed and two set by literal
/// for one metric, a metric turned off on one side, and one workload's server side off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_resources_shape_the_metrics() {
    let demo = Demo::start().await;
    demo.apply_settled(
        "telemetry.yaml",
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        mesh: {value: "'mesh-rs'"}
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: details-quiet, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  metrics:
  - overrides:
    - match: {mode: SERVER}
      disabled: true
"#,
    )
    .await;
    const N: f64 = 5.0;
    for _ in 0..5 {
        let (status, body) = demo.get("/productpage", None).await;
        assert_eq!(status, 200, "{body}");
    }
    let to_page = [
        ("reporter", "destination"),
        ("destination_workload", "productpage-v1"),
    ];
    let samples = demo
        .metrics_when(|s| prom::sum(s, REQUESTS, &to_page) == N)
        .await;

    // The count lost `request_protocol` and gained `mesh`; the histograms kept Istio's
    // labels.
    for s in samples.iter().filter(|s| s.name == REQUESTS) {
        assert!(!s.labels.contains_key("request_protocol"), "{s:?}");
        assert_eq!(s.label("mesh"), "mesh-rs");
        assert_eq!(s.order.last().map(String::as_str), Some("mesh"));
    }
    let sizes: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "istio_response_bytes_count")
        .collect();
    assert!(!sizes.is_empty());
    for s in sizes {
        assert_eq!(s.label("request_protocol"), "http");
        assert!(!s.labels.contains_key("mesh"));
    }
    // Durations: the source side only.
    let durations: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "istio_request_duration_milliseconds_count")
        .map(|s| s.label("reporter"))
        .collect();
    assert!(!durations.is_empty());
    assert!(durations.iter().all(|r| *r == "source"), "{durations:?}");
    // details reports nothing of what it serves; productpage still reports its calls.
    let details = |reporter| {
        prom::sum(
            &samples,
            REQUESTS,
            &[
                ("reporter", reporter),
                ("destination_workload", "details-v1"),
            ],
        )
    };
    assert_eq!(details("source"), N);
    assert_eq!(details("destination"), 0.0);
}
