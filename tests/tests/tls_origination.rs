//! TLS origination end to end on 127.0.0.1: a DestinationRule's `SIMPLE` and `MUTUAL`
//! TLS to an external service (`api.example.com`, a ServiceEntry with a STATIC endpoint
//! on a TLS test server), certificate files next to the YAML made by rcgen at test time.
//! The server's chain against `caCertificates`, its names against `subjectAltNames` or
//! the request's host, `insecureSkipVerify`, the client certificate of `MUTUAL`, ALPN
//! `h2` for HTTP/2 clusters, connections pooled per TLS settings, files that cannot be
//! read, and `https://` requests (originated, never sent in plaintext).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::ConfigSet;
use mesh_tests::checked;
use mesh_tower::{Mesh, MeshRuntime, Workload};
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Envoy's body for a failed connection.
const CONNECT_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";

// ---------------------------------------------------------------------------------------
// Certificates and files

#[path = "support/pki.rs"]
mod pki;

use pki::{Ca, TempDir};

impl Ca {
    fn server(&self, names: &[&str]) -> (String, String) {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

// ---------------------------------------------------------------------------------------
// A TLS server

/// A TLS server on 127.0.0.1 (HTTP/1.1 and HTTP/2, ALPN `h2` and `http/1.1`) answering
/// `sni=<SNI> alpn=<protocol> client=<present|none> version=<HTTP version> host=<host>`.
/// Counts the connections it accepted, the handshakes completed and the requests.
struct TlsServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// How the server treats client certificates.
#[derive(Clone, Copy)]
enum ClientAuth<'a> {
    /// It asks for none.
    None,
    /// It requires one signed by this CA (PEM).
    Required(&'a str),
}

async fn tls_server((cert, key): &(String, String), auth: ClientAuth<'_>) -> TlsServer {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(Result::unwrap)
                .collect(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, h, r) = (accepted.clone(), handshakes.clone(), requests.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (acceptor, h, r) = (acceptor.clone(), h.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let conn = tls.get_ref().1;
                let sni = conn.server_name().unwrap_or("-").to_string();
                let alpn = conn
                    .alpn_protocol()
                    .map_or("-".to_string(), |p| String::from_utf8_lossy(p).into_owned());
                let client = if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
                    "present"
                } else {
                    "none"
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                        .or_else(|| req.uri().authority().map(|a| a.to_string()))
                        .unwrap_or_default();
                    let body = format!(
                        "sni={sni} alpn={alpn} client={client} version={:?} host={host} path={}",
                        req.version(),
                        req.uri().path()
                    );
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsServer {
        addr,
        accepted,
        handshakes,
        requests,
        task,
    }
}

// ---------------------------------------------------------------------------------------
// The mesh

/// A ServiceEntry `host` with port 443 (`protocol`) on `127.0.0.1:port`, and a
/// DestinationRule for it with `traffic_policy` (YAML of the `trafficPolicy` mapping,
/// flow style) when it is not empty.
fn external(host: &str, protocol: &str, port: u16, traffic_policy: &str) -> String {
    let name = host.replace('.', "-");
    let mut yaml = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  ports: [{{number: 443, name: https, protocol: {protocol}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{https: {port}}}}}]\n"
    );
    if !traffic_policy.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  trafficPolicy: {traffic_policy}\n"
        ));
    }
    yaml
}

/// A workload's mesh on the configuration `yaml`, written as `mesh.yaml` in `dir` (so
/// that relative file paths resolve there).
fn mesh_in(dir: &TempDir, yaml: &str) -> Mesh {
    dir.write("mesh.yaml", yaml);
    let snapshot = checked(&ConfigSet::load(&[dir.path()]).unwrap());
    MeshRuntime::from_snapshot(&snapshot).workload(Workload::new("app", "default"))
}

