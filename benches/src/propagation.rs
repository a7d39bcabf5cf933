//! `mesh-bench propagation`: how long a change written to etcd takes to be in force in
//! every process watching it. A real etcd (Debian's `etcd`, on free loopback ports) holds
//! Bookinfo's configuration (and, with `--services N`, N more generated services); three
//! follower processes (`mesh-bench follow`, this binary) watch it, each checking,
//! compiling and swapping in every change as a workload process does, and print the
//! revision and the wall-clock time each configuration went into force; the leader
//! writes 100 changes (a VirtualService's weights; with `--registrations`, workloads of
//! reviews registering and going away, which followers apply as endpoint changes only),
//! 50 ms apart (`--interval-ms`), and matches the times. Wall clocks of one machine: the latencies are
//! from the write's answer to the swap.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use mesh_tower::etcd::Etcd;
use mesh_tower::source::{ConfigSource, EtcdSource, Offered, offer};

/// The follower processes, killed when dropped (also when the run fails midway).
struct Followers(Vec<std::process::Child>);

impl Drop for Followers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// `mesh-bench follow`: watches `prefix` at `url`, and prints `ready` then
/// `applied <revision> <unix µs>` for every configuration put in force.
pub(crate) async fn follow(url: &str, prefix: &str) -> Result<()> {
    let mut source = EtcdSource::new(Etcd::new(url)?, prefix);
    let first = source.load().await?;
    let snapshot = first
        .check()
        .snapshot
        .context("the configuration in etcd has errors")?;
    let runtime = mesh_tower::MeshRuntime::from_snapshot(&snapshot);
    source.accepted();
    let _client = runtime.workload(mesh_tower::Workload::new("follower", "default"));
    println!("ready {}", source.revision());
    loop {
        // As `drive` does it (endpoint changes applied incrementally), inline.
        let delivered = source.next().await;
        if let Offered::Applied(_) = offer(&runtime, delivered) {
            source.accepted();
            println!("applied {} {}", source.revision(), now_micros());
        }
    }
}

/// The leader (see the module documentation); prints a Markdown table.
pub(crate) async fn run(
    services: usize,
    changes: usize,
    followers: usize,
    registrations: bool,
    interval: Duration,
) -> Result<()> {
    let server = mesh_tests::etcd::EtcdServer::start();
    let url = server.url();
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo/config");
    mesh_tests::etcd::apply(&url, "/mesh", &[&config]).await;
    let etcd = Etcd::new(&url)?;
    if services > 0 {
        // Generated services, one key each (written directly: a meshctl transaction takes
        // at most 127 keys).
        let texts = crate::scale::generate(crate::scale::Size {
            services,
            endpoints_per_service: 10,
            virtual_services: services,
        });
        for (_, text) in &texts {
            for doc in mesh_config::store::documents(text) {
                for found in &doc.resources {
                    let key = mesh_config::store::kv::key_path("/mesh", &found.key);
                    etcd.put(key.as_bytes(), doc.content_text(text).as_bytes(), 0)
                        .await?;
                }
            }
        }
    }
    let exe = std::env::current_exe()?;
    let mut children = Followers(Vec::new());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    for i in 0..followers {
        let mut child = Command::new(&exe)
            .args(["follow", "--etcd", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((i, line));
            }
        });
        children.0.push(child);
    }
    // Every follower ready.
    let mut ready = 0;
    while ready < followers {
        let (_, line) = rx
            .recv_timeout(Duration::from_secs(300))
            .context("a follower did not start")?;
        if line.starts_with("ready") {
            ready += 1;
        }
    }
    let mut written: Vec<(i64, u128)> = Vec::new();
    for n in 0..changes {
        if registrations {
            // reviews-r<k> registers (even n), then goes away (odd n).
            let name = format!("reviews-r{}", (n / 2) % 5);
            let key = format!("/mesh/registry/default/{name}");
            let revision = if n % 2 == 0 {
                let entry = format!(
                    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  address: 127.0.0.{}\n  labels: {{app: reviews, version: v1}}\n  serviceAccount: bookinfo-reviews\n",
                    10 + (n / 2) % 5
                );
                etcd.put(key.as_bytes(), entry.as_bytes(), 0).await?
            } else {
                // A transaction, whose answer says the revision of the delete.
                use mesh_tower::etcd::proto::{DeleteRangeRequest, Op, RequestOp, TxnRequest};
                let txn = TxnRequest {
                    compare: Vec::new(),
                    success: vec![RequestOp {
                        request: Some(Op::DeleteRange(DeleteRangeRequest {
                            key: key.into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: Vec::new(),
                };
                etcd.txn(txn).await?.header.map_or(0, |h| h.revision)
            };
            written.push((revision, now_micros()));
            tokio::time::sleep(interval).await;
            continue;
        }
        let w = n % 100;
        let vs = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: {w}}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}\n",
            100 - w
        );
        let revision = etcd
            .put(
                b"/mesh/networking.istio.io/VirtualService/default/reviews",
                vs.as_bytes(),
                0,
            )
            .await?;
        written.push((revision, now_micros()));
        tokio::time::sleep(interval).await;
    }
    // Collect until every follower applied the last revision (at most 60 s more).
    let last = written.last().map_or(0, |w| w.0);
    let mut applied: HashMap<(usize, i64), u128> = HashMap::new();
    let mut done = vec![false; followers];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.iter().any(|d| !d) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((i, line)) = rx.recv_timeout(left) else {
            break;
        };
        let mut parts = line.split_whitespace();
        if parts.next() != Some("applied") {
            continue;
        }
        let (Some(rev), Some(at)) = (
            parts.next().and_then(|r| r.parse::<i64>().ok()),
            parts.next().and_then(|t| t.parse::<u128>().ok()),
        ) else {
            continue;
        };
        applied.insert((i, rev), at);
        if rev >= last {
            done[i] = true;
        }
    }
    drop(children);
    drop(server);
    // A change is in force in a follower when it applied that revision or a later one
    // (changes close together are applied together).
    let mut latencies = Vec::new();
    let mut missing = 0;
    for &(rev, at) in &written {
        for i in 0..followers {
            let first = applied
                .iter()
                .filter(|((f, r), _)| *f == i && *r >= rev)
                .map(|(_, t)| *t)
                .min();
            match first {
                Some(t) => latencies.push(t.saturating_sub(at)),
                None => missing += 1,
            }
        }
    }
    if latencies.is_empty() {
        bail!("no change was seen by any follower");
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    println!(
        "Propagation: {changes} {} written to etcd {} ms apart, {followers} follower processes, Bookinfo{}\n",
        if registrations {
            "registrations and deregistrations"
        } else {
            "VirtualService changes"
        },
        interval.as_millis(),
        if services > 0 {
            format!(" + {services} services (10 endpoints each, a VirtualService each)")
        } else {
            String::new()
        }
    );
    println!("| p50 | p90 | p99 | max | never seen |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {missing} |",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
