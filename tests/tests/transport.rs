//! The transport under the routing: what reaches the wire, and when. Schemes, codecs and
//! `:authority`, streaming bodies, resets, the route timeout over response bodies, and
//! mirrors that hang. Real sockets on 127.0.0.1; time bounds are generous (a 200 ms
//! timeout must fire within 2 s).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tests::{get, mesh, named, serve, service};
use mesh_tower::body::BodyTimeout;
use mesh_tower::{MeshFailure, ResetReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

fn vs(host: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}}}\nspec:\n  hosts: [{host}]\n  http:\n{rules}"
    )
}

/// Serves `svc` (HTTP/1.1 and HTTP/2) on every connection accepted by `listener`.
fn serve_with<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn a_reset_after_the_request_was_sent_is_not_retried_by_default() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = delivered.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let d = d.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).contains("payment=100") {
                    d.fetch_add(1, Ordering::SeqCst);
                }
                // Reset the connection without answering.
                s.set_zero_linger().unwrap();
                drop(s);
            });
        }
    });
    let m = mesh(&service("reviews", "HTTP", &[("v1", port)]));
    let req = Request::post("http://reviews:9080/pay")
        .body(Full::new(Bytes::from("payment=100")))
        .unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.extensions().get::<MeshFailure>(),
        Some(&MeshFailure::ConnectOrReset(
            ResetReason::ConnectionTermination
        ))
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Istio's default retryOn (connect-failure, refused-stream, unavailable, cancelled,
    // retriable-status-codes) does not cover a reset after sending: delivered once.
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_failure_and_is_retried() {
    // A port nobody listens on: bind, note it, close.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let ok = named("ok").await;
    let m = mesh(&service(
        "reviews",
        "HTTP",
        &[("v1", port), ("v1", ok.port())],
    ));
    // Round robin from a random start: some first attempts hit the closed port; every
    // request still succeeds, retried on the other endpoint (connect-failure).
    for _ in 0..10 {
        let (status, body, _) = get(&m, "http://reviews:9080/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    let only_closed = mesh(&service("reviews", "HTTP", &[("v1", port)]));
    let req = Request::get("http://reviews:9080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = only_closed.client().oneshot(req).await.unwrap();
    assert_eq!(
        resp.extensions().get::<MeshFailure>(),
        Some(&MeshFailure::ConnectOrReset(ResetReason::ConnectionFailure))
    );
}

/// What an HTTP/2 server saw: version, `:authority`, `host`.
type H2Seen = (Version, Option<String>, Option<String>);

fn recording_server(l: TcpListener) -> tokio::sync::mpsc::UnboundedReceiver<H2Seen> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    serve_with(l, move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((
                req.version(),
                req.uri().authority().map(|a| a.to_string()),
                req.headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_string()),
            ));
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    });
    rx
}

#[tokio::test]
async fn http2_upstreams_see_the_logical_authority() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut seen = recording_server(l);
    let m = mesh(
        &(service("grpcsvc", "GRPC", &[("v1", port)])
            + &vs(
                "grpcsvc",
                "  - match: [{uri: {prefix: /rewritten}}]\n    rewrite: {authority: rewritten.example}\n    route: [{destination: {host: grpcsvc}}]\n  - route: [{destination: {host: grpcsvc}}]\n",
            )),
    );
    let (status, _, _) = get(&m, "http://grpcsvc:9080/pkg.Svc/M", &[]).await;
    assert_eq!(status, 200);
    let (version, authority, host) = seen.recv().await.unwrap();
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(authority.as_deref(), Some("grpcsvc:9080"));
    assert_eq!(host, None, "no Host header beside :authority");

    let (status, _, _) = get(&m, "http://grpcsvc:9080/rewritten", &[]).await;
    assert_eq!(status, 200);
    let (_, authority, host) = seen.recv().await.unwrap();
    assert_eq!(authority.as_deref(), Some("rewritten.example"));
    assert_eq!(host, None);
}

