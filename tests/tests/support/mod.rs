//! A Bookinfo of a test's own: a copy of the example configuration on ephemeral ports,
//! changed through the same directory store `meshctl apply` uses, and what its product
//! page shows.

#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod otlp;
pub mod prom;
pub mod prometheus;
pub mod redis;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bookinfo::run::{Options, Running, copy_with_ephemeral_ports, start};
use bookinfo::services::{DETAILS_ERROR, RATINGS_UNAVAILABLE, REVIEWS_ERROR, REVIEWS_UNAVAILABLE};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const TIME_SCALE: f64 = 0.1;

pub fn example_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bookinfo"))
}

pub fn sample(name: &str) -> PathBuf {
    example_dir().join("istio/networking").join(name)
}

/// A Bookinfo of our own: a copy of the example configuration whose WorkloadEntries point
/// at listeners bound on ephemeral ports.
pub struct Demo {
    pub running: Option<Running>,
    /// The access log entries the demo wrote, in order.
    pub access_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl Demo {
    pub async fn start() -> Demo {
        Demo::start_with(|_| {}).await
    }

    /// A demo whose options `configure` changes before it starts.
    pub async fn start_with(configure: impl FnOnce(&mut Options)) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let listeners =
            copy_with_ephemeral_ports(&example_dir().join("config"), dir.path()).unwrap();
        let mut opts = Options::new(dir.path());
        opts.ingress = "127.0.0.1:0".parse().unwrap();
        opts.admin = "127.0.0.1:0".parse().unwrap();
        opts.time_scale = TIME_SCALE;
        opts.listeners = listeners;
        let access_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = access_log.clone();
        opts.access_log = Some(mesh_tower::telemetry::AccessLogSink::new(move |l| {
            lines.lock().unwrap().push(l.to_owned());
        }));
        configure(&mut opts);
        let running = start(opts).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Demo {
            access_log,
            running: Some(running),
            dir,
            client,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn version(&self) -> u64 {
        self.running().live.snapshot().version()
    }

    /// `meshctl apply -f file`, then waits (at most 15 s) until the demo runs it.
    pub async fn apply_text(&self, name: &str, yaml: &str) {
        let before = self.version();
        let dir = mesh_config::store::ConfigDir::open(self.dir.path()).unwrap();
        let source = mesh_config::source::SourceFile::new(name, yaml);
        let plan = dir.plan_apply(&[source]).unwrap();
        let checked = plan.check();
        assert!(
            !checked.has_errors(),
            "{name} is rejected:\n{}",
            mesh_config::diag::render(&checked.diagnostics, Default::default())
        );
        plan.write().unwrap();
        self.wait_for_change(before).await;
    }

    /// `meshctl apply` of `yaml` (as file `name`), then waits (at most 15 s) until the
    /// running configuration holds every resource of it as written: a reload still
    /// pending from an earlier change may bump the version first.
    pub async fn apply_settled(&self, name: &str, yaml: &str) {
        self.apply_text(name, yaml).await;
        let mut wanted = mesh_config::ConfigSet::new();
        wanted.add_str(name, yaml);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let snapshot = self.running().live.snapshot();
            let settled = wanted.resources().iter().all(|r| {
                snapshot
                    .get(&r.key())
                    .is_some_and(|have| spec(have) == spec(r))
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not applied within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `path` on the ingress gateway: status, headers and body.
    pub async fn ingress(&self, path: &str) -> Answer {
        let req = Request::get(format!("http://{}{path}", self.running().ingress))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, headers, body) = self.send(req).await;
        Answer {
            status: status.as_u16(),
            headers,
            body,
        }
    }

    /// `meshctl apply -f file`, then waits until the demo runs what it holds (not just
    /// any new version: a reload still pending from an earlier change may come first).
    pub async fn apply(&self, file: &Path) {
        let text = std::fs::read_to_string(file).unwrap();
        self.apply_settled(&file.display().to_string(), &text).await;
    }

    /// Waits until the running version is not `before` (at most 15 s: a ceiling for a
    /// machine running the rest of the suite, not a measure).
    pub async fn wait_for_change(&self, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.version() == before {
            assert!(
                Instant::now() < deadline,
                "the change was not applied within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
        let resp = self.client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// The admin endpoint's `/stats/prometheus`, parsed (its content type checked).
    pub async fn metrics(&self) -> Vec<prom::Sample> {
        let url = format!("http://{}/stats/prometheus", self.running().admin);
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let (status, headers, body) = self.send(req).await;
        assert_eq!(status, 200, "{body}");
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        prom::parse(&body)
    }

    /// Reads the metrics until `ready` holds of them (at most 15 s: the last hop of a
    /// request records when its response body ends, a moment after the caller has it).
    pub async fn metrics_when(&self, ready: impl Fn(&[prom::Sample]) -> bool) -> Vec<prom::Sample> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let samples = self.metrics().await;
            if ready(&samples) {
                return samples;
            }
            assert!(
                Instant::now() < deadline,
                "metrics did not settle within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `path` on the ingress, as `user` when given.
    pub async fn get(&self, path: &str, user: Option<&str>) -> (StatusCode, String) {
        let mut b = Request::get(format!("http://{}{path}", self.running().ingress));
        if let Some(u) = user {
            b = b.header("cookie", format!("session={u}"));
        }
        let (status, _, body) = self.send(b.body(Full::new(Bytes::new())).unwrap()).await;
        (status, body)
    }

    /// The product page as `user`: which reviews served it, and how.
    pub async fn page(&self, user: Option<&str>) -> Page {
        let (status, html) = self.get("/productpage", user).await;
        assert_eq!(status, 200, "{html}");
        Page::parse(&html)
    }
}

/// The mesh handle of a running Bookinfo workload (the same identity it serves with).
pub fn workload(demo: &Demo, name: &str) -> mesh_tower::Mesh {
    let (spec, _) = demo
        .running()
        .workloads
        .iter()
        .find(|(w, _)| w.name == name)
        .unwrap();
    demo.running().live.runtime().workload(
        mesh_tower::Workload::new(spec.name.clone(), spec.namespace.clone())
            .labels(spec.labels.clone())
            .service_account(spec.service_account.clone()),
    )
}

/// GET `url` through `mesh`'s client.
pub async fn get(mesh: &mesh_tower::Mesh, url: &str) -> Answer {
    use tower::ServiceExt;
    let req = Request::get(url)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = mesh.client().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A resource's spec, to compare.
fn spec(r: &mesh_config::model::AnyResource) -> String {
    use mesh_config::model::AnyResource;
    match r {
        AnyResource::EnvoyFilter(x) => format!("{:?}", x.spec),
        AnyResource::LocalRateLimitPolicy(x) => format!("{:?}", x.spec),
        AnyResource::VirtualService(x) => format!("{:?}", x.spec),
        AnyResource::DestinationRule(x) => format!("{:?}", x.spec),
        other => format!("{}", other.key()),
    }
}

/// A response's status, headers and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            // Stop the servers in the background; the runtime ends with the test.
            tokio::spawn(r.shutdown());
        }
    }
}

/// What the product page shows about reviews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `reviews-v1` .. `reviews-v3`, or None when reviews were unavailable.
    pub podname: Option<String>,
    /// Star colours shown (`black`, `red`), one per review with ratings.
    pub stars: Vec<String>,
    pub reviews_unavailable: bool,
    pub ratings_unavailable: bool,
    pub user: Option<String>,
    pub details: bool,
    /// "Error fetching product details" shown.
    pub details_error: bool,
    /// "Error fetching product reviews" shown.
    pub reviews_error: bool,
}

pub fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

impl Page {
    pub fn parse(html: &str) -> Page {
        let stars = html
            .match_indices("<font color=\"")
            .filter_map(|(i, _)| between(&html[i..], "<font color=\"", "\""))
            .map(str::to_string)
            .collect();
        Page {
            podname: between(html, "<u id=\"podname\">", "</u>").map(str::to_string),
            stars,
            reviews_unavailable: html.contains(REVIEWS_UNAVAILABLE),
            ratings_unavailable: html.contains(RATINGS_UNAVAILABLE),
            user: between(html, "<b id=\"user\">", "</b>").map(str::to_string),
            details: html.contains("<dt>ISBN-10:</dt>"),
            details_error: html.contains(DETAILS_ERROR),
            reviews_error: html.contains(REVIEWS_ERROR),
        }
    }
}
