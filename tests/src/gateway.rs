//! Ingress gateway helpers shared by the gateway test files: the configuration they
//! write (Gateways, servers, VirtualServices), the gateway they start on 127.0.0.1 and a
//! plain HTTP/1.1 client.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_tower::{IngressGateway, MeshRuntime, Workload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Configuration

/// A Gateway `name` (namespace `default`) selecting `istio: ingressgateway`, with
/// `servers` (YAML list items at the indentation of `servers:` entries).
pub fn gateway(name: &str, servers: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
    )
}

/// A plaintext HTTP server on `port` for `hosts` (a YAML flow list body).
pub fn http_server(port: u32, hosts: &str) -> String {
    format!(
        "  - port: {{number: {port}, name: http-{port}, protocol: HTTP}}\n    hosts: [{hosts}]\n"
    )
}

/// A VirtualService `name` for `hosts`, bound to `gateways` (flow list bodies; no
/// `gateways:` field when empty), with `http` rules.
pub fn vs(name: &str, hosts: &str, gateways: &str, http: &str) -> String {
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
pub fn to(host: &str) -> String {
    format!("  - route: [{{destination: {{host: {host}, port: {{number: 9080}}}}}}]\n")
}

/// The workload the test gateways run as: `istio-ingressgateway` in `istio-system`,
/// labelled `istio: ingressgateway` (what [`gateway`] selects).
pub fn gateway_workload() -> Workload {
    Workload::new("istio-ingressgateway", "istio-system").labels([("istio", "ingressgateway")])
}

/// Binds a gateway of `runtime`'s configuration with every server port in `ports` on
/// 127.0.0.1:0 and serves it until the test ends.
pub fn start(runtime: &MeshRuntime, ports: &[u32]) -> (IngressGateway, Addrs) {
    let map: BTreeMap<u32, SocketAddr> = ports
        .iter()
        .map(|p| (*p, SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect();
    let gw = IngressGateway::bind(runtime, gateway_workload(), &map)
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addrs = Addrs(gw.local_addrs().into_iter().collect());
    tokio::spawn(gw.clone().serve(std::future::pending::<()>()));
    (gw, addrs)
}

/// Server port → local address.
pub struct Addrs(pub BTreeMap<u32, SocketAddr>);

impl Addrs {
    /// The local address of server port `port`; panics when it is not listened on.
    pub fn of(&self, port: u32) -> SocketAddr {
        *self
            .0
            .get(&port)
            .unwrap_or_else(|| panic!("port {port} not listened on"))
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// A GET over `io` (HTTP/1.1) with `Host: host`: status, body, headers.
pub async fn send<IO>(
    io: IO,
    host: &str,
    path: &str,
) -> Result<(u16, String, HeaderMap), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("request");
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
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String, HeaderMap) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    send(tcp, host, path).await.expect("request")
}
