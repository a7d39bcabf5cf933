//! Helpers for end-to-end tests: real hyper servers on 127.0.0.1 (ephemeral ports) and
//! configuration that points the mesh at them. Test support code: it panics on setup
//! failures, which end the test that hit them.

#![allow(clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::ConfigSet;
use mesh_tower::{Mesh, MeshRuntime, Workload};
use tokio::net::TcpListener;

pub mod etcd;
pub mod gateway;

/// What a test server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
    /// HTTP version.
    pub version: http::Version,
}

/// A running test server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it has answered.
    pub count: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Number of requests answered.
    pub fn hits(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Starts an HTTP/1.1 + HTTP/2 server on 127.0.0.1 answering with `handler(n, seen)`,
/// where `n` counts requests from 0.
pub async fn serve<F, Fut>(handler: F) -> TestServer
where
    F: Fn(usize, Seen) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, s) = (count.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (c, s, h) = (c.clone(), s.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (c, s, h) = (c.clone(), s.clone(), h.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method.to_string(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts.headers,
                            body,
                            version: parts.version,
                        };
                        if let Ok(mut v) = s.lock() {
                            v.push(seen.clone());
                        }
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(h(n, seen).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestServer {
        addr,
        count,
        seen,
        task,
    }
}

/// A server that answers 200 with `name` as its body.
pub async fn named(name: &'static str) -> TestServer {
    serve(move |_, _| async move { Response::new(Full::new(Bytes::from(name))) }).await
}

/// A ServiceEntry `host` (port 9080, http) with one endpoint per `(version, port)` on
/// 127.0.0.1, and a DestinationRule defining one subset per version.
pub fn service(name: &str, protocol: &str, endpoints: &[(&str, u16)]) -> String {
    service_with(name, protocol, endpoints, "")
}

/// Like [`service`], with `traffic_policy` (YAML at the indentation of a DestinationRule
/// spec field, e.g. `"  trafficPolicy: {...}\n"`) in the DestinationRule.
pub fn service_with(
    name: &str,
    protocol: &str,
    endpoints: &[(&str, u16)],
    traffic_policy: &str,
) -> String {
    let mut eps = String::new();
    let mut subsets = String::new();
    for (version, port) in endpoints {
        eps.push_str(&format!(
            "  - address: 127.0.0.1\n    ports: {{http: {port}}}\n    labels: {{version: {version}}}\n"
        ));
        if !subsets.contains(&format!("name: {version},")) {
            subsets.push_str(&format!(
                "  - {{name: {version}, labels: {{version: {version}}}}}\n"
            ));
        }
    }
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: {protocol}}}]\n  resolution: STATIC\n  endpoints:\n{eps}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n{traffic_policy}  subsets:\n{subsets}"
    )
}

/// Checks `yaml`, panicking with the diagnostics when it has errors.
pub fn snapshot(yaml: &str) -> mesh_config::Snapshot {
    let mut set = ConfigSet::new();
    set.add_str("test.yaml", yaml);
    checked(&set)
}

/// Checks `set`, panicking with the diagnostics when it has errors.
pub fn checked(set: &ConfigSet) -> mesh_config::Snapshot {
    let checked = set.check();
    match checked.snapshot {
        Some(s) => s,
        None => panic!("invalid test configuration:\n{}", checked.summary()),
    }
}

/// A mesh for workload `productpage-v1` in `default` on configuration `yaml`.
pub fn mesh(yaml: &str) -> Mesh {
    MeshRuntime::from_snapshot(&snapshot(yaml)).workload(
        Workload::new("productpage-v1", "default")
            .labels([("app", "productpage"), ("version", "v1")])
            .service_account("bookinfo-productpage"),
    )
}

/// Sends a GET through `mesh` and returns status, body and headers.
pub async fn get(
    mesh: &Mesh,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, http::HeaderMap) {
    use tower::ServiceExt;
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = mesh.client().oneshot(req).await.expect("mesh call");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        parts.status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
        parts.headers,
    )
}

/// A plaintext HTTP/1.1 request straight to the listener at `addr`, as a client outside
/// the mesh sends it (`host: test.local` unless `headers` gives one): the status and
/// body, or why it failed (a refused connection, a connection closed before an answer,
/// no answer within 5 s).
pub async fn plaintext(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "test.local");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}
