//! Local rate limiting: one token bucket check (the clock passed in, and read from the
//! mesh's monotonic clock; a token taken, alone and with another thread taking tokens
//! from the same bucket, and refused), and the inbound layer around an
//! application that answers at once, without a limit and with Istio's task limit on the
//! workload (a bucket large enough never to refuse): the difference is one local limit
//! check as a request pays it. The layer without a limit is also measured with tracing on
//! (a span exporter, Istio's default 1 % sampling): the server side's trace context.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use mesh_config::ConfigSet;
use mesh_config::model::envoy_ratelimit::TokenBucket as Spec;
use mesh_tower::ratelimit::local::{TokenBucket, now_nanos};
use mesh_tower::{MeshRuntime, Workload};
use tower::{Layer, Service};

fn bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_ratelimit_bucket");
    // Plenty of tokens: every check takes one (a load and a compare-and-swap).
    let big = Spec {
        max_tokens: u32::MAX,
        tokens_per_fill: u32::MAX,
        fill_interval: Duration::from_secs(1),
    };
    let b = TokenBucket::new(&big);
    let mut t = 0u64;
    g.bench_function("acquire_clock_passed", |bench| {
        bench.iter(|| {
            t += 1;
            black_box(b.acquire(black_box(t)))
        })
    });
    let b = TokenBucket::new(&big);
    g.bench_function("acquire_monotonic_clock", |bench| {
        bench.iter(|| black_box(b.acquire(now_nanos())))
    });
    // Contended: another thread takes tokens from the same bucket meanwhile, as two
    // workers serving one workload do (the compare-and-swap's cache line moves between
    // cores; a failed exchange is retried).
    let shared = std::sync::Arc::new(TokenBucket::new(&big));
    g.bench_function("acquire_monotonic_clock_contended", |bench| {
        bench.iter_custom(|iters| {
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let other = {
                let (b, stop) = (shared.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        black_box(b.acquire(now_nanos()));
                    }
                })
            };
            let start = Instant::now();
            for _ in 0..iters {
                black_box(shared.acquire(now_nanos()));
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            other.join().unwrap();
            took
        })
    });
    // An empty bucket: a load, no store.
    let empty = TokenBucket::new(&Spec {
        max_tokens: 1,
        tokens_per_fill: 1,
        fill_interval: Duration::from_secs(3600),
    });
    empty.acquire(now_nanos());
    g.bench_function("refused_monotonic_clock", |bench| {
        bench.iter(|| black_box(empty.acquire(now_nanos())))
    });
    g.finish();
}

/// The task's EnvoyFilter on `app: productpage`, with a bucket that never runs out.
const LIMIT: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: filter-local-ratelimit-svc, namespace: istio-system}
spec:
  workloadSelector: {labels: {app: productpage}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 4000000000, tokens_per_fill: 4000000000, fill_interval: 1s}
            filter_enabled: {runtime_key: local_rate_limit_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
            filter_enforced: {runtime_key: local_rate_limit_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
            response_headers_to_add: [{append: false, header: {key: x-local-rate-limit, value: 'true'}}]
"#;

/// The inbound layer of productpage under configuration `yaml`, around an application
/// that answers at once.
fn inbound(
    yaml: &str,
    traced: bool,
) -> impl Service<
    Request<()>,
    Response = Response<impl Sized>,
    Error = std::convert::Infallible,
    Future = impl Future,
> {
    let mut set = ConfigSet::new();
    set.add_str("bench.yaml", yaml);
    let snapshot = set.check().snapshot.expect("valid bench configuration");
    let runtime = MeshRuntime::from_snapshot(&snapshot);
    if traced {
        runtime.set_span_exporter(Some(exporter()));
    }
    let mesh = runtime.workload(
        Workload::new("productpage-v1", "default")
            .labels([("app", "productpage"), ("version", "v1")])
            .service_account("bookinfo-productpage"),
    );
    mesh.inbound().layer(tower::service_fn(|_req: Request<()>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
            String::new(),
        )))
    }))
}

/// A span exporter, so that Istio's default 1 % sampling applies (the context read and
/// written on every request, a span for one in a hundred). Its runtime is never driven:
/// the spans wait in its bounded queue, then are dropped and counted, off the request path.
fn exporter() -> mesh_tower::telemetry::otlp::SpanExporter {
    use mesh_tower::telemetry::otlp::{BatchConfig, OtlpConfig, Protocol, SpanExporter};
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    let _entered = rt.enter();
    let config = OtlpConfig::new("http://127.0.0.1:9/v1/traces", Protocol::HttpProtobuf).unwrap();
    SpanExporter::start(config, BatchConfig::default()).unwrap()
}

/// Calls `svc` once, polling its future to completion without a runtime.
fn call<S: Service<Request<()>>>(svc: &mut S) -> S::Response {
    let mut cx = Context::from_waker(Waker::noop());
    let fut = pin!(svc.call(Request::get("/productpage").body(()).unwrap()));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(r)) => r,
        _ => panic!("the inbound layer answers at once without JWT rules or CUSTOM policies"),
    }
}

fn layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_ratelimit_inbound");
    let plain = "apiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec: {}\n";
    let mut none = inbound(plain, false);
    g.bench_function("no_limit", |b| b.iter(|| black_box(call(&mut none))));
    // The same with tracing on: what the server side's trace context adds.
    let mut traced = inbound(plain, true);
    g.bench_function("no_limit_traced", |b| {
        b.iter(|| black_box(call(&mut traced)))
    });
    let mut limited = inbound(LIMIT, false);
    g.bench_function("task_limit", |b| b.iter(|| black_box(call(&mut limited))));
    g.finish();
}

criterion_group!(benches, bucket, layer);
criterion_main!(benches);
