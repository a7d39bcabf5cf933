//! Edge hardening of request bodies, against a running Bookinfo whose listeners this
//! test process configures (its own binary, as the listener bounds are process-wide): a
//! request body that stops arriving is answered `408` by the ingress, one larger than
//! the ingress takes `413`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use mesh_tower::gateway::{IngressLimits, set_ingress_limits};
use mesh_tower::transport::accept::{ListenerTimeouts, set_listener_timeouts};
use support::Demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A body that stops arriving is answered `408` flagged `SI` once it has been idle for
/// `request_body_idle` (1 s here, Envoy's 5 minutes by default), and the upstream is
/// not blamed; a body that keeps arriving slowly is served.
/// The bounds of this process's listeners (the same for every test, which may run at
/// once): a body idle for 1 s, or larger than 1 KiB, is refused.
fn bounds() {
    set_listener_timeouts(ListenerTimeouts {
        request_body_idle: Duration::from_secs(1),
        ..ListenerTimeouts::default()
    });
    set_ingress_limits(IngressLimits {
        max_request_body: 1024,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_answered_408() {
    bounds();
    let demo = Demo::start().await;
    let ingress = demo.running().ingress;
    let form = b"username=jason&passwd=";
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: bookinfo.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        form.len()
    );
    // (seconds between the body's bytes, bytes sent, expected status line)
    for (pause, sent, want) in [
        (Duration::from_millis(300), form.len(), "HTTP/1.1 302 Found"),
        (Duration::ZERO, 9, "HTTP/1.1 408 Request Timeout"),
    ] {
        let mut stream = TcpStream::connect(ingress).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            for b in &form[..sent] {
                write.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(pause).await;
            }
            // Keep the connection open, the rest of the body never sent.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(20), async {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .unwrap();
        writer.abort();
        let text = String::from_utf8_lossy(&buf).to_string();
        assert_eq!(text.lines().next().unwrap_or(""), want, "{text}");
        if sent < form.len() {
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(10),
                "answered after {took:?}"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logged = demo.access_log.lock().unwrap().clone();
        if let Some(entry) = logged
            .iter()
            .find(|l| l.contains("\"POST /login HTTP/1.1\" 408 "))
        {
            assert!(entry.contains(" 408 SI "), "{entry}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no gateway access log entry for the stalled request: {logged:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `head` then `body` on a new connection to `addr` and returns the status line.
async fn status_line(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The ingress may answer (and close) before the body is all sent.
    let _ = stream.write_all(body).await;
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
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A body larger than the ingress takes is `413` from the ingress, whether its
/// `Content-Length` says so (refused before anything is forwarded) or it grows past the
/// bound chunk by chunk; a body within the bound is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_larger_than_the_ingress_takes_is_answered_413() {
    bounds();
    let demo = Demo::start().await;
    let ingress = demo.running().ingress;
    let post = "POST /login HTTP/1.1\r\nHost: bookinfo.example\r\nContent-Type: application/x-www-form-urlencoded\r\n";
    // Within the bound.
    let form = "username=jason&passwd=";
    let head = format!("{post}Content-Length: {}\r\n\r\n", form.len());
    assert_eq!(
        status_line(ingress, &head, form.as_bytes()).await,
        "HTTP/1.1 302 Found"
    );
    // Announced too large: refused before a byte of the body is read.
    let head = format!("{post}Content-Length: 2000\r\n\r\n");
    assert_eq!(
        status_line(ingress, &head, b"").await,
        "HTTP/1.1 413 Payload Too Large"
    );
    // Chunked, growing past the bound.
    let head = format!("{post}Transfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
    let body = format!("{chunk}{chunk}{chunk}0\r\n\r\n");
    assert_eq!(
        status_line(ingress, &head, body.as_bytes()).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    // Chunked within the bound: served.
    let body = format!("{:x}\r\n{form}\r\n0\r\n\r\n", form.len());
    assert_eq!(
        status_line(ingress, &head, body.as_bytes()).await,
        "HTTP/1.1 302 Found"
    );
}
