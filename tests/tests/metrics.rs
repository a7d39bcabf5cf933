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

// ---------------------------------------------------------------------------------------
// gRPC message counts

/// A body of the frames given, sent one by one.
struct Frames(std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>);

impl Frames {
    fn new(frames: impl IntoIterator<Item = hyper::body::Frame<bytes::Bytes>>) -> Self {
        Frames(frames.into_iter().collect())
    }
}

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// `n` gRPC messages of a few bytes each, framed.
fn grpc_messages(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let message = format!("message {i}");
        out.push(0);
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message.as_bytes());
    }
    out
}

/// How many gRPC messages `bytes` holds (complete ones).
fn count_grpc(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        bytes = &bytes[(5 + len).min(bytes.len())..];
        n += 1;
    }
    n
}

/// `bytes` cut in pieces of `sizes` bytes (the rest in the last one).
fn cut(bytes: &[u8], sizes: &[usize]) -> Vec<hyper::body::Frame<bytes::Bytes>> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    for size in sizes {
        let (piece, after) = rest.split_at((*size).min(rest.len()));
        frames.push(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
            piece,
        )));
        rest = after;
    }
    frames.push(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
        rest,
    )));
    frames
}

/// The streaming service. `Chat` reads every gRPC message of the request, then answers
/// each with two, in frames that split a prefix, then `grpc-status: 0`; `Live` answers
/// each frame of whole messages as it arrives; anything else is echoed in plain text.
async fn streamer(
    req: http::Request<mesh_tower::inbound::GrpcMessagesBody<hyper::body::Incoming>>,
) -> Result<http::Response<http_body_util::Either<Frames, Channel>>, std::convert::Infallible> {
    use http_body_util::{BodyExt, Either};
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let content_type = http::HeaderValue::from_static("application/grpc");
    if grpc && req.uri().path() == "/streamer.Streamer/Live" {
        let (answers, frames) = tokio::sync::mpsc::channel(4);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    let answer = grpc_messages(2 * count_grpc(data));
                    let _ = answers.send(hyper::body::Frame::data(answer.into())).await;
                }
            }
            let _ = answers.send(hyper::body::Frame::trailers(trailers)).await;
        });
        let mut resp = http::Response::new(Either::Right(Channel(frames)));
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, content_type);
        return Ok(resp);
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if !grpc {
        let echo = Frames::new([hyper::body::Frame::data(body)]);
        return Ok(http::Response::new(Either::Left(echo)));
    }
    let answer = grpc_messages(2 * count_grpc(&body));
    let mut frames = cut(&answer, &[3, 14]);
    frames.push(hyper::body::Frame::trailers(trailers));
    let mut resp = http::Response::new(Either::Left(Frames::new(frames)));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, content_type);
    Ok(resp)
}

/// Istio's labels of the gRPC message counts: its first 20, the outcome left out.
const MESSAGE_LABELS: [&str; 20] = {
    let mut l = [""; 20];
    let mut i = 0;
    while i < 20 {
        l[i] = ISTIO_LABELS[i];
        i += 1;
    }
    l
};

/// Both reporters count every gRPC message of a unary call and of client/server streams,
/// each as its body streams: the caller (`mesh.client()`) its request's and its
/// response's, the server (`mesh.inbound()` with `GrpcMessagesLayer`) likewise; an open
/// stream's counts show before it ends; a request that is not gRPC is counted by
/// neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_are_counted_by_both_reporters() {
    use greeter::client::GreeterClient;
    use greeter::pb::HelloRequest;
    use greeter::server::GreeterServer;
    use greeter::service::GreeterService;
    use http_body_util::BodyExt;
    use mesh_tower::identity::{CertificateAuthority, Identities};
    use mesh_tower::inbound::GrpcMessagesLayer;
    use mesh_tower::{MeshRuntime, Workload};
    use tower::ServiceExt;

    let greeter_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let streamer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = |l: &tokio::net::TcpListener| l.local_addr().unwrap().port();
    let mut yaml = String::new();
    for (name, service_port, port) in [
        ("greeter", 50051, port(&greeter_listener)),
        ("streamer", 50052, port(&streamer_listener)),
    ] {
        yaml.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {service_port}, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {name}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}-v1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{grpc: {port}}}
  labels: {{app: {name}, version: v1}}
  serviceAccount: {name}
