//! `meshctl apply` against a running Bookinfo: the real binary edits the watched
//! directory while requests flow through the ingress; every request succeeds and each
//! change takes effect.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bookinfo::run::{Options, copy_with_ephemeral_ports, start};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn meshctl_apply(file: &str, dir: &Path) {
    let file = repo().join("examples/bookinfo/istio/networking").join(file);
    let dir = dir.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["apply", "-f"])
            .arg(&file)
            .arg("--config")
            .arg(&dir)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshctl_apply_while_requests_flow_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let listeners =
        copy_with_ephemeral_ports(&repo().join("examples/bookinfo/config"), dir.path()).unwrap();
    let mut opts = Options::new(dir.path());
    opts.ingress = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    opts.listeners = listeners;
    let running = start(opts).await.unwrap();
    let url = format!("http://{}/api/v1/products/0/reviews", running.ingress);

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failed, seen, url) = (stop.clone(), failed.clone(), seen.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            // Bounded: at most 3 000 requests or 60 s per task.
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..3000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let resp = client.get(url.parse().unwrap()).await.unwrap();
                let ok = resp.status() == 200;
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                match v["podname"].as_str() {
                    Some(pod) if ok => seen.lock().unwrap().push(pod.to_string()),
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    let pods_since = |from: usize| -> BTreeSet<String> {
        seen.lock().unwrap()[from..].iter().cloned().collect()
    };
    let wait_for = |want: &'static [&'static str]| {
        let seen = seen.clone();
        async move {
            let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let len = seen.lock().unwrap().len();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let recent: BTreeSet<String> =
                    seen.lock().unwrap()[len..].iter().cloned().collect();
                if recent == want {
                    return;
                }
                assert!(Instant::now() < deadline, "still {recent:?}, want {want:?}");
            }
        }
    };
    // Without rules: all three versions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods_since(0).len(), 3, "{:?}", pods_since(0));
    meshctl_apply("virtual-service-all-v1.yaml", dir.path()).await;
    wait_for(&["reviews-v1"]).await;
    meshctl_apply("virtual-service-reviews-v3.yaml", dir.path()).await;
    wait_for(&["reviews-v3"]).await;
    meshctl_apply("virtual-service-reviews-50-v3.yaml", dir.path()).await;
    wait_for(&["reviews-v1", "reviews-v3"]).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    assert!(seen.lock().unwrap().len() > 100);
    running.shutdown().await;
}
