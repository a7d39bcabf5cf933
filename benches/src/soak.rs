//! `mesh-bench soak`: Bookinfo as it ships (the release `bookinfo` binary, a process of
//! its own) under a mixed load for a long while — keep-alive HTTP/1.1 clients, HTTP/2
//! clients with concurrent streams, a connection per request, slowloris clients the
//! listeners must close, and a configuration change every 30 s — sampling the process's
//! resident memory and open descriptors. A leak shows as a slope: the report compares
//! the last quarter of the run with the second (the first is warm-up).
//!
//! `cargo build --release -p bookinfo && cargo run --release -p mesh-bench -- soak`
//! (10 minutes; `--minutes N` to change). Not run by CI.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Keep-alive HTTP/1.1 clients, one request at a time each.
const HTTP1_CLIENTS: usize = 8;
/// HTTP/2 connections, and the streams each keeps in flight.
const HTTP2_CONNECTIONS: usize = 2;
const HTTP2_STREAMS: usize = 8;
/// Connections opened per second, one request each (`Connection: close`).
const CHURN_PER_SECOND: u64 = 20;
/// Slowloris connections opened every 10 s (a header byte a second, never finished).
const SLOWLORIS_EVERY_10S: usize = 20;
/// How often a VirtualService is rewritten in the watched directory.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// How often the process is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// What the load saw.
#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    slowloris_closed: AtomicU64,
    /// Routes written into the watched directory (each one a change for Bookinfo to
    /// apply).
    reloads: AtomicU64,
}

/// One sample of the process.
struct Sample {
    at: Duration,
    rss_kib: u64,
    descriptors: u64,
    ok: u64,
    failed: u64,
}