"#
        ));
    }
    let mut set = mesh_config::ConfigSet::new();
    set.add_str("grpc.yaml", &yaml);
    let runtime = MeshRuntime::from_snapshot(&mesh_tests::checked(&set));
    runtime.set_identities(Identities::Ca(std::sync::Arc::new(
        CertificateAuthority::new("cluster.local").unwrap(),
    )));
    let workload = |name: &str| {
        runtime.workload(
            Workload::new(format!("{name}-v1"), "default")
                .labels([("app", name), ("version", "v1")])
                .service_account(name),
        )
    };
    let greeter = workload("greeter");
    let app = tower::ServiceBuilder::new()
        .layer(greeter.inbound())
        .layer(GrpcMessagesLayer)
        .service(GreeterServer::new(GreeterService::new("v1")));
    tokio::spawn(async move { greeter.serve(greeter_listener, app).await });
    let streaming = workload("streamer");
    let app = tower::ServiceBuilder::new()
        .layer(streaming.inbound())
        .layer(GrpcMessagesLayer)
        .service(tower::service_fn(streamer));
    tokio::spawn(async move { streaming.serve(streamer_listener, app).await });
    let frontend = runtime.workload(
        Workload::new("frontend", "default")
            .labels([("app", "frontend")])
            .service_account("frontend"),
    );
    let samples = || prom::parse(&runtime.metrics().prometheus_text());
    let stream = |body: Frames, grpc: bool| {
        let mut req = http::Request::post(
            "http://streamer.default.svc.cluster.local:50052/streamer.Streamer/Chat",
        );
        if grpc {
            req = req
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers");
        }
        frontend.client().oneshot(req.body(body).unwrap())
    };

    // Not gRPC, though its body looks like gRPC: counted as a request, no message series.
    let resp = stream(Frames::new(cut(&grpc_messages(2), &[4])), false)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(count_grpc(&echoed), 2);
    let first = samples();
    for reporter in ["source", "destination"] {
        let http = [("reporter", reporter), ("request_protocol", "http")];
        assert_eq!(prom::sum(&first, REQUESTS, &http), 1.0, "{reporter}");
    }
    assert!(
        !first.iter().any(|s| s.name.ends_with("_messages_total")),
        "{first:#?}"
    );
    assert_eq!(runtime.metrics().message_series_count(), 0);

    // Three unary calls of the greeter (tonic, over mutual TLS).
    let mut client = GreeterClient::with_origin(
        frontend.client(),
        http::Uri::from_static("http://greeter.default.svc.cluster.local:50051"),
    );
    for name in ["a", "b", "c"] {
        let reply = client
            .say_hello(HelloRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner();
        assert!(
            reply.message.starts_with(&format!("Hello, {name}!")),
            "{reply:?}"
        );
    }
    // Two client/server streams: 3 messages (a prefix split across frames) answered by
    // 6, then 1 answered by 2.
    for (n, sizes) in [(3usize, &[2usize, 9, 1][..]), (1, &[][..])] {
        let resp = stream(Frames::new(cut(&grpc_messages(n), sizes)), true)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let answer = resp.into_body().collect().await.unwrap();
        assert_eq!(
            answer.trailers().and_then(|t| t.get("grpc-status")),
            Some(&http::HeaderValue::from_static("0"))
        );
        assert_eq!(count_grpc(&answer.to_bytes()), 2 * n);
    }

    // (destination workload, request messages, response messages), from both reporters.
    let samples_now =
        message_counts_when(&runtime, &[("greeter-v1", 3, 3), ("streamer-v1", 4, 8)]).await;
    // One series per hop and reporter, each with Istio's 20 labels in Istio's order:
    // who and where, with the principals of the mutual TLS connection; no outcome.
    let message_series: Vec<&prom::Sample> = samples_now
        .iter()
        .filter(|s| s.name == "istio_request_messages_total")
        .collect();
    assert_eq!(message_series.len(), 4, "{message_series:#?}");
    assert_eq!(runtime.metrics().message_series_count(), 4);
    for s in samples_now
        .iter()
        .filter(|s| s.name.ends_with("_messages_total"))
    {
        assert_eq!(s.order, MESSAGE_LABELS, "{s:?}");
        assert_eq!(s.label("source_workload"), "frontend");
        assert_eq!(
            s.label("source_principal"),
            "spiffe://cluster.local/ns/default/sa/frontend"
        );
        let app = s.label("destination_app");
        assert_eq!(
            s.label("destination_principal"),
            format!("spiffe://cluster.local/ns/default/sa/{app}")
        );
        assert_eq!(
            s.label("destination_service"),
            format!("{app}.default.svc.cluster.local")
        );
    }
    // The requests themselves: counted once each, as gRPC, with their status.
    for reporter in ["source", "destination"] {
        let grpc = [
            ("reporter", reporter),
            ("request_protocol", "grpc"),
            ("grpc_response_status", "0"),
        ];
        assert_eq!(prom::sum(&samples_now, REQUESTS, &grpc), 5.0, "{reporter}");
    }

    // A bidirectional stream, held open: its messages are reported before it ends, as
    // Istio's proxies report an open stream's.
    let (sending, frames) = tokio::sync::mpsc::channel(4);
    let live = http::Request::post(
        "http://streamer.default.svc.cluster.local:50052/streamer.Streamer/Live",
    )
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header("te", "trailers")
    .body(Channel(frames))
    .unwrap();
    let mut resp = frontend.client().oneshot(live).await.unwrap();
    for _ in 0..2 {
        sending
            .send(hyper::body::Frame::data(grpc_messages(1).into()))
            .await
            .unwrap();
        let answer = resp.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(answer.data_ref().map(|d| count_grpc(d)), Some(2));
    }
    message_counts_when(&runtime, &[("greeter-v1", 3, 3), ("streamer-v1", 6, 12)]).await;
    let before_end = prom::sum(&samples(), REQUESTS, &[("request_protocol", "grpc")]);
    assert_eq!(
        before_end, 10.0,
        "the stream is not counted as a request yet"
    );
    drop(sending);
    let rest = resp.into_body().collect().await.unwrap();
    assert_eq!(
        rest.trailers().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("0"))
    );
    let after =
        message_counts_when(&runtime, &[("greeter-v1", 3, 3), ("streamer-v1", 6, 12)]).await;
    assert_eq!(runtime.metrics().message_series_count(), 4);
    for reporter in ["source", "destination"] {
        let grpc = [("reporter", reporter), ("request_protocol", "grpc")];
        assert_eq!(prom::sum(&after, REQUESTS, &grpc), 6.0, "{reporter}");
    }
}

