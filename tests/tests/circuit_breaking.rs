//! Circuit breaking and retry budgets end to end: Istio's "Circuit Breaking" task redone
//! against a real server on 127.0.0.1 (its DestinationRule unchanged, its fortio runs a
//! bounded load loop of our own), each `connectionPool` limit alone with exact counts,
//! and retry budgets under a total outage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_tests::{mesh, serve, snapshot};
use mesh_tower::{Mesh, MeshRuntime, ResponseFlags, RuntimeOptions, Workload};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A ServiceEntry for `httpbin` (port 8000) with one endpoint on 127.0.0.1:`port`.
fn httpbin(port: u16) -> String {
    httpbin_speaking("HTTP", port)
}

/// [`httpbin`] with the port's `protocol` (`HTTP2`: h2c to the endpoint).
fn httpbin_speaking(protocol: &str, port: u16) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: httpbin}}\nspec:\n  hosts: [httpbin.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 8000, name: http, protocol: {protocol}}}]\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {port}}}\n"
    )
}

/// A DestinationRule for `httpbin` with `policy` as its `trafficPolicy` (flow YAML).
fn rule(policy: &str, annotations: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin{annotations}}}\nspec:\n  host: httpbin\n  trafficPolicy: {policy}\n"
    )
}

/// What a load run saw: answers by status and response flags.
#[derive(Debug, Default)]
struct Run(BTreeMap<(u16, String), usize>);

impl Run {
    fn count(&self, status: u16, flags: &str) -> usize {
        self.0
            .get(&(status, flags.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// One GET through `mesh`: its status and response flags (the body read to its end).
async fn call(mesh: &Mesh, url: &str) -> (u16, String) {
    let req = http::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), mesh.client().oneshot(req))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let flags = ResponseFlags::of(&resp).to_string();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    (status, flags)
}

/// fortio's `-c concurrency -qps 0 -n total` through its sidecar: `concurrency`
/// callers, each on its own HTTP/1.1 connection to a listener on 127.0.0.1 that sends
/// every request on through `mesh.client()` (the application's in-process sidecar),
/// back to back until `total` requests were sent. As with fortio, every answer —
/// a refusal too — costs a round trip over loopback. The listener is served as Envoy's
/// listeners are: by [`SIDECAR_WORKERS`] worker threads, each running its own event
/// loop (a current-thread runtime) and owning the connections handed to it, in turn.
async fn fortio(mesh: &Mesh, url: &'static str, concurrency: usize, total: usize) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for worker in 0..SIDECAR_WORKERS {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let sidecar = mesh.clone();
        handles.push(std::thread::spawn(move || {
            mesh_tower::set_worker_index(worker);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Some(stream) = rx.recv().await {
                    let stream = tokio::net::TcpStream::from_std(stream).unwrap();
                    let mesh = sidecar.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |_req| {
                            let mesh = mesh.clone();
                            async move {
                                let (status, flags) = call(&mesh, url).await;
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                                resp.headers_mut()
                                    .insert("x-response-flags", flags.parse().unwrap());
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                while conns.join_next().await.is_some() {}
            });
        }));
        workers.push(tx);
    }
    let server = tokio::spawn(async move {
        let mut next = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let stream = stream.into_std().unwrap();
            if workers[next % workers.len()].send(stream).is_err() {
                break;
            }
            next += 1;
        }
    });
    let left = Arc::new(AtomicUsize::new(total));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut seen = Vec::new();
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let req = http::Request::get("/get")
                    .header("host", "fortio")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                    .await
                    .expect("an answer within 10 s")
                    .unwrap();
                let flags = resp.headers()["x-response-flags"]
                    .to_str()
                    .unwrap()
                    .to_string();
                seen.push((resp.status().as_u16(), flags));
                resp.into_body().collect().await.unwrap();
            }
            seen
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        for (status, flags) in t.await.unwrap() {
            *run.0.entry((status, flags)).or_default() += 1;
        }
    }
    server.abort();
    let _ = server.await;
    for h in handles {
        tokio::task::spawn_blocking(move || h.join().unwrap())
            .await
            .unwrap();
    }
    run
}

