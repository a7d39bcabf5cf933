//! Access logs of a running Bookinfo (its `config/telemetry.yaml` turns Istio's `envoy`
//! provider on mesh-wide): one entry per request and side in Istio's default format, all
//! the entries of one page sharing the request ID the gateway gave it; a Telemetry turns
//! one workload's server side off; a MeshConfig switches the encoding to JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::Demo;

/// Waits (at most 15 s) until the access log holds an entry satisfying `done`, then
/// returns every entry so far.
async fn entries_when(demo: &Demo, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines = demo.access_log.lock().unwrap().clone();
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "the access log did not get there within 15 s:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields of a text entry: the bracketed time, then space-separated fields with
/// quoted ones kept whole (quotes removed).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = line.strip_prefix('[').unwrap();
    let (time, rest) = rest.split_once("] ").unwrap();
    out.push(time.to_string());
    let mut chars = rest.chars().peekable();
    while chars.peek().is_some() {
        if chars.peek() == Some(&' ') {
            chars.next();
            continue;
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                field.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        out.push(field);
    }
    out
}

/// Indices of [`fields`] (Istio's default format, the request line as one field).
const REQUEST_LINE: usize = 1;
const CODE: usize = 2;
const FLAGS: usize = 3;
const DETAILS: usize = 4;
const BYTES_SENT: usize = 8;
const USER_AGENT: usize = 12;
const REQUEST_ID: usize = 13;
const UPSTREAM_HOST: usize = 15;
const CLUSTER: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_of_a_page_is_logged_with_the_gateways_request_id() {
    let demo = Demo::start().await;
    let req = Request::get(format!("http://{}/productpage", demo.running().ingress))
        .header("user-agent", "access-log-test/1.0")
        // The gateway replaces an external request ID with its own.
        .header("x-request-id", "from-the-outside")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, page) = demo.send(req).await;
    assert_eq!(status, 200);
    // reviews v2 and v3 call ratings; v1 does not.
    let served_by_ratings = support::Page::parse(&page).podname.as_deref() != Some("reviews-v1");

    let gateway_entry = |lines: &[String]| {
        lines.iter().map(|l| fields(l)).find(|f| {
            f[USER_AGENT] == "access-log-test/1.0"
                && f[CLUSTER].starts_with("outbound|9080||productpage")
        })
    };
    // The page's own entries: the gateway's, then both sides of each call.
    let expected = if served_by_ratings { 8 } else { 6 };
    let lines = entries_when(&demo, |lines| {
        gateway_entry(lines).is_some_and(|g| {
            lines
                .iter()
                .filter(|l| fields(l)[REQUEST_ID] == g[REQUEST_ID])
                .count()
                >= expected
        })
    })
    .await;
    let g = gateway_entry(&lines).unwrap();
    assert_eq!(g[REQUEST_LINE], "GET /productpage HTTP/1.1");
    assert_eq!(g[CODE], "200");
    assert_eq!(g[FLAGS], "-");
    assert_eq!(g[DETAILS], "via_upstream");
    assert!(g[BYTES_SENT].parse::<u64>().unwrap() > 1000, "{g:?}");
    assert_ne!(g[REQUEST_ID], "from-the-outside");
    assert_eq!(g[REQUEST_ID].len(), 36, "{g:?}");
    assert_eq!(
        g[CLUSTER],
        "outbound|9080||productpage.default.svc.cluster.local"
    );
    let productpage = demo
        .running()
        .workloads
        .iter()
        .find(|(w, _)| w.name == "productpage-v1")
        .map(|(_, a)| a.to_string())
        .unwrap();
    assert_eq!(g[UPSTREAM_HOST], productpage);
    // Time: RFC 3339, UTC, milliseconds.
    assert_eq!(g[0].len(), "2026-11-29T09:20:00.123Z".len(), "{g:?}");
    assert!(g[0].ends_with('Z'));

    let same_id: Vec<Vec<String>> = lines
        .iter()
        .map(|l| fields(l))
        .filter(|f| f[REQUEST_ID] == g[REQUEST_ID])
        .collect();
    assert_eq!(same_id.len(), expected, "{same_id:#?}");
    let clusters: Vec<&str> = same_id.iter().map(|f| f[CLUSTER].as_str()).collect();
    for want in [
        "outbound|9080||productpage.default.svc.cluster.local",
        "outbound|9080||details.default.svc.cluster.local",
        "outbound|9080||reviews.default.svc.cluster.local",
    ] {
        assert_eq!(
            clusters.iter().filter(|c| **c == want).count(),
            1,
            "{want}: {clusters:?}"
        );
    }
    // The server sides name their inbound cluster by port.
    assert_eq!(
        clusters
            .iter()
            .filter(|c| c.starts_with("inbound|"))
            .count(),
        expected / 2,
        "{clusters:?}"
    );
    assert!(same_id.iter().all(|f| f[CODE] == "200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_turns_one_side_off_and_a_mesh_config_switches_to_json() {
    let demo = Demo::start().await;
    demo.apply_settled(
        "details-quiet.yaml",
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: details-quiet, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  accessLogging:
  - match: {mode: SERVER}
    disabled: true
"#,
    )
    .await;
    demo.access_log.lock().unwrap().clear();
    let (status, _) = demo.get("/productpage", None).await;
    assert_eq!(status, 200);
    entries_when(&demo, |l| {
        l.iter()
            .any(|l| l.contains("outbound|9080||details.default.svc.cluster.local"))
            && l.iter().any(|l| l.contains("outbound|9080||productpage"))
    })
    .await;
    // productpage still logs its call to details; details logs nothing it serves.
    let details_port = demo
        .running()
        .workloads
        .iter()
        .find(|(w, _)| w.name == "details-v1")
        .map(|(_, a)| a.port())
        .unwrap();
    let inbound = format!("inbound|{details_port}||");
    // Give a late entry the time to arrive before asserting it never does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<String> = demo.access_log.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.contains(&inbound)), "{lines:#?}");
    assert!(lines.len() >= 4);

    demo.apply_settled(
        "mesh.yaml",
        "apiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec: {accessLogEncoding: JSON}\n",
    )
    .await;
    demo.access_log.lock().unwrap().clear();
    let (status, _) = demo.get("/productpage", None).await;
    assert_eq!(status, 200);
    let lines = entries_when(&demo, |l| {
        l.iter().any(|l| l.contains("outbound|9080||productpage"))
    })
    .await;
    let gateway: serde_json::Value = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["upstream_cluster"] == "outbound|9080||productpage.default.svc.cluster.local")
        .unwrap();
    assert_eq!(gateway["method"], "GET");
    assert_eq!(gateway["path"], "/productpage");
    assert_eq!(gateway["response_code"], 200);
    assert_eq!(gateway["response_code_details"], "via_upstream");
    assert_eq!(gateway["response_flags"], serde_json::Value::Null);
    assert_eq!(gateway["request_id"].as_str().map(str::len), Some(36));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nothing_routes_is_logged_with_its_flag() {
    let demo = Demo::start().await;
    let answer = demo.ingress("/nowhere").await;
    assert_eq!(answer.status, 404);
    let lines = entries_when(&demo, |l| l.iter().any(|l| l.contains("/nowhere"))).await;
    let f = lines
        .iter()
        .map(|l| fields(l))
        .find(|f| f[REQUEST_LINE] == "GET /nowhere HTTP/1.1")
        .unwrap();
    assert_eq!(f[CODE], "404");
    assert_eq!(f[FLAGS], "NR");
    assert_eq!(f[DETAILS], "route_not_found");
    assert_eq!(f[UPSTREAM_HOST], "-");
}

/// Istio's task's filter: only failed requests are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_logs_only_what_it_matches() {
    let demo = Demo::start().await;
    demo.apply_settled(
        "telemetry.yaml",
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter:
      expression: response.code >= 400 || request.headers['x-debug'] == 'yes'
"#,
    )
    .await;
    demo.access_log.lock().unwrap().clear();
    let (status, _) = demo.get("/productpage", None).await;
    assert_eq!(status, 200);
    assert_eq!(demo.ingress("/nowhere").await.status, 404);
    let req = Request::get(format!("http://{}/productpage", demo.running().ingress))
        .header("x-debug", "yes")
        .header("user-agent", "debugging/1.0")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(demo.send(req).await.0, 200);
    entries_when(&demo, |l| {
        l.iter().any(|l| l.contains("/nowhere")) && l.iter().any(|l| l.contains("debugging/1.0"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<Vec<String>> = demo
        .access_log
        .lock()
        .unwrap()
        .iter()
        .map(|l| fields(l))
        .collect();
    // The 404, and the debug request at the gateway and at productpage's server side
    // (productpage does not pass `x-debug` on: its calls are not logged).
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines.iter().filter(|f| f[CODE] == "404").count(), 1);
    assert_eq!(
        lines
            .iter()
            .filter(|f| f[USER_AGENT] == "debugging/1.0")
            .count(),
        2,
        "the gateway's entry and productpage's own: {lines:#?}"
    );
}
