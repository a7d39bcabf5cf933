//! `meshctl route --gateway` explains exactly what the running ingress gateway does: the
//! same requests go through a real `IngressGateway` (in front of real servers on
//! 127.0.0.1) and through the real `meshctl` binary, and every answer agrees — virtual
//! host choice (exact, wildcard, `*`, merged across the servers of a port), rule order
//! across VirtualServices (catch-all routes last), header matches, redirects, direct
//! responses, Envoy's `require_tls` redirect, and 404s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_tests::{TestServer, serve};
use mesh_tower::{IngressGateway, MeshRuntime, Workload};

/// A backend answering with its own service host.
async fn backend(host: &'static str) -> TestServer {
    serve(move |_, _| async move { http::Response::new(Full::new(Bytes::from(host))) }).await
}

fn service_entry(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
    )
}

const GATEWAYS: &str = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.shop.example.com"]
  - port: {number: 80, name: http-secure, protocol: HTTP}
    hosts: [secure.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: ["*"]
  gateways: [public]
  http:
  - match: [{uri: {prefix: /api}, headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: b.default.svc.cluster.local}}]
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: a.default.svc.cluster.local}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: ["*.shop.example.com"]
  gateways: [shop]
  http:
  - route: [{destination: {host: a.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart}
spec:
  hosts: ["*.shop.example.com"]
  gateways: [shop]
  http:
  - match: [{uri: {prefix: /cart}}]
    route: [{destination: {host: b.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: books}
spec:
  hosts: [books.shop.example.com]
  gateways: [public, shop]
  http:
  - match: [{uri: {prefix: /cart}, port: 80}]
    route: [{destination: {host: c.default.svc.cluster.local}}]
  - route: [{destination: {host: a.default.svc.cluster.local}}]
"#;

/// What the gateway answered, normalized.
async fn through_gateway(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    match (status, location) {
        (404, _) => "404".into(),
        (s, Some(l)) if (300..400).contains(&s) => format!("redirect {s} {l}"),
        (200, None) => format!("forward {body}"),
        (s, _) => format!("direct {s} {body}"),
    }
}

/// What `meshctl route --gateway` says, normalized the same way.
fn through_meshctl(dir: &Path, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.args(["route", "--output", "json", "--gateway", "default/public"])
        .args(["--source-namespace", "istio-system", "--config"])
        .arg(dir);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg(format!("http://{host}{path}"));
    let out = cmd.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    if let Some(err) = v["error"].as_str() {
        assert!(err.contains("404"), "{err}");
        return "404".into();
    }
    if let Some(r) = v["redirect"].as_object() {
        return format!(
            "redirect {} {}",
            r["status"],
            r["location"].as_str().unwrap()
        );
    }
    if let Some(d) = v["direct_response"].as_object() {
        return format!("direct {} {}", d["status"], d["body"].as_str().unwrap());
    }
    let dests = v["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 1, "{v}");
    let host = dests[0]["host"].as_str().unwrap();
    format!("forward {}", host.split('.').next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshctl_route_gateway_and_the_running_gateway_agree() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let dir = tempfile::tempdir().unwrap();
    let yaml = service_entry("a", a.port())
        + &service_entry("b", b.port())
        + &service_entry("c", c.port())
        + GATEWAYS;
    std::fs::write(dir.path().join("config.yaml"), &yaml).unwrap();
    let snapshot = mesh_config::ConfigSet::load(&[dir.path()])
        .unwrap()
        .check()
        .snapshot
        .expect("valid configuration");
    let runtime = MeshRuntime::from_snapshot(&snapshot);
    let workload = Workload::new("ingress", "istio-system").labels([("istio", "ingressgateway")]);
    let ports = BTreeMap::from([(80, "127.0.0.1:0".parse().unwrap())]);
    let gateway = IngressGateway::bind(&runtime, workload, &ports).unwrap();
    let addr = gateway.local_addr(80).unwrap();
    tokio::spawn(gateway.serve(std::future::pending::<()>()));

    // (host, path, headers, what both must say)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("x.org", "/api/items", &[], "forward a"),
        ("x.org", "/api/items", &[("x-version", "v2")], "forward b"),
        (
            "x.org",
            "/old?q=1",
            &[],
            "redirect 301 http://x.org/new?q=1",
        ),
        ("x.org", "/teapot", &[], "direct 418 short and stout"),
        ("x.org", "/nothing", &[], "404"),
        // `*.shop.example.com` (the shop Gateway): two VirtualServices merged, the
        // catch-all route of the first after the specific route of the second
        ("toys.shop.example.com", "/cart/1", &[], "forward b"),
        ("toys.shop.example.com", "/", &[], "forward a"),
        // an exact host bound to both Gateways: its own virtual host
        ("books.shop.example.com", "/cart/1", &[], "forward c"),
        ("BOOKS.shop.example.com", "/x", &[], "forward a"),
        // the httpsRedirect server's host
        (
            "secure.example.com",
            "/x",
            &[],
            "redirect 301 https://secure.example.com/x",
        ),
    ];
    let dir_path = dir.path().to_path_buf();
    for (host, path, headers, want) in cases {
        let gw = through_gateway(addr, host, path, headers).await;
        let (d, h, p) = (dir_path.clone(), host.to_string(), path.to_string());
        let hs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ctl = tokio::task::spawn_blocking(move || {
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            through_meshctl(&d, &h, &p, &hs)
        })
        .await
        .unwrap();
        assert_eq!(
            gw, ctl,
            "{host}{path} {headers:?}: the gateway and meshctl disagree"
        );
        assert_eq!(&gw, want, "{host}{path} {headers:?}");
    }
}
