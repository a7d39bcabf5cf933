//! Global rate limits on a real Redis (Debian's `redis-server`, started by each test on a
//! free port): exact counts per fixed window, two limiters (two mesh instances) sharing
//! one Redis, shadow mode, the local over-limit cache answering without Redis, Redis
//! stopped and restarted under a live limiter, and Istio's task configuration.
//!
//! Windows are computed from a clock the test moves, so counts do not depend on when a
//! test runs; Redis and its key expiries are real.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_config::rls::RlsConfig;
use mesh_tower::ratelimit::global::{
    Descriptor, GlobalError, GlobalRateLimiter, RedisSettings, StatusCode, TimeSource, Verdict,
};
use support::redis::RedisServer;

/// A clock the test moves; starts at a whole day so every unit's window starts there.
#[derive(Debug)]
struct ManualClock(AtomicU64);

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(1_700_006_400)))
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl TimeSource for ManualClock {
    fn unix_now(&self) -> u64 {
        self.now()
    }
}

fn config(yaml: &str) -> RlsConfig {
    let parsed = RlsConfig::parse_str("config.yaml", yaml);
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    parsed.config.unwrap()
}

fn settings(redis: &RedisServer, clock: &Arc<ManualClock>) -> RedisSettings {
    let mut s = RedisSettings::new(redis.url());
    // Generous: the machine running the tests may be busy. Timeouts are tested with a
    // stopped Redis, where they must be short.
    s.timeout = Duration::from_secs(2);
    s.expiration_jitter_max = Duration::ZERO;
    s.time_source = clock.clone();
    s
}

async fn limiter(yaml: &str, settings: RedisSettings) -> GlobalRateLimiter {
    let l = GlobalRateLimiter::new(config(yaml), settings).unwrap();
    assert!(l.ready(Duration::from_secs(10)).await, "connected to Redis");
    l
}

/// Runs `n` checks of one descriptor; returns the verdicts' kinds ('o' ok, 'x' over, 'e').
async fn run(l: &GlobalRateLimiter, domain: &str, d: &[Descriptor], n: usize) -> String {
    let mut out = String::new();
    for _ in 0..n {
        out.push(match l.should_rate_limit(domain, d, 1).await {
            Verdict::Ok { .. } => 'o',
            Verdict::OverLimit { .. } => 'x',
            Verdict::Error(_) => 'e',
        });
    }
    out
}

const PER_MINUTE: &str = r#"
domain: a
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: burst
    rate_limit: {unit: second, requests_per_unit: 3}
"#;

