//! The mesh graph page in a real browser: headless Chromium (Debian's `chromium`, driven
//! by `chromedriver` over WebDriver) loads a running Bookinfo's `/graph` under traffic,
//! and the page's SVG shows Bookinfo's topology — the gateway, the services, the three
//! reviews versions behind one reviews service — with the rate, errors, p99 and mTLS lock
//! of each edge, refreshed live. Every run writes its screenshot to `target/graph.png`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::Demo;
use support::browser::Browser;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;

const GATEWAY: &str = "app/istio-system/istio-ingressgateway";
const PRODUCTPAGE: &str = "app/default/productpage-v1";
const DETAILS: &str = "app/default/details-v1";
const REVIEWS_V1: &str = "app/default/reviews-v1";
const REVIEWS_V2: &str = "app/default/reviews-v2";
const REVIEWS_V3: &str = "app/default/reviews-v3";
const RATINGS: &str = "app/default/ratings-v1";
const PRODUCTPAGE_SVC: &str = "service/default/productpage";
const DETAILS_SVC: &str = "service/default/details";
const REVIEWS_SVC: &str = "service/default/reviews";
const RATINGS_SVC: &str = "service/default/ratings";

/// Bookinfo's hops as Kiali's versioned-app graph draws them.
const EDGES: [(&str, &str); 11] = [
    (GATEWAY, PRODUCTPAGE_SVC),
    (PRODUCTPAGE_SVC, PRODUCTPAGE),
    (PRODUCTPAGE, DETAILS_SVC),
    (DETAILS_SVC, DETAILS),
    (PRODUCTPAGE, REVIEWS_SVC),
    (REVIEWS_SVC, REVIEWS_V1),
    (REVIEWS_SVC, REVIEWS_V2),
    (REVIEWS_SVC, REVIEWS_V3),
    (REVIEWS_V2, RATINGS_SVC),
    (REVIEWS_V3, RATINGS_SVC),
    (RATINGS_SVC, RATINGS),
];

/// Product pages in the background, one every 50 ms, until stopped (at most 2,000).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(ingress: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stopped, count) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            for _ in 0..2000 {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let req = Request::get(format!("http://{ingress}/productpage"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(resp) = client.request(req).await {
                    let _ = resp.into_body().collect().await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Traffic { stop, sent, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.sent.load(Ordering::Relaxed)
    }
}

/// What the page's DOM shows: every node's and edge's data attributes, the status line
/// and when the page last read its data.
const READ_DOM: &str = r#"
const attrs = el => Object.fromEntries(Array.from(el.attributes).filter(a => a.name.startsWith("data-")).map(a => [a.name.slice(5), a.value]));
return {
  nodes: Array.from(document.querySelectorAll("svg#graph g.node")).map(n => Object.assign(attrs(n), {
    label: [".name", ".version"].map(c => (n.querySelector(c) || {}).textContent || "").join(" ").trim(),
  })),
  edges: Array.from(document.querySelectorAll("svg#graph g.edge")).map(e => Object.assign(attrs(e), {
    text: (e.querySelector("text") || {}).textContent || "",
    lock: e.querySelector(".lock") !== null,
    errorShownBad: e.querySelector(".err.bad") !== null,
  })),
  status: document.getElementById("status").textContent,
  updated: document.body.dataset.updated || "",
};
"#;

#[derive(Debug, Default)]
struct Dom {
    /// By `data-id`.
    nodes: BTreeMap<String, BTreeMap<String, Value>>,
    /// By `(data-source, data-target)`.
    edges: BTreeMap<(String, String), BTreeMap<String, Value>>,
    status: String,
    updated: String,
}

async fn read_dom(browser: &Browser) -> Dom {
    let v = browser.client.execute(READ_DOM, Vec::new()).await.unwrap();
    let object = |v: &Value| -> BTreeMap<String, Value> {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut dom = Dom {
        status: text(&v["status"]),
        updated: text(&v["updated"]),
        ..Dom::default()
    };
    for n in v["nodes"].as_array().into_iter().flatten() {
        dom.nodes.insert(text(&n["id"]), object(n));
    }
    for e in v["edges"].as_array().into_iter().flatten() {
        dom.edges
            .insert((text(&e["source"]), text(&e["target"])), object(e));
    }
    dom
}

fn rate(edge: &BTreeMap<String, Value>) -> f64 {
    edge.get("rate")
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0)
}

