//! The ingress gateway's TLS end to end: SIMPLE and MUTUAL termination with certificate
//! files next to the YAML (made by rcgen at test time), the filter chain chosen by SNI,
//! HTTP/2 over TLS, certificate errors at bind time and the verified client certificate
//! forwarded in `x-forwarded-client-cert`. Plaintext serving is tested in `gateway.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::{ConfigSet, Snapshot};
use mesh_tests::gateway::{gateway, gateway_workload, send, start, to, vs};
use mesh_tests::{checked, named, service};
use mesh_tower::{GatewayError, IngressGateway, MeshRuntime};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------------------
// Clients

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

#[path = "support/pki.rs"]
mod pki;

use pki::{Ca, TempDir};

/// Loads every YAML file of `dir` (so that relative certificate paths resolve there).
fn load_dir(dir: &Path) -> Snapshot {
    checked(&ConfigSet::load(&[dir]).unwrap())
}

// ---------------------------------------------------------------------------------------
// Termination

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
/// A gateway serving `secure.example.com` on port 443 over TLS `mode` (see
/// [`tls_setup`]), routing to a backend named `name`; its files are in `dir`.
struct TlsGateway {
    backend: mesh_tests::TestServer,
    dir: TempDir,
    ca: Ca,
    runtime: MeshRuntime,
    addrs: mesh_tests::gateway::Addrs,
}

async fn tls_gateway(mode: &str, name: &'static str) -> TlsGateway {
    let backend = named(name).await;
    let dir = TempDir::new();
    let ca = tls_setup(&dir, mode, backend.port());
    let runtime = MeshRuntime::from_snapshot(&load_dir(dir.path()));
    let (_, addrs) = start(&runtime, &[443]);
    TlsGateway {
        backend,
        dir,
        ca,
        runtime,
        addrs,
    }
}

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
    let TlsGateway {
        backend,
        dir: _dir,
        ca,
        runtime: _runtime,
        addrs,
    } = tls_gateway("SIMPLE", "secret").await;
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
    let TlsGateway {
        backend,
        dir: _dir,
        ca,
        runtime: _runtime,
        addrs,
    } = tls_gateway("SIMPLE", "h2").await;

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

/// Serves, from `dir`, a Gateway with two SIMPLE TLS servers on port 443 —
/// `a.example.com` and `b.example.com`, each with the certificate `{cert(name)}.pem` and
/// key `{cert(name)}-key.pem` — routing to the backends on ports `a` and `b`; returns
/// the listener's address.
fn serve_a_and_b(dir: &TempDir, cert: impl Fn(&str) -> String, a: u16, b: u16) -> SocketAddr {
    let server = |name: &str| {
        let file = cert(name);
        format!(
            "  - port: {{number: 443, name: https-{name}, protocol: HTTPS}}\n    hosts: [{name}.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {file}.pem, privateKey: {file}-key.pem}}\n"
        )
    };
    dir.write(
        "gateway.yaml",
        &(gateway("two", &(server("a") + &server("b")))
            + &service("svc-a", "HTTP", &[("v1", a)])
            + &service("svc-b", "HTTP", &[("v1", b)])
            + &vs("a", "a.example.com", "two", &to("svc-a"))
            + &vs("b", "b.example.com", "two", &to("svc-b"))),
    );
    let runtime = MeshRuntime::from_snapshot(&load_dir(dir.path()));
    let (_, addrs) = start(&runtime, &[443]);
    addrs.of(443)
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
    let gw = serve_a_and_b(&dir, str::to_string, a.port(), b.port());
    // Each name gets its own certificate (the client verifies it against the name).
    for name in ["a", "b"] {
        let host = format!("{name}.example.com");
        let (status, body, _) = https_get(gw, &host, "/", &ca.pem, None).await.unwrap();
        assert_eq!((status, body.as_str()), (200, name));
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let TlsGateway {
        backend,
        dir: _dir,
        ca,
        runtime: _runtime,
        addrs,
    } = tls_gateway("MUTUAL", "mutual").await;
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let ports = BTreeMap::from([(443, "127.0.0.1:0".parse().unwrap())]);
    let err = IngressGateway::bind(&runtime, gateway_workload(), &ports).unwrap_err();
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let ports = BTreeMap::from([(443, "127.0.0.1:0".parse().unwrap())]);
    let err = IngressGateway::bind(&runtime, gateway_workload(), &ports).unwrap_err();
    assert!(
        matches!(&err, GatewayError::Pem { field: "privateKey", path, .. } if path.ends_with("server-key.pem")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Filter chains and client certificates

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
    let gw = serve_a_and_b(&dir, |_| "ab".to_string(), a.port(), b.port());
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
    let TlsGateway {
        backend,
        dir: _dir,
        ca,
        runtime: _runtime,
        addrs,
    } = tls_gateway("MUTUAL", "mutual").await;

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