#[tokio::test]
async fn exact_counts_per_fixed_window() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let l = limiter(PER_MINUTE, settings(&redis, &clock)).await;
    let alice = [Descriptor::new([("user", "alice")])];

    // 12 checks in one minute: the first 5 are admitted, with the remaining count going
    // down, and the reset at the end of the minute.
    let mut remaining = Vec::new();
    let mut kinds = String::new();
    for _ in 0..12 {
        let v = l.should_rate_limit("a", &alice, 1).await;
        let st = &v.statuses()[0];
        remaining.push(st.limit_remaining);
        assert_eq!(st.duration_until_reset, Some(Duration::from_secs(60)));
        assert_eq!(st.current_limit.as_ref().unwrap().requests_per_unit, 5);
        kinds.push(if v.is_ok() { 'o' } else { 'x' });
    }
    assert_eq!(kinds, "oooooxxxxxxx");
    assert_eq!(remaining, [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    // The service's key, counted in Redis, expiring with its window.
    let key = format!("a_user_alice_{}", clock.now());
    assert_eq!(redis.get(&key), Some(12));
    let ttl = redis.ttl(&key);
    assert!((55..=60).contains(&ttl), "ttl {ttl}");

    // Another user has a counter of its own.
    let bob = [Descriptor::new([("user", "bob")])];
    assert_eq!(run(&l, "a", &bob, 7).await, "oooooxx");

    // 59 s later, still the same window; one more second, a new window admits 5 again.
    clock.advance(59);
    assert_eq!(run(&l, "a", &alice, 1).await, "x");
    clock.advance(1);
    assert_eq!(run(&l, "a", &alice, 8).await, "oooooxxx");
    assert_eq!(redis.get(&format!("a_user_alice_{}", clock.now())), Some(8));

    // Per second: 3 per window, window after window.
    let burst = [Descriptor::new([("burst", "x")])];
    for _ in 0..3 {
        assert_eq!(run(&l, "a", &burst, 5).await, "oooxx");
        clock.advance(1);
    }

    // Several hits at once count as several requests.
    clock.advance(60);
    let v = l.should_rate_limit("a", &alice, 4).await;
    assert_eq!(v.statuses()[0].limit_remaining, 1);
    assert!(l.should_rate_limit("a", &alice, 2).await.is_over_limit());

    let s = l.stats();
    assert_eq!(s.checks, 12 + 7 + 1 + 8 + 15 + 2);
    assert_eq!(s.redis_errors, 0);
}

#[tokio::test]
async fn two_instances_share_one_redis() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let yaml = "domain: shared\ndescriptors:\n  - {key: PATH, rate_limit: {unit: minute, requests_per_unit: 10}}\n";
    // Two limiters with their own connections: two mesh processes.
    let one = limiter(yaml, settings(&redis, &clock)).await;
    let two = limiter(yaml, settings(&redis, &clock)).await;
    let d = [Descriptor::new([("PATH", "/productpage")])];
    let (a, b) = tokio::join!(
        async {
            let mut ok = 0;
            for _ in 0..20 {
                ok += usize::from(one.should_rate_limit("shared", &d, 1).await.is_ok());
                tokio::task::yield_now().await;
            }
            ok
        },
        async {
            let mut ok = 0;
            for _ in 0..20 {
                ok += usize::from(two.should_rate_limit("shared", &d, 1).await.is_ok());
                tokio::task::yield_now().await;
            }
            ok
        }
    );
    assert_eq!(a + b, 10, "admitted: {a} + {b}");
    assert!(
        a > 0 && b > 0,
        "both instances were admitted some: {a} + {b}"
    );
    assert_eq!(
        redis.get(&format!("shared_PATH_/productpage_{}", clock.now())),
        Some(40)
    );
    // Both see the limit reached.
    assert_eq!(run(&one, "shared", &d, 1).await, "x");
    assert_eq!(run(&two, "shared", &d, 1).await, "x");
    // Concurrent checks from many tasks: still exactly the limit.
    clock.advance(60);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let l = if i % 2 == 0 { one.clone() } else { two.clone() };
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            l.should_rate_limit("shared", &d, 1).await.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn shadow_mode_admits_and_counts() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let yaml = r#"
domain: shadow
descriptors:
  - key: user
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 3}
"#;
    let l = limiter(yaml, settings(&redis, &clock)).await;
    let d = [Descriptor::new([("user", "x")])];
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let v = l.should_rate_limit("shadow", &d, 1).await;
        assert!(v.is_ok(), "{v:?}");
        assert_eq!(v.statuses()[0].code, StatusCode::Ok);
        remaining.push(v.statuses()[0].limit_remaining);
    }
    assert_eq!(remaining, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let s = l.stats();
    assert_eq!(
        (
            s.total_hits,
            s.within_limit,
            s.over_limit,
            s.shadow_over_limit
        ),
        (10, 3, 7, 7)
    );
    assert_eq!(
        redis.get(&format!("shadow_user_x_{}", clock.now())),
        Some(10)
    );
}

