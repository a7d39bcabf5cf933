//! Mutual TLS between workloads, end to end on 127.0.0.1: identities from the in-process
//! CA, auto mTLS and ISTIO_MUTUAL on the client, PeerAuthentication on the server
//! (PERMISSIVE on one port, STRICT, DISABLE), the peer's identity handed to the
//! application, AuthorizationPolicy on principals — and a negative matrix, each case a
//! connection refused with its reason logged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use mesh_config::ConfigSet;
use mesh_tests::checked;
use mesh_tower::identity::{CertificateAuthority, Identities, PeerIdentity, SpiffeId};
use mesh_tower::inbound::InboundBody;
use mesh_tower::{Mesh, MeshRuntime, Workload};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------
// Logs

#[path = "support/logs.rs"]
mod logs;

use logs::Logs;

// ---------------------------------------------------------------------------------------
// A mesh of two workloads

/// The configuration of service `greeter` (port 9080) with one workload of service
/// account `greeter` listening on `port`, plus `extra` YAML.
fn config(port: u16, extra: &str) -> mesh_config::Snapshot {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: greeter, namespace: default}}
spec:
  hosts: [greeter.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: greeter}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: greeter-v1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http: {port}}}
  labels: {{app: greeter}}
  serviceAccount: greeter
{extra}"#
    );
    let mut set = ConfigSet::new();
    set.add_str("mesh.yaml", &yaml);
    checked(&set)
}