/// A server (HTTP/1.1 and h2c) answering `/get` after `delay`, counting the
/// connections it accepted and the most requests it held at once.
struct Counting {
    port: u16,
    accepted: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

async fn counting(delay: Duration) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (a, m) = (accepted.clone(), most.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (m, i) = (m.clone(), in_flight.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let (m, i) = (m.clone(), i.clone());
                    async move {
                        m.fetch_max(i.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        i.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "{\"url\": \"/get\"}",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Counting {
        port,
        accepted,
        most,
    }
}

/// [`counting`]'s port and accepted connections.
async fn counting_server(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let c = counting(delay).await;
    (c.port, c.accepted)
}

/// Sends `n` requests at once through `mesh` and tallies the answers.
async fn at_once(m: &Mesh, n: usize) -> Run {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { call(&m, URL).await })
        })
        .collect();
    let mut run = Run::default();
    for t in calls {
        let (status, flags) = t.await.unwrap();
        *run.0.entry((status, flags)).or_default() += 1;
    }
    run
}

const URL: &str = "http://httpbin:8000/get";

/// Envoy's worker threads in an Istio sidecar (its default `concurrency`).
const SIDECAR_WORKERS: usize = 2;

/// Istio's task against a mesh with `worker_pools` connection pools per endpoint: the
/// shares of `503 UO` answers with 2 and with 3 callers, and the most requests the
/// server held at once. Every answer is asserted to be a success or an overflow.
async fn circuit_breaking_task(worker_pools: usize) -> (f64, f64, usize) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (i, m) = (in_flight.clone(), most.clone());
    let server = serve(move |_, _| {
        let (i, m) = (i.clone(), m.clone());
        async move {
            let now = i.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            // httpbin's `/get` takes a moment to answer.
            tokio::time::sleep(Duration::from_millis(2)).await;
            i.fetch_sub(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from("{\"url\": \"/get\"}")))
        }
    })
    .await;
    let dr = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/circuit-breaking/destination-rule.yaml"
    ))
    .unwrap();
    let m = MeshRuntime::from_snapshot_with(
        &snapshot(&format!("{}---\n{dr}", httpbin(server.port()))),
        RuntimeOptions::default().worker_pools(worker_pools),
    )
    .workload(Workload::new("fortio", "default").labels([("app", "fortio")]));
    // One request first, as the task does.
    assert_eq!(call(&m, URL).await, (200, "-".to_string()));

    let two = fortio(&m, URL, 2, 200).await;
    let three = fortio(&m, URL, 3, 300).await;
    for (run, n) in [(&two, 200), (&three, 300)] {
        assert_eq!(run.total(), n);
        assert_eq!(
            run.count(200, "-") + run.count(503, "UO"),
            n,
            "only successes and overflows: {run:?}"
        );
    }
    let share = |run: &Run, n: usize| run.count(503, "UO") as f64 / n as f64;
    (
        share(&two, 200),
        share(&three, 300),
        most.load(Ordering::SeqCst),
    )
}

/// Istio's task: `maxConnections: 1`, `http1MaxPendingRequests: 1`,
/// `maxRequestsPerConnection: 1`, with fortio's 2 then 3 connections through a sidecar
/// of [`SIDECAR_WORKERS`] workers, and the mesh keeping a pool per worker as Envoy does
/// ([`RuntimeOptions::worker_pools`]). Istio's documentation shows most requests served
/// with 2 connections (17 of 20: 15 % `503`; 1 of 20 in earlier versions) and most
/// refused with 3 (19 of 30: 63 %; 14 of 30 in earlier versions): each worker's pool may
/// make its first connection whatever the cluster's count (the "leeway" the task
/// mentions), so two callers on two workers only collide while both are connecting;
/// a third caller shares a worker and waits, pending, while the other callers are
/// refused. Asserted: those ranges with a margin for a loaded machine (2 callers: at
/// most 35 % refused; 3 callers: 40 % to 90 %), and the server holding at most, and at
/// some point, one request per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_circuit_breaking_task() {
    let (s2, s3, most) = circuit_breaking_task(SIDECAR_WORKERS).await;
    eprintln!("worker pools: 2 callers {s2:.2} refused, 3 callers {s3:.2}");
    assert!(s2 <= 0.35, "2 callers: most served, got {s2:.2} refused");
    assert!(
        (0.40..=0.90).contains(&s3),
        "3 callers: most refused, got {s3:.2}"
    );
    // Each worker's pool made its own connection: the server held a request of each.
    assert_eq!(most, SIDECAR_WORKERS, "requests at once");
}

/// The same task with one pool per endpoint (the default): the limits hold for the whole
/// process — the server never holds two requests — and a caller arriving while the
/// next connection is made is refused, so more are refused than behind Envoy's workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_pool_the_task_limits_hold_for_the_whole_process() {
    let (s2, s3, most) = circuit_breaking_task(1).await;
    eprintln!("one pool: 2 callers {s2:.2} refused, 3 callers {s3:.2}");
    assert_eq!(most, 1, "one request at a time");
    assert!(s3 > 0.5, "3 callers: most refused, got {s3:.2}");
    assert!(
        s3 > s2,
        "3 callers are refused more than 2 ({s2:.2} vs {s3:.2})"
    );
}

