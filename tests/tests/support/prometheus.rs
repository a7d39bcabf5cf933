//! A real Prometheus for tests: Debian's `prometheus` started on a free loopback port
//! with a generated scrape configuration (one job, a one-second interval), its storage in
//! a temporary directory, killed on drop; and its HTTP query API.

#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The binary, as Debian installs it.
pub const PROMETHEUS: &str = "prometheus";

/// A `prometheus` of the test's own, scraping one target.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `q` percent-encoded for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `metrics_path` on `target` every second, and waits (at
    /// most 30 s) until it is ready.
    pub async fn start(target: SocketAddr, metrics_path: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: bookinfo\n    metrics_path: {metrics_path}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "`{PROMETHEUS}` could not be started ({e}): this test needs the Debian \
                     package `prometheus` (.ci/run installs it)"
                )
            });
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if prometheus
                .get("/-/ready")
                .await
                .is_some_and(|(s, _)| s == 200)
            {
                return prometheus;
            }
            let log = std::fs::read_to_string(prometheus._dir.path().join("prometheus.log"))
                .unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 30 s:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let req = Request::get(format!("http://{}{path}", self.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The instant vector of PromQL `query`: each series' labels and value.
    pub async fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let (status, body) = self
            .get(&format!("/api/v1/query?query={}", encode(query)))
            .await
            .unwrap_or_else(|| panic!("prometheus did not answer {query}"));
        assert_eq!(status, 200, "{query}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{query}: {body}");
        json["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: not a vector: {body}"))
            .iter()
            .map(|r| {
                let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// The sum of `query`'s values (0 for an empty vector).
    pub async fn sum(&self, query: &str) -> f64 {
        self.query(query).await.iter().map(|(_, v)| v).sum()
    }
}
