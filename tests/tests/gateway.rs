//! The ingress gateway end to end: Istio `Gateway` resources served on 127.0.0.1
//! (ephemeral ports) in front of real backends — host matching, bound VirtualServices,
//! HTTPS redirects, TLS termination (SIMPLE and MUTUAL, certificates made by rcgen at
//! test time) and live updates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::{ConfigSet, Snapshot};
use mesh_tests::{get, named, serve, service, snapshot};
use mesh_tower::{GatewayError, IngressGateway, MeshRuntime, Workload};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------------------
// Configuration

/// A Gateway `name` (namespace `default`) selecting `istio: ingressgateway`, with
/// `servers` (YAML list items at the indentation of `servers:` entries).
fn gateway(name: &str, servers: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
    )
}

/// A plaintext HTTP server on `port` for `hosts` (a YAML flow list body).
fn http_server(port: u32, hosts: &str) -> String {
    format!(
        "  - port: {{number: {port}, name: http-{port}, protocol: HTTP}}\n    hosts: [{hosts}]\n"
    )
}

/// A VirtualService `name` for `hosts`, bound to `gateways` (flow list bodies; no
/// `gateways:` field when empty), with `http` rules.
fn vs(name: &str, hosts: &str, gateways: &str, http: &str) -> String {
    let gateways = if gateways.is_empty() {
        String::new()
    } else {
        format!("  gateways: [{gateways}]\n")
    };
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{hosts}]\n{gateways}  http:\n{http}"
    )
}

/// A rule sending everything to `host` port 9080.
fn to(host: &str) -> String {
    format!("  - route: [{{destination: {{host: {host}, port: {{number: 9080}}}}}}]\n")
}

fn gateway_workload() -> Workload {
    Workload::new("istio-ingressgateway", "istio-system").labels([("istio", "ingressgateway")])
}

/// Binds a gateway for `snap` with every server port in `ports` on 127.0.0.1:0 and
/// serves it until the test ends.
fn start(config: &MeshRuntime, _snap: &Snapshot, ports: &[u32]) -> (IngressGateway, Addrs) {
    let map: BTreeMap<u32, SocketAddr> = ports
        .iter()
        .map(|p| (*p, "127.0.0.1:0".parse().unwrap()))
        .collect();
    let gw = IngressGateway::bind(config, gateway_workload(), &map)
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addrs = Addrs(gw.local_addrs().into_iter().collect());
    tokio::spawn(gw.clone().serve(std::future::pending::<()>()));
    (gw, addrs)
}

/// Server port → local address.
struct Addrs(BTreeMap<u32, SocketAddr>);

impl Addrs {
    fn of(&self, port: u32) -> SocketAddr {
        *self
            .0
            .get(&port)
            .unwrap_or_else(|| panic!("port {port} not listened on"))
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// A GET over `io` (HTTP/1.1) with `Host: host`: status, body, headers.
async fn send<IO>(io: IO, host: &str, path: &str) -> Result<(u16, String, HeaderMap), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
        parts.headers,
    ))
}

/// A plaintext GET to `addr`.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String, HeaderMap) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    send(tcp, host, path).await.unwrap()
}

