//! The token bucket (exact times, the invariant under proptest, concurrency) and the
//! local filters' bucket logic (descriptors, the default bucket, callers).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::HeaderValue;

use mesh_core::ratelimit::{LocalConfigInstance, StateSlot};
use proptest::prelude::*;

use super::*;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn spec(max_tokens: u32, tokens_per_fill: u32, fill: Duration) -> BucketSpec {
    BucketSpec {
        max_tokens,
        tokens_per_fill,
        fill_interval: fill,
    }
}

/// Takes every token available at `now`: how many.
fn drain(b: &TokenBucket, now: u64) -> u64 {
    let mut n = 0;
    while b.try_acquire(now).allowed {
        n += 1;
        assert!(n < 1_000_000, "runaway");
    }
    n
}

#[test]
fn the_task_bucket_refills_one_token_every_fifteen_seconds() {
    // 4 tokens, 4 more per 60 s: continuously, one every 15 s.
    let b = TokenBucket::new(&spec(4, 4, Duration::from_secs(60)));
    assert_eq!(drain(&b, 0), 4);
    let a = b.try_acquire(0);
    assert_eq!(
        (a.allowed, a.remaining, a.next_token_nanos),
        (false, 0, 15 * S)
    );
    assert_eq!(
        XRateLimit::of(4, &a),
        XRateLimit {
            limit: 4,
            remaining: 0,
            reset: 15
        }
    );
    assert_eq!(drain(&b, 15 * S - 1), 0);
    let a = b.try_acquire(15 * S);
    assert_eq!((a.allowed, a.remaining), (true, 0));
    assert_eq!(drain(&b, 30 * S), 1);
    // Idle for an hour: full again, never more than max_tokens.
    assert_eq!(drain(&b, 3600 * S), 4);
    let a = b.peek(3600 * S + 7 * S + 500 * MS);
    assert_eq!((a.remaining, a.next_token_nanos), (0, 7 * S + 500 * MS));
    assert_eq!(
        XRateLimit::of(4, &a).reset,
        7,
        "Envoy's whole seconds, rounded down"
    );
}

#[test]
fn remaining_counts_whole_tokens() {
    let b = TokenBucket::new(&spec(10, 10, Duration::from_secs(1)));
    let a = b.try_acquire(0);
    assert_eq!((a.allowed, a.remaining, a.next_token_nanos), (true, 9, 0));
    assert_eq!(drain(&b, 0), 9);
    // 150 ms later: 1.5 tokens, one whole.
    assert_eq!(b.peek(150 * MS).remaining, 1);
    assert!(!b.is_full(150 * MS));
    assert!(b.is_full(S));
}

#[test]
fn refills_are_exact_for_any_rate() {
    // 3 tokens per second: a token every 333 333 333.3 ns, without rounding the rate.
    let b = TokenBucket::new(&spec(3, 3, Duration::from_secs(1)));
    assert_eq!(drain(&b, 0), 3);
    assert_eq!(drain(&b, 333_333_333), 0);
    assert_eq!(drain(&b, 333_333_334), 1);
    assert_eq!(drain(&b, 666_666_666), 0);
    assert_eq!(drain(&b, 666_666_667), 1);
    assert_eq!(drain(&b, 999_999_999), 0);
    assert_eq!(drain(&b, S), 1);
    // Exactly 3 per second, for ever: 300 tokens in 100 s.
    let b = TokenBucket::new(&spec(3, 3, Duration::from_secs(1)));
    let mut n = 0;
    for ms in 0..=100_000u64 {
        n += drain(&b, ms * MS);
    }
    assert_eq!(n, 3 + 300);
    // A full bucket gains nothing: time spent full is lost, as in Envoy's bucket.
    let b = TokenBucket::new(&spec(1, 3, Duration::from_secs(1)));
    assert_eq!(drain(&b, 0), 1);
    assert_eq!(drain(&b, 333_333_334), 1);
    assert_eq!(drain(&b, 666_666_667), 0);
    assert_eq!(drain(&b, 666_666_668), 1);
    // A rate whose exact cost needs a scale above 16 is rounded to never exceed it.
    let b = TokenBucket::new(&spec(1, 17, Duration::from_secs(1)));
    let mut n = 0;
    for ms in 0..=10_000u64 {
        n += drain(&b, ms * MS);
    }
    assert!((1 + 169..=1 + 170).contains(&n), "{n}");
}

