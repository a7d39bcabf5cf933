//! CUSTOM AuthorizationPolicies end to end: a provider registered as a tower service by
//! name, asked only for the requests the policy's rules match, before DENY and ALLOW
//! policies; its denial answered as it wrote it, its headers added on allow; a provider
//! missing or failing denies (fails closed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_config::ConfigSet;
use mesh_tests::checked;
use mesh_tower::inbound::ext_authz::{CheckRequest, CheckResponse};
use mesh_tower::{BoxError, MeshRuntime, ResponseFlags, Workload};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

fn config(port: u16, provider: &str) -> mesh_config::Snapshot {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin, namespace: foo}}
spec:
  address: 127.0.0.1
  ports: {{http: {port}}}
  labels: {{app: httpbin}}
  serviceAccount: httpbin
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules: [{{to: [{{operation: {{paths: ["/admin/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-secret, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin/secret"]}}}}]}}]
"#
    );
    let mut set = ConfigSet::new();
    set.add_str("mesh.yaml", &yaml);
    checked(&set)
}

async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let result = req
        .headers()
        .get("x-ext-authz-check-result")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    Ok(Response::new(Full::new(Bytes::from(format!(
        "app saw {result}"
    )))))
}

/// Serves the app for workload `httpbin` with `provider` named in its CUSTOM policy;
/// returns the runtime and the port.
async fn start(provider: &str) -> (MeshRuntime, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let runtime = MeshRuntime::from_snapshot(&config(port, provider));
    let mesh = runtime.workload(
        Workload::new("httpbin", "foo")
            .labels([("app", "httpbin")])
            .service_account("httpbin"),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(mesh.inbound())
        .service(tower::service_fn(app));
    tokio::spawn(async move { mesh.serve(listener, svc).await });
    (runtime, port)
}

async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    mesh_tests::plaintext(([127, 0, 0, 1], port).into(), "GET", path, headers)
        .await
        .unwrap()
}

/// Istio's sample ext-authz service: allows requests with `x-ext-authz: allow`.
fn provider(
    asked: Arc<AtomicUsize>,
) -> impl tower::Service<
    CheckRequest,
    Response = CheckResponse,
    Error = BoxError,
    Future = impl Future<Output = Result<CheckResponse, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |req: CheckRequest| {
        asked.fetch_add(1, Ordering::SeqCst);
        async move {
            if req
                .headers()
                .get("x-ext-authz")
                .is_some_and(|v| v == "allow")
            {
                let mut h = HeaderMap::new();
                h.insert(
                    "x-ext-authz-check-result",
                    HeaderValue::from_static("allowed"),
                );
                Ok(CheckResponse::Allow(h))
            } else {
                let mut resp = Response::new(Bytes::from_static(b"denied by ext_authz"));
                *resp.status_mut() = StatusCode::FORBIDDEN;
                Ok(CheckResponse::Deny(resp))
            }
        }
    })
}

#[tokio::test]
async fn the_provider_decides_what_its_policy_matches_then_deny_and_allow_apply() {
    let (runtime, port) = start("sample-ext-authz-http").await;
    let asked = Arc::new(AtomicUsize::new(0));

    // Not registered yet: fails closed.
    assert_eq!(
        get(port, "/admin/x", &[]).await,
        (403, "RBAC: access denied".into())
    );
    runtime.register_authz_provider("sample-ext-authz-http", provider(asked.clone()));

    assert_eq!(
        get(port, "/admin/x", &[]).await,
        (403, "denied by ext_authz".into())
    );
    assert_eq!(
        get(port, "/admin/x", &[("x-ext-authz", "allow")]).await,
        (200, "app saw allowed".into())
    );
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    // The policy's rules do not match: the provider is not asked.
    assert_eq!(get(port, "/public", &[]).await, (200, "app saw -".into()));
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    // The provider allows, a DENY policy still denies.
    assert_eq!(
        get(port, "/admin/secret", &[("x-ext-authz", "allow")]).await,
        (403, "RBAC: access denied".into())
    );
}