/// A GET of `url` through `mesh`: status and body.
async fn get(mesh: &Mesh, url: &str) -> (u16, String) {
    let req = Request::get(url)
        .header("authorization", "Bearer s3cr3t")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = mesh.client().oneshot(req).await.expect("mesh call");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The CA (written as `ca.pem`) and a TLS server with a certificate for `names` from it.
async fn setup(dir: &TempDir, names: &[&str], auth: ClientAuth<'_>) -> (Ca, TlsServer) {
    let ca = Ca::new("upstream CA");
    dir.write("ca.pem", &ca.pem);
    let server = tls_server(&ca.server(names), auth).await;
    (ca, server)
}

// ---------------------------------------------------------------------------------------
// Logs

#[path = "support/logs.rs"]
mod logs;

use logs::Logs;

// ---------------------------------------------------------------------------------------
// SIMPLE

#[tokio::test]
async fn simple_tls_with_a_ca_file_next_to_the_yaml() {
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
        ),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/orders").await;
    assert_eq!(status, 200, "{body}");
    // TLS, the host as SNI (Envoy's auto SNI), ALPN http/1.1 for an HTTP/1.1 cluster,
    // the application's authority as `Host`.
    assert_eq!(
        body,
        "sni=api.example.com alpn=http/1.1 client=none version=HTTP/1.1 host=api.example.com:443 path=/orders"
    );
    assert_eq!(server.handshakes(), 1);
}

#[tokio::test]
async fn connections_are_reused_one_handshake_for_sequential_requests() {
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
        ),
    );
    for i in 0..5 {
        let (status, body) = get(&mesh, &format!("http://api.example.com:443/r{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(server.requests(), 5);
    assert_eq!(server.accepted(), 1, "one connection");
    assert_eq!(server.handshakes(), 1, "one TLS handshake");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let dir = TempDir::new();
    let (_ca, _) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    // The server's certificate comes from a CA the rule does not trust.
    let stranger = Ca::new("another CA");
    let server = tls_server(&stranger.server(&["api.example.com"]), ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
        ),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
    assert!(server.accepted() >= 1, "a handshake was attempted");
    assert_eq!(server.requests(), 0, "no request reached the server");
}

#[tokio::test]
async fn subject_alt_names_must_name_the_server() {
    let dir = TempDir::new();
    let (_ca, server) = setup(
        &dir,
        &["api.example.com", "*.backend.example.com"],
        ClientAuth::None,
    )
    .await;
    let port = server.port();
    // One of them as a DNS name (a wildcard of the certificate matches one label).
    for sans in [
        "[api.example.com]",
        "[other.example.com, eu.backend.example.com]",
    ] {
        let mesh = mesh_in(
            &dir,
            &external(
                "api.example.com",
                "HTTP",
                port,
                &format!(
                    "{{tls: {{mode: SIMPLE, caCertificates: ca.pem, subjectAltNames: {sans}}}}}"
                ),
            ),
        );
        let (status, body) = get(&mesh, "http://api.example.com:443/").await;
        assert_eq!(status, 200, "{sans}: {body}");
    }
    // None of them.
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            port,
            "{tls: {mode: SIMPLE, caCertificates: ca.pem, subjectAltNames: [other.example.com]}}",
        ),
    );
    let before = server.requests();
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
    assert_eq!(server.requests(), before, "no request reached the server");
}

#[tokio::test]
async fn without_subject_alt_names_the_certificate_must_name_the_host() {
    let dir = TempDir::new();
    // A certificate the CA signed, for another name.
    let (_ca, server) = setup(&dir, &["other.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
        ),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn sni_is_sent_as_configured() {
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem, sni: edge.example.com, subjectAltNames: [api.example.com]}}",
        ),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("sni=edge.example.com "), "{body}");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_an_untrusted_certificate() {
    let dir = TempDir::new();
    let stranger = Ca::new("untrusted CA");
    let server = tls_server(&stranger.server(&["whatever.invalid"]), ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, insecureSkipVerify: true}}",
        ),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("sni=api.example.com "), "{body}");
}