#[tokio::test]
async fn the_over_limit_cache_answers_without_redis() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let yaml = "domain: c\ndescriptors:\n  - {key: user, rate_limit: {unit: minute, requests_per_unit: 3}}\n";
    let mut s = settings(&redis, &clock);
    s.local_cache_size_bytes = 1 << 20;
    let cached = limiter(yaml, s).await;
    let d = [Descriptor::new([("user", "x")])];
    assert_eq!(run(&cached, "c", &d, 4).await, "ooox");
    let key = format!("c_user_x_{}", clock.now());
    assert_eq!(redis.get(&key), Some(4));
    let incrby = redis.calls("incrby");
    assert_eq!(incrby, 4);

    // Over the limit: answered locally until the window ends.
    assert_eq!(run(&cached, "c", &d, 20).await, "x".repeat(20));
    assert_eq!(redis.get(&key), Some(4), "the counter did not move");
    assert_eq!(redis.calls("incrby"), incrby, "Redis was not asked");
    let st = cached.stats();
    assert_eq!((st.cache_hits, st.over_limit, st.checks), (20, 21, 24));

    // A limiter without the cache asks Redis every time.
    let uncached = limiter(yaml, settings(&redis, &clock)).await;
    assert_eq!(run(&uncached, "c", &d, 5).await, "xxxxx");
    assert_eq!(redis.get(&key), Some(9));
    assert_eq!(uncached.stats().cache_hits, 0);

    // The next window is counted in Redis again.
    clock.advance(60);
    assert_eq!(run(&cached, "c", &d, 4).await, "ooox");
    assert_eq!(redis.get(&format!("c_user_x_{}", clock.now())), Some(4));
    assert_eq!(redis.calls("incrby"), incrby + 5 + 4);
}