/// `http1MaxPendingRequests: 2` behind `maxConnections: 1`: with the one connection
/// busy, two requests wait for it and are served in turn; the others are refused at
/// once (`503` `UO`).
#[tokio::test]
async fn pending_requests_wait_for_the_connection_up_to_the_limit() {
    let (port, accepted) = counting_server(Duration::from_millis(300)).await;
    let cfg = httpbin(port)
        + &rule(
            "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 2}}}",
            "",
        );
    let m = mesh(&cfg);
    // The connection, made and idle.
    assert_eq!(call(&m, URL).await.0, 200);
    let first = {
        let m = m.clone();
        tokio::spawn(async move { call(&m, URL).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rest: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { call(&m, URL).await })
        })
        .collect();
    let mut run = Run::default();
    for t in std::iter::once(first).chain(rest) {
        let (status, flags) = t.await.unwrap();
        *run.0.entry((status, flags)).or_default() += 1;
    }
    assert_eq!(run.count(200, "-"), 3, "{run:?}");
    assert_eq!(run.count(503, "UO"), 2, "{run:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
}

/// `http2MaxRequests: 2`: two requests in flight at most, whatever the connections.
#[tokio::test]
async fn requests_in_flight_are_capped() {
    let (port, _) = counting_server(Duration::from_millis(300)).await;
    let m = mesh(&(httpbin(port) + &rule("{connectionPool: {http: {http2MaxRequests: 2}}}", "")));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { call(&m, URL).await })
        })
        .collect();
    let mut run = Run::default();
    for t in calls {
        let (status, flags) = t.await.unwrap();
        *run.0.entry((status, flags)).or_default() += 1;
    }
    assert_eq!(run.count(200, "-"), 2, "{run:?}");
    assert_eq!(run.count(503, "UO"), 3, "{run:?}");
    // Once they are done, there is room again.
    assert_eq!(call(&m, URL).await, (200, "-".to_string()));
}

