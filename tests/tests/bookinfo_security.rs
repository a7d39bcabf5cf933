//! Istio's security tasks, replayed on the in-process Bookinfo (secure by default: every
//! workload and the ingress gateway has its identity from the in-process CA, auto mTLS
//! between them, PERMISSIVE by default), with Istio's policy files unchanged and applied
//! through the same directory store `meshctl apply` uses:
//!
//! - "Mutual TLS Migration": PERMISSIVE serves plaintext from outside the mesh; STRICT
//!   refuses it while mesh traffic goes on with no failed request; a namespace
//!   PERMISSIVE policy lets plaintext in again.
//! - "Authorization for HTTP traffic": allow-nothing, then `productpage-viewer`,
//!   `details-viewer` and `reviews-viewer`, `ratings-viewer` — each step's page as Istio's
//!   documentation shows it — and a DENY policy.
//! - A policy selecting the ingress gateway applies at the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

mod support;

use support::{Demo, example_dir};

fn security(name: &str) -> std::path::PathBuf {
    example_dir().join("istio/security").join(name)
}

/// The address a Bookinfo workload listens on.
fn workload_addr(demo: &Demo, name: &str) -> SocketAddr {
    demo.running()
        .workloads
        .iter()
        .find(|(w, _)| w.name == name)
        .map(|(_, a)| *a)
        .unwrap()
}

/// A plaintext request straight to a workload's port, from outside the mesh: the status
/// and body, or why it failed.
async fn plaintext(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    mesh_tests::plaintext(addr, method, path, &[("host", "bookinfo")]).await
}

