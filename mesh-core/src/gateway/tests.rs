use super::*;

fn mesh(yaml: &str) -> CompiledMesh {
    let backends = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backends}\nspec:\n  hosts: [backend.example.com, first.example.com, second.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
    CompiledMesh::compile(&crate::test_support::snapshot(&format!("{yaml}{backends}")))
}

fn labels() -> Labels {
    [("istio".to_string(), "ingressgateway".to_string())].into()
}

fn routes(mesh: &CompiledMesh) -> GatewayRoutes {
    GatewayRoutes::build(mesh, "istio-system", &labels()).unwrap_or_else(|| panic!("no Gateway"))
}

fn gateway(name: &str, hosts: &str, redirect: bool) -> String {
    let tls = if redirect {
        "    tls: {httpsRedirect: true}\n"
    } else {
        ""
    };
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [{hosts}]\n{tls}"
    )
}

fn vs(name: &str, hosts: &str, gateway: &str, http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{hosts}]\n  gateways: [{gateway}]\n  http:\n{http}"
    )
}

const TO: &str = "  - route: [{destination: {host: backend.example.com}}]\n";

/// `domain → [VirtualService names]` for `name`.
fn chosen(r: &GatewayRoutes, name: &str) -> Option<(String, Vec<String>)> {
    let h = r.virtual_hosts(80, None)?.find(name)?;
    Some((
        h.domain.to_string(),
        h.routes
            .iter()
            .map(|r| r.virtual_service.name.to_string())
            .collect(),
    ))
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn virtual_hosts_are_the_intersection_merged_across_servers() {
    let m = mesh(
        &(gateway("a-star", "\"*\"", false)
            + &gateway("b-wild", "\"*.example.com\"", false)
            + &vs("shop", "shop.example.com", "a-star", TO)
            + &vs("wild", "\"*.example.com\"", "b-wild", TO)
            + &vs("all", "\"*\"", "b-wild", TO)
            + &vs("star", "\"*\"", "a-star", TO)),
    );
    let r = routes(&m);
    // The exact VirtualService host wins, whatever the server host's specificity.
    assert_eq!(
        chosen(&r, "shop.example.com"),
        Some(("shop.example.com".into(), names(&["default/shop"])))
    );
    // `*` ∩ `*.example.com` is `*.example.com`: both VirtualServices of b-wild.
    assert_eq!(
        chosen(&r, "other.example.com"),
        Some((
            "*.example.com".into(),
            names(&["default/wild", "default/all"])
        ))
    );
    assert_eq!(
        chosen(&r, "example.org"),
        Some(("*".into(), names(&["default/star"])))
    );
}

/// Several VirtualServices bound to one Gateway with exactly the same hosts all
/// contribute their routes, in load order, as Istio merges them.
#[test]
fn virtual_services_with_the_same_hosts_all_contribute() {
    let m = mesh(
        &(gateway("gw", "\"*\"", false)
            + &vs(
                "api",
                "shop.example.com",
                "gw",
                "  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: first.example.com}}]\n",
            )
            + &vs(
                "web",
                "shop.example.com",
                "gw",
                "  - match: [{uri: {prefix: /web}}]\n    route: [{destination: {host: second.example.com}}]\n",
            )),
    );
    let r = routes(&m);
    assert_eq!(
        chosen(&r, "shop.example.com"),
        Some((
            "shop.example.com".into(),
            names(&["default/api", "default/web"])
        ))
    );
    let to = |path: &str| route_to(&m, &r, "shop.example.com", path);
    assert_eq!(to("/api/x").as_deref(), Some("first.example.com"));
    assert_eq!(to("/web/x").as_deref(), Some("second.example.com"));
    assert_eq!(to("/other"), None);
}

#[test]
fn namespaced_server_hosts_filter_virtual_services() {
    let m = mesh(
        &(gateway("gw", "\"other/*\", \"./open.example.com\"", false)
            + &vs("all", "\"*\"", "gw", TO)),
    );
    let r = routes(&m);
    assert_eq!(
        chosen(&r, "open.example.com").map(|c| c.0),
        Some("open.example.com".into())
    );
    assert_eq!(chosen(&r, "closed.example.com"), None);
}

#[test]
fn https_redirect_servers_require_tls_even_without_a_virtual_service() {
    let m = mesh(&gateway("gw", "secure.example.com", true));
    let r = routes(&m);
    let h = r
        .virtual_hosts(80, None)
        .and_then(|v| v.find("secure.example.com"));
    assert!(h.is_some_and(|h| h.require_tls && h.routes.is_empty()));
    let head = head_of("secure.example.com", "/x");
    let d = r.route(
        &m,
        None,
        &head.head(),
        "istio-system",
        &labels(),
        &mut rand::rng(),
    );
    assert!(matches!(d.map(|d| d.outcome), Ok(Outcome::RequireTls)));
    let m = mesh(&gateway("gw", "\"*\"", false));
    assert!(
        routes(&m)
            .virtual_hosts(80, None)
            .is_some_and(VirtualHosts::is_empty)
    );
}

/// A request as a test builds it.
struct Req(http::Request<()>);

impl Req {
    fn head(&self) -> RequestHead<'_> {
        RequestHead::from_request(&self.0, 80)
    }
}

