//! What outlier detection costs a request: the whole outbound stack over a stub upstream
//! (three endpoints, round robin), without outlier detection, with it and nothing
//! ejected, and with one endpoint ejected (the pick reads the balancer over the two
//! others); and the detector's per-attempt bookkeeping alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Empty;
use mesh_core::outlier::{HostCounters, Outcome, OutlierSettings};
use mesh_tests::{mesh, service_with};
use mesh_tower::transport::pool::Outgoing;
use mesh_tower::{BoxError, ResBody};
use tower::ServiceExt;

/// An upstream that answers at once: 503 from the endpoint `failing` (`address:port`),
/// 200 from the others.
#[derive(Clone)]
struct Stub {
    failing: &'static str,
}

impl tower::Service<Outgoing> for Stub {
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outgoing) -> Self::Future {
        let mut resp = http::Response::new(ResBody::empty());
        if &**out.endpoint.id() == self.failing {
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        std::future::ready(Ok(resp))
    }
}

fn get() -> http::Request<Empty<Bytes>> {
    http::Request::get("http://reviews:9080/reviews/0")
        .body(Empty::<Bytes>::new())
        .unwrap()
}

fn pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let eps = [("v1", 9), ("v1", 10), ("v1", 11)];
    let lb = "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n";
    let od = "    outlierDetection: {consecutive5xxErrors: 1, interval: 1h, baseEjectionTime: 1h, maxEjectionPercent: 34}\n";
    let cases = [
        ("no_outlier_detection", lb.to_string(), ""),
        ("outlier_detection", format!("{lb}{od}"), ""),
        (
            "outlier_detection_one_ejected",
            format!("{lb}{od}"),
            "127.0.0.1:11",
        ),
    ];
    let mut g = c.benchmark_group("outbound_pick");
    for (name, policy, failing) in cases {
        let m = mesh(&service_with("reviews", "HTTP", &eps, &policy));
        let client = m.client_over(Stub { failing });
        // Until the failing endpoint is ejected (a 503, retried on another endpoint).
        rt.block_on(async {
            for _ in 0..6 {
                client.clone().oneshot(get()).await.unwrap();
            }
        });
        let ejected = m.runtime().clusters().json()["cluster_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outlier_detection"]["ejections_active"] == 1)
            .count();
        assert_eq!(ejected, usize::from(!failing.is_empty()), "{name}");
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let resp = client.clone().oneshot(get()).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp
            })
        });
    }
    g.finish();
}

/// Counting one attempt's outcome on its endpoint: what every attempt to a cluster with
/// outlier detection pays.
fn record(c: &mut Criterion) {
    let s = OutlierSettings::default();
    let h = HostCounters::default();
    let mut g = c.benchmark_group("outlier_record");
    g.bench_function("success", |b| {
        b.iter(|| black_box(h.record(&s, black_box(Outcome::Response(200)))))
    });
    g.bench_function("5xx", |b| {
        b.iter(|| {
            // Below the threshold: a failure, then the success that resets the count.
            black_box(h.record(&s, black_box(Outcome::Response(503))));
            black_box(h.record(&s, black_box(Outcome::Response(200))))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = pick, record
}
criterion_main!(benches);