/// The metrics of `runtime` once the gRPC message counts of `want` — (destination
/// workload, request messages, response messages) — hold from both reporters (waiting a
/// second at most); panics with the counts otherwise.
async fn message_counts_when(
    runtime: &mesh_tower::MeshRuntime,
    want: &[(&str, u64, u64)],
) -> Vec<prom::Sample> {
    let counts = |s: &[prom::Sample]| -> Vec<(String, f64, f64)> {
        let mut out = Vec::new();
        for (workload, _, _) in want {
            for reporter in ["source", "destination"] {
                let of = |metric: &str| {
                    prom::sum(
                        s,
                        metric,
                        &[("reporter", reporter), ("destination_workload", workload)],
                    )
                };
                out.push((
                    format!("{reporter} {workload}"),
                    of("istio_request_messages_total"),
                    of("istio_response_messages_total"),
                ));
            }
        }
        out
    };
    let expected: Vec<(String, f64, f64)> = want
        .iter()
        .flat_map(|(w, q, r)| {
            ["source", "destination"].map(|rep| (format!("{rep} {w}"), *q as f64, *r as f64))
        })
        .collect();
    let mut samples = prom::parse(&runtime.metrics().prometheus_text());
    for _ in 0..50 {
        if counts(&samples) == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        samples = prom::parse(&runtime.metrics().prometheus_text());
    }
    assert_eq!(counts(&samples), expected);
    samples
}

/// A body of the frames a channel receives, ending when its sender is dropped.
struct Channel(tokio::sync::mpsc::Receiver<hyper::body::Frame<bytes::Bytes>>);

impl hyper::body::Body for Channel {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}