#[tokio::test]
async fn an_unreadable_ca_file_fails_the_requests_with_the_reason_logged() {
    let logs = Logs::default();
    let _guard = logs.install();
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: missing-ca.pem}}",
        ),
    );
    for _ in 0..2 {
        let (status, body) = get(&mesh, "http://api.example.com:443/").await;
        assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
    }
    // Never a plaintext request, nor a connection.
    assert_eq!(server.accepted(), 0);
    assert_eq!(server.requests(), 0);
    let lines = logs.lines();
    let warned: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("connections with these settings fail"))
        .collect();
    // Read once for the configuration (the retries and the second request reuse it).
    assert_eq!(warned.len(), 1, "{lines:#?}");
    let missing = dir.path().join("missing-ca.pem");
    assert!(
        warned[0].contains(&format!(
            "cannot read caCertificates `{}`",
            missing.display()
        )),
        "{}",
        warned[0]
    );
}

#[tokio::test]
async fn updates_rebuild_the_configuration_and_keep_connections_of_equal_settings() {
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let yaml = |ca: &str| {
        external(
            "api.example.com",
            "HTTP",
            server.port(),
            &format!("{{tls: {{mode: SIMPLE, caCertificates: {ca}}}}}"),
        )
    };
    let snapshot = |yaml: &str| {
        dir.write("mesh.yaml", yaml);
        checked(&ConfigSet::load(&[dir.path()]).unwrap())
    };
    let mesh = mesh_in(&dir, &yaml("ca.pem"));
    assert_eq!(get(&mesh, "http://api.example.com:443/").await.0, 200);
    // The same settings in a new configuration: the pooled connection is used.
    mesh.update(&snapshot(&yaml("ca.pem")));
    assert_eq!(get(&mesh, "http://api.example.com:443/").await.0, 200);
    assert_eq!(server.handshakes(), 1);
    // Other settings: built for the new configuration, with a pool of their own.
    mesh.update(&snapshot(&yaml("gone.pem")));
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
    // The file appears, and a new configuration reads it.
    std::fs::copy(dir.path().join("ca.pem"), dir.path().join("gone.pem")).unwrap();
    mesh.update(&snapshot(&yaml("gone.pem")));
    assert_eq!(get(&mesh, "http://api.example.com:443/").await.0, 200);
    assert_eq!(server.handshakes(), 2);
}

// ---------------------------------------------------------------------------------------
// MUTUAL

/// Client certificate files from a client CA (written as `client.pem`, `client-key.pem`
/// and returned).
fn client_files(dir: &TempDir) -> Ca {
    let client_ca = Ca::new("client CA");
    let (cert, key) = client_ca.issue(&["app.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    dir.write("client.pem", &cert);
    dir.write("client-key.pem", &key);
    client_ca
}

const MUTUAL: &str = "{tls: {mode: MUTUAL, caCertificates: ca.pem, clientCertificate: client.pem, privateKey: client-key.pem}}";

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = TempDir::new();
    let client_ca = client_files(&dir);
    let (_ca, server) = setup(
        &dir,
        &["api.example.com"],
        ClientAuth::Required(&client_ca.pem),
    )
    .await;
    let mesh = mesh_in(
        &dir,
        &external("api.example.com", "HTTP", server.port(), MUTUAL),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(" client=present "), "{body}");

    // SIMPLE to the same server: no certificate, refused by the server.
    let simple = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTP",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
        ),
    );
    let (status, _) = get(&simple, "http://api.example.com:443/").await;
    assert_eq!(status, 503);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn mutual_tls_to_a_server_that_asks_for_no_certificate_works() {
    let dir = TempDir::new();
    client_files(&dir);
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external("api.example.com", "HTTP", server.port(), MUTUAL),
    );
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(" client=none "), "{body}");
}

// ---------------------------------------------------------------------------------------
// HTTP/2, pools