/// The greeter's application: `principal=<the caller's principal or none> sni=<...>`.
async fn greet(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = req.extensions().get::<PeerIdentity>();
    let body = format!(
        "principal={} sni={}",
        id.map_or("none", |i| i.principal()),
        id.and_then(|i| i.sni()).unwrap_or("none"),
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

struct Fixture {
    runtime: MeshRuntime,
    ca: Arc<CertificateAuthority>,
    port: u16,
    frontend: Mesh,
}

impl Fixture {
    /// A runtime with identities from a new CA, the greeter served (with its inbound
    /// policies) as service account `greeter_sa`, and a `frontend` workload.
    async fn start(greeter_sa: &str, extra: &str) -> Fixture {
        Self::start_with(greeter_sa, extra, Duration::from_secs(24 * 3600), greet).await
    }

    /// [`start`](Self::start) with certificates of `lifetime` and the application `app`.
    async fn start_with<F, Fut>(
        greeter_sa: &str,
        extra: &str,
        lifetime: Duration,
        app: F,
    ) -> Fixture
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>>
            + Send
            + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let runtime = MeshRuntime::from_snapshot(&config(port, extra));
        let ca = Arc::new(
            CertificateAuthority::new("cluster.local")
                .unwrap()
                .with_workload_lifetime(lifetime),
        );
        runtime.set_identities(Identities::Ca(ca.clone()));
        let greeter = runtime.workload(
            Workload::new("greeter-v1", "default")
                .labels([("app", "greeter")])
                .service_account(greeter_sa),
        );
        let app = tower::ServiceBuilder::new()
            .layer(greeter.inbound())
            .service(tower::service_fn(app));
        tokio::spawn(async move { greeter.serve(listener, app).await });
        let frontend = runtime.workload(
            Workload::new("frontend", "default")
                .labels([("app", "frontend")])
                .service_account("frontend"),
        );
        Fixture {
            runtime,
            ca,
            port,
            frontend,
        }
    }

    fn greeter(&self) -> Mesh {
        self.runtime.workload(
            Workload::new("greeter-v1", "default")
                .labels([("app", "greeter")])
                .service_account("greeter"),
        )
    }

    fn update(&self, extra: &str) {
        self.runtime.update(&config(self.port, extra));
    }

    fn workload(&self, sa: &str) -> Mesh {
        self.runtime
            .workload(Workload::new(sa, "default").service_account(sa))
    }
}

/// GET `http://greeter:9080/` through `mesh`: status and body.
async fn via_mesh(mesh: &Mesh) -> (u16, String) {
    let req = Request::get("http://greeter:9080/hello")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = mesh.client().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A plaintext GET straight to the greeter's port, from outside the mesh: status and
/// body, or the error.
async fn plaintext(port: u16) -> Result<(u16, String), String> {
    mesh_tests::plaintext(
        ([127, 0, 0, 1], port).into(),
        "GET",
        "/hello",
        &[("host", "greeter:9080")],
    )
    .await
}

const STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

// ---------------------------------------------------------------------------------------
// The working paths

#[tokio::test]
async fn auto_mtls_carries_the_callers_identity_to_the_application() {
    let f = Fixture::start("greeter", "").await;
    let (status, body) = via_mesh(&f.frontend).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "principal=cluster.local/ns/default/sa/frontend sni=outbound_.9080_._.greeter.default.svc.cluster.local"
    );
    // Another workload of the process has its own identity, on its own connections.
    let (_, body) = via_mesh(&f.workload("reviews")).await;
    assert_eq!(
        body,
        "principal=cluster.local/ns/default/sa/reviews sni=outbound_.9080_._.greeter.default.svc.cluster.local"
    );
}

#[tokio::test]
async fn permissive_serves_plaintext_and_mtls_on_one_port() {
    let f = Fixture::start("greeter", "").await;
    assert_eq!(
        plaintext(f.port).await.unwrap(),
        (200, "principal=none sni=none".into())
    );
    assert_eq!(
        via_mesh(&f.frontend).await.1,
        "principal=cluster.local/ns/default/sa/frontend sni=outbound_.9080_._.greeter.default.svc.cluster.local"
    );
}

#[tokio::test]
async fn strict_refuses_plaintext_and_keeps_mesh_traffic() {
    let logs = Logs::default();
    let _guard = logs.install();
    let f = Fixture::start("greeter", STRICT).await;
    let refused = plaintext(f.port).await;
    assert!(
        refused.is_err(),
        "plaintext under STRICT was served: {refused:?}"
    );
    logs.wait_for("plaintext connection refused: PeerAuthentication is STRICT")
        .await;
    assert_eq!(via_mesh(&f.frontend).await.0, 200);
}

#[tokio::test]
async fn port_level_mtls_overrides_the_workload_mode() {
    let f = Fixture::start("greeter", STRICT).await;
    f.update(&format!(
        "{STRICT}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: greeter, namespace: default}}
spec:
  selector: {{matchLabels: {{app: greeter}}}}
  portLevelMtls: {{{port}: {{mode: PERMISSIVE}}}}
",
        port = f.port
    ));
    assert_eq!(plaintext(f.port).await.unwrap().0, 200);
}

#[tokio::test]
async fn istio_mutual_uses_istios_sni_and_disable_sends_plaintext() {
    let f = Fixture::start("greeter", "").await;
    f.update(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: greeter, namespace: default}
spec:
  host: greeter
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
",
    );
    assert_eq!(
        via_mesh(&f.frontend).await.1,
        "principal=cluster.local/ns/default/sa/frontend sni=outbound_.9080_._.greeter.default.svc.cluster.local"
    );
    f.update(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: greeter, namespace: default}
spec:
  host: greeter
  trafficPolicy: {tls: {mode: DISABLE}}
",
    );
    assert_eq!(via_mesh(&f.frontend).await.1, "principal=none sni=none");
}

#[tokio::test]
async fn auto_mtls_sends_plaintext_to_a_workload_whose_peer_authentication_disables_it() {
    let f = Fixture::start("greeter", "").await;
    f.update(
        "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: greeter, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  mtls: {mode: DISABLE}
",
    );
    assert_eq!(
        via_mesh(&f.frontend).await,
        (200, "principal=none sni=none".into())
    );
}

