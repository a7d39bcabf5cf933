//! Edge hardening of request bodies, against a running Bookinfo whose listeners this
//! test process configures (its own binary, as the listener time bounds are
//! process-wide): a request body that stops arriving is answered `408` by the ingress.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use mesh_tower::transport::accept::{ListenerTimeouts, set_listener_timeouts};
use support::Demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A body that stops arriving is answered `408` flagged `SI` once it has been idle for
/// `request_body_idle` (1 s here, Envoy's 5 minutes by default), and the upstream is
/// not blamed; a body that keeps arriving slowly is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_answered_408() {
    set_listener_timeouts(ListenerTimeouts {
        request_body_idle: Duration::from_secs(1),
        ..ListenerTimeouts::default()
    });
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