fn attr<'a>(m: &'a BTreeMap<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The page's state once every Bookinfo edge carries traffic (at most 30 s).
async fn settled(browser: &Browser) -> Dom {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dom = read_dom(browser).await;
        let ready = EDGES.iter().all(|(s, t)| {
            dom.edges
                .get(&(s.to_string(), t.to_string()))
                .is_some_and(|e| rate(e) > 0.0)
        });
        if ready {
            return dom;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show Bookinfo's edges with traffic within 30 s; it shows:\n\
             status: {}\nnodes: {:?}\nedges: {:#?}",
            dom.status,
            dom.nodes.keys().collect::<Vec<_>>(),
            dom.edges
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The width and height of a PNG image (its IHDR chunk).
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |r: std::ops::Range<usize>| Some(u32::from_be_bytes(png.get(r)?.try_into().ok()?));
    Some((be(16..20)?, be(20..24)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_page_shows_bookinfo_live_in_a_browser() {
    let demo = Demo::start().await;
    // Bookinfo's default routing spreads the pages over the three reviews versions:
    // request pages until each has served one.
    let mut served = BTreeSet::new();
    for _ in 0..90 {
        if let Some(pod) = demo.page(None).await.podname {
            served.insert(pod);
        }
        if served.len() == 3 {
            break;
        }
    }
    assert_eq!(
        served,
        ["reviews-v1", "reviews-v2", "reviews-v3"]
            .map(String::from)
            .into(),
        "90 pages did not reach every reviews version"
    );
    let traffic = Traffic::start(demo.running().ingress);

    let browser = Browser::start(WIDTH, HEIGHT).await;
    let url = format!("http://{}/graph", demo.running().admin);
    browser.client.goto(&url).await.unwrap();
    let dom = settled(&browser).await;

    // The nodes: the gateway, each app version (three for reviews), each service.
    let apps = [
        (GATEWAY, "istio-ingressgateway", ""),
        (PRODUCTPAGE, "productpage", "v1"),
        (DETAILS, "details", "v1"),
        (REVIEWS_V1, "reviews", "v1"),
        (REVIEWS_V2, "reviews", "v2"),
        (REVIEWS_V3, "reviews", "v3"),
        (RATINGS, "ratings", "v1"),
    ];
    for (id, app, version) in apps {
        let node = dom
            .nodes
            .get(id)
            .unwrap_or_else(|| panic!("no node {id}: {:?}", dom.nodes.keys()));
        assert_eq!(attr(node, "kind"), "app", "{id}");
        assert_eq!((attr(node, "app"), attr(node, "version")), (app, version));
        // Its label reads app and version.
        assert_eq!(
            attr(node, "label"),
            format!("{app} {version}").trim_end(),
            "{id}"
        );
        assert_eq!(
            attr(node, "gateway"),
            if id == GATEWAY { "true" } else { "false" }
        );
    }
    for (id, name) in [
        (PRODUCTPAGE_SVC, "productpage"),
        (DETAILS_SVC, "details"),
        (REVIEWS_SVC, "reviews"),
        (RATINGS_SVC, "ratings"),
    ] {
        let node = dom.nodes.get(id).unwrap_or_else(|| panic!("no node {id}"));
        assert_eq!(
            (attr(node, "kind"), attr(node, "service")),
            ("service", name)
        );
        assert_eq!(
            attr(node, "host"),
            format!("{name}.default.svc.cluster.local")
        );
    }
    assert_eq!(dom.nodes.len(), 11, "{:?}", dom.nodes.keys());

    // The edges, exactly Bookinfo's: reviews v1 calls nothing.
    let drawn: BTreeSet<(&str, &str)> = dom
        .edges
        .keys()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    assert_eq!(drawn, EDGES.into_iter().collect::<BTreeSet<_>>());
    assert!(!dom.edges.keys().any(|(s, _)| s == REVIEWS_V1));
    for ((s, t), e) in &dom.edges {
        let what = format!("{s} -> {t}: {e:?}");
        // Traffic, an error ratio (shown red when above zero: a loaded machine may
        // time out a call), a p99, over HTTP.
        assert!(rate(e) > 0.0, "{what}");
        assert!(attr(e, "requests").parse::<u64>().unwrap() > 0, "{what}");
        let errors: f64 = attr(e, "error-ratio").parse().unwrap();
        assert!((0.0..=1.0).contains(&errors), "{what}");
        assert_eq!(e["errorShownBad"].as_bool(), Some(errors > 0.0), "{what}");
        let p99: f64 = attr(e, "p99-ms").parse().unwrap();
        assert!(p99 > 0.0 && p99 < 60_000.0, "{what}");
        assert_eq!(attr(e, "protocol"), "http", "{what}");
        // The label reads rate, errors and p99.
        let text = attr(e, "text");
        assert!(
            text.contains(" rps") && text.contains('%') && text.contains("p99 "),
            "{what}"
        );
        // No PeerAuthentication and no DestinationRule TLS settings: Istio's default,
        // PERMISSIVE servers and auto mTLS clients, secures every hop; the lock shows it.
        assert_eq!(attr(e, "mtls"), "true", "{what}");
        assert_eq!(attr(e, "mtls-percent"), "100", "{what}");
        assert!(e["lock"].as_bool().unwrap(), "{what}");
    }
    // The service in front of reviews splits what productpage sends over three versions.
    let key = |s: &str, t: &str| (s.to_string(), t.to_string());
    let into_reviews = rate(&dom.edges[&key(PRODUCTPAGE, REVIEWS_SVC)]);
    let to_versions: f64 = [REVIEWS_V1, REVIEWS_V2, REVIEWS_V3]
        .iter()
        .map(|v| rate(&dom.edges[&key(REVIEWS_SVC, v)]))
        .sum();
    assert!(
        (into_reviews - to_versions).abs() < 1e-6 * into_reviews.max(1.0),
        "{into_reviews} != {to_versions}"
    );
    assert!(dom.status.contains("11 nodes, 11 edges"), "{}", dom.status);

    // Live: the page reads its data again within a few polls.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = read_dom(&browser).await;
        if now.updated != dom.updated && !now.updated.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not refresh within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The screenshot: the whole window, written for every run.
    let png = browser.client.screenshot().await.unwrap();
    assert_eq!(png_size(&png), Some((WIDTH, HEIGHT)));
    let out = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"));
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("graph.png"), &png).unwrap();

    browser.close().await;
    let sent = traffic.stop().await;
    assert!(sent > 0);
}