#[tokio::test]
async fn redis_stopped_and_restarted() {
    let mut redis = RedisServer::start();
    let clock = ManualClock::new();
    let yaml = "domain: r\ndescriptors:\n  - {key: user, rate_limit: {unit: minute, requests_per_unit: 5}}\n";
    let mut s = settings(&redis, &clock);
    let timeout = Duration::from_millis(300);
    s.timeout = timeout;
    s.reconnect_max_backoff = Duration::from_millis(500);
    let l = limiter(yaml, s).await;
    let d = [Descriptor::new([("user", "x")])];
    assert_eq!(run(&l, "r", &d, 2).await, "oo");

    redis.stop();
    // Every check is an error, each within the timeout (the first may find the dead
    // connection, the others find none and answer at once or wait for one attempt).
    for i in 0..10 {
        let start = Instant::now();
        let v = l.should_rate_limit("r", &d, 1).await;
        let took = start.elapsed();
        assert!(
            matches!(
                v,
                Verdict::Error(
                    GlobalError::Redis(_) | GlobalError::Unavailable | GlobalError::Timeout(_)
                )
            ),
            "check {i}: {v:?}"
        );
        assert!(
            took < timeout + Duration::from_millis(500),
            "check {i} took {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!l.is_connected());
    assert_eq!(l.stats().redis_errors, 10);

    // Redis back on the same port (empty: it kept nothing): the same limiter reconnects by
    // itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut errors_while_reconnecting = 0;
    loop {
        let v = l
            .should_rate_limit("r", &[Descriptor::new([("user", "probe")])], 1)
            .await;
        if !v.is_error() {
            break;
        }
        errors_while_reconnecting += 1;
        assert!(
            Instant::now() < deadline,
            "the limiter did not reconnect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(l.is_connected());
    let st = l.stats();
    assert_eq!(st.reconnects, 1);
    assert_eq!(st.redis_errors, 10 + errors_while_reconnecting);

    // Limits resume, exactly: the restarted Redis lost the count of this window...
    assert_eq!(run(&l, "r", &d, 7).await, "oooooxx");
    // ...and the next window counts from zero.
    clock.advance(60);
    assert_eq!(run(&l, "r", &d, 7).await, "oooooxx");
}

#[tokio::test]
async fn slow_redis_times_out_then_recovers() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let yaml = "domain: s\ndescriptors:\n  - {key: user, rate_limit: {unit: minute, requests_per_unit: 5}}\n";
    let mut s = settings(&redis, &clock);
    let timeout = Duration::from_millis(200);
    s.timeout = timeout;
    s.connect_timeout = Duration::from_millis(300);
    s.reconnect_max_backoff = Duration::from_millis(300);
    let l = limiter(yaml, s).await;
    let d = [Descriptor::new([("user", "x")])];
    assert_eq!(run(&l, "s", &d, 1).await, "o");

    // A paused Redis accepts nothing and answers nothing: every check ends at the timeout.
    redis.pause();
    let mut timeouts = 0;
    for i in 0..6 {
        let start = Instant::now();
        let v = l.should_rate_limit("s", &d, 1).await;
        let took = start.elapsed();
        assert!(v.is_error(), "check {i}: {v:?}");
        timeouts +=
            usize::from(matches!(v, Verdict::Error(GlobalError::Timeout(t)) if t == timeout));
        assert!(
            took < timeout + Duration::from_millis(500),
            "check {i} took {took:?}"
        );
    }
    // The first three time out on the connection; then it is replaced, and the checks
    // wait for (or skip) the attempts to reconnect.
    assert!(timeouts >= 3, "{timeouts} timeouts");
    assert_eq!(l.stats().redis_errors, 6);

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while l
        .should_rate_limit("s", &[Descriptor::new([("user", "probe")])], 1)
        .await
        .is_error()
    {
        assert!(Instant::now() < deadline, "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l.stats().reconnects, 1);
    // Checks sent before the pause and answered after it may have been counted: a new
    // window counts exactly.
    clock.advance(60);
    assert_eq!(run(&l, "s", &d, 7).await, "oooooxx");
}

/// Istio's "Enabling Rate Limits using Envoy" task: the ConfigMap of the rate limit
/// service, unchanged.

#[tokio::test]
async fn istio_task_config_and_nested_descriptors() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    // The task's ConfigMap (its `api` limit is not asked here).
    let parsed = RlsConfig::parse_str("ratelimit-config.yaml", &fixture("ratelimit-config.yaml"));
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let l = GlobalRateLimiter::new(parsed.config.unwrap(), settings(&redis, &clock)).unwrap();
    assert!(l.ready(Duration::from_secs(10)).await);

    let path = |p: &str| [Descriptor::new([("PATH", p)])];
    // /productpage: 1 per minute.
    assert_eq!(run(&l, "ratelimit", &path("/productpage"), 4).await, "oxxx");
    // Any other path: 100 per minute each.
    let kinds = run(&l, "ratelimit", &path("/api/v1/products"), 103).await;
    assert_eq!(kinds, format!("{}xxx", "o".repeat(100)));
    assert_eq!(
        run(&l, "ratelimit", &path("/static/logo.png"), 2).await,
        "oo"
    );
    // Another domain, or no matching descriptor: no limit, and Redis is not asked.
    let incrby = redis.calls("incrby");
    assert_eq!(run(&l, "other", &path("/productpage"), 3).await, "ooo");
    assert_eq!(
        run(&l, "ratelimit", &[Descriptor::new([("HOST", "x")])], 3).await,
        "ooo"
    );
    assert_eq!(redis.calls("incrby"), incrby);
    assert_eq!(
        redis.keys("ratelimit_*"),
        [
            format!("ratelimit_PATH_/api/v1/products_{}", clock.now()),
            format!("ratelimit_PATH_/productpage_{}", clock.now()),
            format!("ratelimit_PATH_/static/logo.png_{}", clock.now()),
        ]
    );
    clock.advance(60);
    assert_eq!(run(&l, "ratelimit", &path("/productpage"), 2).await, "ox");

    // Nested descriptors, defaults, replaces and unlimited (the service's README examples
    // 2, 5 and 7), in one request with several descriptors.
    l.set_config(config(
        r#"
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 8}
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 2, unit: hour}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces: [{name: specific_limit}]
          requests_per_unit: 4
          unit: hour
  - key: ldap
    rate_limit: {unlimited: true}
"#,
    ))
    .unwrap();
    assert!(!l.has_domain("ratelimit"));
    let marketing = [
        Descriptor::new([("message_type", "marketing"), ("to_number", "2061111111")]),
        Descriptor::new([("to_number", "2061111111")]),
    ];
    // 5 marketing messages a day to a number; the number's own limit counts them too.
    assert_eq!(run(&l, "messaging", &marketing, 7).await, "oooooxx");
    let other = [Descriptor::new([("to_number", "2061111111")])];
    // The number's own limit: 7 counted already, one more is admitted.
    assert_eq!(run(&l, "messaging", &other, 2).await, "ox");
    let fresh = [Descriptor::new([("to_number", "2062222222")])];
    assert_eq!(run(&l, "messaging", &fresh, 9).await, "oooooooox");
    // A deeper request than the configuration has no limit.
    let deep = [Descriptor::new([("to_number", "1"), ("extra", "x")])];
    assert_eq!(run(&l, "messaging", &deep, 10).await, "o".repeat(10));
    // (key_1, user) alone: 2 per hour; with (key_2, user) it is replaced by 4 per hour,
    // and its own counter does not move.
    let one = Descriptor::new([("key_1", "value_1"), ("user", "bkthomps")]);
    let two = Descriptor::new([("key_2", "value_2"), ("user", "bkthomps")]);
    assert_eq!(
        run(&l, "messaging", std::slice::from_ref(&one), 1).await,
        "o"
    );
    assert_eq!(
        run(&l, "messaging", &[one.clone(), two.clone()], 5).await,
        "oooox"
    );
    assert_eq!(
        run(&l, "messaging", std::slice::from_ref(&one), 2).await,
        "ox"
    );
    // Unlimited: admitted without counting.
    let ldap = [Descriptor::new([("ldap", "cn=admin")])];
    let v = l.should_rate_limit("messaging", &ldap, 1).await;
    assert_eq!(v.statuses()[0].limit_remaining, u32::MAX);
    assert!(redis.keys("messaging_ldap*").is_empty());
}

// ---------------------------------------------------------------------------------------
// Istio's global rate limit task on Bookinfo: the filter at the ingress gateway, through a
// real Redis shared by two mesh instances (two Bookinfo processes' worth of runtimes, each
// with its own ingress gateway and its own limiter).

/// A file of `tests/fixtures/ratelimit` (Istio's task, see its NOTICE).
fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/ratelimit")
            .join(name),
    )
    .unwrap()
}