#[test]
fn a_bucket_of_zero_tokens_refuses_everything() {
    let b = TokenBucket::new(&spec(0, 1, Duration::from_secs(1)));
    for t in [0, S, 3600 * S] {
        let a = b.try_acquire(t);
        assert_eq!((a.allowed, a.remaining), (false, 0));
    }
}

#[test]
fn concurrent_checks_take_each_token_once() {
    let b = Arc::new(TokenBucket::new(&spec(1000, 1, Duration::from_secs(3600))));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || (0..500).filter(|_| b.try_acquire(5 * S).allowed).count())
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 1000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    /// Over any sequence of checks at any times (in any order), by the latest time `t`
    /// seen, at most `max_tokens + floor(t × tokens_per_fill / fill_interval)` were
    /// admitted.
    #[test]
    fn never_more_than_burst_plus_fills(
        max in 0u32..50,
        per_fill in 1u32..100,
        fill_ms in 50u64..5_000,
        times in proptest::collection::vec(0u64..30 * S, 1..300),
    ) {
        let fill = Duration::from_millis(fill_ms);
        let b = TokenBucket::new(&spec(max, per_fill, fill));
        let mut admitted = 0u128;
        let mut latest = 0u64;
        for t in times {
            latest = latest.max(t);
            if b.try_acquire(t).allowed {
                admitted += 1;
            }
            let bound = u128::from(max) + u128::from(latest) * u128::from(per_fill) / u128::from(fill_ms * MS);
            prop_assert!(admitted <= bound, "admitted {} > {} at {}", admitted, bound, latest);
        }
    }

    /// Draining the bucket at increasing times close enough that it never fills up (time
    /// spent full is lost) admits exactly
    /// `max_tokens + floor(t × tokens_per_fill / fill_interval)`.
    #[test]
    fn exactly_burst_plus_fills_when_requests_keep_coming(
        max in 2u32..50,
        per_fill in 1u32..16,
        fill_ms in 50u64..5_000,
        gaps in proptest::collection::vec(0.0f64..1.0, 1..100),
    ) {
        let fill_ns = fill_ms * MS;
        let b = TokenBucket::new(&spec(max, per_fill, Duration::from_millis(fill_ms)));
        // After a drain less than a token is left: in this time the bucket is not full.
        let to_full = u64::from(max - 1) * fill_ns / u64::from(per_fill);
        let mut t = 0u64;
        let mut admitted = u128::from(drain(&b, 0));
        prop_assert_eq!(admitted, u128::from(max));
        for g in gaps {
            t += (g * to_full as f64) as u64;
            admitted += u128::from(drain(&b, t));
            let expected = u128::from(max) + u128::from(t) * u128::from(per_fill) / u128::from(fill_ns);
            prop_assert_eq!(admitted, expected, "at {}", t);
        }
    }
}

fn instance(config: LocalConfig, key: &str) -> LocalConfigInstance {
    LocalConfigInstance {
        config: Arc::new(config),
        key: key.into(),
        state: StateSlot::default(),
    }
}

fn local_config(
    default: Option<BucketSpec>,
    descriptors: &[(&str, &str, BucketSpec)],
    always: bool,
) -> LocalConfig {
    let mut c = mesh_config::model::envoy_ratelimit::LocalRateLimit {
        stat_prefix: "t".into(),
        token_bucket: default,
        always_consume_default_token_bucket: always,
        ..Default::default()
    };
    c.descriptors = descriptors
        .iter()
        .map(
            |(k, v, b)| mesh_config::model::envoy_ratelimit::LocalDescriptor {
                entries: vec![(k.to_string(), v.to_string())],
                token_bucket: *b,
            },
        )
        .collect();
    LocalConfig::compile(&c).unwrap()
}