/// `maxRequestsPerConnection: 2`: six requests one after the other use three
/// connections; without it, one.
#[tokio::test]
async fn connections_carry_at_most_max_requests_per_connection() {
    for (policy, connections) in [
        ("{connectionPool: {http: {maxRequestsPerConnection: 2}}}", 3),
        ("{connectionPool: {http: {maxRequestsPerConnection: 0}}}", 1),
    ] {
        let (port, accepted) = counting_server(Duration::ZERO).await;
        let m = mesh(&(httpbin(port) + &rule(policy, "")));
        for _ in 0..6 {
            assert_eq!(call(&m, URL).await.0, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{policy}");
    }
}

/// The overflow answer is Envoy's, body and all.
#[tokio::test]
async fn an_overflow_is_answered_as_envoy_does() {
    let (port, _) = counting_server(Duration::from_millis(300)).await;
    let m = mesh(&(httpbin(port) + &rule("{connectionPool: {http: {http2MaxRequests: 1}}}", "")));
    let busy = {
        let m = m.clone();
        tokio::spawn(async move { call(&m, URL).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, _) = mesh_tests::get(&m, URL, &[]).await;
    assert_eq!(status, 503);
    let req = http::Request::get(URL).body(Empty::<Bytes>::new()).unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(busy.await.unwrap().0, 200);
}

/// A retry budget under a total outage: every attempt fails (503), the route retries
/// up to 3 times on 5xx. Without a budget each request costs 4 attempts; with Linkerd's
/// budget of 25 % (no minimum per second), retries add at most a quarter of the requests
/// (one more for rounding), and every request ends flagged `URX`.
#[tokio::test]
async fn a_retry_budget_bounds_retries_under_a_total_outage() {
    let n = 100;
    for (annotation, max_retries, min_retries) in [
        ("", 3 * n, 3 * n),
        (
            ", annotations: {mesh.rs/retry-budget: 'retryRatio=0.25,minRetriesPerSecond=0,ttl=10s'}",
            n / 4 + 1,
            n / 8,
        ),
    ] {
        let server = serve(|_, _| async {
            let mut r = Response::new(Full::new(Bytes::from("down")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        })
        .await;
        let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin}\nspec:\n  hosts: [httpbin]\n  http:\n  - route: [{destination: {host: httpbin}}]\n    retries: {attempts: 3, retryOn: 5xx}\n";
        // A DestinationRule with only the annotation (Istio refuses `trafficPolicy: {}`).
        let dr = format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin{annotation}}}\nspec:\n  host: httpbin\n"
        );
        let m = mesh(&(httpbin(server.port()) + &dr + vs));
        let mut urx = 0;
        for _ in 0..n {
            let (status, flags) = call(&m, URL).await;
            assert_eq!(status, 503);
            if flags.contains("URX") {
                urx += 1;
            }
        }
        let retries = server.hits() - n;
        assert!(
            (min_retries..=max_retries).contains(&retries),
            "{annotation:?}: {retries} retries for {n} requests, expected {min_retries}..={max_retries}"
        );
        // Every request ends flagged: its retries ran out, or the budget refused one.
        assert_eq!(urx, n, "{annotation:?}");
    }
}

/// `maxRetries: 1`: four requests fail at once and want a retry; one retry is in flight
/// at a time, so one request is retried (twice, its route's attempts) and the three
/// others answered at once with their failure, flagged `URX`.
#[tokio::test]
async fn max_retries_caps_the_retries_in_flight() {
    let server = serve(|_, _| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut r = Response::new(Full::new(Bytes::from("down")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin}\nspec:\n  hosts: [httpbin]\n  http:\n  - route: [{destination: {host: httpbin}}]\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let m = mesh(
        &(httpbin(server.port()) + &rule("{connectionPool: {http: {maxRetries: 1}}}", "") + vs),
    );
    let run = at_once(&m, 4).await;
    assert_eq!(run.count(503, "URX"), 4, "{run:?}");
    assert_eq!(
        server.hits(),
        4 + 2,
        "4 first attempts and 2 retries of one request"
    );
}

/// `http.idleTimeout`: a connection idle longer is not used again.
#[tokio::test]
async fn idle_connections_close_after_the_cluster_idle_timeout() {
    for (policy, connections) in [
        ("{connectionPool: {http: {idleTimeout: 100ms}}}", 2),
        ("{connectionPool: {tcp: {idleTimeout: 100ms}}}", 2),
        ("{connectionPool: {http: {idleTimeout: 10s}}}", 1),
    ] {
        let (port, accepted) = counting_server(Duration::ZERO).await;
        let m = mesh(&(httpbin(port) + &rule(policy, "")));
        assert_eq!(call(&m, URL).await.0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(call(&m, URL).await.0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{policy}");
    }
}

/// HTTP/2: with `maxConcurrentStreams: 1`, a connection carries one stream at a time;
/// as Envoy's pool does, a request finding every connection full makes another — three
/// requests at once, three connections — unless `maxConnections` forbids it, and then
/// the requests take turns on the one connection (none refused: pending requests are
/// not limited here). `maxRequestsPerConnection: 2` retires a connection after two
/// streams.
#[tokio::test]
async fn http2_streams_per_connection() {
    let c = counting(Duration::from_millis(100)).await;
    let m = mesh(
        &(httpbin_speaking("HTTP2", c.port)
            + &rule("{connectionPool: {http: {maxConcurrentStreams: 1}}}", "")),
    );
    let run = at_once(&m, 3).await;
    assert_eq!(run.count(200, "-"), 3, "{run:?}");
    assert_eq!(
        c.accepted.load(Ordering::SeqCst),
        3,
        "a connection per stream"
    );
    assert_eq!(c.most.load(Ordering::SeqCst), 3, "the three at once");
    // The connections stay: three more at once reuse them.
    let run = at_once(&m, 3).await;
    assert_eq!(run.count(200, "-"), 3, "{run:?}");
    assert_eq!(c.accepted.load(Ordering::SeqCst), 3, "no new connection");

    let c = counting(Duration::from_millis(100)).await;
    let m = mesh(
        &(httpbin_speaking("HTTP2", c.port)
            + &rule(
                "{connectionPool: {tcp: {maxConnections: 1}, http: {maxConcurrentStreams: 1}}}",
                "",
            )),
    );
    let run = at_once(&m, 3).await;
    assert_eq!(run.count(200, "-"), 3, "{run:?}");
    assert_eq!(c.most.load(Ordering::SeqCst), 1, "one stream at a time");
    assert_eq!(c.accepted.load(Ordering::SeqCst), 1, "one connection");

    let c = counting(Duration::ZERO).await;
    let m = mesh(
        &(httpbin_speaking("HTTP2", c.port)
            + &rule(
                "{connectionPool: {http: {maxRequestsPerConnection: 2}}}",
                "",
            )),
    );
    for _ in 0..6 {
        assert_eq!(call(&m, URL).await.0, 200);
    }
    assert_eq!(c.accepted.load(Ordering::SeqCst), 3, "three connections");
}
