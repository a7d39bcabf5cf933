//! The ingress gateway end to end: Istio `Gateway` resources served on 127.0.0.1
//! (ephemeral ports) in front of real backends — host matching, bound VirtualServices,
//! HTTPS redirects, virtual hosts, edge header handling, upgrades and live updates. TLS
//! termination is tested in `gateway_tls.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use mesh_tests::gateway::{gateway, http_get, http_server, start, to, vs};
use mesh_tests::{get, named, serve, service, snapshot};
use mesh_tower::{MeshRuntime, Workload};
use tokio::net::TcpStream;

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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
    let gw = addrs.of(80);

    assert_eq!(http_get(gw, "shop.example.com", "/").await.1, "gateway");
    assert_eq!(http_get(gw, "other.example.com", "/").await.1, "gateway");
    assert_eq!(mesh_backend.hits(), 0);
    // Workload traffic still uses the mesh VirtualService.
    let m = runtime.workload(Workload::new("client", "default"));
    assert_eq!(get(&m, "http://shop.example.com/", &[]).await.1, "mesh");
}

#[tokio::test]
async fn a_gateway_with_no_bound_virtual_service_answers_404() {
    let backend = named("backend").await;
    let cfg = service("frontend", "HTTP", &[("v1", backend.port())])
        + &gateway("lonely", &http_server(80, "\"*\""))
        + &vs("mesh-only", "\"*.example.com\"", "", &to("frontend"));
    let snap = snapshot(&cfg);
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    // Both listen on ephemeral ports: what counts is the Gateway's port number.
    let (_, addrs) = start(&runtime, &[80, 8080]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    // 81 is not mapped; 443 and 8443 are, but their servers are not supported.
    let (_, addrs) = start(&runtime, &[80, 443, 8443]);
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
    let runtime = MeshRuntime::from_snapshot(&before);
    let (handle, addrs) = start(&runtime, &[80]);
    let gw = addrs.of(80);
    assert_eq!(http_get(gw, "a.example.com", "/productpage").await.1, "v1");
    assert_eq!(http_get(gw, "b.example.com", "/productpage").await.0, 404);
    assert_eq!(handle.version(), before.version());

    let after = snapshot(
        &(base
            + &gateway("bookinfo-gateway", &http_server(80, "b.example.com"))
            + &vs("bookinfo", "\"*\"", "bookinfo-gateway", &rule("v2"))),
    );
    runtime.update(&after);
    assert_eq!(handle.version(), after.version());
    assert_eq!(http_get(gw, "b.example.com", "/productpage").await.1, "v2");
    assert_eq!(http_get(gw, "a.example.com", "/productpage").await.0, 404);
    assert_eq!((v1.hits(), v2.hits()), (1, 1));
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&before);
    let (_, addrs) = start(&runtime, &[80]);
    assert_eq!(http_get(addrs.of(80), "a.example.com", "/").await.1, "v1");
    let after = snapshot(&(base + &vs("bookinfo", "\"*\"", "bookinfo-gateway", &rule("v2"))));
    runtime.update(&after);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
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
    let runtime = MeshRuntime::from_snapshot(&snap);
    let (_, addrs) = start(&runtime, &[80]);
    let missing = raw(
        addrs.of(80),
        "GET / HTTP/1.1\r\nhost: other.example.com\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n",
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}
