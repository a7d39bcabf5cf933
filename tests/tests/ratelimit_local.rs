//! Local rate limiting end to end, on the in-process Bookinfo (secure by default: the
//! callers below are the workloads' own mesh clients, with their SPIFFE identities):
//!
//! - Istio's "Enabling Rate Limits using Envoy" task, its EnvoyFilters unchanged
//!   (`tests/fixtures/ratelimit`): the local limit on productpage (4 tokens per 60 s)
//!   admits exactly 4 requests, the others get Envoy's `429 local_rate_limited` with the
//!   configured `x-local-rate-limit: true`; the per-route variant (virtual host
//!   `inbound|http|9080`); the same limit as a `LocalRateLimitPolicy`;
//! - the refill: over a bounded run, a 200 ms fill interval admits no more than burst +
//!   elapsed fills, and that many when requests keep coming;
//! - fairness between caller identities and an override for a named service account;
//! - at the ingress gateway, the whole gateway and one named route;
//! - buckets kept across a reload that leaves the limit unchanged, and renewed when it
//!   changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod support;

use support::{Answer, Demo, get, workload};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ratelimit")).join(name);
    std::fs::read_to_string(path).unwrap()
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

/// Asserts `a` is Envoy's local rate limit refusal, with the task's header.
fn assert_limited(a: &Answer, task_header: bool) {
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.body, "local_rate_limited", "{a:?}");
    // Envoy's local filter does not say `x-envoy-ratelimited` (the global one does).
    assert!(a.headers.get("x-envoy-ratelimited").is_none(), "{a:?}");
    if task_header {
        assert_eq!(a.headers["x-local-rate-limit"], "true", "{a:?}");
    }
}