fn head_of(host: &str, path: &str) -> Req {
    Req(http::Request::get(format!("http://{host}{path}"))
        .body(())
        .unwrap_or_else(|e| panic!("{e}")))
}

/// The destination host a request for `host` + `path` is routed to.
fn route_to(m: &CompiledMesh, r: &GatewayRoutes, host: &str, path: &str) -> Option<String> {
    let req = head_of(host, path);
    let d = r
        .route(
            m,
            None,
            &req.head(),
            "istio-system",
            &labels(),
            &mut rand::rng(),
        )
        .ok()?;
    match d.outcome {
        Outcome::Forward {
            target: Some((_, t)),
            ..
        } => Some(t.host.to_string()),
        _ => None,
    }
}

#[test]
fn catch_all_routes_go_last_across_virtual_services() {
    let m = mesh(
        &(gateway("a", "\"*\"", false)
            + &gateway("b", "\"*\"", false)
            + &vs(
                "first",
                "\"*\"",
                "a",
                "  - route: [{destination: {host: first.example.com}}]\n",
            )
            + &vs(
                "second",
                "\"*\"",
                "b",
                "  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: second.example.com}}]\n",
            )),
    );
    let r = routes(&m);
    assert_eq!(
        route_to(&m, &r, "x.org", "/api/v1").as_deref(),
        Some("second.example.com")
    );
    assert_eq!(
        route_to(&m, &r, "x.org", "/other").as_deref(),
        Some("first.example.com")
    );
}

#[test]
fn no_virtual_host_and_no_rule_are_404s() {
    let m = mesh(
        &(gateway("gw", "shop.example.com", false)
            + &vs(
                "v",
                "shop.example.com",
                "gw",
                "  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: first.example.com}}]\n",
            )),
    );
    let r = routes(&m);
    let err = |host: &str, path: &str| {
        let req = head_of(host, path);
        r.route(
            &m,
            None,
            &req.head(),
            "istio-system",
            &labels(),
            &mut rand::rng(),
        )
        .err()
    };
    assert_eq!(err("other.org", "/api"), Some(RouteError::NoVirtualHost));
    assert_eq!(
        err("shop.example.com", "/web"),
        Some(RouteError::NoRouteMatched)
    );
    assert_eq!(err("SHOP.example.com", "/api"), None);
}

fn tls_gateway(name: &str, hosts: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [{hosts}]\n    tls: {{mode: SIMPLE, serverCertificate: {name}.pem, privateKey: {name}.key}}\n"
    )
}

#[test]
fn the_most_specific_tls_server_wins_then_the_first() {
    let m = mesh(
        &(tls_gateway("all", "\"*\"")
            + &tls_gateway("wild", "\"*.example.com\"")
            + &tls_gateway("deeper", "\"*.b.example.com\"")
            + &tls_gateway("exact", "a.example.com")
            + &tls_gateway("exact-too", "a.example.com")),
    );
    let r = routes(&m);
    let at = |h: Option<&str>| {
        r.find_sni(443, h, |_| true)
            .map(|s| s.gateway().to_string())
    };
    assert_eq!(at(Some("a.example.com")).as_deref(), Some("default/exact"));
    assert_eq!(
        at(Some("x.b.example.com")).as_deref(),
        Some("default/deeper")
    );
    assert_eq!(at(Some("c.example.com")).as_deref(), Some("default/wild"));
    assert_eq!(at(Some("other.org")).as_deref(), Some("default/all"));
    assert_eq!(at(None).as_deref(), Some("default/all"));
    assert!(r.find_sni(80, Some("a.example.com"), |_| true).is_none());
    // Only usable settings: the exact servers' certificates are not loaded.
    let unloaded = |t: &TlsSettings| !t.cert.to_string_lossy().starts_with("exact");
    assert_eq!(
        r.find_sni(443, Some("a.example.com"), unloaded)
            .map(|s| s.gateway().to_string())
            .as_deref(),
        Some("default/wild")
    );
    // TLS paths are relative to the YAML file.
    let s = r.find_sni(443, Some("other.org"), |_| true);
    assert_eq!(
        s.and_then(|s| s.tls.as_ref()).map(|t| t.cert.clone()),
        Some(std::path::PathBuf::from("all.pem"))
    );
}

#[test]
fn unsupported_servers_are_skipped_with_a_reason() {
    let m = mesh(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: my-secret}\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n",
    );
    let r = routes(&m);
    assert_eq!(r.servers().len(), 1);
    let reasons: Vec<(usize, bool)> = r
        .skipped()
        .iter()
        .map(|s| (s.at.index, !s.reason.is_empty()))
        .collect();
    assert_eq!(reasons, [(0, true), (1, true)]);
    assert!(r.skipped()[0].reason.contains("TLS"), "{:?}", r.skipped());
    assert!(r.skipped()[1].reason.contains("credentialName"));
    // A workload no Gateway selects has no gateway routes.
    assert!(GatewayRoutes::build(&m, "default", &Labels::new()).is_none());
}