#[tokio::test]
async fn codecs_are_translated_to_the_port_protocol() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut seen = recording_server(l);
    let m = mesh(&service("web", "HTTP", &[("v1", port)]));
    // An HTTP/2 request (what tonic builds) to an HTTP port goes out as HTTP/1.1.
    let req = Request::get("http://web:9080/")
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (version, _, host) = seen.recv().await.unwrap();
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(host.as_deref(), Some("web:9080"));

    // h2UpgradePolicy: UPGRADE speaks HTTP/2 to an HTTP port.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut seen = recording_server(l);
    let m = mesh(&mesh_tests::service_with(
        "web",
        "HTTP",
        &[("v1", port)],
        "  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}\n",
    ));
    assert_eq!(get(&m, "http://web:9080/", &[]).await.0, 200);
    assert_eq!(seen.recv().await.unwrap().0, Version::HTTP_2);

    // useClientProtocol: the caller's version is kept.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut seen = recording_server(l);
    let m = mesh(&mesh_tests::service_with(
        "web",
        "HTTP",
        &[("v1", port)],
        "  trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}\n",
    ));
    let req = Request::get("http://web:9080/")
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(m.client().oneshot(req).await.unwrap().status(), 200);
    assert_eq!(seen.recv().await.unwrap().0, Version::HTTP_2);
    assert_eq!(get(&m, "http://web:9080/", &[]).await.0, 200);
    assert_eq!(seen.recv().await.unwrap().0, Version::HTTP_11);
}

#[tokio::test]
async fn a_streaming_request_is_sent_before_its_body_ends() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    // Echoes the first chunk of the body in the response headers' wake: it answers as
    // soon as one chunk arrived, while the caller still holds the body open.
    serve_with(l, |req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let first = loop {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        break d;
                    }
                }
                _ => break Bytes::new(),
            }
        };
        Response::new(Full::new(first))
    });
    for protocol in ["HTTP", "HTTP2"] {
        let m = mesh(&service("up", protocol, &[("v1", port)]));
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
        tx.send_data(Bytes::from("first message")).await.unwrap();
        let req = Request::post("http://up:9080/stream").body(body).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), m.client().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{protocol}: the request waited for its body to end"))
            .unwrap();
        assert_eq!(resp.status(), 200);
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, "first message", "{protocol}");
        drop(tx);
    }
}

#[tokio::test]
async fn a_streamed_body_is_replayed_on_retry() {
    let failing = serve(|_, _| async {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let ok = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let m = mesh(
        &(service(
            "up",
            "HTTP",
            &[("bad", failing.port()), ("good", ok.port())],
        ) + &vs(
            "up",
            "  - retries: {attempts: 2, retryOn: 5xx}\n    route:\n    - {destination: {host: up, subset: bad}, weight: 50}\n    - {destination: {host: up, subset: good}, weight: 50}\n",
        )),
    );
    let mut statuses = Vec::new();
    for i in 0..10 {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
        let req = Request::post("http://up:9080/").body(body).unwrap();
        let call = tokio::spawn(m.client().oneshot(req));
        for part in ["alpha-", "beta-", "gamma"] {
            tx.send_data(Bytes::from(format!("{i}:{part}")))
                .await
                .unwrap();
        }
        drop(tx);
        let resp = call.await.unwrap().unwrap();
        statuses.push(resp.status().as_u16());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if statuses.last() == Some(&200) {
            assert_eq!(body, format!("{i}:alpha-{i}:beta-{i}:gamma"));
        }
    }
    // The split picks a subset once per request (retries stay within it): requests
    // that drew `bad` fail after their retries, those that drew `good` succeed with the
    // whole body. Every failed attempt got the whole body too.
    for seen in failing.seen() {
        assert!(seen.body.ends_with(b"gamma"), "{:?}", seen.body);
    }
    assert_eq!(
        failing.hits(),
        3 * statuses.iter().filter(|s| **s == 503).count()
    );
}

#[tokio::test]
async fn the_route_timeout_covers_the_response_body() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let m = mesh(
        &(service("slow", "HTTP", &[("v1", port)])
            + &vs(
                "slow",
                "  - timeout: 200ms\n    route: [{destination: {host: slow}}]\n",
            )),
    );
    let t = Instant::now();
    let req = Request::get("http://slow:9080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200, "headers came in time");
    let err = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect())
        .await
        .expect("the body is cut at the route timeout")
        .unwrap_err();
    assert!(err.downcast_ref::<BodyTimeout>().is_some(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_hung_mirror_is_bounded_by_the_route_timeout() {
    let primary = named("primary").await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (a, o) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            // Reads and never answers; notices when the mesh closes the connection.
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let m = mesh(
        &(service("reviews", "HTTP", &[("v1", primary.port())])
            + &service("mirror", "HTTP", &[("v1", port)])
            + &vs(
                "reviews",
                "  - timeout: 500ms\n    mirror: {host: mirror}\n    route: [{destination: {host: reviews}}]\n",
            )),
    );
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&m, "http://reviews:9080/", &[]).await.1, "primary");
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "mirrors never delay the caller"
    );
    // Wait (bounded) for the copies to time out and their connections to close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20, "every copy was sent");
    assert_eq!(
        open.load(Ordering::SeqCst),
        0,
        "connections to the hung mirror are closed"
    );
}

#[tokio::test]
async fn a_mirror_gets_the_streamed_body_too() {
    let primary = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let mirror = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let m = mesh(
        &(service("reviews", "HTTP", &[("v1", primary.port())])
            + &service("mirror", "HTTP", &[("v1", mirror.port())])
            + &vs(
                "reviews",
                "  - mirror: {host: mirror}\n    route: [{destination: {host: reviews}}]\n",
            )),
    );
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
    let req = Request::post("http://reviews:9080/").body(body).unwrap();
    let call = tokio::spawn(m.client().oneshot(req));
    tx.send_data(Bytes::from("one,")).await.unwrap();
    tx.send_data(Bytes::from("two")).await.unwrap();
    drop(tx);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "one,two"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while mirror.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = mirror.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "one,two");
    assert_eq!(seen[0].headers["host"], "reviews-shadow:9080");
}

