//! Request bodies that are replayed: mirrors of streamed bodies (with trailers, across
//! codecs, when the primary does not read the body), retries of streamed uploads while
//! the caller is still sending, and the route timeout, which starts when the request
//! body is complete. Real sockets on 127.0.0.1; generous time bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use mesh_tests::{mesh, serve, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

fn vs(host: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}}}\nspec:\n  hosts: [{host}]\n  http:\n{rules}"
    )
}

/// A mirrored request whose body ends with trailers (every gRPC call over HTTP/2 can,
/// and every client-streaming one does when it carries metadata) never reaches the
/// mirror: hyper stops polling the primary's body after the trailers frame, so the
/// shared state never sees the end of the stream, and the follower waits for it forever
/// (until the 30 s mirror bound).
#[tokio::test]
async fn a_mirror_of_a_body_with_trailers_completes() {
    let primary = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let mirror = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let m = mesh(
        &(service("reviews", "GRPC", &[("v1", primary.port())])
            + &service("mirror", "GRPC", &[("v1", mirror.port())])
            + &vs(
                "reviews",
                "  - mirror: {host: mirror}\n    route: [{destination: {host: reviews}}]\n",
            )),
    );
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
    let req = Request::post("http://reviews:9080/svc/Method")
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap();
    let call = tokio::spawn(m.client().oneshot(req));
    tx.send_data(Bytes::from("hello")).await.unwrap();
    let mut t = HeaderMap::new();
    t.insert("x-meta", HeaderValue::from_static("1"));
    tx.send_trailers(t).await.unwrap();
    drop(tx);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while mirror.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mirror.hits(),
        1,
        "the mirror received the request within 3 s"
    );
    assert_eq!(mirror.seen()[0].body, "hello");
}

/// The same with HTTP/1.1 upstreams (chunked with trailers).
#[tokio::test]
async fn a_mirror_of_an_h1_body_with_trailers_completes() {
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
    let req = Request::post("http://reviews:9080/")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let call = tokio::spawn(m.client().oneshot(req));
    tx.send_data(Bytes::from("hello")).await.unwrap();
    let mut t = HeaderMap::new();
    t.insert("x-meta", HeaderValue::from_static("1"));
    tx.send_trailers(t).await.unwrap();
    drop(tx);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while mirror.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mirror.hits(),
        1,
        "the mirror received the request within 3 s"
    );
}

/// A primary whose upstream answers without reading the body (and so stops pulling it)
/// leaves the mirror's follower with nobody to pull the caller's body: the mirror never
/// gets its body, the copy hangs until the mirror bound.
#[tokio::test]
async fn a_mirror_gets_the_body_even_when_the_primary_does_not_read_it() {
    // Primary: answers at once, never reads the body (HTTP/2, so hyper resets the
    // request stream with NO_ERROR and the client stops sending).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pport = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("early"))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    let mirror = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let m = mesh(
        &(service("reviews", "GRPC", &[("v1", pport)])
            + &service("mirror", "GRPC", &[("v1", mirror.port())])
            + &vs(
                "reviews",
                "  - mirror: {host: mirror}\n    route: [{destination: {host: reviews}}]\n",
            )),
    );
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
    let req = Request::post("http://reviews:9080/").body(body).unwrap();
    let call = tokio::spawn(m.client().oneshot(req));
    tx.send_data(Bytes::from("one,")).await.unwrap();
    let resp = call.await.unwrap().unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "early"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tx.send_data(Bytes::from("two")).await;
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(3);
    while mirror.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mirror.hits(),
        1,
        "the mirror received the request within 3 s"
    );
    assert_eq!(mirror.seen()[0].body, "one,two");
}

/// An upstream that answers 503 before it has read the request body (Istio's default
/// retry policy retries 503) while the caller is still streaming. hyper's HTTP/1.1
/// client keeps writing the first attempt's body after its response arrived, so the
/// first attempt's reader keeps pulling the caller's body during the retry backoff,
/// passes the replay bound and becomes the body's *owner*; the second attempt then
/// fails with `Overflow` (caller gets 503 "connection termination"), or — when the
/// overflow happens before the fork — `copy()` returns `None` and the retry loop sends
/// the template body (which fails the same way) and leaves an empty `GET /` without
/// extensions in `req`, which a further retry sends to the balancer ("no healthy
/// upstream"). The whole body went to the abandoned attempt. Envoy resets the upstream
/// request it retries and sends the next attempt the buffered bytes and the rest.
#[tokio::test]
async fn a_retry_is_not_starved_by_the_attempt_it_replaces() {
    // Istio's default retries (2 on 503), then explicit `5xx` retries.
    for vs_rules in [
        None,
        Some("  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: up}}]\n"),
    ] {
        for _ in 0..5 {
            let (status, failure, attempts) = retry_once(vs_rules).await;
            assert_eq!(
                status, 200,
                "the retry should get the whole body; got {failure:?}; attempts {attempts:#?}"
            );
        }
    }
}

