//! Outlier detection end to end: three endpoints (real hyper servers on 127.0.0.1) behind
//! `mesh.client()`, one or two of them answering 503, with a DestinationRule's
//! `outlierDetection` on short times (interval 100 ms, baseEjectionTime 500 ms, or 30 s
//! where the ejection must outlast the test). No VirtualService: Istio's default retry
//! policy applies (2 attempts on `connect-failure,refused-stream,unavailable,cancelled,
//! retriable-status-codes` with 503, to another endpoint). Every loop is bounded in count
//! and time; timing bounds are generous; what the detector decided is read from the
//! runtime's `/clusters` view.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use mesh_tests::{TestServer, get, mesh, serve, service_with, snapshot};
use mesh_tower::Mesh;
use serde_json::Value;

/// Envoy's name of the test's cluster.
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";

/// A server that answers 200, or 503 while `failing`.
struct Backend {
    server: TestServer,
    failing: Arc<AtomicBool>,
    /// 503s answered.
    failed: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(failing: bool) -> Backend {
        let flag = Arc::new(AtomicBool::new(failing));
        let failed = Arc::new(AtomicUsize::new(0));
        let (f, n) = (flag.clone(), failed.clone());
        let server = serve(move |_, _| {
            let (f, n) = (f.clone(), n.clone());
            async move {
                if f.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    let mut r = Response::new(Full::new(Bytes::from("failing")));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                } else {
                    Response::new(Full::new(Bytes::from("ok")))
                }
            }
        })
        .await;
        Backend {
            server,
            failing: flag,
            failed,
        }
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    fn hits(&self) -> usize {
        self.server.hits()
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

async fn backends(failing: [bool; 3]) -> [Backend; 3] {
    [
        Backend::start(failing[0]).await,
        Backend::start(failing[1]).await,
        Backend::start(failing[2]).await,
    ]
}

/// `reviews` on the three backends, balanced by `lb`, with `outlierDetection: {od}`.
fn config(b: &[Backend; 3], lb: &str, od: &str) -> String {
    let eps: Vec<(&str, u16)> = b.iter().map(|b| ("v1", b.port())).collect();
    service_with(
        "reviews",
        "HTTP",
        &eps,
        &format!(
            "  trafficPolicy:\n    loadBalancer: {{simple: {lb}}}\n    outlierDetection: {{{od}}}\n"
        ),
    )
}

/// The `/clusters` view as JSON.
fn clusters(m: &Mesh) -> Value {
    m.runtime().clusters().json()
}

fn cluster(json: &Value) -> &Value {
    json["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == CLUSTER)
        .unwrap_or_else(|| panic!("no {CLUSTER} in {json:#}"))
}

fn host<'a>(json: &'a Value, b: &Backend) -> &'a Value {
    let address = format!("127.0.0.1:{}", b.port());
    cluster(json)["host_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == address.as_str())
        .unwrap_or_else(|| panic!("no {address} in {json:#}"))
}

fn ejected(m: &Mesh, b: &Backend) -> bool {
    host(&clusters(m), b)["failed_outlier_check"] == true
}

/// Sends GETs one after the other until `done` (at most `max` of them, and 10 s);
/// returns how many were sent and their statuses.
async fn until(m: &Mesh, max: usize, mut done: impl FnMut() -> bool) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut statuses = Vec::new();
    while !done() {
        assert!(
            statuses.len() < max && Instant::now() < deadline,
            "not done after {} requests: {statuses:?}",
            statuses.len()
        );
        statuses.push(get(m, "http://reviews:9080/", &[]).await.0);
    }
    statuses
}

/// Sends `n` GETs one after the other; returns their statuses.
async fn send(m: &Mesh, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(get(m, "http://reviews:9080/", &[]).await.0);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_the_success_rate_holds_under_load() {
    let b = backends([false; 3]).await;
    let m = mesh(&config(
        &b,
        "LEAST_REQUEST",
        "consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 500ms, maxEjectionPercent: 34",
    ));
    // 8 callers share 4,000 requests (at most 30 s); the third endpoint fails from the
    // 500th request on.
    const TOTAL: usize = 4000;
    const CALLERS: usize = 8;
    const FAIL_FROM: usize = 500;
    let sent = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let failing = b[2].failing.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (m, sent, errors, failing) = (m.clone(), sent.clone(), errors.clone(), failing.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                if n >= TOTAL || Instant::now() > deadline {
                    return;
                }
                if n == FAIL_FROM {
                    failing.store(true, Ordering::SeqCst);
                }
                if get(&m, "http://reviews:9080/", &[]).await.0 != 200 {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let done = sent.load(Ordering::SeqCst).min(TOTAL);
    assert_eq!(done, TOTAL, "the run did not finish within 30 s");
    let errors = errors.load(Ordering::SeqCst);
    let success = 1.0 - errors as f64 / TOTAL as f64;
    assert!(success >= 0.999, "success rate {success} ({errors} errors)");
    // The failing endpoint was ejected, and saw few requests while failing: each
    // ejection costs at most 3 failures plus the requests already on their way to it.
    let json = clusters(&m);
    let c = host(&json, &b[2]);
    let ejections = c["num_ejections"].as_u64().unwrap() as usize;
    assert!(ejections >= 1, "{json:#}");
    let failed = b[2].failed();
    assert!(failed >= 3, "{failed}");
    assert!(
        failed <= ejections * (3 + CALLERS) + 3,
        "{failed} failures for {ejections} ejections"
    );
    let healthy = b[0].hits() + b[1].hits();
    assert!(healthy > 10 * failed, "{healthy} vs {failed}");
    assert_eq!(
        cluster(&json)["outlier_detection"]["ejections_enforced_total"].as_u64(),
        Some(ejections as u64)
    );
    assert_eq!(host(&json, &b[0])["num_ejections"], 0);
    assert_eq!(host(&json, &b[1])["num_ejections"], 0);
}

#[tokio::test]
async fn an_ejected_endpoint_takes_no_traffic_and_returns_after_its_ejection_time() {
    let b = backends([false, false, true]).await;
    let m = mesh(&config(
        &b,
        "ROUND_ROBIN",
        "consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 500ms, maxEjectionPercent: 34",
    ));
    // Round robin: every third request starts on the failing endpoint; it is retried on
    // another one.
    let statuses = until(&m, 30, || b[2].failed() >= 3).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let ejected_at = Instant::now();
    assert!(ejected(&m, &b[2]));
    assert_eq!(b[2].failed(), 3);
    // It recovers; while ejected, no request reaches it.
    b[2].fail(false);
    let hits = b[2].hits();
    let mut back = None;
    let deadline = ejected_at + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(get(&m, "http://reviews:9080/", &[]).await.0, 200);
        if b[2].hits() > hits {
            back = Some(ejected_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = back.expect("the endpoint did not return within 3 s");
    // Never before its 500 ms (less the time the view took to say it was ejected).
    assert!(back >= Duration::from_millis(450), "back after {back:?}");
    let json = clusters(&m);
    let c = host(&json, &b[2]);
    assert_eq!(c["failed_outlier_check"], false);
    assert_eq!(c["health_flags"], "healthy");
    assert_eq!(c["num_ejections"], 1);
    assert_eq!(c["consecutive_5xx"], 0);
    assert!(c["ejected_for_ms"].is_null());
    assert_eq!(cluster(&json)["outlier_detection"]["ejections_active"], 0);
}

#[tokio::test]
async fn the_clusters_view_shows_the_ejection() {
    let b = backends([false, false, true]).await;
    let m = mesh(&config(
        &b,
        "ROUND_ROBIN",
        "consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 34",
    ));
    until(&m, 30, || b[2].failed() >= 3).await;
    let json = clusters(&m);
    let od = &cluster(&json)["outlier_detection"];
    let want = serde_json::json!({
        "ejections_active": 1,
        "ejections_enforced_total": 1,
        "ejections_overflow": 0,
        "panic": false,
        "consecutive_5xx": 3,
        "consecutive_gateway_failure": 0,
        "consecutive_local_origin_failure": 0,
        "interval_ms": 100,
        "base_ejection_time_ms": 30000,
        "max_ejection_percent": 34,
        "min_health_percent": 0,
    });
    assert_eq!(od, &want);
    let c = host(&json, &b[2]);
    assert_eq!(c["failed_outlier_check"], true);
    assert_eq!(c["health_flags"], "/failed_outlier_check");
    assert_eq!(c["num_ejections"], 1);
    assert_eq!(
        (c["rq_success"].as_u64(), c["rq_error"].as_u64()),
        (Some(0), Some(3))
    );
    // The count that detected is reset.
    assert_eq!(c["consecutive_5xx"], 0);
    // Back at the first 100 ms sweep after 30 s.
    let left = c["ejected_for_ms"].as_u64().unwrap();
    assert!((25_000..=30_100).contains(&left), "{left}");
    assert_eq!(c["rq_active"], 0);
    for ok in &b[..2] {
        let h = host(&json, ok);
        assert_eq!(h["health_flags"], "healthy");
        assert_eq!(h["rq_success"].as_u64(), Some(ok.hits() as u64));
        assert_eq!(h["rq_error"], 0);
        assert!(h["ejected_for_ms"].is_null());
        assert_eq!(h["rq_active"], 0);
    }
    // The same in Envoy's text lines.
    let text = m.runtime().clusters().text();
    let port = b[2].port();
    for line in [
        format!("{CLUSTER}::outlier::ejections_active::1"),
        format!("{CLUSTER}::127.0.0.1:{port}::health_flags::/failed_outlier_check"),
        format!("{CLUSTER}::127.0.0.1:{port}::num_ejections::1"),
        format!("{CLUSTER}::127.0.0.1:{port}::rq_error::3"),
        format!(
            "{CLUSTER}::127.0.0.1:{}::health_flags::healthy",
            b[0].port()
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn max_ejection_percent_bounds_the_ejected_endpoints() {
    // (maxEjectionPercent, ejected of the two failing endpoints)
    for (max, want) in [(34, 1), (66, 1), (67, 2), (100, 2)] {
        let b = backends([false, true, true]).await;
        let m = mesh(&config(
            &b,
            "ROUND_ROBIN",
            &format!(
                "consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: {max}"
            ),
        ));
        until(&m, 60, || b[1].failed() >= 3 && b[2].failed() >= 3).await;
        send(&m, 30).await;
        let json = clusters(&m);
        let od = &cluster(&json)["outlier_detection"];
        assert_eq!(od["ejections_active"], want, "{max}%: {json:#}");
        assert_eq!(od["max_ejection_percent"], max);
        let ejected: Vec<bool> = b[1..].iter().map(|x| ejected(&m, x)).collect();
        assert_eq!(
            ejected.iter().filter(|e| **e).count(),
            want as usize,
            "{max}%"
        );
        if want == 1 {
            // The detector saw the other one fail too, and refused to eject it.
            assert!(od["ejections_overflow"].as_u64().unwrap() >= 1, "{json:#}");
            // It keeps taking requests; the ejected one takes none.
            let (out, kept) = if ejected[0] {
                (&b[1], &b[2])
            } else {
                (&b[2], &b[1])
            };
            let (before_out, before_kept) = (out.hits(), kept.hits());
            send(&m, 30).await;
            assert_eq!(out.hits(), before_out, "{max}%");
            assert!(kept.hits() >= before_kept + 9, "{max}%");
        }
    }
}

#[tokio::test]
async fn below_min_health_percent_ejections_are_ignored() {
    // (minHealthPercent, in panic with two of three ejected)
    for (min_health, panic) in [(0, false), (33, false), (34, true), (100, true)] {
        let b = backends([false, true, true]).await;
        let m = mesh(&config(
            &b,
            "ROUND_ROBIN",
            &format!(
                "consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 100, minHealthPercent: {min_health}"
            ),
        ));
        until(&m, 60, || ejected(&m, &b[1]) && ejected(&m, &b[2])).await;
        let json = clusters(&m);
        let od = &cluster(&json)["outlier_detection"];
        assert_eq!(od["ejections_active"], 2, "{json:#}");
        assert_eq!(od["panic"], panic, "{min_health}%");
        let before: Vec<usize> = b.iter().map(Backend::hits).collect();
        send(&m, 30).await;
        let after: Vec<usize> = b.iter().map(Backend::hits).collect();
        if panic {
            // Traffic reaches every endpoint, ejected or not.
            for i in 0..3 {
                assert!(
                    after[i] > before[i],
                    "{min_health}%: {before:?} -> {after:?}"
                );
            }
        } else {
            // Only the healthy endpoint takes traffic.
            assert_eq!(after[0], before[0] + 30, "{min_health}%");
            assert_eq!(&after[1..], &before[1..], "{min_health}%");
        }
    }
}

#[tokio::test]
async fn every_endpoint_ejected_without_panic_is_no_healthy_upstream() {
    let b = backends([true; 3]).await;
    let m = mesh(&config(
        &b,
        "ROUND_ROBIN",
        "consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 100",
    ));
    until(&m, 10, || b.iter().all(|x| ejected(&m, x))).await;
    let (status, body, _) = get(&m, "http://reviews:9080/", &[]).await;
    assert_eq!((status, body.as_str()), (503, "no healthy upstream"));
    let hits: usize = b.iter().map(Backend::hits).sum();
    send(&m, 5).await;
    assert_eq!(b.iter().map(Backend::hits).sum::<usize>(), hits);
}

#[tokio::test]
async fn an_ejection_survives_a_reload_and_an_endpoint_that_leaves_starts_afresh() {
    let b = backends([false, false, true]).await;
    let od =
        "consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 34";
    let cfg = config(&b, "ROUND_ROBIN", od);
    let m = mesh(&cfg);
    until(&m, 30, || ejected(&m, &b[2])).await;
    let before = m.runtime().version();
    // Another configuration (one more service), the same DestinationRule.
    let more = format!(
        "{cfg}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: other}}\nspec:\n  hosts: [other.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.9}}]\n"
    );
    m.runtime().update(&snapshot(&more));
    assert_ne!(m.runtime().version(), before);
    let hits = b[2].hits();
    let statuses = send(&m, 30).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        b[2].hits(),
        hits,
        "the ejected endpoint took requests after the reload"
    );
    let json = clusters(&m);
    assert_eq!(host(&json, &b[2])["failed_outlier_check"], true);
    assert_eq!(host(&json, &b[2])["num_ejections"], 1);
    assert_eq!(cluster(&json)["outlier_detection"]["ejections_active"], 1);
    // The endpoint leaves the cluster, then comes back: it starts afresh, as a new host
    // does in Envoy.
    let eps = [("v1", b[0].port()), ("v1", b[1].port())];
    let without = service_with(
        "reviews",
        "HTTP",
        &eps,
        &format!(
            "  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection: {{{od}}}\n"
        ),
    );
    m.runtime().update(&snapshot(&without));
    send(&m, 3).await;
    m.runtime().update(&snapshot(&cfg));
    b[2].fail(false);
    let hits = b[2].hits();
    send(&m, 30).await;
    assert!(b[2].hits() >= hits + 9, "{} -> {}", hits, b[2].hits());
    let json = clusters(&m);
    assert_eq!(host(&json, &b[2])["failed_outlier_check"], false);
    assert_eq!(host(&json, &b[2])["num_ejections"], 0);
}

#[tokio::test]
async fn connect_failures_count_unless_split() {
    // A closed port: every attempt to it fails to connect.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ok = Backend::start(false).await;
    // (outlierDetection, ejected after 11 connect failures)
    let table = [
        ("consecutive5xxErrors: 3", true),
        ("consecutive5xxErrors: 0, consecutiveGatewayErrors: 3", true),
        // Split, they count apart from 5xx...
        (
            "consecutive5xxErrors: 3, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 50",
            false,
        ),
        (
            "consecutive5xxErrors: 50, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3",
            true,
        ),
        // ... 5 of them by default.
        (
            "consecutive5xxErrors: 50, splitExternalLocalOriginErrors: true",
            true,
        ),
    ];
    for (od, want) in table {
        let eps = [("v1", ok.port()), ("v1", closed)];
        let cfg = service_with(
            "reviews",
            "HTTP",
            &eps,
            &format!(
                "  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection: {{{od}, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n"
            ),
        );
        let m = mesh(&cfg);
        // Round robin over two (its position moves on at retries too): every request
        // but the first tries the closed port first, and is retried on the server.
        let statuses = send(&m, 12).await;
        assert!(statuses.iter().all(|s| *s == 200), "{od}: {statuses:?}");
        let json = clusters(&m);
        let address = format!("127.0.0.1:{closed}");
        let h = cluster(&json)["host_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["address"] == address.as_str())
            .unwrap()
            .clone();
        assert_eq!(h["failed_outlier_check"], want, "{od}: {json:#}");
        assert!(h["rq_error"].as_u64().unwrap() >= 3, "{od}");
    }
}

/// Every `outlierDetection` field of Istio's API is enforced: no `MESH0120`; and a field
/// Istio's API does not have (`failurePercentageThreshold`, an Envoy setting) is refused.
#[test]
fn outlier_detection_fields_are_enforced() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 3\n      consecutiveGatewayErrors: 2\n      splitExternalLocalOriginErrors: true\n      consecutiveLocalOriginFailures: 4\n      interval: 1s\n      baseEjectionTime: 10s\n      maxEjectionPercent: 50\n      minHealthPercent: 20\n      outlierDetectionHttpErrorCodes: [500, 429]\n";
    let mut set = mesh_config::ConfigSet::new();
    set.add_str("dr.yaml", yaml);
    let checked = set.check();
    assert!(checked.snapshot.is_some(), "{}", checked.summary());
    let warned: Vec<(String, String)> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == mesh_config::Code::NotEnforced)
        .map(|d| {
            (
                d.path.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                d.location
                    .as_ref()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert!(warned.is_empty(), "{warned:?}");
    let mut set = mesh_config::ConfigSet::new();
    set.add_str(
        "dr.yaml",
        &format!("{yaml}      failurePercentageThreshold: 20\n"),
    );
    let checked = set.check();
    let unknown: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == mesh_config::Code::UnknownField)
        .map(|d| format!("{} {}", d.location.as_ref().unwrap().display(), d.message))
        .collect();
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].starts_with("dr.yaml:17:")
            && unknown[0].contains("unknown field `failurePercentageThreshold`"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn timeouts_count_as_failures() {
    // (the route's timeout and retries, answers while the slow endpoint is in the rotation)
    let table = [
        // Cut by its per-try timeout, and retried on another endpoint.
        (
            "timeout: 5s\n    retries: {attempts: 2, perTryTimeout: 100ms, retryOn: 5xx}",
            200,
        ),
        // Cut by the route timeout: 504.
        ("timeout: 100ms\n    retries: {attempts: 0}", 504),
    ];
    for (route, answer) in table {
        let slow = serve(|_, _| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(Full::new(Bytes::from("late")))
        })
        .await;
        let fast = [Backend::start(false).await, Backend::start(false).await];
        let eps = [
            ("v1", slow.port()),
            ("v1", fast[0].port()),
            ("v1", fast[1].port()),
        ];
        let cfg = service_with(
            "reviews",
            "HTTP",
            &eps,
            "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 34}\n",
        ) + &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n    {route}\n"
        );
        let m = mesh(&cfg);
        let statuses = send(&m, 6).await;
        // Two of the six start on the slow endpoint, which is then ejected.
        assert_eq!(
            statuses.iter().filter(|s| **s == answer).count(),
            if answer == 200 { 6 } else { 2 },
            "{route}: {statuses:?}"
        );
        let json = clusters(&m);
        let address = format!("127.0.0.1:{}", slow.port());
        let h = cluster(&json)["host_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["address"] == address.as_str())
            .unwrap()
            .clone();
        assert_eq!(h["failed_outlier_check"], true, "{route}: {json:#}");
        assert_eq!(h["rq_error"], 2, "{route}");
        let hits = slow.hits();
        let statuses = send(&m, 9).await;
        assert!(statuses.iter().all(|s| *s == 200), "{route}: {statuses:?}");
        assert_eq!(slow.hits(), hits, "{route}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_admin_serves_clusters_as_text_and_json() {
    let demo = support::Demo::start().await;
    demo.apply_text(
        "ratings-outlier.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings}\nspec:\n  host: ratings\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 7, interval: 1s, baseEjectionTime: 15s}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v2-mysql, labels: {version: v2-mysql}}\n  - {name: v2-mysql-vm, labels: {version: v2-mysql-vm}}\n",
    )
    .await;
    for _ in 0..3 {
        demo.page(None).await;
    }
    let admin = demo.running().admin;
    let req = Request::get(format!("http://{admin}/clusters?format=json"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = demo.send(req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let json: Value = serde_json::from_str(&body).unwrap();
    let find = |name: &str| {
        json["cluster_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {json:#}"))
            .clone()
    };
    let reviews = find("outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(reviews["host_statuses"].as_array().unwrap().len(), 3);
    assert!(reviews["outlier_detection"].is_null());
    let ratings = find("outbound|9080||ratings.default.svc.cluster.local");
    let od = &ratings["outlier_detection"];
    assert_eq!(
        (
            &od["consecutive_5xx"],
            &od["interval_ms"],
            &od["base_ejection_time_ms"],
            &od["max_ejection_percent"],
            &od["ejections_active"],
        ),
        (
            &7.into(),
            &1000.into(),
            &15000.into(),
            &10.into(),
            &0.into()
        )
    );
    let host = &ratings["host_statuses"][0];
    assert_eq!(host["health_flags"], "healthy");
    assert_eq!(host["num_ejections"], 0);
    assert_eq!(host["rq_error"], 0);
    let req = Request::get(format!("http://{admin}/clusters"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, text) = demo.send(req).await;
    assert_eq!(status, 200);
    let prefix = "outbound|9080||ratings.default.svc.cluster.local::";
    assert!(
        text.lines()
            .any(|l| l == format!("{prefix}outlier::ejections_active::0")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(prefix) && l.ends_with("::health_flags::healthy")),
        "{text}"
    );
}