#[test]
fn descriptors_then_the_default_bucket_as_envoy_consumes_them() {
    let hour = Duration::from_secs(3600);
    let c = local_config(
        Some(spec(3, 1, hour)),
        &[("a", "1", spec(4, 1, hour)), ("b", "1", spec(1, 1, hour))],
        true,
    );
    let buckets = ConfigBuckets::new(&c);
    // (matched descriptors, allowed, the bucket the headers describe: limit, remaining)
    type Step = (Vec<usize>, bool, Option<(u32, u64)>);
    let table: Vec<Step> = vec![
        // a matched: a's token and a default one (always_consume)
        (vec![0], true, Some((4, 3))),
        // nothing matched: the default bucket
        (vec![], true, Some((3, 1))),
        // b then a (in the order given: mesh-core sorts them by fill rate); the
        // default's last token; the headers describe the first matched
        (vec![1, 0], true, Some((1, 0))),
        // b is empty: refused by b, nothing else taken
        (vec![1], false, Some((1, 0))),
        // a has tokens, the default none: refused by the default, a's token gone
        (vec![0], false, Some((3, 0))),
        (vec![0], false, Some((3, 0))),
        // a is empty now
        (vec![0], false, Some((4, 0))),
    ];
    for (i, (matched, allowed, ctx)) in table.into_iter().enumerate() {
        let r = buckets.request_allowed(&matched, c.always_consume_default_token_bucket, 0, true);
        assert_eq!(r.allowed, allowed, "step {i}");
        assert_eq!(r.context.map(|(l, a)| (l, a.remaining)), ctx, "step {i}");
    }
    // Without always_consume, a matched descriptor spares the default bucket.
    let c = local_config(
        Some(spec(1, 1, hour)),
        &[("a", "1", spec(5, 1, hour))],
        false,
    );
    let buckets = ConfigBuckets::new(&c);
    for _ in 0..5 {
        assert!(buckets.request_allowed(&[0], false, 0, false).allowed);
    }
    assert!(!buckets.request_allowed(&[0], false, 0, false).allowed);
    assert!(buckets.request_allowed(&[], false, 0, false).allowed);
    assert!(!buckets.request_allowed(&[], false, 0, false).allowed);
    // No default bucket: only descriptors limit.
    let c = local_config(None, &[("a", "1", spec(1, 1, hour))], true);
    let buckets = ConfigBuckets::new(&c);
    assert!(buckets.request_allowed(&[], true, 0, false).allowed);
    assert!(buckets.request_allowed(&[0], true, 0, false).allowed);
    assert!(!buckets.request_allowed(&[0], true, 0, false).allowed);
}

#[test]
fn buckets_are_kept_by_key_while_their_parameters_are_the_same() {
    let limiters = LocalRateLimiters::default();
    let hour = Duration::from_secs(3600);
    let a = instance(
        local_config(Some(spec(2, 1, hour)), &[], true),
        "w|EnvoyFilter x|configPatches[0]|0",
    );
    let b1 = limiters.config_buckets(&a);
    assert!(b1.request_allowed(&[], true, now_nanos(), false).allowed);
    // The same key and buckets (a reload): the same state.
    let again = instance(
        local_config(Some(spec(2, 1, hour)), &[], true),
        "w|EnvoyFilter x|configPatches[0]|0",
    );
    let b2 = limiters.config_buckets(&again);
    assert!(Arc::ptr_eq(&b1, &b2));
    // Other parameters: new, full buckets.
    let changed = instance(
        local_config(Some(spec(3, 1, hour)), &[], true),
        "w|EnvoyFilter x|configPatches[0]|0",
    );
    let b3 = limiters.config_buckets(&changed);
    assert!(!Arc::ptr_eq(&b1, &b3));
    assert_eq!(limiters.len(), 1);
    // An entry no configuration holds and whose buckets are full is dropped when another
    // is made.
    drop((b1, b2, b3, a, again, changed));
    let other = instance(
        local_config(Some(spec(1, 1, hour)), &[], true),
        "w|EnvoyFilter y|configPatches[0]|0",
    );
    let _b = limiters.config_buckets(&other);
    assert_eq!(limiters.len(), 1);
    assert_eq!(
        &*limiters.counters()[0].0,
        "w|EnvoyFilter y|configPatches[0]|0"
    );
}