async fn retry_once(vs_rules: Option<&str>) -> (u16, Option<mesh_tower::MeshFailure>, Vec<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let h = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let len: usize = h
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if n == 0 {
                    // Overloaded: answer 503 at once, then keep draining the body.
                    let _ = s
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
                let mut body = vec![0u8; len];
                let complete = s.read_exact(&mut body).await.is_ok();
                if n > 0 && complete {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                let mut rest = [0u8; 1024];
                while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
            });
        }
    });
    let yaml =
        service("up", "HTTP", &[("v1", port)]) + &vs_rules.map(|r| vs("up", r)).unwrap_or_default();
    let m = mesh(&yaml);
    // Record what each attempt sends (the upstream dispatch under the balancer).
    let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lg = log.clone();
    let up = mesh_tower::transport::pool::Pools;
    let logged = tower::service_fn(move |out: mesh_tower::transport::pool::Outgoing| {
        let (lg, mut up) = (lg.clone(), up);
        async move {
            let req = &out.request;
            lg.lock()
                .unwrap()
                .push(format!("{} {} {:?}", req.method(), req.uri(), req.body()));
            let r = tower::Service::call(&mut up, out).await;
            lg.lock().unwrap().push(format!(
                "  -> {:?}",
                r.as_ref().map(|r| r.status()).map_err(|e| e.to_string())
            ));
            r
        }
    });
    let client = m.client_over(logged);
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
    let total = 80 * 1024;
    let req = Request::post("http://up:9080/upload")
        .header("content-length", total.to_string())
        .body(body)
        .unwrap();
    let call = tokio::spawn(client.oneshot(req));
    tx.send_data(Bytes::from(vec![b'a'; 40 * 1024]))
        .await
        .unwrap();
    // The 503 arrives; while the retry backs off (25 ms base), the caller sends the rest.
    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.send_data(Bytes::from(vec![b'b'; 40 * 1024]))
        .await
        .unwrap();
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let failure = resp.extensions().get::<mesh_tower::MeshFailure>().cloned();
    let _ = resp.into_body().collect().await;
    let attempts = log.lock().unwrap().clone();
    (status, failure, attempts)
}

/// Envoy's route timeout "spans between the point at which the entire downstream
/// request (i.e. end-of-stream) has been processed and when the upstream response has
/// been completely processed". Here the deadline starts when the request starts, so an
/// upload that takes longer than the route timeout fails with 504 although the upstream
/// answers at once when the body is complete.
#[tokio::test]
async fn the_route_timeout_starts_when_the_request_body_is_complete() {
    let up = serve(|_, seen| async move {
        Response::new(Full::new(Bytes::from(seen.body.len().to_string())))
    })
    .await;
    let m = mesh(
        &(service("up", "HTTP", &[("v1", up.port())])
            + &vs(
                "up",
                "  - timeout: 500ms\n    route: [{destination: {host: up}}]\n",
            )),
    );
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
    let req = Request::post("http://up:9080/upload").body(body).unwrap();
    let call = tokio::spawn(m.client().oneshot(req));
    for _ in 0..5 {
        // (an error here means the mesh already gave up on the request)
        let _ = tx.send_data(Bytes::from(vec![b'x'; 1000])).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tx);
    let resp = call.await.unwrap().unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{:?}",
        resp.extensions().get::<mesh_tower::MeshFailure>()
    );
}

/// No trailers, no early answer: a plain POST with a `content-length` to an HTTP/1.1
/// primary and an HTTP/2 mirror. hyper's HTTP/1.1 client stops polling the primary's
/// body once `content-length` bytes are written (it never sees the end of the stream);
/// the HTTP/2 mirror asks `is_end_stream()`, gets `false` (the shared state never saw the
/// end) and waits for a frame nobody will pull.
#[tokio::test]
async fn a_mirror_on_another_codec_completes() {
    let primary = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let mirror = serve(|_, seen| async move { Response::new(Full::new(seen.body)) }).await;
    let m = mesh(
        &(service("reviews", "HTTP", &[("v1", primary.port())])
            + &service("mirror", "HTTP2", &[("v1", mirror.port())])
            + &vs(
                "reviews",
                "  - mirror: {host: mirror}\n    route: [{destination: {host: reviews}}]\n",
            )),
    );
    let req = Request::post("http://reviews:9080/")
        .body(Full::new(Bytes::from("payload")))
        .unwrap();
    let resp = m.client().oneshot(req).await.unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "payload"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while mirror.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mirror.hits(),
        1,
        "the mirror received the request within 3 s"
    );
}
