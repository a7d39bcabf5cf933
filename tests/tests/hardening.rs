//! Edge hardening, probed as an attacker would, against a running Bookinfo (loopback
//! only, bounded in count and time): slow and silent clients are closed by the
//! listeners' time bounds while a normal client is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::Demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a probe misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Sends its request head a byte a second (slowloris).
    Slow,
    /// Connects and sends nothing.
    Silent,
    /// Sends one request, reads its answer, then keeps the connection open and idle.
    Idle,
}

/// Runs `probe` against `addr` and returns how long the server took to close the
/// connection (`None`: still open after `limit`).
async fn run(probe: Probe, addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    match probe {
        Probe::Slow => {
            tokio::spawn(async move {
                let head = b"GET /productpage HTTP/1.1\r\nHost: bookinfo.example\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                for b in head {
                    if write.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        Probe::Silent => {
            tokio::spawn(async move {
                // Keep the write half open, sending nothing.
                tokio::time::sleep(limit).await;
                drop(write);
            });
        }
        Probe::Idle => {
            write
                .write_all(b"GET /no-such-page HTTP/1.1\r\nHost: bookinfo.example\r\n\r\n")
                .await
                .unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                drop(write);
            });
        }
    }
    let mut buf = [0u8; 4096];
    let mut answered = false;
    let closed = tokio::time::timeout(limit, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answered |= buf[..n].starts_with(b"HTTP/1.1 "),
            }
        }
    })
    .await;
    if probe == Probe::Idle {
        assert!(answered, "the idle probe's request was answered first");
    }
    closed.ok().map(|()| start.elapsed())
}

/// Sends `request` on a new connection to `addr` and returns the status line of the
/// answer.
async fn status_line(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    text.lines().next().unwrap_or("").to_string()
}

/// RFC 9112: a request with two `Host` headers is answered 400 at the ingress, never
/// routed by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_a_bad_request() {
    let demo = Demo::start().await;
    let ingress = demo.running().ingress;
    let two = status_line(
        ingress,
        b"GET /productpage HTTP/1.1\r\nHost: bookinfo.example\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(two, "HTTP/1.1 400 Bad Request");
    let one = status_line(
        ingress,
        b"GET /productpage HTTP/1.1\r\nHost: bookinfo.example\r\n\r\n",
    )
    .await;
    assert_eq!(one, "HTTP/1.1 200 OK");
}

/// A malformed chunked request body is the client's fault: `400` from the mesh, flagged
/// `DPE` in the access log, not a `503` blamed on the upstream whose request broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_bad_request() {
    let demo = Demo::start().await;
    let ingress = demo.running().ingress;
    let line = status_line(
        ingress,
        b"POST /login HTTP/1.1\r\nHost: bookinfo.example\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nusername=\r\nZZ\r\njason\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(line, "HTTP/1.1 400 Bad Request");
    // The gateway's entry (written when the response ends, by the log's writer).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logged = demo.access_log.lock().unwrap().clone();
        let gateway = logged
            .iter()
            .find(|l| l.contains("\"POST /login HTTP/1.1\" 400 "));
        if let Some(entry) = gateway {
            assert!(entry.contains(" 400 DPE "), "{entry}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no gateway access log entry for the request: {logged:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 60 slow or silent clients (20 trickling their headers, 20 silent, 20 idle after one
/// request) are all closed within 30 s — by the 10 s request-headers bound — while a
/// normal client sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_while_a_normal_client_is_served() {
    let demo = Demo::start().await;
    let ingress = demo.running().ingress;
    let limit = Duration::from_secs(30);
    let probes: Vec<_> = [Probe::Slow, Probe::Silent, Probe::Idle]
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, 20))
        .map(|p| tokio::spawn(async move { (p, run(p, ingress, limit).await) }))
        .collect();
    // A normal client, meanwhile: every request answered.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let (status, body) = demo.get("/productpage", None).await;
        assert_eq!(status, 200, "{body}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served >= 20, "{served} normal requests");
    for p in probes {
        let (probe, closed) = p.await.unwrap();
        let after =
            closed.unwrap_or_else(|| panic!("a {probe:?} client was still open after {limit:?}"));
        // Closed by the bound (10 s), not before it.
        assert!(
            after >= Duration::from_secs(9) && after < limit,
            "a {probe:?} client was closed after {after:?}"
        );
    }
}
