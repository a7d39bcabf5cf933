//! Bookinfo as seven processes — the six workloads and the ingress gateway — configured
//! through a real etcd, each with its certificate from one shared root: the page is
//! served across processes over mutual TLS; Istio's `virtual-service-reviews-v3.yaml`
//! written to etcd is in force in every process within a second; killing reviews-v2's
//! process under load makes its endpoint go after the lease's TTL with at least 99.9 %
//! of requests served; a rolling restart of the reviews versions under load loses no
//! request; etcd stopped for ten seconds under load costs no request, and a change made
//! after its restart arrives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bookinfo::services::{REVIEWS_ERROR, REVIEWS_UNAVAILABLE};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_tests::etcd::{self, EtcdServer};
use mesh_tower::identity::{CertificateAuthority, SpiffeId};

const LEASE_TTL: u64 = 2;

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One bookinfo process, with the addresses it printed.
struct Process {
    name: String,
    child: Child,
    admin: String,
    ingress: Option<String>,
}

impl Process {
    fn start(args: &[&str], name: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Its lines, read on a thread of their own (so that it never blocks on a full
        // pipe), until the banner ends: at most 30 s.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let (mut admin, mut ingress) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{name} did not print its banner within 30 s"));
            let field = |label: &str| {
                line.trim().strip_prefix(label).map(|rest| {
                    rest.trim()
                        .trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
            };
            if let Some(a) = field("Admin:") {
                admin = Some(a);
            }
            if let Some(i) = field("Product page:") {
                ingress = Some(i);
            }
            if line.contains("Ctrl-C to stop") {
                break;
            }
        }
        std::thread::spawn(move || for _ in rx {});
        Process {
            name: name.to_string(),
            child,
            admin: admin.unwrap_or_else(|| panic!("{name} printed no admin address")),
            ingress,
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, and waits for the process to exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn fetch(client: &HttpClient, url: &str) -> (u16, String) {
    match client.get(url.parse().unwrap()).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// A page that shows reviews: what a user of Bookinfo calls a success.
fn served(status: u16, html: &str) -> bool {
    status == 200
        && html.contains("<u id=\"podname\">")
        && !html.contains(REVIEWS_ERROR)
        && !html.contains(REVIEWS_UNAVAILABLE)
}

fn podname(html: &str) -> Option<&str> {
    let i = html.find("<u id=\"podname\">")? + "<u id=\"podname\">".len();
    html[i..].split("</u>").next()
}

/// Requests the product page from `clients` loops until `stop`; (requests, failures).
fn load(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    tokio::spawn(async move {
        let total = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut loops = Vec::new();
        for _ in 0..clients {
            let (url, stop, total, failed, samples) = (
                url.clone(),
                stop.clone(),
                total.clone(),
                failed.clone(),
                samples.clone(),
            );
            loops.push(tokio::spawn(async move {
                let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                // Bounded: at most two minutes, whatever `stop` says.
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (status, html) = fetch(&client, &url).await;
                    total.fetch_add(1, Ordering::Relaxed);
                    if !served(status, &html) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut s = samples.lock().unwrap();
                        if s.len() < 5 {
                            s.push(format!(
                                "{status}: {}",
                                html.chars().take(300).collect::<String>()
                            ));
                        }
                    }
                }
            }));
        }
        for l in loops {
            l.await.unwrap();
        }
        let s = samples.lock().unwrap().clone();
        (
            total.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            s,
        )
    })
}

/// Each process's configuration version, from its admin endpoint.
async fn has_reviews_vs(client: &HttpClient, admin: &str) -> bool {
    let (_, dump) = fetch(client, &format!("http://{admin}/config_dump")).await;
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
    v["resources"].as_array().is_some_and(|rs| {
        rs.iter()
            .any(|r| r["kind"] == "VirtualService" && r["name"] == "reviews")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_processes_on_etcd() {
    let mut server = EtcdServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    // The example's configuration on free ports (the listeners are dropped: each process
    // binds its own port again).
    drop(bookinfo::run::copy_with_ephemeral_ports(&example("config"), &config).unwrap());
    etcd::apply(&url, "/mesh", &[&config]).await;

    // One root; a certificate per namespace and service account.
    let certs = dir.path().join("certs");
    // As `meshctl ca create-root` then `meshctl ca issue` do: the root written as PEM,
    // read back to issue.
    let made = CertificateAuthority::new("cluster.local").unwrap();
    let ca = CertificateAuthority::from_pem(&made.root_pem(), &made.root_key_pem()).unwrap();
    let accounts = [
        ("default", "bookinfo-productpage"),
        ("default", "bookinfo-details"),
        ("default", "bookinfo-reviews"),
        ("default", "bookinfo-ratings"),
        ("istio-system", "istio-ingressgateway-service-account"),
    ];
    for (ns, sa) in accounts {
        let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
        let now = std::time::SystemTime::now();
        let (chain, key) = ca
            .issue_pem(&id, now, now + Duration::from_secs(3600))
            .unwrap();
        let d = certs.join(ns).join(sa);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cert-chain.pem"), chain).unwrap();
        std::fs::write(d.join("key.pem"), key).unwrap();
        std::fs::write(d.join("root-cert.pem"), ca.root_pem()).unwrap();
    }
    let certs = certs.display().to_string();
    let ttl = LEASE_TTL.to_string();
    let caches = dir.path().join("caches");
    let workload_args = |name: &str| -> Vec<String> {
        let cache = caches.join(format!("{name}.json")).display().to_string();
        [
            "--etcd",
            &url,
            "--workload",
            name,
            "--certs",
            &certs,
            "--lease-ttl",
            &ttl,
            "--cache",
            &cache,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let workload = |name: &str| {
        let args = workload_args(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(&args, name)
    };
    let names = [
        "productpage-v1",
        "details-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "ratings-v1",
    ];
    let mut processes: BTreeMap<String, Process> =
        names.iter().map(|n| (n.to_string(), workload(n))).collect();
    let gateway_cache = caches.join("gateway.json").display().to_string();
    let gateway = Process::start(
        &[
            "--etcd",
            &url,
            "--no-workloads",
            "--ingress",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--certs",
            &certs,
            "--cache",
            &gateway_cache,
        ],
        "gateway",
    );
    let page = format!("http://{}/productpage", gateway.ingress.clone().unwrap());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // The page, across processes: every reviews version answers in turn.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "reviews seen: {seen:?}");
        let (status, html) = fetch(&client, &page).await;
        if served(status, &html) {
            seen.insert(podname(&html).unwrap().to_string());
        }
    }

    // A WorkloadGroup written to etcd, and a process running an instance of it at
    // 127.0.0.2: it registers the WorkloadEntry the group's template makes, named as
    // Istio names it, and the page comes from it too.
    let group_dir = dir.path().join("group");
    std::fs::create_dir(&group_dir).unwrap();
    // Its template's `http` port is 0: each instance listens on a free port, and
    // registers the port it has.
    std::fs::write(
        group_dir.join("workload-group.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: reviews-vms, namespace: default}\nspec:\n  metadata:\n    labels: {app: reviews, version: v2}\n  template:\n    ports: {http: 0}\n    serviceAccount: bookinfo-reviews\n",
    )
    .unwrap();
    etcd::apply(&url, "/mesh", &[&group_dir]).await;
    let instance = {
        let mut args = workload_args("reviews-vms");
        args.extend(["--instance-address".to_string(), "127.0.0.2".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(&args, "reviews-vms")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no page came from the WorkloadGroup's instance"
        );
        let (status, html) = fetch(&client, &page).await;
        if served(status, &html) && podname(&html) == Some("reviews-vms-127.0.0.2") {
            break;
        }
    }
    let registered = etcd::get(&url, "/mesh/registry/default/reviews-vms-127.0.0.2")
        .await
        .expect("the instance's registration");
    assert!(
        registered.contains("\"istio.io/autoRegistrationGroup\":\"reviews-vms\""),
        "{registered}"
    );
    tokio::task::spawn_blocking(move || instance.stop())
        .await
        .unwrap();

    // Across processes, over mutual TLS with the certificates of the shared root: the
    // reviews workloads' metrics say who called, and how.
    let reviews_admin = processes["reviews-v1"].admin.clone();
    let (_, metrics) = fetch(&client, &format!("http://{reviews_admin}/stats/prometheus")).await;
    let inbound = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"destination\""))
        .unwrap_or_else(|| panic!("no inbound request metric:\n{metrics}"));
    assert!(
        inbound.contains("connection_security_policy=\"mutual_tls\""),
        "{inbound}"
    );
    assert!(
        inbound.contains(
            "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\""
        ),
        "{inbound}"
    );

    // Istio's sample, written to etcd, is in force in every process within a second.
    let admins: Vec<String> = processes
        .values()
        .map(|p| p.admin.clone())
        .chain([gateway.admin.clone()])
        .collect();
    etcd::apply(
        &url,
        "/mesh",
        &[&example("istio/networking/virtual-service-reviews-v3.yaml")],
    )
    .await;
    let written = Instant::now();
    for admin in &admins {
        while !has_reviews_vs(&client, admin).await {
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "{admin} did not follow within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eprintln!("every process follows within {:?}", written.elapsed());
    let (_, html) = fetch(&client, &page).await;
    assert_eq!(podname(&html), Some("reviews-v3"));
    // Back to the three versions in turn.
    let etcd_client = mesh_tower::etcd::Etcd::new(&url).unwrap();
    etcd_client
        .delete(b"/mesh/networking.istio.io/VirtualService/default/reviews")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // reviews-v2's process killed under load: its endpoint goes after the lease's TTL.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(page.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    processes.remove("reviews-v2").unwrap().signal("-KILL");
    // Long enough for the lease to expire and for a few thousand requests: a request in
    // flight at reviews-v2 when it died may fail (a reset is not retried), so the share
    // is measured over enough of them.
    tokio::time::sleep(Duration::from_secs(LEASE_TTL + 6)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, failed, samples) = running.await.unwrap();
    eprintln!("reviews-v2 killed: {failed} of {total} failed {samples:?}");
    assert!(total > 100, "{total}");
    assert!(
        failed * 1000 <= total,
        "{failed} of {total} failed: {samples:?}"
    );
    for _ in 0..30 {
        let (_, html) = fetch(&client, &page).await;
        assert_ne!(
            podname(&html),
            Some("reviews-v2"),
            "reviews-v2 still answers"
        );
    }
    processes.insert("reviews-v2".into(), workload("reviews-v2"));

    // A rolling restart of every reviews version under load: no request lost.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(page.clone(), 4, stop.clone());
    for name in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = processes.remove(name).unwrap();
        tokio::task::spawn_blocking(move || old.stop())
            .await
            .unwrap();
        let args = workload_args(name);
        let new = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::start(&args, args[3])
        })
        .await
        .unwrap();
        processes.insert(name.to_string(), new);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, failed, samples) = running.await.unwrap();
    eprintln!("rolling restart: {failed} of {total} failed");
    assert_eq!(failed, 0, "{samples:?}");

    // etcd stopped for ten seconds under load: no request fails; then a change arrives.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(page.clone(), 4, stop.clone());
    server.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    server.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, failed, samples) = running.await.unwrap();
    eprintln!("etcd stopped: {failed} of {total} failed");
    assert_eq!(failed, 0, "{samples:?}");
    etcd::apply(
        &url,
        "/mesh",
        &[&example("istio/networking/virtual-service-reviews-v3.yaml")],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, html) = fetch(&client, &page).await;
        if podname(&html) == Some("reviews-v3") {
            let mut all_v3 = true;
            for _ in 0..10 {
                let (_, html) = fetch(&client, &page).await;
                all_v3 &= podname(&html) == Some("reviews-v3");
            }
            if all_v3 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the change after etcd's restart did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(gateway);
}