#[test]
fn identity_buckets_beyond_the_cap_share_one() {
    let hour = Duration::from_secs(3600);
    let p = PolicyLimit::new(
        "w|LocalRateLimitPolicy p",
        None,
        Some(spec(1, 1, hour)),
        Vec::new(),
    );
    let b = PolicyBuckets::new(&p);
    let spec1 = spec(1, 1, hour);
    for i in 0..MAX_IDENTITY_BUCKETS {
        assert!(b.acquire_identity(&spec1, &format!("spiffe://td/ns/n/sa/{i}"), 0));
    }
    // The same identity again: its own bucket, empty.
    assert!(!b.acquire_identity(&spec1, "spiffe://td/ns/n/sa/0", 0));
    // Two new identities past the cap share the overflow bucket (one token).
    assert!(b.acquire_identity(&spec1, "spiffe://td/ns/n/sa/new-1", 0));
    assert!(!b.acquire_identity(&spec1, "spiffe://td/ns/n/sa/new-2", 0));
    assert_eq!(b.identities.load().len(), MAX_IDENTITY_BUCKETS);
    // An hour later every bucket is full: the new identity gets a bucket of its own.
    assert!(b.acquire_identity(&spec1, "spiffe://td/ns/n/sa/new-3", 3600 * S));
    assert!(
        b.identities
            .load()
            .contains_key("spiffe://td/ns/n/sa/new-3")
    );
}

/// productpage's inbound layer under `yaml` (with Bookinfo's productpage registry),
/// around an application that echoes the `x-not-enforced` request header.
fn productpage_inbound(yaml: &str) -> (crate::MeshRuntime, crate::inbound::Inbound<EchoService>) {
    let registry = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, labels: {app: productpage}}]
---
";
    let mut set = mesh_config::ConfigSet::new();
    set.add_str("t.yaml", &format!("{registry}{yaml}"));
    let checked = set.check();
    let snapshot = checked
        .snapshot
        .clone()
        .unwrap_or_else(|| panic!("{}", checked.summary()));
    let runtime = crate::MeshRuntime::from_snapshot(&snapshot);
    let mesh = runtime.workload(
        mesh_core::Workload::new("productpage-v1", "default")
            .labels([("app", "productpage")])
            .service_account("bookinfo-productpage"),
    );
    let layer = mesh.inbound();
    (runtime, tower::Layer::layer(&layer, EchoService))
}

#[derive(Clone)]
struct EchoService;

impl tower::Service<Request<()>> for EchoService {
    type Response = Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<String>, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let seen = req
            .headers()
            .get("x-not-enforced")
            .map_or("-", |v| v.to_str().unwrap_or("?"))
            .to_string();
        std::future::ready(Ok(Response::new(seen)))
    }
}

fn filter(config: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: limit, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: SIDECAR_INBOUND}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: limit
          token_bucket: {{max_tokens: 2, tokens_per_fill: 2, fill_interval: 3600s}}
          filter_enabled: {{default_value: {{numerator: 100}}}}
{config}"#
    )
}

async fn send(
    svc: &mut crate::inbound::Inbound<EchoService>,
    headers: &[(&str, &str)],
) -> Response<crate::inbound::InboundBody<String>> {
    use tower::{Service, ServiceExt};
    let mut b = Request::get("/productpage");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    // As `Mesh::serve` sets it: the request arrived on port 9080.
    req.extensions_mut()
        .insert(crate::inbound::LocalAddr(([127, 0, 0, 1], 9080).into()));
    svc.ready().await.unwrap().call(req).await.unwrap()
}