#[tokio::test]
async fn http2_clusters_negotiate_h2_over_tls() {
    let dir = TempDir::new();
    let (_ca, server) = setup(
        &dir,
        &["grpc.example.com", "upgraded.example.com"],
        ClientAuth::None,
    )
    .await;
    let yaml = external(
        "grpc.example.com",
        "HTTP2",
        server.port(),
        "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
    ) + &external(
        "upgraded.example.com",
        "HTTP",
        server.port(),
        "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}, tls: {mode: SIMPLE, caCertificates: ca.pem}}",
    );
    let mesh = mesh_in(&dir, &yaml);
    for host in ["grpc.example.com", "upgraded.example.com"] {
        let (status, body) = get(&mesh, &format!("http://{host}:443/")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            format!("sni={host} alpn=h2 client=none version=HTTP/2.0 host={host}:443 path=/")
        );
    }
    // One connection per name (each its own SNI), each reused.
    for host in ["grpc.example.com", "upgraded.example.com"] {
        get(&mesh, &format!("http://{host}:443/")).await;
    }
    assert_eq!(server.handshakes(), 2);
}

#[tokio::test]
async fn plaintext_and_tls_connections_to_one_endpoint_are_pooled_apart() {
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    // Two services on the same endpoint: one originates TLS, the other says DISABLE.
    let yaml = external(
        "api.example.com",
        "HTTP",
        server.port(),
        "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
    ) + &external(
        "plain.example.com",
        "HTTP",
        server.port(),
        "{tls: {mode: DISABLE}}",
    );
    let mesh = mesh_in(&dir, &yaml);
    let (status, body) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!(status, 200, "{body}");
    // Plaintext to a TLS server: never over the pooled TLS connection.
    let (status, _) = get(&mesh, "http://plain.example.com:443/").await;
    assert_ne!(status, 200);
    assert_eq!(server.requests(), 1);
    // The TLS connection is still there, and used.
    let (status, _) = get(&mesh, "http://api.example.com:443/").await;
    assert_eq!(status, 200);
    assert_eq!(server.handshakes(), 1);
}

// ---------------------------------------------------------------------------------------
// https:// requests

#[tokio::test]
async fn https_requests_use_the_origination_of_their_destination() {
    let dir = TempDir::new();
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external(
            "api.example.com",
            "HTTPS",
            server.port(),
            "{tls: {mode: SIMPLE, caCertificates: ca.pem}}",
        ),
    );
    for _ in 0..3 {
        let (status, body) = get(&mesh, "https://api.example.com/orders").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            "sni=api.example.com alpn=http/1.1 client=none version=HTTP/1.1 host=api.example.com path=/orders"
        );
    }
    assert_eq!(server.handshakes(), 1);
}

#[tokio::test]
async fn https_requests_without_origination_are_verified_with_the_system_roots() {
    let dir = TempDir::new();
    // A private CA no system trusts: the server cannot be verified.
    let (_ca, server) = setup(&dir, &["api.example.com"], ClientAuth::None).await;
    let mesh = mesh_in(
        &dir,
        &external("api.example.com", "HTTPS", server.port(), ""),
    );
    let (status, body) = get(&mesh, "https://api.example.com/").await;
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn https_requests_are_never_sent_in_cleartext() {
    // A destination outside the registry (ALLOW_ANY), over a raw socket: what arrives is
    // a TLS ClientHello, not the request.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new();
    let mesh = mesh_in(&dir, &external("unrelated.example.com", "HTTP", 1, ""));
    let call =
        tokio::spawn(async move { get(&mesh, &format!("https://127.0.0.1:{port}/secret")).await });
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
        .await
        .expect("a connection")
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let seen = &buf[..n];
    assert_eq!(
        seen.first(),
        Some(&0x16),
        "a TLS handshake record: {seen:?}"
    );
    let text = String::from_utf8_lossy(seen);
    assert!(
        !text.contains("secret") && !text.contains("s3cr3t"),
        "{text}"
    );
    drop(s);
    drop(l);
    let (status, body) = call.await.unwrap();
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE));
}

#[tokio::test]
async fn other_schemes_are_still_refused() {
    let dir = TempDir::new();
    let mesh = mesh_in(&dir, &external("api.example.com", "HTTP", 1, ""));
    let req = Request::get("ftp://api.example.com/file")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = mesh.client().oneshot(req).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<mesh_tower::UnsupportedScheme>(),
        Some(&mesh_tower::UnsupportedScheme {
            scheme: "ftp".into()
        }),
        "{err}"
    );
}