#[tokio::test]
async fn authorization_policy_on_principals_denies_with_envoys_answer() {
    let logs = Logs::default();
    let _guard = logs.install();
    let f = Fixture::start(
        "greeter",
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]
    to: [{operation: {methods: [GET]}}]
",
    )
    .await;
    assert_eq!(via_mesh(&f.frontend).await.0, 200);
    assert_eq!(
        via_mesh(&f.workload("intruder")).await,
        (403, "RBAC: access denied".into())
    );
    logs.wait_for("RBAC: access denied").await;
    // A gRPC call is denied as Envoy denies it: trailers-only, grpc-status 7.
    let req = Request::post("http://greeter:9080/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = f.workload("intruder").client().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert_eq!(resp.headers()["grpc-message"], "RBAC: access denied");
    // Plaintext has no principal.
    assert_eq!(
        plaintext(f.port).await.unwrap(),
        (403, "RBAC: access denied".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renewed_every_second_for_30_s_fail_no_request() {
    // Two-second certificates, renewed at half their lifetime: every second, on both
    // sides. Every fourth response closes its connection, so new handshakes keep
    // meeting new certificates while older connections finish on theirs.
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = served.clone();
    let app = move |req: Request<Incoming>| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let principal = req
                .extensions()
                .get::<PeerIdentity>()
                .map_or("none".to_string(), |i| i.principal().to_string());
            let mut resp = Response::new(Full::new(Bytes::from(principal)));
            if n.is_multiple_of(4) {
                resp.headers_mut()
                    .insert("connection", http::HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    };
    let f = Fixture::start_with("greeter", STRICT, Duration::from_secs(2), app).await;
    let client_identity = f.frontend.identity().unwrap().clone();
    let server_identity = f.greeter().identity().unwrap().clone();
    let (ok, failed) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::<String>::new())),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (mesh, ok, failed) = (f.frontend.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            // Bounded: 30 s or 100 000 requests per client.
            for _ in 0..100_000 {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let (status, body) = via_mesh(&mesh).await;
                if status == 200 && body == "cluster.local/ns/default/sa/frontend" {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    failed.lock().unwrap().push(format!("{status} {body}"));
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        ok.load(std::sync::atomic::Ordering::Relaxed) > 1000,
        "requests flowed"
    );
    // About one renewal a second on each side (X.509 times have one-second precision).
    for (side, id) in [("client", client_identity), ("server", server_identity)] {
        assert!(
            (20..=70).contains(&id.renewals()),
            "{side} renewed {} times in 30 s",
            id.renewals()
        );
    }
}

// ---------------------------------------------------------------------------------------
// The negative matrix

#[tokio::test]
async fn a_server_proving_another_service_account_is_refused_by_the_client() {
    let logs = Logs::default();
    let _guard = logs.install();
    // The registry says the endpoint is `greeter`; what listens there proves `impostor`.
    let f = Fixture::start("impostor", "").await;
    let (status, body) = via_mesh(&f.frontend).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection failure"), "{body}");
    logs.wait_for("the endpoint's identity is not the one expected")
        .await;
}

/// A raw mutual TLS client presenting `client` (its certificate and key, DER) and
/// (trusting any server); sends a GET and returns the response's first bytes, or the error.
async fn raw_tls(
    port: u16,
    chain: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<String, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer));
    let config = match chain {
        Some((c, k)) => builder.with_client_auth_cert(c, k).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("greeter").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: greeter\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("closed".into());
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Accepts any server certificate: these tests are about what the server refuses.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn frontend_id(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "default", "frontend").unwrap()
}

#[tokio::test]
async fn the_negative_matrix_of_client_certificates() {
    let logs = Logs::default();
    let _guard = logs.install();
    let f = Fixture::start("greeter", STRICT).await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    // The control: a valid client certificate is served.
    let valid =
        f.ca.issue_der(&frontend_id("cluster.local"), now, now + hour)
            .unwrap();
    let ok = raw_tls(f.port, Some(valid), BOTH).await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let stranger = CertificateAuthority::new("cluster.local").unwrap();
    let cases: Vec<(&str, Option<_>, &[&rustls::SupportedProtocolVersion], &str)> = vec![
        (
            "unknown CA",
            Some(
                stranger
                    .issue_der(&frontend_id("cluster.local"), now, now + hour)
                    .unwrap(),
            ),
            BOTH,
            "mutual TLS handshake failed",
        ),
        (
            "expired certificate",
            Some(
                f.ca.issue_der(&frontend_id("cluster.local"), now - 2 * hour, now - hour)
                    .unwrap(),
            ),
            BOTH,
            "mutual TLS handshake failed",
        ),
        (
            "not yet valid certificate",
            Some(
                f.ca.issue_der(&frontend_id("cluster.local"), now + hour, now + 2 * hour)
                    .unwrap(),
            ),
            BOTH,
            "mutual TLS handshake failed",
        ),
        (
            "no client certificate",
            None,
            BOTH,
            "mutual TLS handshake failed",
        ),
        (
            "trust domain mismatch",
            Some(
                f.ca.issue_der(&frontend_id("evil.example"), now, now + hour)
                    .unwrap(),
            ),
            BOTH,
            "the client's trust domain is not the mesh's",
        ),
    ];
    for (case, chain, versions, reason) in cases {
        let result = raw_tls(f.port, chain, versions).await;
        // The handshake fails, or the server closes the connection without an answer.
        assert!(result.is_err(), "{case}: answered: {result:?}");
        logs.wait_for(reason).await;
        logs.0.lock().unwrap().clear();
    }
}

#[tokio::test]
async fn a_tls_1_1_client_hello_is_refused() {
    let logs = Logs::default();
    let _guard = logs.install();
    let f = Fixture::start("greeter", STRICT).await;
    // A TLS 1.1 ClientHello (record version 3.2, client version 3.2, no
    // supported_versions extension), one cipher suite.
    let mut hello = vec![0x03, 0x02];
    hello.extend([0u8; 32]); // random
    hello.push(0); // session id
    hello.extend([0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    hello.extend([0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0, 0, hello.len() as u8];
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x02, 0, handshake.len() as u8];
    record.extend(handshake);
    let mut tcp = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    // An alert record (0x15), or the connection closed: never a ServerHello (0x16).
    assert!(n == 0 || buf[0] == 0x15, "answered {:?}", &buf[..n]);
    logs.wait_for("mutual TLS handshake failed").await;
}

#[tokio::test]
async fn a_client_from_another_mesh_cannot_reach_the_workload() {
    let f = Fixture::start("greeter", STRICT).await;
    // Another process's mesh: its own CA, the same configuration.
    let other = MeshRuntime::from_snapshot(&config(f.port, STRICT));
    other.set_identities(Identities::Ca(Arc::new(
        CertificateAuthority::new("cluster.local").unwrap(),
    )));
    let outsider = other.workload(Workload::new("frontend", "default").service_account("frontend"));
    let (status, body) = via_mesh(&outsider).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn the_inbound_layer_answers_with_the_applications_body_type() {
    // The inbound layer wraps any tower service; its body is the application's or the
    // mesh's refusal.
    let f = Fixture::start("greeter", "").await;
    let svc = tower::ServiceBuilder::new()
        .layer(f.frontend.inbound())
        .service(tower::service_fn(|_: Request<Empty<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("app"))))
        }));
    let resp = svc
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    let body: InboundBody<Full<Bytes>> = resp.into_body();
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "app");
}

#[tokio::test]
async fn a_plaintext_connection_opened_under_permissive_ends_when_strict_arrives() {
    let f = Fixture::start("greeter", "").await;
    let stream = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = || {
        Request::get("/hello")
            .header("host", "greeter:9080")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = send.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // The same keep-alive connection, after the mesh turned STRICT.
    f.update(STRICT);
    send.ready().await.unwrap();
    let refused = send.send_request(get()).await;
    assert!(refused.is_err(), "served after STRICT: {refused:?}");
    // Mesh traffic is unaffected.
    assert_eq!(via_mesh(&f.frontend).await.0, 200);
}
