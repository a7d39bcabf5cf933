//! One `tracing` span per request, with the route, destination, subset, endpoint,
//! attempts and outcome recorded on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use mesh_tests::{get, mesh, serve, service};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Spans = Arc<Mutex<BTreeMap<u64, BTreeMap<String, String>>>>;

/// Collects the fields of `mesh.request` spans.
struct Capture(Spans);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() != "mesh.request" {
            return;
        }
        let mut m = BTreeMap::new();
        attrs.record(&mut Fields(&mut m));
        self.0.lock().unwrap().insert(id.into_u64(), m);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(m) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(m));
        }
    }
}

#[tokio::test]
async fn one_span_per_request_with_its_decisions() {
    let spans: Spans = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Capture(spans.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let flaky = serve(|n, _| async move {
        let mut r = Response::new(Full::new(Bytes::from("ok")));
        if n == 0 {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    })
    .await;
    let cfg = service("reviews", "HTTP", &[("v2", flaky.port())])
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v2}}]\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let m = mesh(&cfg);
    assert_eq!(get(&m, "http://reviews:9080/reviews/0", &[]).await.0, 200);

    let spans = spans.lock().unwrap();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let s = spans.values().next().unwrap();
    assert_eq!(s["method"], "GET");
    assert_eq!(s["path"], "/reviews/0");
    assert_eq!(s["route"], "default/reviews#0");
    assert_eq!(s["destination"], "reviews.default.svc.cluster.local");
    assert_eq!(s["subset"], "v2");
    assert_eq!(s["endpoint"], format!("127.0.0.1:{}", flaky.port()));
    assert_eq!(s["attempts"], "2");
    assert_eq!(s["status"], "200");
    assert!(!s.contains_key("failure"));
}

/// The span carries the answer's response flags (`UF,URX` for a refused connection,
/// retried by Istio's default policy until the attempts ran out), and
/// `DC` when the caller gave up on the request before an answer came (Envoy's downstream
/// connection termination).
#[tokio::test]
async fn the_span_records_response_flags_and_a_caller_giving_up() {
    let spans: Spans = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Capture(spans.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let slow = serve(|_, _| async move {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        Response::new(Full::new(Bytes::from("late")))
    })
    .await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = mesh(
        &(service("slow", "HTTP", &[("v1", slow.port())])
            + &service("gone", "HTTP", &[("v1", closed)])),
    );
    assert_eq!(get(&m, "http://gone:9080/x", &[]).await.0, 503);
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        get(&m, "http://slow:9080/x", &[]),
    )
    .await;
    assert!(gave_up.is_err(), "the slow server did not answer");

    let spans = spans.lock().unwrap();
    let flags: BTreeMap<&str, &str> = spans
        .values()
        .map(|s| {
            (
                s["authority"].as_str(),
                s.get("response_flags").map_or("-", |f| f.as_str()),
            )
        })
        .collect();
    assert_eq!(
        flags,
        BTreeMap::from([("gone:9080", "UF,URX"), ("slow:9080", "DC")])
    );
}