/// Sends `n` requests to productpage from ratings' mesh client: the answers.
async fn productpage_from_ratings(demo: &Demo, n: usize) -> Vec<Answer> {
    let ratings = workload(demo, "ratings-v1");
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&ratings, "http://productpage:9080/productpage").await);
    }
    out
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_task_local_limit_on_productpage_admits_four() {
    let demo = Demo::start().await;
    demo.apply_settled("local-ratelimit.yaml", &fixture("local-ratelimit.yaml"))
        .await;
    // As the task checks it: in-mesh requests to productpage:9080 from the ratings pod.
    let answers = productpage_from_ratings(&demo, 10).await;
    assert_eq!(count(&answers, 200), 4, "{answers:?}");
    assert!(
        answers[..4]
            .iter()
            .all(|a| a.status == 200 && a.body.contains("<title>Simple Bookstore App</title>"))
    );
    for a in &answers[4..] {
        assert_limited(a, true);
    }
    // The limit is productpage's: through the ingress gateway (which calls productpage)
    // the bucket is empty too; details is not limited.
    assert_limited(&demo.ingress("/productpage").await, true);
    let reviews = workload(&demo, "reviews-v1");
    for _ in 0..6 {
        assert_eq!(
            get(&reviews, "http://details:9080/details/0").await.status,
            200
        );
    }
    // Counted as Envoy's http_local_rate_limit statistics count.
    let counters = demo.running().live.runtime().local_rate_limits().counters();
    let (key, c) = counters
        .iter()
        .find(|(k, _)| {
            k.starts_with(
                "productpage-v1.default|EnvoyFilter istio-system/filter-local-ratelimit-svc",
            )
        })
        .unwrap();
    assert_eq!(
        (c.enabled, c.ok, c.rate_limited, c.enforced),
        (11, 4, 7, 7),
        "{key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_task_per_route_limit_applies_to_its_virtual_host_only() {
    let demo = Demo::start().await;
    let yaml = fixture("local-ratelimit-per-route.yaml");
    // Another port's virtual host: the filter is in the chain but disabled (no
    // `filter_enabled` at the filter level), and no route configuration applies.
    demo.apply_settled(
        "elsewhere.yaml",
        &yaml.replace("inbound|http|9080", "inbound|http|9999"),
    )
    .await;
    let answers = productpage_from_ratings(&demo, 6).await;
    assert_eq!(count(&answers, 200), 6, "{answers:?}");
    // The task's: productpage's port 9080.
    demo.apply_settled("local-ratelimit-per-route.yaml", &yaml)
        .await;
    let answers = productpage_from_ratings(&demo, 10).await;
    assert_eq!(count(&answers, 200), 4, "{answers:?}");
    for a in &answers[4..] {
        assert_limited(a, true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_limit_as_a_local_rate_limit_policy() {
    let demo = Demo::start().await;
    demo.apply_settled(
        "productpage-limit.yaml",
        "apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: productpage, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  total: {requestsPerMinute: 4}
",
    )
    .await;
    let answers = productpage_from_ratings(&demo, 10).await;
    assert_eq!(count(&answers, 200), 4, "{answers:?}");
    for a in &answers[4..] {
        assert_limited(a, false);
    }
    assert_limited(&demo.ingress("/productpage").await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_refills_continuously_never_above_burst_plus_fills() {
    let demo = Demo::start().await;
    demo.apply_settled("details-limit.yaml",
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: details-limit, namespace: default}
spec:
  workloadSelector: {labels: {app: details}}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_INBOUND}
    patch:
      operation: INSERT_FIRST
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: details
          token_bucket: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 0.2s}
          filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
          filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}}
          enable_x_ratelimit_headers: DRAFT_VERSION_03
"#,
    )
    .await;
    let reviews = workload(&demo, "reviews-v1");
    let url = "http://details:9080/details/0";
    let interval = Duration::from_millis(200);
    let burst = 2u128;
    let start = Instant::now();
    let first = get(&reviews, url).await;
    let first_back = Instant::now();
    assert_eq!(first.status, 200);
    // DRAFT_VERSION_03: the bucket's size, the whole tokens left, seconds to the next.
    assert_eq!(first.headers["x-ratelimit-limit"], "2");
    assert_eq!(first.headers["x-ratelimit-remaining"], "1");
    assert_eq!(first.headers["x-ratelimit-reset"], "0");
    let mut admitted = 1u128;
    let mut refused = 0u128;
    let mut last_sent = first_back;
    // Bounded: 1.2 s or 5 000 requests.
    for _ in 0..5000 {
        if start.elapsed() > Duration::from_millis(1200) {
            break;
        }
        last_sent = Instant::now();
        let a = get(&reviews, url).await;
        match a.status {
            200 => admitted += 1,
            429 => {
                assert_limited(&a, false);
                assert_eq!(a.headers["x-ratelimit-remaining"], "0", "{a:?}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {a:?}"),
        }
    }
    let end = Instant::now();
    // Never more than the burst plus the tokens added since the bucket was made (after
    // `start`); and all of them, since requests kept coming (tokens added between the
    // first request's arrival, before `first_back`, and the last one's, after
    // `last_sent`).
    let upper = burst + (end - start).as_nanos() / interval.as_nanos();
    let lower = burst + (last_sent - first_back).as_nanos() / interval.as_nanos();
    assert!(
        (lower..=upper).contains(&admitted),
        "admitted {admitted} (refused {refused}): expected {lower}..={upper}"
    );
    assert!(refused > 0, "the run was limited");
}

/// A LocalRateLimitPolicy on details: each caller identity 2 per minute, reviews 5, all
/// callers together 10.
const FAIRNESS: &str = "apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: details, namespace: default}
spec:
  workloadSelector: {labels: {app: details}}
  total: {requestsPerMinute: 10}
  identity: {requestsPerMinute: 2}
  overrides:
  - requestsPerMinute: 5
    clientRefs: [{kind: ServiceAccount, name: bookinfo-reviews}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_identity_has_its_own_bucket_and_overrides_their_own() {
    let demo = Demo::start().await;
    demo.apply_settled("details-fairness.yaml", FAIRNESS).await;
    let url = "http://details:9080/details/0";
    let admitted = |answers: &[Answer]| {
        for a in answers.iter().filter(|a| a.status != 200) {
            assert_limited(a, false);
        }
        count(answers, 200)
    };
    let mut by_caller = Vec::new();
    for (caller, n) in [
        ("productpage-v1", 4),
        ("ratings-v1", 4),
        // reviews-v1 and reviews-v2 are one identity (bookinfo-reviews): one override.
        ("reviews-v1", 4),
        ("reviews-v2", 4),
    ] {
        let mesh = workload(&demo, caller);
        let mut answers = Vec::new();
        for _ in 0..n {
            answers.push(get(&mesh, url).await);
        }
        by_caller.push((caller, admitted(&answers)));
    }
    assert_eq!(
        by_caller,
        [
            ("productpage-v1", 2),
            ("ratings-v1", 2),
            ("reviews-v1", 4),
            ("reviews-v2", 1),
        ]
    );
    // Plaintext callers (PERMISSIVE) have no identity: they share one bucket, and the
    // total (10) has one token left.
    let details = workload_addr(&demo, "details-v1");
    let mut plain = Vec::new();
    for _ in 0..3 {
        plain.push(
            mesh_tests::plaintext(details, "GET", "/details/0", &[("host", "details")])
                .await
                .unwrap(),
        );
    }
    let statuses: Vec<u16> = plain.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 429, 429], "{plain:?}");
    assert_eq!(plain[1].1, "local_rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_share_one_identity_bucket() {
    let demo = Demo::start().await;
    demo.apply_settled("details-fairness.yaml", FAIRNESS).await;
    let details = workload_addr(&demo, "details-v1");
    let mut statuses = Vec::new();
    // Two clients outside the mesh, on connections of their own.
    for _ in 0..2 {
        for _ in 0..2 {
            let (s, _) =
                mesh_tests::plaintext(details, "GET", "/details/0", &[("host", "details")])
                    .await
                    .unwrap();
            statuses.push(s);
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    // A caller with an identity is not affected.
    let ratings = workload(&demo, "ratings-v1");
    assert_eq!(
        get(&ratings, "http://details:9080/details/0").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_limit_and_a_route_limit_at_the_ingress_gateway() {
    let demo = Demo::start().await;
    // The whole gateway: 3 tokens per minute for virtual host `*:80`.
    let gateway_limit = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ingress-local-ratelimit, namespace: istio-system}
spec:
  workloadSelector: {labels: {istio: ingressgateway}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
  - applyTo: HTTP_ROUTE
    match:
      context: GATEWAY
      routeConfiguration:
        vhost:
          name: "*:80"
          route: {name: ROUTE_NAME, action: ANY}
    patch:
      operation: MERGE
      value:
        typed_per_filter_config:
          envoy.filters.http.local_ratelimit:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket: {max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s}
              filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}}
              response_headers_to_add:
              - append: false
                header: {key: x-local-rate-limit, value: 'true'}
"#;
    demo.apply_settled(
        "ingress-limit.yaml",
        &gateway_limit.replace("ROUTE_NAME", "\"\""),
    )
    .await;
    let mut answers = Vec::new();
    for path in [
        "/productpage",
        "/api/v1/products",
        "/productpage",
        "/api/v1/products",
        "/productpage",
    ] {
        answers.push(demo.ingress(path).await);
    }
    assert_eq!(count(&answers, 200), 3, "{answers:?}");
    for a in &answers[3..] {
        assert_limited(a, true);
    }
    // The task's advanced case: the `/api/v1/products` prefix moved to a route named
    // `api`, and the limit on that route only.
    demo.apply_settled(
        "bookinfo-api-route.yaml",
        &fixture("bookinfo-api-route.yaml"),
    )
    .await;
    demo.apply_settled(
        "ingress-limit.yaml",
        &gateway_limit.replace("ROUTE_NAME", "api"),
    )
    .await;
    let mut api = Vec::new();
    let mut page = Vec::new();
    for _ in 0..5 {
        api.push(demo.ingress("/api/v1/products").await);
        page.push(demo.ingress("/productpage").await);
    }
    assert_eq!(count(&api, 200), 3, "{api:?}");
    for a in &api[3..] {
        assert_limited(a, true);
    }
    assert_eq!(count(&page, 200), 5, "{page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_that_leaves_the_limit_unchanged() {
    let demo = Demo::start().await;
    let limit = fixture("local-ratelimit.yaml");
    demo.apply_settled("local-ratelimit.yaml", &limit).await;
    assert_eq!(count(&productpage_from_ratings(&demo, 5).await, 200), 4);
    // An unrelated change: a new configuration, the same limit — the bucket stays empty.
    demo.apply_settled(
        "details-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details-extra}
spec:
  host: details
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
",
    )
    .await;
    assert_eq!(count(&productpage_from_ratings(&demo, 3).await, 200), 0);
    // A changed limit is a new bucket, full.
    demo.apply_settled(
        "local-ratelimit.yaml",
        &limit.replace("max_tokens: 4", "max_tokens: 6"),
    )
    .await;
    assert_eq!(count(&productpage_from_ratings(&demo, 8).await, 200), 6);
}