/// The task's advanced-case EnvoyFilter for this Bookinfo: Istio's current Bookinfo
/// gateway listens on 8080, the copy the example runs on port 80, so the virtual host is
/// `*:80`.
fn api_filter() -> String {
    fixture("global-ratelimit-api.yaml").replace("\"*:8080\"", "\"*:80\"")
}

/// A Bookinfo whose runtime asks a limiter of `limits` (the rate-limit service's
/// configuration) in `redis`, with `filters` applied (file name, YAML).
async fn bookinfo_with_limits(
    redis: &RedisServer,
    clock: &Arc<ManualClock>,
    limits: &str,
    filters: &[(&str, String)],
) -> (support::Demo, GlobalRateLimiter) {
    let demo = support::Demo::start().await;
    let parsed = RlsConfig::parse_str("ratelimit-config.yaml", limits);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let l = GlobalRateLimiter::new(parsed.config.unwrap(), settings(redis, clock)).unwrap();
    assert!(l.ready(Duration::from_secs(10)).await, "connected to Redis");
    demo.running()
        .live
        .runtime()
        .set_rate_limit_service(Some(l.clone()));
    for (name, yaml) in filters {
        demo.apply_settled(name, yaml).await;
    }
    (demo, l)
}

/// A Bookinfo with the task's ConfigMap and its gateway EnvoyFilter (after `edit`).
async fn bookinfo_with_limiter(
    redis: &RedisServer,
    clock: &Arc<ManualClock>,
    edit: impl Fn(String) -> String,
) -> (support::Demo, GlobalRateLimiter) {
    bookinfo_with_limits(
        redis,
        clock,
        &fixture("ratelimit-config.yaml"),
        &[(
            "global-ratelimit.yaml",
            edit(fixture("global-ratelimit.yaml")),
        )],
    )
    .await
}