/// Runs the soak for `minutes` and prints its report; non-zero exit when more than
/// 0.1 % of the requests failed.
pub(crate) async fn run(minutes: f64) -> Result<std::process::ExitCode> {
    if !(minutes.is_finite() && minutes >= 1.0) {
        bail!("--minutes must be at least 1 (the report compares quarters of the run)");
    }
    let bin = std::env::current_exe()?
        .parent()
        .context("the directory of mesh-bench")?
        .join("bookinfo");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p bookinfo)",
            bin.display()
        );
    }
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir = tempfile::tempdir()?;
    copy_dir(&repo.join("examples/bookinfo/config"), dir.path())?;
    let routes = [
        "virtual-service-reviews-v3.yaml",
        "virtual-service-reviews-50-v3.yaml",
        "virtual-service-all-v1.yaml",
    ]
    .map(|f| repo.join("examples/bookinfo/istio/networking").join(f));

    let mut child = tokio::process::Command::new(&bin)
        .args(["--config"])
        .arg(dir.path())
        .args(["--ingress", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("bookinfo's pid")?;
    let ingress = product_page(child.stdout.take().context("bookinfo's stdout")?).await?;
    println!(
        "Soak: Bookinfo (pid {pid}) at {ingress}, {minutes} minutes: {HTTP1_CLIENTS} keep-alive HTTP/1.1 clients, {HTTP2_CONNECTIONS}×{HTTP2_STREAMS} HTTP/2 streams, {CHURN_PER_SECOND} new connections/s, {SLOWLORIS_EVERY_10S} slowloris connections every 10 s, a VirtualService change every {}s\n",
        RELOAD_EVERY.as_secs()
    );

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let mut tasks = tokio::task::JoinSet::new();
    let url: http::Uri = format!("http://{ingress}/productpage").parse()?;
    for _ in 0..HTTP1_CLIENTS {
        tasks.spawn(http1_client(url.clone(), until, counters.clone()));
    }
    for _ in 0..HTTP2_CONNECTIONS {
        tasks.spawn(http2_client(ingress, until, counters.clone()));
    }
    tasks.spawn(churn(ingress, until, counters.clone()));
    tasks.spawn(slowloris(ingress, until, counters.clone()));
    tasks.spawn(reloads(
        routes.to_vec(),
        dir.path().to_path_buf(),
        until,
        counters.clone(),
    ));

    println!("| time | RSS (MiB) | descriptors | requests ok | failed |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut samples = Vec::new();
    loop {
        let at = started.elapsed();
        let s = Sample {
            at,
            rss_kib: rss_kib(pid)?,
            descriptors: descriptors(pid)?,
            ok: counters.ok.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        };
        println!(
            "| {}:{:02} | {:.1} | {} | {} | {} |",
            at.as_secs() / 60,
            at.as_secs() % 60,
            s.rss_kib as f64 / 1024.0,
            s.descriptors,
            s.ok,
            s.failed
        );
        samples.push(s);
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
    }
    while tasks.join_next().await.is_some() {}
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;

    Ok(report(&samples, &counters))
}

/// Prints the verdict: the last quarter against the second.
fn report(samples: &[Sample], counters: &Counters) -> std::process::ExitCode {
    let total = samples.last().map_or(Duration::ZERO, |s| s.at);
    let quarter = |q: u32| {
        let (from, to) = (total * q / 4, total * (q + 1) / 4);
        let in_q: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect();
        let n = in_q.len().max(1) as f64;
        (
            in_q.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n / 1024.0,
            in_q.iter().map(|s| s.descriptors as f64).sum::<f64>() / n,
        )
    };
    let (rss2, fd2) = quarter(1);
    let (rss4, fd4) = quarter(3);
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let max_fd = samples.iter().map(|s| s.descriptors).max().unwrap_or(0);
    let ok = counters.ok.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    println!(
        "\nRSS: {rss2:.1} MiB (mean of the second quarter) → {rss4:.1} MiB (last quarter), {:+.1} %, max {max_rss:.1} MiB",
        (rss4 / rss2 - 1.0) * 100.0
    );
    println!(
        "Descriptors: {fd2:.0} → {fd4:.0}, max {max_fd}; requests: {ok} ok, {failed} failed; slowloris connections closed by the listener: {}; routes written: {}",
        counters.slowloris_closed.load(Ordering::Relaxed),
        counters.reloads.load(Ordering::Relaxed)
    );
    if failed * 1000 > (ok + failed) {
        println!("More than 0.1 % of the requests failed.");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}

/// Reads bookinfo's standard output until it prints its product page's address
/// (within 60 s), then keeps draining it.
async fn product_page(stdout: tokio::process::ChildStdout) -> Result<std::net::SocketAddr> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.trim().strip_prefix("Product page:") {
                let addr = url
                    .trim()
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or("");
                return Ok::<_, anyhow::Error>(addr.parse()?);
            }
        }
        bail!("bookinfo exited before printing its product page")
    })
    .await
    .context("bookinfo did not start within 60 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(found)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

fn descriptors(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Counts a response: a 2xx whose body arrived whole is a success.
fn tally(counters: &Counters, ok: bool) {
    let c = if ok { &counters.ok } else { &counters.failed };
    c.fetch_add(1, Ordering::Relaxed);
}

async fn http1_client(url: http::Uri, until: Instant, counters: Arc<Counters>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while Instant::now() < until {
        let ok = match tokio::time::timeout(Duration::from_secs(10), client.get(url.clone())).await
        {
            Ok(Ok(resp)) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
            _ => false,
        };
        tally(&counters, ok);
    }
}

async fn http2_client(addr: std::net::SocketAddr, until: Instant, counters: Arc<Counters>) {
    while Instant::now() < until {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            tally(&counters, false);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((send, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await
        else {
            tally(&counters, false);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let driver = tokio::spawn(conn);
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..HTTP2_STREAMS {
            let mut send = send.clone();
            let counters = counters.clone();
            streams.spawn(async move {
                while Instant::now() < until && send.ready().await.is_ok() {
                    let mut req = http::Request::new(Empty::<Bytes>::new());
                    *req.uri_mut() = http::Uri::from_static("http://bookinfo/productpage");
                    let ok =
                        match tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                            .await
                        {
                            Ok(Ok(resp)) => {
                                resp.status().is_success()
                                    && resp.into_body().collect().await.is_ok()
                            }
                            _ => false,
                        };
                    tally(&counters, ok);
                }
            });
        }
        while streams.join_next().await.is_some() {}
        driver.abort();
    }
}

/// A new connection per request, `CHURN_PER_SECOND` a second.
async fn churn(addr: std::net::SocketAddr, until: Instant, counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / CHURN_PER_SECOND as u32);
    while Instant::now() < until {
        tick.tick().await;
        let counters = counters.clone();
        tokio::spawn(async move {
            let once = async {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(
                    b"GET /productpage HTTP/1.1\r\nHost: bookinfo\r\nConnection: close\r\n\r\n",
                )
                .await?;
                let mut got = Vec::new();
                s.read_to_end(&mut got).await?;
                Ok::<_, std::io::Error>(got.starts_with(b"HTTP/1.1 200"))
            };
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(10), once).await,
                Ok(Ok(true))
            );
            tally(&counters, ok);
        });
    }
}

/// Every 10 s, connections that send a header byte a second and never finish; each is
/// counted when the listener closes it (within 30 s).
async fn slowloris(addr: std::net::SocketAddr, until: Instant, counters: Arc<Counters>) {
    while Instant::now() + Duration::from_secs(30) < until {
        for _ in 0..SLOWLORIS_EVERY_10S {
            let counters = counters.clone();
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return;
                };
                let head = b"GET /productpage HTTP/1.1\r\nHost: bookinfo\r\nX-Slow: ";
                let trickle = async {
                    for b in head.iter().cycle() {
                        s.write_all(&[*b]).await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok::<_, std::io::Error>(())
                };
                if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(30), trickle).await {
                    counters.slowloris_closed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Every `RELOAD_EVERY`, the next of `routes` written as the directory's reviews route.
async fn reloads(routes: Vec<PathBuf>, dir: PathBuf, until: Instant, counters: Arc<Counters>) {
    let mut i = 0;
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        if Instant::now() >= until {
            return;
        }
        // Written beside the directory's files, then renamed into place: the watcher
        // never reads half a file (it reads `*.yaml` only).
        let route = &routes[i % routes.len()];
        let partial = dir.join("reviews-route.yaml.part");
        if std::fs::copy(route, &partial).is_ok()
            && std::fs::rename(&partial, dir.join("reviews-route.yaml")).is_ok()
        {
            counters.reloads.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
    }
}