/// The documents of a multi-document YAML file, each as its own text.
fn documents(text: &str) -> Vec<String> {
    text.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n").to_string())
        .filter(|d| !d.trim().is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_migration() {
    let demo = Arc::new(Demo::start().await);
    let productpage = workload_addr(&demo, "productpage-v1");
    let details = workload_addr(&demo, "details-v1");

    // PERMISSIVE (Istio's default): a client outside the mesh is served in plaintext,
    // and the mesh's own traffic (gateway → productpage → details, reviews → ratings)
    // is mutual TLS.
    let (status, _) = plaintext(productpage, "GET", "/productpage").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = plaintext(details, "GET", "/details/0").await.unwrap();
    assert_eq!(status, 200);
    let page = demo.page(None).await;
    assert!(page.details && page.podname.is_some(), "{page:?}");

    // Mesh traffic keeps flowing while the mesh-wide policy turns STRICT.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (demo, stop, ok, failed) = (demo.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            // Bounded: at most 2 000 requests or 30 s per task.
            let deadline = Instant::now() + Duration::from_secs(30);
            for _ in 0..2000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let (status, body) = demo.get("/productpage", None).await;
                let page = support::Page::parse(&body);
                if status == 200 && page.details && page.podname.is_some() {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    demo.apply(&security("peer-authentication-strict.yaml"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // STRICT: plaintext from outside is refused; the mesh is unaffected.
    let refused = plaintext(productpage, "GET", "/productpage").await;
    assert!(refused.is_err(), "plaintext under STRICT: {refused:?}");
    let refused = plaintext(details, "GET", "/details/0").await;
    assert!(refused.is_err(), "plaintext under STRICT: {refused:?}");
    let page = demo.page(None).await;
    assert!(page.details && page.podname.is_some(), "{page:?}");

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert!(ok.load(Ordering::SeqCst) > 20, "requests flowed");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no mesh request failed");

    // A namespace policy overrides the mesh's: PERMISSIVE in `default` lets plaintext in.
    demo.apply(&security("peer-authentication-permissive.yaml"))
        .await;
    assert_eq!(
        plaintext(details, "GET", "/details/0").await.unwrap().0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_for_http_traffic() {
    let demo = Demo::start().await;

    // allow-nothing: every workload of `default` denies everything.
    demo.apply(&security("authorization-allow-nothing.yaml"))
        .await;
    let (status, body) = demo.get("/productpage", None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );

    let viewers = std::fs::read_to_string(security("authorization-bookinfo-viewers.yaml")).unwrap();
    let viewers = documents(&viewers);
    assert_eq!(viewers.len(), 4);
    let named = |name: &str| {
        viewers
            .iter()
            .find(|d| d.contains(&format!("name: {name}\n")))
            .unwrap()
            .clone()
    };

    // productpage-viewer: the page loads, with "Error fetching product details" and
    // "Error fetching product reviews".
    demo.apply_settled("productpage-viewer.yaml", &named("productpage-viewer"))
        .await;
    let page = demo.page(None).await;
    assert!(page.details_error && page.reviews_error, "{page:?}");
    assert!(!page.details && page.podname.is_none(), "{page:?}");

    // details-viewer and reviews-viewer (from productpage's identity): details and
    // reviews show, ratings are "currently unavailable".
    demo.apply_settled("details-viewer.yaml", &named("details-viewer"))
        .await;
    demo.apply_settled("reviews-viewer.yaml", &named("reviews-viewer"))
        .await;
    let mut ratings_checked = false;
    for _ in 0..12 {
        let page = demo.page(None).await;
        assert!(
            page.details && !page.details_error && !page.reviews_error,
            "{page:?}"
        );
        if page.podname.as_deref() != Some("reviews-v1") {
            assert!(page.ratings_unavailable, "{page:?}");
            assert!(page.stars.is_empty(), "{page:?}");
            ratings_checked = true;
        }
    }
    assert!(ratings_checked, "reviews v2 or v3 served at least once");

    // ratings-viewer (from reviews' identity): black and red stars.
    demo.apply_settled("ratings-viewer.yaml", &named("ratings-viewer"))
        .await;
    let mut stars = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let page = demo.page(None).await;
        assert!(!page.ratings_unavailable, "{page:?}");
        stars.extend(page.stars);
    }
    assert_eq!(
        stars.into_iter().collect::<Vec<_>>(),
        ["black", "red"],
        "v2 and v3 show their stars"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_policy_decides_before_allow() {
    let demo = Demo::start().await;
    let ratings = workload_addr(&demo, "ratings-v1");
    assert_eq!(
        plaintext(ratings, "GET", "/ratings/0").await.unwrap().0,
        200
    );
    demo.apply(&security("authorization-deny-post.yaml")).await;
    assert_eq!(
        plaintext(ratings, "POST", "/ratings/0").await.unwrap(),
        (403, "RBAC: access denied".into())
    );
    assert_eq!(
        plaintext(ratings, "GET", "/ratings/0").await.unwrap().0,
        200
    );
    // An ALLOW policy matching the write does not undo the DENY.
    demo.apply_settled(
        "allow-all-ratings.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{}]
",
    )
    .await;
    assert_eq!(
        plaintext(ratings, "POST", "/ratings/0").await.unwrap().0,
        403
    );
    let page = demo.page(None).await;
    assert!(page.details, "the page still loads: {page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_gateway_is_a_workload_its_policies_apply_to() {
    let demo = Demo::start().await;
    demo.apply_settled(
        "gateway-deny-api.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/api/*]}}]
",
    )
    .await;
    let (status, body) = demo.get("/api/v1/products/0/reviews", None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );
    assert_eq!(demo.get("/productpage", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_shows_each_workloads_identity_and_expiry() {
    let demo = Demo::start().await;
    let admin = demo.running().admin;
    let req = Request::get(format!("http://{admin}/certs"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = demo.send(req).await;
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<(String, String)> = certs["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let cert = &w["certificate"];
            // Istio's default lifetime, 24 h (a few seconds may have passed).
            let left = cert["expiresInSeconds"].as_u64().unwrap();
            assert!((86_000..=86_400).contains(&left), "{w}");
            assert!(cert["notAfter"].as_str().unwrap().ends_with('Z'), "{w}");
            (
                w["workload"].as_str().unwrap().to_string(),
                cert["spiffeId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    let want = [
        ("details-v1", "bookinfo-details"),
        ("productpage-v1", "bookinfo-productpage"),
        ("ratings-v1", "bookinfo-ratings"),
        ("reviews-v1", "bookinfo-reviews"),
        ("reviews-v2", "bookinfo-reviews"),
        ("reviews-v3", "bookinfo-reviews"),
    ];
    let mut expected: Vec<(String, String)> = want
        .iter()
        .map(|(w, sa)| {
            (
                w.to_string(),
                format!("spiffe://cluster.local/ns/default/sa/{sa}"),
            )
        })
        .collect();
    expected.push((
        "istio-ingressgateway".into(),
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account".into(),
    ));
    expected.sort();
    assert_eq!(ids, expected);
}

fn jwt_fixture(name: &str) -> String {
    let path =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt")).join(name);
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_at_the_ingress_gateway() {
    let demo = Demo::start().await;
    let jwks = jwt_fixture("jwks.json").replace('\n', " ");
    // Waits for both resources to be in force: a reload started before this change may
    // bump the version first.
    demo.apply_settled(
        "ingress-jwt.yaml",
        &format!(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ingress-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}}}]
"#
        ),
    )
    .await;
    let url = format!("http://{}/productpage", demo.running().ingress);
    let send = |auth: Option<String>| {
        let mut b = Request::get(url.clone());
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        demo.send(b.body(Full::new(Bytes::new())).unwrap())
    };
    let (status, _, body) = send(None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );
    let (status, _, body) = send(Some("Bearer a.b.c".into())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = send(Some(format!("Bearer {}", jwt_fixture("demo.jwt")))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(support::Page::parse(&body).details, "the page loads");
}