/// GETs `path` `n` times, alternating between the two gateways; the statuses.
async fn alternate(a: &support::Demo, b: &support::Demo, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let demo = if i % 2 == 0 { a } else { b };
        let answer = demo.ingress(path).await;
        if answer.status == 429 {
            // The global filter's refusal, as Envoy sends it.
            assert_eq!(answer.headers["x-envoy-ratelimited"], "true", "{answer:?}");
            assert_eq!(answer.body, "", "{answer:?}");
        }
        out.push(answer.status);
    }
    out
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_task_global_limit_shared_by_two_bookinfo_gateways() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, la) = bookinfo_with_limiter(&redis, &clock, |y| y).await;
    let (b, lb) = bookinfo_with_limiter(&redis, &clock, |y| y).await;

    // `/productpage`: 1 request per minute, whichever gateway it goes through.
    let page = alternate(&a, &b, "/productpage", 6).await;
    assert_eq!(page, [200, 429, 429, 429, 429, 429]);
    // Any other path: 100 per minute each (the `PATH` default).
    let api = alternate(&a, &b, "/api/v1/products", 4).await;
    assert_eq!(api, [200; 4]);
    // The counters are shared: one key per path and window in the one Redis.
    let window = clock.now();
    assert_eq!(
        redis.get(&format!("ratelimit_PATH_/api/v1/products_{window}")),
        Some(4)
    );
    assert!(
        redis
            .get(&format!("ratelimit_PATH_/productpage_{window}"))
            .is_some_and(|n| n >= 2),
        "both gateways counted /productpage"
    );
    // A new window admits one more.
    clock.advance(60);
    assert_eq!(admitted(&alternate(&a, &b, "/productpage", 4).await), 1);

    // The task's advanced case: `/api/v1/products/<id>` on the route `api`, 2 per
    // minute. The route's own `rate_limits` replace the virtual host's: a path the
    // route's regex does not match makes no descriptor, and nothing limits it.
    for demo in [&a, &b] {
        demo.apply_settled(
            "bookinfo-api-route.yaml",
            &fixture("bookinfo-api-route.yaml"),
        )
        .await;
        demo.apply_settled("global-ratelimit-api.yaml", &api_filter())
            .await;
    }
    clock.advance(60);
    let products = alternate(&a, &b, "/api/v1/products/1", 5).await;
    assert_eq!(products, [200, 200, 429, 429, 429]);
    // Another id is the same descriptor (`PATH=api`): over the limit too.
    assert_eq!(alternate(&a, &b, "/api/v1/products/2", 2).await, [429, 429]);
    assert_eq!(alternate(&a, &b, "/api/v1/products", 5).await, [200; 5]);
    assert_eq!(admitted(&alternate(&a, &b, "/productpage", 3).await), 1);
    clock.advance(60);
    assert_eq!(
        alternate(&a, &b, "/api/v1/products/3", 3).await,
        [200, 200, 429]
    );
    // Each limiter asked Redis for its own requests; none failed.
    for l in [&la, &lb] {
        let s = l.stats();
        assert!(s.checks > 0 && s.over_limit > 0, "{s:?}");
        assert_eq!(s.redis_errors, 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_bookinfo_fails_open_or_closed_as_configured() {
    let mut redis = RedisServer::start();
    let clock = ManualClock::new();
    // Gateway A fails open (Envoy's default) and sends the x-ratelimit headers; gateway
    // B keeps the task's `failure_mode_deny: true`.
    let (a, la) = bookinfo_with_limiter(&redis, &clock, |y| {
        y.replace(
            "failure_mode_deny: true",
            "failure_mode_deny: false\n            enable_x_ratelimit_headers: DRAFT_VERSION_03",
        )
    })
    .await;
    let (b, lb) = bookinfo_with_limiter(&redis, &clock, |y| y).await;

    let first = a.ingress("/api/v1/products").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-limit"], "100, 100;w=60");
    assert_eq!(first.headers["x-ratelimit-remaining"], "99");
    assert_eq!(first.headers["x-ratelimit-reset"], "60");
    assert_eq!(admitted(&alternate(&a, &b, "/productpage", 4).await), 1);
    let limited = a.ingress("/productpage").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");

    redis.stop();
    // A lets every request through; B refuses them with its `status_on_error`.
    for _ in 0..4 {
        assert_eq!(a.ingress("/productpage").await.status, 200);
        let refused = b.ingress("/productpage").await;
        assert_eq!(refused.status, 500, "{refused:?}");
        assert!(refused.headers.get("x-envoy-ratelimited").is_none());
    }
    assert!(la.stats().redis_errors >= 4, "{:?}", la.stats());
    assert!(lb.stats().redis_errors >= 4, "{:?}", lb.stats());

    // Redis back (empty: the counts of the window are gone): the limits resume once the
    // limiters have reconnected.
    redis.restart();
    for l in [&la, &lb] {
        assert!(l.ready(Duration::from_secs(10)).await, "reconnected");
        assert!(l.stats().reconnects >= 1, "{:?}", l.stats());
    }
    clock.advance(60);
    assert_eq!(
        alternate(&a, &b, "/productpage", 4).await,
        [200, 429, 429, 429]
    );
}

/// A global limit on a workload (context SIDECAR_INBOUND): the filter on details, its
/// inbound virtual host's `generic_key` action, 2 requests per minute. It runs after
/// authorization, as Istio's task places the filter before the router: a request an
/// AuthorizationPolicy denies is answered `403` and does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_global_limit_counts_what_authorization_admits() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let filter = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: details-ratelimit, namespace: default}
spec:
  workloadSelector: {labels: {app: details}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: details-limits
          timeout: 2s
          enable_x_ratelimit_headers: DRAFT_VERSION_03
          rate_limit_service:
            grpc_service:
              envoy_grpc: {cluster_name: outbound|8081||ratelimit.default.svc.cluster.local}
            transport_api_version: V3
  - applyTo: VIRTUAL_HOST
    match:
      context: SIDECAR_INBOUND
      routeConfiguration:
        vhost: {name: "inbound|http|9080"}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - generic_key: {descriptor_value: details}
"#;
    let deny = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-deny-secret, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: DENY
  rules:
  - to:
    - operation: {paths: [/details/secret]}
";
    let limits = "
domain: details-limits
descriptors:
  - key: generic_key
    value: details
    rate_limit: {unit: minute, requests_per_unit: 2}
";
    let (demo, limiter) = bookinfo_with_limits(
        &redis,
        &clock,
        limits,
        &[
            ("details-ratelimit.yaml", filter.to_string()),
            ("details-deny.yaml", deny.to_string()),
        ],
    )
    .await;
    let ratings = support::workload(&demo, "ratings-v1");
    let mut statuses = Vec::new();
    for path in [
        "/details/0",
        "/details/secret",
        "/details/secret",
        "/details/1",
    ] {
        statuses.push(support::get(&ratings, &format!("http://details:9080{path}")).await);
    }
    assert_eq!(
        statuses.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 403, 403, 200]
    );
    assert_eq!(statuses[0].headers["x-ratelimit-limit"], "2, 2;w=60");
    assert_eq!(statuses[0].headers["x-ratelimit-remaining"], "1");
    assert_eq!(statuses[3].headers["x-ratelimit-remaining"], "0");
    let refused = support::get(&ratings, "http://details:9080/details/2").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.headers["x-envoy-ratelimited"], "true");
    assert_eq!(
        redis.get(&format!(
            "details-limits_generic_key_details_{}",
            clock.now()
        )),
        Some(3)
    );
    assert_eq!(limiter.stats().checks, 3);
    // The next window.
    clock.advance(60);
    assert_eq!(
        support::get(&ratings, "http://details:9080/details/0")
            .await
            .status,
        200
    );
}

