//! A real Prometheus (Debian's `prometheus`) scrapes a running Bookinfo's
//! `/stats/prometheus`, and the queries of Istio's "Querying Metrics from Prometheus" task
//! return what the test's traffic implies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::Demo;
use support::prom::{self, Sample};
use support::prometheus::Prometheus;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Requests the product page `n` times.
async fn pages(demo: &Demo, n: usize) {
    for _ in 0..n {
        let (status, body) = demo.get("/productpage", None).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Waits (at most 30 s) until Prometheus has scraped the state the admin endpoint shows
/// now (the total of `istio_requests_total`); returns that state.
async fn scraped(demo: &Demo, prometheus: &Prometheus) -> Vec<Sample> {
    let ours = demo
        .metrics_when(|s| {
            // Every hop of the last page recorded: as many pages reached productpage's
            // server side as the gateway sent.
            let sent = prom::sum(
                s,
                "istio_requests_total",
                &[
                    ("reporter", "source"),
                    ("source_workload", "istio-ingressgateway"),
                ],
            );
            let arrived = prom::sum(
                s,
                "istio_requests_total",
                &[
                    ("reporter", "destination"),
                    ("destination_workload", "productpage-v1"),
                ],
            );
            sent > 0.0 && sent == arrived
        })
        .await;
    let total = prom::sum(&ours, "istio_requests_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let theirs = prometheus.sum("sum(istio_requests_total)").await;
        if theirs == total {
            return ours;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape {total} requests within 30 s (it has {theirs})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_prometheus_queries_return_what_the_traffic_implies() {
    let demo = Demo::start().await;
    let prometheus = Prometheus::start(demo.running().admin, "/stats/prometheus").await;

    // Until every reviews version has served a page (each serves about a third).
    let mut versions_seen = 0;
    for _ in 0..20 {
        pages(&demo, 10).await;
        let s = demo.metrics_when(|_| true).await;
        versions_seen = ["v1", "v2", "v3"]
            .iter()
            .filter(|v| {
                prom::sum(
                    &s,
                    "istio_requests_total",
                    &[("destination_service", REVIEWS), ("destination_version", v)],
                ) > 0.0
            })
            .count();
        if versions_seen == 3 {
            break;
        }
    }
    assert_eq!(
        versions_seen, 3,
        "200 pages and a reviews version never served one"
    );
    scraped(&demo, &prometheus).await;
    // More traffic, so that the rates have something to measure.
    pages(&demo, 30).await;
    let last = scraped(&demo, &prometheus).await;

    // istio_requests_total{destination_service="reviews.default.svc.cluster.local"}: both
    // reporters of every page's call to reviews.
    let series = prometheus
        .query(&format!(
            "istio_requests_total{{destination_service=\"{REVIEWS}\"}}"
        ))
        .await;
    let ours = prom::sum(
        &last,
        "istio_requests_total",
        &[("destination_service", REVIEWS)],
    );
    let pages_served = prom::sum(
        &last,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("source_workload", "istio-ingressgateway"),
        ],
    );
    assert_eq!(
        ours,
        2.0 * pages_served,
        "each page calls reviews once, reported twice"
    );
    assert_eq!(series.iter().map(|(_, v)| v).sum::<f64>(), ours);
    let mut reporters: Vec<String> = series
        .iter()
        .map(|(m, _)| m["reporter"].as_str().unwrap().to_string())
        .collect();
    reporters.sort();
    reporters.dedup();
    assert_eq!(reporters, ["destination", "source"]);

    // ...{destination_service=..., destination_version="v3"}.
    let v3 = prometheus
        .sum(&format!(
            "istio_requests_total{{destination_service=\"{REVIEWS}\", destination_version=\"v3\"}}"
        ))
        .await;
    let ours_v3 = prom::sum(
        &last,
        "istio_requests_total",
        &[
            ("destination_service", REVIEWS),
            ("destination_version", "v3"),
        ],
    );
    assert!(ours_v3 > 0.0);
    assert_eq!(v3, ours_v3);

    // rate(istio_requests_total{destination_service=~"productpage.*", response_code="200"}[5m]):
    // one series per reporter, each counting the pages served since the first scrape.
    let rates = prometheus
        .query("rate(istio_requests_total{destination_service=~\"productpage.*\", response_code=\"200\"}[5m])")
        .await;
    assert_eq!(rates.len(), 2, "{rates:?}");
    for (metric, rate) in &rates {
        assert!(rate.is_finite() && *rate > 0.0, "{metric}: {rate}");
    }

    // The p99 of request durations, as Istio's task computes it: Prometheus'
    // interpolation over the summed buckets. Without `rate`, the result is exactly the
    // quantile of the buckets the endpoint exposes.
    let p99 = prometheus
        .sum("histogram_quantile(0.99, sum(istio_request_duration_milliseconds_bucket) by (le))")
        .await;
    let expected = prom::histogram_quantile(
        0.99,
        &prom::buckets(&last, "istio_request_duration_milliseconds", &[]),
    );
    assert!(expected > 0.0);
    assert!(
        (p99 - expected).abs() <= 1e-9 * expected,
        "p99 {p99} against {expected}"
    );
    // With `rate` over the last minute (the whole test), the task's query: its p99 lies
    // at or below the bound under which every request lies.
    let p99_rate = prometheus
        .sum("histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket[1m])) by (le))")
        .await;
    let all = prom::buckets(&last, "istio_request_duration_milliseconds", &[]);
    let total = all.last().map_or(0.0, |b| b.1);
    let ceiling = all
        .iter()
        .find(|b| b.1 == total)
        .map_or(f64::INFINITY, |b| b.0);
    assert!(
        p99_rate.is_finite() && p99_rate > 0.0 && p99_rate <= ceiling,
        "p99 over a rate: {p99_rate} (the traffic's bucket bound {ceiling})"
    );
}
