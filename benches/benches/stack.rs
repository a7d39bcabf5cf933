//! The cost of the mesh on the wire: the same GET to the same local server through
//! `mesh.client()` (route, retries, balancer, pooled connection) and through a bare
//! hyper-util pooled client. The difference is the stack's overhead per request.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_tests::{mesh, named, service};
use tower::ServiceExt;

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(named("ok"));
    let port = server.port();
    let cfg = service("reviews", "HTTP", &[("v1", port)])
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - route: [{destination: {host: reviews}}]\n";
    let m = mesh(&cfg);
    let client = m.client();
    let bare: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let bare_url = format!("http://127.0.0.1:{port}/reviews/0");

    let mut g = c.benchmark_group("outbound_get");
    g.bench_function("bare_hyper_util", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get(bare_url.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = bare.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap()
        })
    });
    g.bench_function("mesh_client", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get("http://reviews:9080/reviews/0")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = client.clone().oneshot(req).await.unwrap();
            resp.into_body().collect().await.unwrap()
        })
    });
    g.finish();
    drop(server);
}

/// An upstream that answers at once: what remains is the stack's own work per request.
#[derive(Clone)]
struct Stub;

impl tower::Service<mesh_tower::transport::pool::Outgoing> for Stub {
    type Response = http::Response<mesh_tower::ResBody>;
    type Error = mesh_tower::BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: mesh_tower::transport::pool::Outgoing) -> Self::Future {
        std::future::ready(Ok(http::Response::new(mesh_tower::ResBody::empty())))
    }
}

impl tower::Service<http::Request<mesh_tower::ReqBody>> for Stub {
    type Response = http::Response<mesh_tower::ResBody>;
    type Error = mesh_tower::BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<mesh_tower::ReqBody>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(mesh_tower::ResBody::empty())))
    }
}

/// The stack's overhead without a network: the whole outbound stack over a stub
/// upstream, against calling the stub directly; and the same stack with tracing on.
fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = service("reviews", "HTTP", &[("v1", 9), ("v2", 10)])
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n";
    let m = mesh(&cfg);
    let client = m.client_over(Stub);
    // The same with tracing on: a span exporter, so Istio's default 1 % sampling applies
    // (the context headers on every request, a span for one in a hundred). Its endpoint
    // refuses connections: the batches it sends fail at once, off the request path.
    let traced = mesh(&cfg);
    {
        use mesh_tower::telemetry::otlp::{BatchConfig, OtlpConfig, Protocol, SpanExporter};
        let _runtime = rt.enter();
        let config = OtlpConfig::new("http://127.0.0.1:9/v1/traces", Protocol::HttpProtobuf)
            .expect("an OTLP endpoint");
        let exporter = SpanExporter::start(config, BatchConfig::default()).expect("an exporter");
        traced.runtime().set_span_exporter(Some(exporter));
    }
    let traced_client = traced.client_over(Stub);
    let mut g = c.benchmark_group("outbound_overhead");
    g.bench_function("stub_alone", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get("http://127.0.0.1:9/reviews/0")
                .body(mesh_tower::ReqBody::empty())
                .unwrap();
            Stub.oneshot(req).await.unwrap()
        })
    });
    g.bench_function("mesh_stack_over_stub", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get("http://reviews:9080/reviews/0")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client.clone().oneshot(req).await.unwrap()
        })
    });
    g.bench_function("mesh_stack_over_stub_traced", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get("http://reviews:9080/reviews/0")
                .body(Empty::<Bytes>::new())
                .unwrap();
            traced_client.clone().oneshot(req).await.unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, stack, overhead);
criterion_main!(benches);