#[tokio::test]
async fn a_failing_provider_denies() {
    let (runtime, port) = start("broken").await;
    runtime.register_authz_provider(
        "broken",
        tower::service_fn(|_: CheckRequest| async {
            Err::<CheckResponse, BoxError>("provider down".into())
        }),
    );
    assert_eq!(
        get(port, "/admin/x", &[("x-ext-authz", "allow")]).await.0,
        403
    );
    assert_eq!(get(port, "/public", &[]).await.0, 200);
}

#[tokio::test]
async fn a_grpc_caller_gets_the_providers_denial_as_a_grpc_status() {
    let (runtime, port) = start("sample-ext-authz-http").await;
    runtime.register_authz_provider(
        "sample-ext-authz-http",
        provider(Arc::new(AtomicUsize::new(0))),
    );
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/admin/x")
        .header("host", "httpbin")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    // Envoy's ext_authz denial to a gRPC caller: 200, trailers-only, 403 → 7.
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert_eq!(resp.headers()["grpc-message"], "denied by ext_authz");
}

#[tokio::test]
async fn authorization_sees_the_host_the_application_gets() {
    // A DENY on a host: an absolute-form request naming another host in `Host` cannot
    // slip past it, because `Host` becomes the URI's authority, as behind Envoy.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut set = ConfigSet::new();
    set.add_str(
        "mesh.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin, namespace: foo}}
spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: httpbin}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin-host, namespace: foo}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{hosts: [admin.svc]}}}}]}}]
"
        ),
    );
    let runtime = MeshRuntime::from_snapshot(&checked(&set));
    let mesh = runtime.workload(Workload::new("httpbin", "foo").labels([("app", "httpbin")]));
    let svc = tower::ServiceBuilder::new()
        .layer(mesh.inbound())
        .service(tower::service_fn(|req: Request<Incoming>| async move {
            let host = req.headers()["host"].to_str().unwrap().to_string();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(host))))
        }));
    tokio::spawn(async move { mesh.serve(listener, svc).await });
    let addr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        mesh_tests::plaintext(addr, "GET", "/", &[("host", "admin.svc")])
            .await
            .unwrap(),
        (403, "RBAC: access denied".into())
    );
    // The URI names public.svc, Host says admin.svc: the application gets public.svc,
    // which is what was authorized.
    assert_eq!(
        mesh_tests::plaintext(addr, "GET", "http://public.svc/", &[("host", "admin.svc")])
            .await
            .unwrap(),
        (200, "public.svc".into())
    );
    assert_eq!(
        mesh_tests::plaintext(addr, "GET", "http://admin.svc/", &[("host", "public.svc")])
            .await
            .unwrap(),
        (403, "RBAC: access denied".into())
    );
}

/// The provider's denials and failures are flagged `UAEX` (Envoy's
/// UnauthorizedExternalService) on the response the workload's inbound layer answers;
/// an admitted request carries no flag.
#[tokio::test]
async fn provider_refusals_are_flagged_uaex() {
    let runtime = MeshRuntime::from_snapshot(&config(8000, "sample-ext-authz-http"));
    runtime.register_authz_provider(
        "sample-ext-authz-http",
        provider(Arc::new(AtomicUsize::new(0))),
    );
    let app = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let flags = |runtime: &MeshRuntime, headers: &'static [(&'static str, &'static str)]| {
        let mesh = runtime.workload(
            Workload::new("httpbin", "foo")
                .labels([("app", "httpbin")])
                .service_account("httpbin"),
        );
        let svc = mesh.inbound().layer(app);
        async move {
            let mut req = Request::get("/admin/x").header("host", "httpbin");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = svc
                .oneshot(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            (resp.status().as_u16(), ResponseFlags::of(&resp).to_string())
        }
    };
    assert_eq!(flags(&runtime, &[]).await, (403, "UAEX".to_string()));
    assert_eq!(
        flags(&runtime, &[("x-ext-authz", "allow")]).await,
        (200, "-".to_string())
    );
    let broken = MeshRuntime::from_snapshot(&config(8000, "broken"));
    broken.register_authz_provider(
        "broken",
        tower::service_fn(|_: CheckRequest| async {
            Err::<CheckResponse, BoxError>("provider down".into())
        }),
    );
    assert_eq!(
        flags(&broken, &[("x-ext-authz", "allow")]).await,
        (403, "UAEX".to_string())
    );
}