/// Echoes what it saw of `host` and `x-order` in response headers.
async fn echo_headers() -> mesh_tests::TestServer {
    serve(|_, seen| async move {
        let mut r = Response::new(Full::new(Bytes::new()));
        for (name, echo) in [
            ("host", "x-saw-host"),
            ("x-order", "x-saw-order"),
            ("x-keep", "x-saw-keep"),
        ] {
            if let Some(v) = seen.headers.get(name) {
                r.headers_mut().insert(echo, v.clone());
            }
        }
        r
    })
    .await
}

#[tokio::test]
async fn header_operations_on_host_rewrite_the_authority_and_follow_istios_order() {
    let s = echo_headers().await;
    let cfg = service("reviews", "HTTP", &[("v1", s.port()), ("v2", s.port())])
        + &vs(
            "reviews",
            // One destination: the destination's operations are merged after the rule's.
            "  - match: [{uri: {prefix: /single}}]\n    headers: {request: {set: {x-order: rule, x-keep: rule, host: rule.example}}}\n    route:\n    - destination: {host: reviews, subset: v1}\n      headers: {request: {set: {x-order: destination}, remove: [x-keep]}}\n\
             # A weighted split: the rule's operations apply after the destination's.\n  - match: [{uri: {prefix: /weighted}}]\n    headers: {request: {set: {x-order: rule}}}\n    route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n      headers: {request: {set: {x-order: destination, ':authority': dest.example}}}\n    - destination: {host: reviews, subset: v2}\n      weight: 50\n      headers: {request: {set: {x-order: destination, ':authority': dest.example}}}\n",
        );
    let m = mesh(&cfg);
    let (status, _, h) = get(&m, "http://reviews:9080/single", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-saw-order"], "destination");
    assert_eq!(
        h["x-saw-host"], "rule.example",
        "`set: {{host}}` rewrites the authority"
    );
    let (status, _, h) = get(&m, "http://reviews:9080/weighted", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-saw-order"], "rule");
    assert_eq!(h["x-saw-host"], "dest.example");
}

#[tokio::test]
async fn a_zero_cookie_ttl_makes_a_session_cookie() {
    let s = named("a").await;
    let m = mesh(&mesh_tests::service_with(
        "reviews",
        "HTTP",
        &[("v1", s.port())],
        "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpCookie: {name: session, ttl: 0s}\n",
    ));
    let (_, _, h) = get(&m, "http://reviews:9080/", &[]).await;
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("session=\""), "{cookie}");
    assert!(!cookie.contains("Max-Age"), "{cookie}");
}

#[tokio::test]
async fn a_subset_the_callers_destination_rule_lacks_is_a_missing_cluster() {
    let s = named("a").await;
    // The VirtualService (namespace default) routes to subset v1, which default's
    // DestinationRule defines. A caller in namespace `client` has a DestinationRule of
    // its own for the host, without subsets: Istio applies the caller's rule, so the
    // subset's cluster does not exist for it — Envoy answers 503 with an empty body
    // (NC), and does not retry.
    let cfg = service("reviews", "HTTP", &[("v1", s.port())])
        + &vs(
            "reviews",
            "  - route: [{destination: {host: reviews, subset: v1}}]\n",
        )
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: client}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
    let config = mesh_tower::MeshRuntime::from_snapshot(&mesh_tests::snapshot(&cfg));
    let client = config.workload(mesh_tower::Workload::new("caller", "client"));
    let req = Request::get("http://reviews.default:9080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = client.client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.extensions().get::<MeshFailure>(),
        Some(&MeshFailure::ClusterNotFound)
    );
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(s.hits(), 0);
    // A caller in `default` gets the subset.
    let default = config.workload(mesh_tower::Workload::new("caller", "default"));
    assert_eq!(get(&default, "http://reviews:9080/", &[]).await.0, 200);
    assert_eq!(s.hits(), 1);
}