/// The answers of a workload's global filter, in process (`mesh.inbound()` around an
/// application): Envoy's over-limit answer (its status, `x-envoy-ratelimited`, the
/// filter's `response_headers_to_add`, the `x-ratelimit-*` headers, the `RL` flag; a gRPC
/// caller's `grpc-status`), and without a limiter the failure mode: let through with no
/// flag, or under `failure_mode_deny` the filter's `status_on_error` flagged `RLSE`.
#[tokio::test]
async fn the_filter_answers_as_envoy_does() {
    use http_body_util::BodyExt;
    use mesh_tower::{MeshRuntime, ResponseFlags, Workload};
    use tower::{Layer, ServiceExt};

    let config = |deny: bool| {
        format!(
            r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: details-ratelimit, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: details}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: answers
          failure_mode_deny: {deny}
          status_on_error: {{code: ServiceUnavailable}}
          rate_limited_status: {{code: TooManyRequests}}
          enable_x_ratelimit_headers: DRAFT_VERSION_03
          response_headers_to_add:
          - header: {{key: x-limited-by, value: mesh}}
          rate_limits:
          - actions:
            - generic_key: {{descriptor_value: details}}
          rate_limit_service:
            grpc_service:
              envoy_grpc: {{cluster_name: rls}}
            transport_api_version: V3
"#
        )
    };
    let call = |runtime: &MeshRuntime, grpc: bool| {
        let mesh =
            runtime.workload(Workload::new("details", "default").labels([("app", "details")]));
        let app = tower::service_fn(
            |_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            },
        );
        let svc = mesh.inbound().layer(app);
        async move {
            let mut req = http::Request::post("/details/0").header("host", "details");
            if grpc {
                req = req.header("content-type", "application/grpc");
            }
            let resp = svc
                .oneshot(
                    req.body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let flags = ResponseFlags::of(&resp).to_string();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts.status.as_u16(), parts.headers, flags, body)
        }
    };

    // No limiter: fail open, or closed with status_on_error and RLSE.
    let open = MeshRuntime::from_snapshot(&mesh_tests::snapshot(&config(false)));
    let (status, _, flags, body) = call(&open, false).await;
    assert_eq!((status, flags.as_str(), &body[..]), (200, "-", &b"ok"[..]));
    let closed = MeshRuntime::from_snapshot(&mesh_tests::snapshot(&config(true)));
    let (status, headers, flags, body) = call(&closed, false).await;
    assert_eq!((status, flags.as_str(), body.len()), (503, "RLSE", 0));
    assert!(headers.get("x-envoy-ratelimited").is_none());
    assert!(
        headers.get("x-limited-by").is_none(),
        "only on over-limit answers"
    );

    // With a limiter: 1 per minute.
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let l = limiter(
        "domain: answers\ndescriptors:\n  - key: generic_key\n    value: details\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
        settings(&redis, &clock),
    )
    .await;
    closed.set_rate_limit_service(Some(l));
    let (status, headers, flags, _) = call(&closed, false).await;
    assert_eq!((status, flags.as_str()), (200, "-"));
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let (status, headers, flags, body) = call(&closed, false).await;
    assert_eq!((status, flags.as_str(), body.len()), (429, "RL", 0));
    assert_eq!(headers["x-envoy-ratelimited"], "true");
    assert_eq!(headers["x-limited-by"], "mesh");
    assert_eq!(headers["x-ratelimit-limit"], "1, 1;w=60");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset"], "60");
    // A gRPC caller: HTTP 200, grpc-status UNAVAILABLE (14), as Envoy maps 429.
    let (status, headers, flags, _) = call(&closed, true).await;
    assert_eq!((status, flags.as_str()), (200, "RL"));
    assert_eq!(headers["grpc-status"], "14");
}
