//! The cost of Istio's standard metrics per request: recording one request in the
//! registry (an existing series: a sharded map lookup by precomputed digests, then
//! relaxed atomic additions), alone and while another thread records the same series,
//! and writing the Prometheus text of a Bookinfo-sized registry; and what tracing adds to
//! a request that is not sampled.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_config::model::Labels as WorkloadLabels;
use mesh_core::telemetry::{MetricProfile, PeerLabels, ServiceLabels};
use mesh_tower::ResponseFlags;
use mesh_tower::telemetry::{Labels, Metrics, Reporter, Sample, Security};

fn peer(name: &str, app: &str, version: &str) -> Arc<PeerLabels> {
    let labels: WorkloadLabels = [("app", app), ("version", version)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(PeerLabels::new(
        Some(name),
        "default",
        &labels,
        &format!("spiffe://cluster.local/ns/default/sa/bookinfo-{app}"),
        "Kubernetes",
    ))
}

fn record(c: &mut Criterion) {
    let source = peer("productpage-v1", "productpage", "v1");
    let destination = peer("reviews-v2", "reviews", "v2");
    let service = Arc::new(ServiceLabels::new(
        "reviews.default.svc.cluster.local",
        "default",
    ));
    let profile = Arc::new(MetricProfile::standard());
    let labels = Labels {
        profile: &profile,
        reporter: Reporter::Source,
        source: &source,
        source_principal: true,
        destination: &destination,
        destination_principal: true,
        service: &service,
        grpc: false,
        code: 200,
        grpc_status: None,
        flags: ResponseFlags::NONE,
        security: Security::Unknown,
    };
    let sample = Sample {
        duration: Duration::from_micros(1840),
        request_bytes: 212,
        response_bytes: 1_530,
    };
    let metrics = Arc::new(Metrics::new());
    metrics.record(&labels, sample);
    let mut g = c.benchmark_group("metrics");
    g.bench_function("record_existing_series", |b| {
        b.iter(|| metrics.record(black_box(&labels), black_box(sample)))
    });
    // Contended: another thread records the same series meanwhile, as two workers
    // serving one workload's calls to one endpoint do.
    g.bench_function("record_existing_series_contended", |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let other = {
                let (m, stop) = (metrics.clone(), stop.clone());
                let (source, destination, service) =
                    (source.clone(), destination.clone(), service.clone());
                std::thread::spawn(move || {
                    let labels = Labels {
                        source: &source,
                        destination: &destination,
                        service: &service,
                        ..labels_like()
                    };
                    while !stop.load(Ordering::Relaxed) {
                        m.record(&labels, sample);
                    }
                })
            };
            let start = Instant::now();
            for _ in 0..iters {
                metrics.record(black_box(&labels), black_box(sample));
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            other.join().unwrap();
            took
        })
    });
    // A Bookinfo-sized registry: 40 series.
    let many = Metrics::new();
    let peers: Vec<Arc<PeerLabels>> = (0..10)
        .map(|i| peer(&format!("w{i}"), &format!("app{i}"), "v1"))
        .collect();
    for (i, p) in peers.iter().enumerate() {
        for code in [200u16, 404, 500, 503] {
            let l = Labels {
                destination: p,
                code,
                source_principal: i % 2 == 0,
                ..labels
            };
            many.record(&l, sample);
        }
    }
    g.bench_function("prometheus_text_40_series", |b| {
        b.iter(|| black_box(many.prometheus_text()))
    });
    g.finish();
}

/// The fields of the benchmark's labels that are not borrowed.
fn labels_like() -> Labels<'static> {
    type Parts = (Arc<PeerLabels>, Arc<ServiceLabels>, Arc<MetricProfile>);
    static SOURCE: std::sync::OnceLock<Parts> = std::sync::OnceLock::new();
    let (p, s, profile) = SOURCE.get_or_init(|| {
        (
            Arc::new(PeerLabels::unknown()),
            Arc::new(ServiceLabels::unknown()),
            Arc::new(MetricProfile::standard()),
        )
    });
    Labels {
        profile,
        reporter: Reporter::Source,
        source: p,
        source_principal: true,
        destination: p,
        destination_principal: true,
        service: s,
        grpc: false,
        code: 200,
        grpc_status: None,
        flags: ResponseFlags::NONE,
        security: Security::Unknown,
    }
}

/// What tracing adds to a request that is not sampled (Istio's default 1 % leaves 99 %
/// so): read the incoming context (none), decide from the `x-request-id`, start the span
/// context, write `traceparent` (and remove stale B3 headers) on a request's typical
/// headers; and the same for a request continuing a sampled W3C context.
fn trace_context(c: &mut Criterion) {
    use http::{HeaderMap, HeaderValue};
    use mesh_core::trace::{self, Sampler, SpanContext, TraceHeaders};
    let sampler = Sampler::default();
    let base = {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("reviews:9080"));
        h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x-request-id", trace::random_request_id());
        h
    };
    let mut continued = base.clone();
    continued.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    for (name, headers) in [("new trace", base), ("continued", continued)] {
        c.bench_function(&format!("trace context: {name}"), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| {
                    // What each side does per request: one scan of the headers, the
                    // decision, the span context, the context written.
                    let found = TraceHeaders::scan(h);
                    let incoming = found.extract();
                    let decision = sampler.decide(&found.sampling_input(incoming.as_ref()));
                    let carried = found.carried();
                    let (span, parent) = trace::with_thread_ids(|ids| {
                        SpanContext::start(incoming.as_ref(), &decision, ids)
                    });
                    trace::inject_over(&span, parent, false, carried, h);
                    black_box(span.sampled)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, record, trace_context);
criterion_main!(benches);