/// A ServiceEntry endpoint with an IPv6 address (valid in Istio) is dialled as
/// `[::1]:PORT`.
#[tokio::test]
async fn an_ipv6_endpoint_is_reachable() {
    // The IPv6 loopback; a machine without IPv6 cannot run this test.
    let Ok(l) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    };
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_r: http::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "v6",
                        ))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: v6}}\nspec:\n  hosts: [v6.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - address: \"::1\"\n    ports: {{http: {port}}}\n"
    );
    let m = mesh_tests::mesh(&yaml);
    let req = http::Request::get("http://v6:9080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned()),
        (200, "v6".to_string())
    );
}

#[tokio::test]
async fn the_meshs_own_failures_reach_grpc_callers_as_grpc_statuses() {
    // Nothing listens there: a connect failure, after Istio's default retries.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let m = mesh(&service("reviews", "GRPC", &[("v1", port)]));
    let req = Request::post("http://reviews:9080/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    // As Envoy answers: 200, trailers-only, 503 mapped to UNAVAILABLE.
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(
        resp.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .starts_with("upstream connect error"),
        "{:?}",
        resp.headers()
    );
    assert!(resp.extensions().get::<MeshFailure>().is_some());
    // The same failure to a plain HTTP request keeps Envoy's 503.
    let req = Request::get("http://reviews:9080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(m.client().oneshot(req).await.unwrap().status(), 503);
}

/// The caller's request body failing while it is sent: the mesh resets the upstream
/// request itself — Envoy's `503 … reset reason: local reset`, flagged `LR` — and does
/// not retry it (the body is gone), whatever the route's retry policy says.
#[tokio::test]
async fn a_failing_request_body_is_a_local_reset() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    serve_with(l, move |req: Request<Incoming>| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            // Reads the whole body before answering.
            let _ = req.into_body().collect().await;
            Response::new(Full::new(Bytes::from("read")))
        }
    });
    for protocol in ["HTTP", "HTTP2"] {
        seen.store(0, Ordering::SeqCst);
        let cfg = service("up", protocol, &[("v1", port)])
            + &vs(
                "up",
                "  - route: [{destination: {host: up}}]\n    retries: {attempts: 3, retryOn: reset,connect-failure,5xx}\n",
            );
        let m = mesh(&cfg);
        let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
        tx.send_data(Bytes::from("first part")).await.unwrap();
        let req = Request::post("http://up:9080/upload").body(body).unwrap();
        let call = tokio::spawn(async move { m.client().oneshot(req).await.unwrap() });
        // The first part reached the server; then the caller's body fails.
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "{protocol}: the request never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.abort(std::io::Error::other("the caller's stream broke"));
        let resp = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 503, "{protocol}");
        assert_eq!(
            resp.extensions().get::<MeshFailure>(),
            Some(&MeshFailure::ConnectOrReset(ResetReason::LocalReset)),
            "{protocol}"
        );
        assert_eq!(
            mesh_tower::ResponseFlags::of(&resp).to_string(),
            "LR",
            "{protocol}"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "upstream connect error or disconnect/reset before headers. reset reason: local reset",
            "{protocol}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1, "{protocol}: not retried");
    }
}