async fn body(resp: Response<crate::inbound::InboundBody<String>>) -> String {
    match resp.into_body().into_inner() {
        http_body_util::Either::Left(s) => s,
        http_body_util::Either::Right(full) => {
            use http_body_util::BodyExt;
            String::from_utf8(full.collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
    }
}

#[tokio::test]
async fn enforced_refusals_answer_as_envoy_with_headers_and_flag() {
    let (_rt, mut svc) = productpage_inbound(&filter(
        "          filter_enforced: {default_value: {numerator: 100}}
          enable_x_ratelimit_headers: DRAFT_VERSION_03
          response_headers_to_add: [{header: {key: x-local-rate-limit, value: 'true'}}]
",
    ));
    let r = send(&mut svc, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        (
            &r.headers()["x-ratelimit-limit"],
            &r.headers()["x-ratelimit-remaining"],
            &r.headers()["x-ratelimit-reset"]
        ),
        (
            &HeaderValue::from(2),
            &HeaderValue::from(1),
            &HeaderValue::from(0)
        )
    );
    assert_eq!(send(&mut svc, &[]).await.status(), 200);
    let r = send(&mut svc, &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(ResponseFlags::of(&r), ResponseFlags::RATE_LIMITED);
    assert!(
        r.headers().get("x-envoy-ratelimited").is_none(),
        "the global filter's"
    );
    assert_eq!(r.headers()["x-local-rate-limit"], "true");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    // The next token in 30 minutes.
    assert_eq!(r.headers()["x-ratelimit-reset"], "1800");
    assert_eq!(body(r).await, "local_rate_limited");
    // A gRPC caller: HTTP 200, UNAVAILABLE.
    let r = send(&mut svc, &[("content-type", "application/grpc")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        (&r.headers()["grpc-status"], &r.headers()["grpc-message"]),
        (
            &HeaderValue::from(14),
            &HeaderValue::from_static("local_rate_limited")
        )
    );
}

#[tokio::test]
async fn a_configured_status_and_resource_exhausted() {
    let (_rt, mut svc) = productpage_inbound(&filter(
        "          filter_enforced: {default_value: {numerator: 100}}
          status: {code: ServiceUnavailable}
          rate_limited_as_resource_exhausted: true
",
    ));
    send(&mut svc, &[]).await;
    send(&mut svc, &[]).await;
    let r = send(&mut svc, &[]).await;
    assert_eq!(r.status(), 503);
    let r = send(&mut svc, &[("content-type", "application/grpc+proto")]).await;
    assert_eq!(r.headers()["grpc-status"], "8");
}

#[tokio::test]
async fn not_enforced_requests_pass_with_their_headers_and_are_counted() {
    let (rt, mut svc) = productpage_inbound(&filter(
        "          filter_enforced: {default_value: {numerator: 0}}
          request_headers_to_add_when_not_enforced: [{header: {key: x-not-enforced, value: 'yes'}}]
",
    ));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = send(&mut svc, &[]).await;
        assert_eq!(r.status(), 200);
        seen.push(body(r).await);
    }
    assert_eq!(seen, ["-", "-", "yes", "yes", "yes"]);
    let counters = rt.local_rate_limits().counters();
    assert_eq!(counters.len(), 1);
    assert_eq!(
        counters[0].1,
        CounterSnapshot {
            enabled: 5,
            ok: 2,
            rate_limited: 3,
            enforced: 0
        }
    );
}

#[tokio::test]
async fn a_disabled_filter_checks_nothing() {
    // No `filter_enabled`: Envoy's filter is off.
    let (rt, mut svc) = productpage_inbound(&filter("").replace(
        "          filter_enabled: {default_value: {numerator: 100}}\n",
        "",
    ));
    for _ in 0..4 {
        assert_eq!(send(&mut svc, &[]).await.status(), 200);
    }
    assert!(rt.local_rate_limits().is_empty(), "no bucket was made");
}

#[tokio::test]
async fn descriptors_from_route_rate_limits_limit_by_header() {
    let yaml = filter(
        "          filter_enforced: {default_value: {numerator: 100}}
          descriptors:
          - entries: [{key: user, value: jason}]
            token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_INBOUND
      routeConfiguration: {vhost: {name: 'inbound|http|9080', route: {action: ANY}}}
    patch:
      operation: MERGE
      value:
        route:
          rate_limits:
          - actions: [{request_headers: {header_name: end-user, descriptor_key: user}}]
",
    )
    .replace(
        "max_tokens: 2, tokens_per_fill: 2",
        "max_tokens: 100, tokens_per_fill: 100",
    );
    let (_rt, mut svc) = productpage_inbound(&yaml);
    // Jason has one token; the others share the default bucket.
    assert_eq!(send(&mut svc, &[("end-user", "jason")]).await.status(), 200);
    assert_eq!(send(&mut svc, &[("end-user", "jason")]).await.status(), 429);
    for _ in 0..5 {
        assert_eq!(send(&mut svc, &[("end-user", "mike")]).await.status(), 200);
        assert_eq!(send(&mut svc, &[]).await.status(), 200);
    }
}

#[tokio::test]
async fn a_policy_limits_unauthenticated_callers_together() {
    let (_rt, mut svc) = productpage_inbound(
        "apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: pp, namespace: default}
spec:
  identity: {requestsPerMinute: 3}
",
    );
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(send(&mut svc, &[]).await.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}
