//! Edge hardening of connection counts, against a running Bookinfo whose listeners this
//! test process bounds (its own binary, as the bounds are process-wide): with the
//! ingress at its connection bound, a new connection is refused cleanly while the
//! established ones and the admin endpoint keep working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tower::transport::accept::{
    ConnectionLimits, ListenerTimeouts, open_connections, set_connection_limits,
    set_listener_timeouts,
};
use support::Demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections each listener may hold in this test.
const PER_LISTENER: u32 = 40;
/// Connections all the listeners may hold (the admin endpoint aside).
const PROCESS: u32 = 60;

/// Sends `GET path` with `host` on `conn` (keep-alive) and returns the status code,
/// `None` when the connection closed or nothing came within 10 s.
async fn status(conn: &mut TcpStream, host: &str, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if got.len() >= end + 4 + len {
                return head.split(' ').nth(1)?.parse().ok();
            }
        }
    })
    .await
    .ok()?
}

async fn refused(addr: SocketAddr) -> bool {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_bound_new_connections_are_refused_and_the_rest_keeps_working() {
    set_connection_limits(ConnectionLimits {
        per_listener: PER_LISTENER,
        process: PROCESS,
        ..ConnectionLimits::default()
    });
    // Held connections stay open through the test, however slow the machine.
    set_listener_timeouts(ListenerTimeouts {
        request_headers: Duration::from_secs(120),
        ..ListenerTimeouts::default()
    });
    let demo = Demo::start().await;
    let ingress = demo.running().ingress;
    let admin = demo.running().admin;
    let mut held = Vec::new();
    for i in 0..PER_LISTENER {
        let mut c = TcpStream::connect(ingress).await.unwrap();
        let got = status(&mut c, "bookinfo.example", "/productpage").await;
        assert_eq!(got, Some(200), "connection {i}");
        held.push(c);
    }
    // The bound reached: a new connection is closed at once, without an answer.
    for _ in 0..3 {
        assert!(
            refused(ingress).await,
            "a connection past the bound was let in"
        );
    }
    // The admin endpoint counts its connections apart.
    let mut a = TcpStream::connect(admin).await.unwrap();
    assert_eq!(status(&mut a, "localhost", "/healthz").await, Some(200));
    // Every established connection is still served, its calls to the workloads too.
    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(
            status(c, "bookinfo.example", "/productpage").await,
            Some(200),
            "established connection {i}"
        );
    }
    // The process's bound: silent connections to a workload's inbound port fill it,
    // then that port refuses too, and the admin endpoint still answers.
    let productpage = demo
        .running()
        .workloads
        .iter()
        .find(|(w, _)| w.name.starts_with("productpage"))
        .map(|(_, a)| *a)
        .expect("productpage's address");
    let mut silent = Vec::new();
    let mut refusal = false;
    for _ in 0..PROCESS {
        if open_connections() >= PROCESS {
            refusal = refused(productpage).await;
            break;
        }
        silent.push(TcpStream::connect(productpage).await.unwrap());
        // Counted once its task runs.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refusal,
        "no refusal at the process's bound ({} open)",
        open_connections()
    );
    let mut a = TcpStream::connect(admin).await.unwrap();
    assert_eq!(status(&mut a, "localhost", "/healthz").await, Some(200));
    drop(silent);

    // A connection that ends makes room for a new one.
    held.truncate(PER_LISTENER as usize - 1);
    let mut served = false;
    for _ in 0..50 {
        let mut c = TcpStream::connect(ingress).await.unwrap();
        if status(&mut c, "bookinfo.example", "/productpage").await == Some(200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no room was made by a closed connection");
}