/// A GET over TLS to `addr` with SNI and `Host` `host`, trusting `ca`, presenting
/// `client` (certificate and key PEM) when given. Any TLS or HTTP failure is an `Err`.
async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca: &str,
    client: Option<&(String, String)>,
) -> Result<(u16, String, HeaderMap), String> {
    let tls = tls_connect(addr, host, ca, client, false).await?;
    send(tls, host, path)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// A TLS connection to `addr` with SNI `host`, trusting `ca`, presenting `client` when
/// given, offering ALPN `h2` when `h2`.
async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    ca: &str,
    client: Option<&(String, String)>,
    h2: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let mut config = config;
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(host.to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

// ---------------------------------------------------------------------------------------
// Certificates

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-gateway-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (server or client), and its key: PEM.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Loads every YAML file of `dir` (so that relative certificate paths resolve there).
fn load_dir(dir: &Path) -> Snapshot {
    let checked = ConfigSet::load(&[dir]).unwrap().check();
    match checked.snapshot {
        Some(s) => s,
        None => panic!(
            "invalid configuration:\n{}",
            checked
                .diagnostics
                .iter()
                .map(|d| d.short())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Plaintext

#[tokio::test]
async fn bookinfo_gateway_routes_productpage_and_404s_unmatched_paths() {
    let productpage = named("productpage").await;
    // Istio's samples/bookinfo/networking/bookinfo-gateway.yaml, as it is.
    let cfg = service("productpage", "HTTP", &[("v1", productpage.port())])
        + &gateway("bookinfo-gateway", &http_server(80, "\"*\""))
        + &vs(
            "bookinfo",
            "\"*\"",
            "bookinfo-gateway",
            "  - match:\n    - uri: {exact: /productpage}\n    - uri: {prefix: /static}\n    - uri: {exact: /login}\n    - uri: {exact: /logout}\n    - uri: {prefix: /api/v1/products}\n    route:\n    - destination: {host: productpage, port: {number: 9080}}\n",
        );
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    let host = format!("localhost:{}", gw.port());

    let (status, body, _) = http_get(gw, &host, "/productpage").await;
    assert_eq!((status, body.as_str()), (200, "productpage"));
    assert_eq!(
        http_get(gw, &host, "/static/style.css").await.1,
        "productpage"
    );
    assert_eq!(
        http_get(gw, "bookinfo.example.com", "/api/v1/products/1")
            .await
            .0,
        200
    );
    // No rule matches: Envoy's 404 with an empty body, and nothing reached the backend.
    let (status, body, _) = http_get(gw, &host, "/admin").await;
    assert_eq!((status, body.as_str()), (404, ""));
    assert_eq!(productpage.hits(), 3);

    // The backend sees the authority the client wrote, and the downstream scheme.
    let seen = productpage.seen();
    assert_eq!(seen[0].path, "/productpage");
    assert_eq!(seen[0].headers["host"], host.as_str());
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
    assert_eq!(seen[2].headers["host"], "bookinfo.example.com");
}

#[tokio::test]
async fn a_virtual_service_not_bound_to_the_gateway_does_not_apply_there() {
    let (gw_backend, mesh_backend) = (named("gateway").await, named("mesh").await);
    let cfg = service("frontend", "HTTP", &[("v1", gw_backend.port())])
        + &service("internal", "HTTP", &[("v1", mesh_backend.port())])
        + &gateway("public", &http_server(80, "\"*\""))
        // Bound to the gateway: every host.
        + &vs("public", "\"*\"", "public", &to("frontend"))
        // Not bound (mesh only), for one host, and more specific.
        + &vs("shop", "shop.example.com", "", &to("internal"))
        // Bound to another gateway only, which selects other workloads.
        + &gateway("elsewhere", &http_server(80, "\"*\"")).replace("ingressgateway", "egressgateway")
        + &vs("other", "other.example.com", "elsewhere", &to("internal"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);

    assert_eq!(http_get(gw, "shop.example.com", "/").await.1, "gateway");
    assert_eq!(http_get(gw, "other.example.com", "/").await.1, "gateway");
    assert_eq!(mesh_backend.hits(), 0);
    // Workload traffic still uses the mesh VirtualService.
    let m = config.workload(Workload::new("client", "default"));
    assert_eq!(get(&m, "http://shop.example.com/", &[]).await.1, "mesh");
}

#[tokio::test]
async fn a_gateway_with_no_bound_virtual_service_answers_404() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway("lonely", &http_server(80, "\"*\""))
        + &vs("mesh-only", "\"*.example.com\"", "", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let (status, body, _) = http_get(addrs.of(80), "a.example.com", "/").await;
    assert_eq!((status, body.as_str()), (404, ""));
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn server_hosts_decide_which_requests_are_served() {
    let backend = named("served").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway(
            "hosts",
            &http_server(80, "a.example.com, \"*.wild.example.com\""),
        )
        + &vs("all", "\"*\"", "hosts", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    let status = |host: &'static str| async move { http_get(gw, host, "/").await.0 };

    assert_eq!(status("a.example.com").await, 200);
    assert_eq!(status("A.Example.COM:8080").await, 200);
    assert_eq!(status("x.wild.example.com").await, 200);
    assert_eq!(status("x.y.wild.example.com").await, 200);
    // Another host, and the wildcard's own domain: no server, Envoy's empty 404.
    let (code, body, _) = http_get(gw, "b.example.com", "/").await;
    assert_eq!((code, body.as_str()), (404, ""));
    assert_eq!(status("wild.example.com").await, 404);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn the_most_specific_server_host_picks_the_gateway() {
    let (exact, star) = (named("exact").await, named("star").await);
    let cfg = service("exact", "HTTP", &[("v1", exact.port())])
        + &service("star", "HTTP", &[("v1", star.port())])
        // Sorted first by name, yet less specific.
        + &gateway("a-star", &http_server(80, "\"*\""))
        + &gateway("b-wild", &http_server(80, "\"*.example.com\""))
        + &gateway("c-exact", &http_server(80, "a.example.com"))
        // As specific as `a-star`, sorted after it by name: never picked.
        + &gateway("z-star", &http_server(80, "\"*\""))
        + &vs("star", "\"*\"", "a-star", &to("star"))
        + &vs("z-star", "\"*\"", "z-star", &to("exact"))
        + &vs("wild", "\"*\"", "b-wild", &to("exact"))
        + &vs("exact", "\"*\"", "c-exact", &to("exact"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    assert_eq!(http_get(gw, "a.example.com", "/").await.1, "exact");
    assert_eq!(http_get(gw, "b.example.com", "/").await.1, "exact");
    assert_eq!(http_get(gw, "example.org", "/").await.1, "star");
    assert_eq!((exact.hits(), star.hits()), (2, 1));
}

#[tokio::test]
async fn virtual_service_port_matches_see_the_gateway_server_port() {
    let (a, b) = (named("port-8080").await, named("port-80").await);
    let cfg = service("a", "HTTP", &[("v1", a.port())])
        + &service("b", "HTTP", &[("v1", b.port())])
        + &gateway(
            "ports",
            &(http_server(80, "\"*\"") + &http_server(8080, "\"*\"")),
        )
        + &vs(
            "ports",
            "\"*\"",
            "ports",
            &(String::from(
                "  - match: [{port: 8080}]\n    route: [{destination: {host: a, port: {number: 9080}}}]\n",
            ) + &to("b")),
        );
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    // Both listen on ephemeral ports: what counts is the Gateway's port number.
    let (_, addrs) = start(&config, &snap, &[80, 8080]);
    assert_eq!(
        http_get(addrs.of(8080), "x.example.com", "/").await.1,
        "port-8080"
    );
    assert_eq!(
        http_get(addrs.of(80), "x.example.com", "/").await.1,
        "port-80"
    );
    // The upstream sees the client's authority, not the server port.
    assert_eq!(a.seen()[0].headers["host"], "x.example.com");
}

#[tokio::test]
async fn namespaced_server_hosts_admit_only_their_namespace() {
    let backend = named("backend").await;
    // A server for `team-a/*` only: the `default` VirtualService may not bind to it.
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway(
            "scoped",
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"team-a/*\", \"./open.example.com\"]\n",
        )
        + &vs("all", "\"*\"", "scoped", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    // `./` is the Gateway's namespace (`default`), where the VirtualService is.
    assert_eq!(http_get(gw, "open.example.com", "/").await.0, 200);
    assert_eq!(http_get(gw, "closed.example.com", "/").await.0, 404);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn https_redirect_answers_301_to_https() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway(
            "redirect",
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n    tls: {httpsRedirect: true}\n",
        )
        + &vs("all", "\"*\"", "redirect", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    // Envoy's `require_tls`: `https://` + the Host as received (port kept) + the path.
    let host = format!("Shop.example.com:{}", addrs.of(80).port());
    let (status, body, headers) = http_get(addrs.of(80), &host, "/cart?item=7").await;
    assert_eq!((status, body.as_str()), (301, ""));
    assert_eq!(headers["location"], format!("https://{host}/cart?item=7"));
    let (status, _, headers) = http_get(addrs.of(80), "shop.example.com", "/").await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "https://shop.example.com/");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn unmapped_ports_and_unsupported_servers_are_skipped() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway(
            "mixed",
            &(http_server(80, "\"*\"")
                + &http_server(81, "\"*\"")
                + "  - port: {number: 443, name: tls, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n"
                + "  - port: {number: 8443, name: secret, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: bookinfo-secret}\n"),
        )
        + &vs("all", "\"*\"", "mixed", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    // 81 is not mapped; 443 and 8443 are, but their servers are not supported.
    let (_, addrs) = start(&config, &snap, &[80, 443, 8443]);
    assert_eq!(addrs.0.keys().copied().collect::<Vec<_>>(), vec![80]);
    assert_eq!(http_get(addrs.of(80), "x", "/").await.0, 200);
}

// ---------------------------------------------------------------------------------------
// Live configuration

#[tokio::test]
async fn after_update_the_gateway_routes_by_the_new_rules_and_hosts() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let base = service(
        "productpage",
        "HTTP",
        &[("v1", v1.port()), ("v2", v2.port())],
    );
    let rule = |subset: &str| {
        format!(
            "  - match: [{{uri: {{exact: /productpage}}}}]\n    route: [{{destination: {{host: productpage, subset: {subset}, port: {{number: 9080}}}}}}]\n"
        )
    };
    let before = snapshot(
        &(base.clone()
            + &gateway("bookinfo-gateway", &http_server(80, "a.example.com"))
            + &vs("bookinfo", "\"*\"", "bookinfo-gateway", &rule("v1"))),
    );
    let config = MeshRuntime::from_snapshot(&before);
    let (handle, addrs) = start(&config, &before, &[80]);
    let gw = addrs.of(80);
    assert_eq!(http_get(gw, "a.example.com", "/productpage").await.1, "v1");
    assert_eq!(http_get(gw, "b.example.com", "/productpage").await.0, 404);
    assert_eq!(handle.version(), before.version());

    let after = snapshot(
        &(base
            + &gateway("bookinfo-gateway", &http_server(80, "b.example.com"))
            + &vs("bookinfo", "\"*\"", "bookinfo-gateway", &rule("v2"))),
    );
    config.update(&after);
    assert_eq!(handle.version(), after.version());
    assert_eq!(http_get(gw, "b.example.com", "/productpage").await.1, "v2");
    assert_eq!(http_get(gw, "a.example.com", "/productpage").await.0, 404);
    assert_eq!((v1.hits(), v2.hits()), (1, 1));
}

// ---------------------------------------------------------------------------------------
// TLS

/// A SIMPLE (or MUTUAL with `ca.pem`) HTTPS server on 443 for `hosts`, its files named
/// relative to the YAML file.
fn tls_server(mode: &str, hosts: &str) -> String {
    let ca = if mode == "MUTUAL" {
        ", caCertificates: ca.pem"
    } else {
        ""
    };
    format!(
        "  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [{hosts}]\n    tls: {{mode: {mode}, serverCertificate: server.pem, privateKey: server-key.pem{ca}}}\n"
    )
}

/// Writes the certificates of `secure.example.com` and the configuration into `dir`;
/// returns the CA.
fn tls_setup(dir: &TempDir, mode: &str, backend_port: u16) -> Ca {
    let ca = Ca::new("mesh-rs test CA");
    let (cert, key) = ca.issue(&["secure.example.com"], ExtendedKeyUsagePurpose::ServerAuth);
    dir.write("server.pem", &cert);
    dir.write("server-key.pem", &key);
    dir.write("ca.pem", &ca.pem);
    dir.write(
        "gateway.yaml",
        &(gateway("secure", &tls_server(mode, "secure.example.com"))
            + &vs("secure", "\"*\"", "secure", &to("frontend"))),
    );
    dir.write(
        "services.yaml",
        &service("frontend", "HTTP", &[("v1", backend_port)]),
    );
    ca
}

#[tokio::test]
async fn simple_tls_terminates_with_files_next_to_the_yaml() {
    let backend = named("secret").await;
    let dir = TempDir::new();
    let ca = tls_setup(&dir, "SIMPLE", backend.port());
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[443]);
    let gw = addrs.of(443);

    let (status, body, _) = https_get(gw, "secure.example.com", "/account", &ca.pem, None)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "secret"));
    let seen = backend.seen();
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    assert_eq!(seen[0].headers["host"], "secure.example.com");
    assert_eq!(seen[0].path, "/account");

    // A name no server serves: no handshake (Envoy has no filter chain for it).
    let other = https_get(gw, "other.example.com", "/", &ca.pem, None).await;
    assert!(other.is_err(), "{other:?}");
    // A client that does not trust the CA refuses the certificate.
    let stranger = Ca::new("another CA");
    let untrusted = https_get(gw, "secure.example.com", "/", &stranger.pem, None).await;
    assert!(untrusted.is_err(), "{untrusted:?}");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn http2_over_tls_is_routed_by_its_authority() {
    let backend = named("h2").await;
    let dir = TempDir::new();
    let ca = tls_setup(&dir, "SIMPLE", backend.port());
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[443]);

    let tls = tls_connect(addrs.of(443), "secure.example.com", &ca.pem, None, true)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // HTTP/2 has no `Host` header: the host is the `:authority`.
    let req = Request::get("https://secure.example.com/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "h2");
    let seen = backend.seen();
    assert_eq!(seen[0].headers["host"], "secure.example.com");
    assert_eq!(seen[0].path, "/h2");
}

#[tokio::test]
async fn several_tls_servers_on_one_port_are_chosen_by_sni() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = TempDir::new();
    let ca = Ca::new("mesh-rs test CA");
    for name in ["a", "b"] {
        let (cert, key) = ca.issue(
            &[&format!("{name}.example.com")],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        dir.write(&format!("{name}.pem"), &cert);
        dir.write(&format!("{name}-key.pem"), &key);
    }
    let server = |name: &str| {
        format!(
            "  - port: {{number: 443, name: https-{name}, protocol: HTTPS}}\n    hosts: [{name}.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {name}.pem, privateKey: {name}-key.pem}}\n"
        )
    };
    dir.write(
        "gateway.yaml",
        &(gateway("two", &(server("a") + &server("b")))
            + &service("svc-a", "HTTP", &[("v1", a.port())])
            + &service("svc-b", "HTTP", &[("v1", b.port())])
            + &vs("a", "a.example.com", "two", &to("svc-a"))
            + &vs("b", "b.example.com", "two", &to("svc-b"))),
    );
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[443]);
    let gw = addrs.of(443);
    // Each name gets its own certificate (the client verifies it against the name).
    for name in ["a", "b"] {
        let host = format!("{name}.example.com");
        let (status, body, _) = https_get(gw, &host, "/", &ca.pem, None).await.unwrap();
        assert_eq!((status, body.as_str()), (200, name));
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let backend = named("mutual").await;
    let dir = TempDir::new();
    let ca = tls_setup(&dir, "MUTUAL", backend.port());
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[443]);
    let gw = addrs.of(443);
    let host = "secure.example.com";

    // No client certificate: the server refuses the handshake (with TLS 1.3 the client
    // learns it on its first read).
    let anonymous = https_get(gw, host, "/", &ca.pem, None).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    // A certificate from another CA: refused too.
    let stranger = Ca::new("another CA").issue(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let refused = https_get(gw, host, "/", &ca.pem, Some(&stranger)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(backend.hits(), 0);

    let client = ca.issue(&["client.example.com"], ExtendedKeyUsagePurpose::ClientAuth);
    let (status, body, _) = https_get(gw, host, "/", &ca.pem, Some(&client))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "mutual"));
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_missing_certificate_file_is_an_error_naming_it() {
    let dir = TempDir::new();
    tls_setup(&dir, "SIMPLE", 1);
    std::fs::remove_file(dir.path().join("server.pem")).unwrap();
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let ports = BTreeMap::from([(443, "127.0.0.1:0".parse().unwrap())]);
    let err = IngressGateway::bind(&config, gateway_workload(), &ports).unwrap_err();
    match &err {
        GatewayError::ReadFile {
            server,
            field,
            path,
            ..
        } => {
            assert_eq!(&*server.gateway, "default/secure");
            assert_eq!(server.port, 443);
            assert_eq!(*field, "serverCertificate");
            assert_eq!(path, &dir.path().join("server.pem"));
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("Gateway default/secure"), "{message}");
    assert!(message.contains("server.pem"), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_pem_is_an_error_naming_it() {
    let dir = TempDir::new();
    tls_setup(&dir, "SIMPLE", 1);
    dir.write("server-key.pem", "not a key\n");
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let ports = BTreeMap::from([(443, "127.0.0.1:0".parse().unwrap())]);
    let err = IngressGateway::bind(&config, gateway_workload(), &ports).unwrap_err();
    assert!(
        matches!(&err, GatewayError::Pem { field: "privateKey", path, .. } if path.ends_with("server-key.pem")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Virtual hosts: VirtualService hosts ∩ server hosts, merged across the servers of a port

/// Writes `request` (raw HTTP/1.1) to `addr` and reads what comes back until the server
/// closes the connection (3 s at most).
async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Two Gateways on port 80: `catch-all` (`*`) with a VirtualService for
/// `shop.example.com`, and `wild` (`*.example.com`) with one for `*.example.com`. Istio
/// merges the servers of a port into one route configuration whose virtual hosts are
/// the VirtualService hosts intersected with the server hosts: `shop.example.com` is an
/// exact virtual host, chosen before `*.example.com`, whatever the servers' hosts.
#[tokio::test]
async fn the_most_specific_virtual_service_host_wins_across_gateways_of_a_port() {
    let (shop, other) = (named("shop").await, named("other").await);
    let cfg = service("shop", "HTTP", &[("v1", shop.port())])
        + &service("other", "HTTP", &[("v1", other.port())])
        + &gateway("catch-all", &http_server(80, "\"*\""))
        + &gateway("wild", &http_server(80, "\"*.example.com\""))
        + &vs("shop", "shop.example.com", "catch-all", &to("shop"))
        + &vs("wild", "\"*.example.com\"", "wild", &to("other"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    let resp = raw(
        gw,
        "GET / HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.ends_with("shop"), "{resp}");
    assert_eq!(http_get(gw, "cart.example.com", "/").await.1, "other");
    // `catch-all`'s VirtualService has no other host: nothing for other names.
    assert_eq!(http_get(gw, "example.org", "/").await.0, 404);
}

/// The most specific *server* host (`*.example.com`, Gateway `wild`) has no
/// VirtualService for the name; a less specific server's Gateway (`*`) has one: Istio
/// has a virtual host for it, the request is served.
#[tokio::test]
async fn a_less_specific_server_answers_when_the_more_specific_ones_has_no_virtual_service() {
    let shop = named("shop").await;
    let cfg = service("shop", "HTTP", &[("v1", shop.port())])
        + &gateway("catch-all", &http_server(80, "\"*\""))
        + &gateway("wild", &http_server(80, "\"*.example.com\""))
        + &vs("all", "\"*\"", "catch-all", &to("shop"))
        + &vs("elsewhere", "other.org", "wild", &to("shop"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let (status, body, _) = http_get(addrs.of(80), "shop.example.com", "/").await;
    assert_eq!((status, body.as_str()), (200, "shop"));
    // `other.org` is outside `wild`'s hosts: only `catch-all`'s `*` answers it.
    assert_eq!(http_get(addrs.of(80), "other.org", "/").await.1, "shop");
}

/// Two Gateways' VirtualServices for `*` share one virtual host: their routes are
/// tried in order, except that Istio moves catch-all routes (no condition but a `/`
/// prefix) to the end (`SortVHostRoutes`).
#[tokio::test]
async fn merged_routes_are_tried_in_order_with_catch_all_routes_last() {
    let (first, second) = (named("first").await, named("second").await);
    let cfg = service("first", "HTTP", &[("v1", first.port())])
        + &service("second", "HTTP", &[("v1", second.port())])
        + &gateway("a", &http_server(80, "\"*\""))
        + &gateway("b", &http_server(80, "\"*\""))
        + &vs(
            "first",
            "\"*\"",
            "a",
            &(String::from(
                "  - match: [{uri: {prefix: /first}}]\n    route: [{destination: {host: first, port: {number: 9080}}}]\n",
            ) + &to("first")),
        )
        + &vs(
            "second",
            "\"*\"",
            "b",
            "  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: second, port: {number: 9080}}}]\n",
        );
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    assert_eq!(http_get(gw, "x.example.com", "/api/v1").await.1, "second");
    assert_eq!(http_get(gw, "x.example.com", "/first").await.1, "first");
    assert_eq!(http_get(gw, "x.example.com", "/other").await.1, "first");
}

/// VirtualService rule changes apply with `MeshRuntime::update`: the gateway's
/// virtual hosts are rebuilt for the new configuration.
#[tokio::test]
async fn virtual_service_rules_follow_the_mesh_configuration_at_once() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let base = service(
        "productpage",
        "HTTP",
        &[("v1", v1.port()), ("v2", v2.port())],
    ) + &gateway("bookinfo-gateway", &http_server(80, "\"*\""));
    let rule = |subset: &str| {
        format!(
            "  - route: [{{destination: {{host: productpage, subset: {subset}, port: {{number: 9080}}}}}}]\n"
        )
    };
    let before =
        snapshot(&(base.clone() + &vs("bookinfo", "\"*\"", "bookinfo-gateway", &rule("v1"))));
    let config = MeshRuntime::from_snapshot(&before);
    let (_, addrs) = start(&config, &before, &[80]);
    assert_eq!(http_get(addrs.of(80), "a.example.com", "/").await.1, "v1");
    let after = snapshot(&(base + &vs("bookinfo", "\"*\"", "bookinfo-gateway", &rule("v2"))));
    config.update(&after);
    assert_eq!(http_get(addrs.of(80), "a.example.com", "/").await.1, "v2");
}

// ---------------------------------------------------------------------------------------
// Headers

/// An HTTP/1.1 request in absolute form: the virtual host and the route are chosen by
/// the URI's authority, and that authority is the `Host` the upstream receives (Envoy,
/// RFC 9112 §3.2.2), not the `Host` the client also wrote.
#[tokio::test]
async fn an_absolute_form_request_reaches_the_upstream_with_the_routed_authority() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway("public", &http_server(80, "public.example.com"))
        + &vs("public", "public.example.com", "public", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let resp = raw(
        addrs.of(80),
        "GET http://public.example.com/ HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // An `https` absolute URI on a plaintext port is refused, as by Envoy.
    let resp = raw(
        addrs.of(80),
        "GET https://public.example.com/ HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], "public.example.com");
}

/// Istio's gateways run Envoy with `use_remote_address: true` and
/// `forward_client_cert_details: SANITIZE_SET`: a client's `x-forwarded-client-cert` and
/// `x-envoy-*` headers never reach the backend, the peer address is appended to
/// `x-forwarded-for`, and `x-forwarded-proto` is the connection's.
#[tokio::test]
async fn client_supplied_trust_headers_are_sanitized() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway("public", &http_server(80, "\"*\""))
        + &vs("public", "\"*\"", "public", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let resp = raw(
        addrs.of(80),
        "GET / HTTP/1.1\r\nHost: a.example.com\r\n\
         x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/frontend;URI=spiffe://cluster.local/ns/admin/sa/root\r\n\
         x-forwarded-for: 203.0.113.9\r\nx-forwarded-proto: https\r\n\
         x-envoy-internal: true\r\nx-envoy-external-address: 10.0.0.1\r\nx-envoy-upstream-rq-timeout-ms: 1\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = backend.seen();
    let h = &seen[0].headers;
    assert!(
        h.get("x-forwarded-client-cert").is_none(),
        "the backend got a spoofed XFCC: {:?}",
        h.get("x-forwarded-client-cert")
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.9,127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
    assert!(h.get("x-envoy-internal").is_none(), "{h:?}");
    assert!(h.get("x-envoy-upstream-rq-timeout-ms").is_none(), "{h:?}");
}

/// RFC 9110 §7.6.1: `Connection` and the headers it names, `Keep-Alive`,
/// `Proxy-Connection`, `Upgrade` and `TE` (but `trailers`) are not forwarded, in either
/// direction.
#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let backend = serve(|_, _| async {
        http::Response::builder()
            .header("connection", "x-private")
            .header("x-private", "p")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-public", "p")
            .body(http_body_util::Full::new(Bytes::from("ok")))
            .unwrap()
    })
    .await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway("public", &http_server(80, "\"*\""))
        + &vs("public", "\"*\"", "public", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let resp = raw(
        addrs.of(80),
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-End: 1\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let head = resp.to_ascii_lowercase();
    assert!(head.contains("x-public: p"), "{resp}");
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "connection: x-private",
    ] {
        assert!(!head.contains(gone), "{gone} reached the client: {resp}");
    }
    let seen = backend.seen();
    let h = &seen[0].headers;
    assert_eq!(h["x-end"], "1");
    assert_eq!(h["te"], "trailers");
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Upgrades

/// A WebSocket (HTTP/1.1 Upgrade) through the gateway: Istio's gateways proxy them.
/// The upstream's `101` reaches the client and the two upgraded connections are bridged.
#[tokio::test]
async fn a_websocket_upgrade_is_proxied() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Upstream: answers 101 and echoes whatever follows.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let cfg = service("ws", "HTTP", &[("v1", port)])
        + &gateway("public", &http_server(80, "\"*\""))
        + &vs("public", "\"*\"", "public", &to("ws"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let mut s = TcpStream::connect(addrs.of(80)).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: a.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for round in [&b"ping"[..], &b"pong!"[..]] {
        s.write_all(round).await.unwrap();
        let mut echo = vec![0u8; round.len()];
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(3), s.read_exact(&mut echo)).await;
        assert!(
            matches!(got, Ok(Ok(_))) && echo == round,
            "no echo through the upgraded connection: {got:?}"
        );
    }
    // The upstream got the upgrade headers (and the routed Host).
    let upstream = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(upstream.starts_with("get /chat http/1.1"), "{upstream}");
    assert!(upstream.contains("connection: upgrade"), "{upstream}");
    assert!(upstream.contains("upgrade: websocket"), "{upstream}");
    assert!(upstream.contains("host: a.example.com"), "{upstream}");
}

/// Upgrade protocols other than WebSocket are refused with 403, as by an Envoy
/// configured for WebSocket upgrades only; `h2c` is dropped and the request goes on as
/// HTTP/1.1.
#[tokio::test]
async fn other_upgrades_are_refused_and_h2c_is_dropped() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway("public", &http_server(80, "\"*\""))
        + &vs("public", "\"*\"", "public", &to("frontend"));
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let resp = raw(
        addrs.of(80),
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: Upgrade, close\r\nUpgrade: foo/2\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert_eq!(backend.hits(), 0);
    let resp = raw(
        addrs.of(80),
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let h = &backend.seen()[0].headers;
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h:?}");
    }
}

// ---------------------------------------------------------------------------------------
// TLS: filter chains and client certificates

/// Two HTTPS servers of one port with the same TLS settings: Istio gives each its own
/// filter chain (chosen by SNI) and route configuration, so a request on a connection
/// made for `a.example.com` is answered by `a`'s server only, whatever its `Host`.
#[tokio::test]
async fn requests_on_a_tls_connection_are_answered_by_the_server_its_sni_chose() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = TempDir::new();
    let ca = Ca::new("mesh-rs test CA");
    let (cert, key) = ca.issue(
        &["a.example.com", "b.example.com"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    dir.write("ab.pem", &cert);
    dir.write("ab-key.pem", &key);
    let server = |name: &str| {
        format!(
            "  - port: {{number: 443, name: https-{name}, protocol: HTTPS}}\n    hosts: [{name}.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: ab.pem, privateKey: ab-key.pem}}\n"
        )
    };
    dir.write(
        "gateway.yaml",
        &(gateway("two", &(server("a") + &server("b")))
            + &service("svc-a", "HTTP", &[("v1", a.port())])
            + &service("svc-b", "HTTP", &[("v1", b.port())])
            + &vs("a", "a.example.com", "two", &to("svc-a"))
            + &vs("b", "b.example.com", "two", &to("svc-b"))),
    );
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[443]);
    let gw = addrs.of(443);
    let on = |sni: &'static str, host: &'static str| {
        let pem = ca.pem.clone();
        async move {
            let tls = tls_connect(gw, sni, &pem, None, false).await.unwrap();
            send(tls, host, "/").await.unwrap()
        }
    };
    assert_eq!(on("a.example.com", "a.example.com").await.1, "a");
    assert_eq!(on("b.example.com", "b.example.com").await.1, "b");
    let (status, body, _) = on("a.example.com", "b.example.com").await;
    assert_eq!((status, body.as_str()), (404, ""));
    assert_eq!(b.hits(), 1);
}

/// On a MUTUAL server the backend gets the verified client certificate in
/// `x-forwarded-client-cert`, in Envoy's format with the fields Istio asks for
/// (`Hash`, `Cert`, `Subject`, `URI`, `DNS`), whatever the client sent in that header.
#[tokio::test]
async fn mutual_tls_forwards_the_verified_client_certificate() {
    let backend = named("mutual").await;
    let dir = TempDir::new();
    let ca = tls_setup(&dir, "MUTUAL", backend.port());
    let snap = load_dir(dir.path());
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[443]);

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "client.example.com");
    params.subject_alt_names = vec![
        rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/shop/sa/client").unwrap(),
        ),
        rcgen::SanType::DnsName(rcgen::string::Ia5String::try_from("client.example.com").unwrap()),
    ];
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let client = (cert.pem(), key.serialize_pem());

    let tls = tls_connect(
        addrs.of(443),
        "secure.example.com",
        &ca.pem,
        Some(&client),
        false,
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header(http::header::HOST, "secure.example.com")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/admin/sa/root",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);

    let seen = backend.seen();
    let xfcc = seen[0].headers["x-forwarded-client-cert"].to_str().unwrap();
    let fields: Vec<&str> = xfcc.split(';').collect();
    let digest = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .unwrap()
        .common
        .hash_provider
        .hash(cert.der());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(fields[0], format!("Hash={hex}"), "{xfcc}");
    let pem = fields[1]
        .strip_prefix("Cert=\"")
        .and_then(|c| c.strip_suffix('"'))
        .unwrap()
        .replace("%0A", "\n")
        .replace("%20", " ")
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    assert_eq!(pem, client.0, "{xfcc}");
    assert_eq!(
        &fields[2..],
        [
            "Subject=\"CN=client.example.com\"",
            "URI=spiffe://cluster.local/ns/shop/sa/client",
            "DNS=client.example.com",
        ],
        "{xfcc}"
    );
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.1");
}

/// Rules see the headers an edge proxy forwards, not what the client claimed: a
/// plaintext client's `x-forwarded-proto: https` (or `x-envoy-*`) is replaced before the
/// rules are matched, as Envoy sanitizes before routing.
#[tokio::test]
async fn rules_match_the_sanitized_headers() {
    let (secure, plain) = (named("secure").await, named("plain").await);
    let cfg = service("secure", "HTTP", &[("v1", secure.port())])
        + &service("plain", "HTTP", &[("v1", plain.port())])
        + &gateway("gw", &http_server(80, "\"*\""))
        + &vs(
            "v",
            "\"*\"",
            "gw",
            "  - match: [{headers: {x-forwarded-proto: {exact: https}}}]\n    route: [{destination: {host: secure, port: {number: 9080}}}]\n  - match: [{headers: {x-envoy-internal: {exact: \"true\"}}}]\n    route: [{destination: {host: secure, port: {number: 9080}}}]\n  - route: [{destination: {host: plain, port: {number: 9080}}}]\n",
        );
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    let spoofed = raw(
        gw,
        "GET / HTTP/1.1\r\nhost: a.example.com\r\nx-forwarded-proto: https\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(spoofed.ends_with("plain"), "{spoofed}");
    let spoofed = raw(
        gw,
        "GET / HTTP/1.1\r\nhost: a.example.com\r\nx-envoy-internal: true\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(spoofed.ends_with("plain"), "{spoofed}");
    assert_eq!(secure.hits(), 0);
}

/// Upgrades the gateway does not proxy (and CONNECT) are refused with 403 before rules
/// are matched, as Envoy's codec refuses them before its router runs: a rule that would
/// redirect does not answer them.
#[tokio::test]
async fn refused_upgrades_are_refused_before_rules_answer() {
    let cfg = gateway("gw", &http_server(80, "\"*\""))
        + &vs(
            "v",
            "\"*\"",
            "gw",
            "  - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new}\n",
        );
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let gw = addrs.of(80);
    let upgrade = raw(
        gw,
        "GET /old HTTP/1.1\r\nhost: a.example.com\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n",
    )
    .await;
    assert!(upgrade.starts_with("HTTP/1.1 403"), "{upgrade}");
    let plain = raw(
        gw,
        "GET /old HTTP/1.1\r\nhost: a.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 301"), "{plain}");
    // No virtual host at all is still a 404, whatever the upgrade.
    let cfg = gateway("gw", &http_server(80, "only.example.com"))
        + &vs("v", "only.example.com", "gw", "  - redirect: {uri: /new}\n");
    let snap = snapshot(&cfg);
    let config = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&config, &snap, &[80]);
    let missing = raw(
        addrs.of(80),
        "GET / HTTP/1.1\r\nhost: other.example.com\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n",
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}
