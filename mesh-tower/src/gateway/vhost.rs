//! The virtual hosts of the gateway's ports, built the way Istio's
//! `buildGatewayHTTPRouteConfig` builds a gateway's route configurations, and the routing
//! of one request within the virtual host its host selects.
//!
//! A plaintext port has one route configuration for all its servers; a TLS server has
//! one of its own (its filter chain, chosen by SNI). For each server in order, each
//! VirtualService bound to the server's Gateway (visible to the gateway workload's
//! namespace, in Istio's order: private, exported by name, public, then load order) adds
//! its routes to one virtual host per name of `VirtualService hosts ∩ server hosts`
//! (the server hosts whose `namespace/` admits the VirtualService's namespace). A name
//! already present gets the routes appended. An `httpsRedirect` server marks its virtual
//! hosts (and its own hosts) as requiring TLS. The request's host (lower case, port
//! removed) picks a virtual host as Envoy does: an exact name, else the longest
//! `*.suffix`, else `*`. Within it, routes are tried in order, except that catch-all
//! routes go last (Istio's `SortVHostRoutes`).

use std::collections::HashMap;
use std::sync::Arc;

use mesh_config::host;
use mesh_core::matcher::{MatchBlock, gateway_applies};
use mesh_core::mesh::VirtualHost;
use mesh_core::route::{Action, Rule, split_authority};
use mesh_core::{CompiledMesh, Decision, Outcome, RequestHead, RouteError, Source};
use rand::Rng;

use super::table::{BoundVs, Server, Table, TlsKey};
use crate::Workload;

/// The filter chain of a TLS connection: the server its SNI chose, with the TLS
/// settings the handshake used.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    /// The server's Gateway (`namespace/name`).
    pub(crate) gateway: Arc<str>,
    /// The server's index in the Gateway.
    pub(crate) index: usize,
    /// The TLS settings the connection negotiated.
    pub(crate) tls: Arc<TlsKey>,
}

impl Chain {
    /// The chain of `server` (a TLS server).
    pub(crate) fn of(server: &Server) -> Option<Chain> {
        Some(Chain {
            gateway: server.gateway.clone(),
            index: server.at.index,
            tls: server.tls.clone()?,
        })
    }

    /// True when `other` is the same server with the same TLS settings: a connection
    /// keeps its chain across updates only while its server keeps its settings.
    fn same(&self, other: &Chain) -> bool {
        self.gateway == other.gateway && self.index == other.index && *self.tls == *other.tls
    }
}

/// The virtual hosts of every port, for one table of servers and one compiled mesh.
#[derive(Debug)]
pub(crate) struct Routes {
    /// The servers they were built from.
    pub(crate) table: Arc<Table>,
    /// The configuration whose VirtualServices they hold; requests are routed with it.
    pub(crate) mesh: Arc<CompiledMesh>,
    ports: HashMap<u32, PortHosts>,
}

/// The route configurations of one port.
#[derive(Debug, Default)]
struct PortHosts {
    /// Plaintext: one for all servers.
    plain: Option<VirtualHosts>,
    /// TLS: one per server (filter chain).
    chains: Vec<(Chain, VirtualHosts)>,
}

impl Routes {
    /// Builds the virtual hosts of `table`'s ports with the VirtualServices of `mesh`, as
    /// the gateway workload `w` sees them.
    pub(crate) fn compile(table: Arc<Table>, mesh: Arc<CompiledMesh>, w: &Workload) -> Routes {
        let mut ports = HashMap::new();
        for (port, servers) in table.ports() {
            let mut hosts = PortHosts::default();
            let plain: Vec<&Server> = servers.iter().filter(|s| s.tls.is_none()).collect();
            if !plain.is_empty() {
                hosts.plain = Some(VirtualHosts::build(
                    &plain,
                    &table.virtual_services,
                    &mesh,
                    w,
                ));
            }
            for s in servers {
                if let Some(chain) = Chain::of(s) {
                    let vhosts = VirtualHosts::build(&[s], &table.virtual_services, &mesh, w);
                    hosts.chains.push((chain, vhosts));
                }
            }
            ports.insert(port, hosts);
        }
        Routes { table, mesh, ports }
    }

    /// The virtual hosts that answer on `port`: a plaintext port's, or those of the
    /// filter chain `chain` of a TLS port.
    pub(crate) fn virtual_hosts(&self, port: u32, chain: Option<&Chain>) -> Option<&VirtualHosts> {
        let p = self.ports.get(&port)?;
        match chain {
            None => p.plain.as_ref(),
            Some(c) => p.chains.iter().find(|(k, _)| k.same(c)).map(|(_, v)| v),
        }
    }
}

/// The virtual hosts of one route configuration, by domain.
#[derive(Debug, Default)]
pub(crate) struct VirtualHosts {
    exact: HashMap<Box<str>, Arc<GatewayHost>>,
    /// `*.suffix` domains, the longest first.
    wildcard: Vec<Arc<GatewayHost>>,
    /// The `*` domain.
    any: Option<Arc<GatewayHost>>,
}

/// One virtual host: a domain and the routes of the VirtualServices that contribute to
/// it, in order.
#[derive(Debug)]
pub(crate) struct GatewayHost {
    /// The domain: a name, `*.suffix` or `*`.
    pub(crate) domain: Box<str>,
    /// Set by `httpsRedirect` servers: a plaintext request is redirected to `https`.
    pub(crate) require_tls: bool,
    /// The VirtualServices whose routes it holds, in order.
    pub(crate) routes: Vec<HostRoute>,
}

/// The routes one VirtualService adds to a virtual host, through one Gateway.
#[derive(Debug)]
pub(crate) struct HostRoute {
    /// The Gateway of the server (`namespace/name`): the rules see requests arriving
    /// through it.
    pub(crate) gateway: Arc<str>,
    /// The compiled VirtualService.
    pub(crate) virtual_host: Arc<VirtualHost>,
    /// Which of its blocks are catch-all routes (see [`BoundVs::catch_all`]).
    catch_all: Arc<[Box<[bool]>]>,
}

impl VirtualHosts {
    /// The virtual hosts of `servers` (in order) with the VirtualServices `vss` bound to
    /// their Gateways, compiled in `mesh`.
    fn build(servers: &[&Server], vss: &[BoundVs], mesh: &CompiledMesh, w: &Workload) -> Self {
        let mut hosts: Vec<GatewayHost> = Vec::new();
        let mut index: HashMap<Box<str>, usize> = HashMap::new();
        let mut entry = |domain: &str| -> usize {
            if let Some(&i) = index.get(domain) {
                return i;
            }
            hosts.push(GatewayHost {
                domain: domain.into(),
                require_tls: false,
                routes: Vec::new(),
            });
            index.insert(domain.into(), hosts.len() - 1);
            hosts.len() - 1
        };
        let mut adds: Vec<(usize, HostRoute)> = Vec::new();
        let mut redirects: Vec<usize> = Vec::new();
        for s in servers {
            let src = Source {
                namespace: &w.namespace,
                labels: &w.labels,
                gateway: Some(&s.gateway),
            };
            for (vs, vh) in bound_to(&s.gateway, vss, mesh, &src) {
                let server_hosts: Vec<&str> = s
                    .hosts
                    .iter()
                    .filter(|h| h.admits(&vs.namespace))
                    .map(|h| h.host())
                    .collect();
                for domain in intersection(&server_hosts, &vs.hosts) {
                    let i = entry(domain);
                    adds.push((
                        i,
                        HostRoute {
                            gateway: s.gateway.clone(),
                            virtual_host: vh.clone(),
                            catch_all: vs.catch_all.clone(),
                        },
                    ));
                    if s.https_redirect {
                        redirects.push(i);
                    }
                }
            }
            if s.https_redirect {
                for h in &s.hosts {
                    redirects.push(entry(h.host()));
                }
            }
        }
        for (i, route) in adds {
            if let Some(h) = hosts.get_mut(i) {
                // The same VirtualService through the same Gateway twice (two servers of
                // one Gateway): its routes are already there.
                let dup = h.routes.iter().any(|r| {
                    r.gateway == route.gateway && r.virtual_host.name == route.virtual_host.name
                });
                if !dup {
                    h.routes.push(route);
                }
            }
        }
        for i in redirects {
            if let Some(h) = hosts.get_mut(i) {
                h.require_tls = true;
            }
        }
        let mut out = VirtualHosts::default();
        for h in hosts {
            let h = Arc::new(h);
            if &*h.domain == "*" {
                out.any = Some(h);
            } else if host::is_wildcard(&h.domain) {
                out.wildcard.push(h);
            } else {
                out.exact.insert(h.domain.clone(), h);
            }
        }
        out.wildcard
            .sort_by_key(|h| std::cmp::Reverse(h.domain.len()));
        out
    }

    /// The virtual host of `name` (lower case, without port), by Envoy's domain rules:
    /// an exact domain, else the longest matching `*.suffix`, else `*`.
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<GatewayHost>> {
        if let Some(h) = self.exact.get(name) {
            return Some(h);
        }
        self.wildcard
            .iter()
            .find(|h| host::matches(&h.domain, name))
            .or(self.any.as_ref())
    }

    /// True when there is no virtual host at all (Envoy's "blackhole" 404 host).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

/// The VirtualServices bound to `gateway`, compiled in `mesh` and visible to `src`, in
/// the order of Istio's `VirtualServicesForGateway`: private to the gateway workload's
/// namespace, exported to it by name, public; then load order.
///
/// mesh-core keeps one VirtualService per host and Gateway (the first in that order):
/// a VirtualService each of whose hosts another one also claims is left out.
fn bound_to<'a>(
    gateway: &str,
    vss: &'a [BoundVs],
    mesh: &'a CompiledMesh,
    src: &Source<'_>,
) -> Vec<(&'a BoundVs, &'a Arc<VirtualHost>)> {
    let mut found: Vec<(u8, usize, &BoundVs, &Arc<VirtualHost>)> = Vec::new();
    for (i, vs) in vss.iter().enumerate() {
        if !vs.gateways.iter().any(|g| &**g == gateway) {
            continue;
        }
        let Some(vh) = vs
            .hosts
            .iter()
            .filter_map(|h| mesh.virtual_host(h, src))
            .find(|vh| vh.name == vs.name)
        else {
            continue;
        };
        if let Some(rank) = mesh_core::mesh::export_rank(vh, src.namespace) {
            found.push((rank, i, vs, vh));
        }
    }
    found.sort_by_key(|(rank, i, _, _)| (*rank, *i));
    found.into_iter().map(|(_, _, vs, vh)| (vs, vh)).collect()
}

/// Istio's `Names.Intersection` of server hosts and VirtualService hosts: for each
/// overlapping pair, the narrower of the two, in server host order, without duplicates.
fn intersection<'a>(server: &[&'a str], vs: &'a [Box<str>]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for &s in server {
        for v in vs {
            let narrower: &str = if host::matches(v, s) {
                s
            } else if host::matches(s, v) {
                v
            } else {
                continue;
            };
            if !out.contains(&narrower) {
                out.push(narrower);
            }
        }
    }
    out
}

/// What the gateway decided for a request, as a request extension for the route layer:
/// the configuration the request was admitted with and the virtual host its host
/// selected. The route layer routes with both, so that a request never sees two
/// configurations.
#[derive(Debug, Clone)]
pub(crate) struct GatewayRoute {
    /// The configuration.
    pub(crate) mesh: Arc<CompiledMesh>,
    /// The virtual host.
    pub(crate) host: Arc<GatewayHost>,
}

impl GatewayRoute {
    /// Routes the request `head` of the gateway workload `w` within the virtual host:
    /// the first route that matches, catch-all routes last.
    pub(crate) fn route<'a>(
        &'a self,
        head: &RequestHead<'_>,
        w: &Workload,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'a>, RouteError> {
        let (name, _) = split_authority(head.authority);
        if name.is_empty() {
            return Err(RouteError::NoAuthority);
        }
        for catch_all in [false, true] {
            for r in &self.host.routes {
                let src = Source {
                    namespace: &w.namespace,
                    labels: &w.labels,
                    gateway: Some(&r.gateway),
                };
                let vh = &r.virtual_host;
                for (ri, rule) in vh.rules.iter().enumerate() {
                    let flags = r.flags(vh, rule);
                    let Some(block) = matching(rule, flags, catch_all, head, &src, &vh.gateways)
                    else {
                        continue;
                    };
                    let outcome = match &rule.action {
                        Action::Redirect(rd) => Outcome::Redirect(rd),
                        Action::Direct(d) => Outcome::Direct(d),
                        Action::Route(split) => match split.pick(rng) {
                            Some((ti, t)) => Outcome::Forward {
                                target: Some((ti, t)),
                                // The caller's namespace decides, as in mesh-core.
                                upstream: self.mesh.upstream(
                                    &t.host,
                                    t.subset.as_deref(),
                                    t.port.unwrap_or(0),
                                    head.port,
                                    &w.namespace,
                                )?,
                            },
                            None => return Err(RouteError::NoRouteMatched),
                        },
                    };
                    return Ok(Decision {
                        host: name.to_ascii_lowercase().into(),
                        port: head.port,
                        virtual_host: Some(vh),
                        rule: Some((ri, rule)),
                        block,
                        outcome,
                    });
                }
            }
        }
        Err(RouteError::NoRouteMatched)
    }
}

impl HostRoute {
    /// The catch-all flags of `rule` of `vh` (none for rules inlined from a delegate).
    fn flags<'a>(&'a self, vh: &VirtualHost, rule: &Rule) -> &'a [bool] {
        if !rule.parent_matches.is_empty() || rule.origin.virtual_service != vh.name {
            return &[];
        }
        self.catch_all
            .get(rule.origin.index)
            .map_or(&[][..], |f| &f[..])
    }
}

/// The block of `rule` that matches the request among its catch-all blocks
/// (`catch_all`) or among the others, as [`Rule::matching_block`] answers.
fn matching<'r>(
    rule: &'r Rule,
    flags: &[bool],
    catch_all: bool,
    head: &RequestHead<'_>,
    src: &Source<'_>,
    gateways: &[Box<str>],
) -> Option<Option<(usize, &'r MatchBlock)>> {
    let is_catch_all = |i: usize| flags.get(i).copied().unwrap_or(false);
    if !rule.parent_matches.is_empty()
        && !rule
            .parent_matches
            .iter()
            .any(|b| b.matches(head, src, gateways))
    {
        return None;
    }
    if rule.matches.is_empty() {
        return (is_catch_all(0) == catch_all && gateway_applies(gateways, src.gateway))
            .then_some(None);
    }
    rule.matches
        .iter()
        .enumerate()
        .find(|(i, b)| is_catch_all(*i) == catch_all && b.matches(head, src, gateways))
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::ConfigSet;

    fn setup(yaml: &str) -> (Routes, Workload) {
        let mut set = ConfigSet::new();
        let backends = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backends}\nspec:\n  hosts: [backend.example.com, first.example.com, second.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
        set.add_str("t.yaml", &format!("{yaml}{backends}"));
        let checked = set.check();
        let snap = checked.snapshot.unwrap_or_else(|| {
            panic!(
                "{}",
                checked
                    .diagnostics
                    .iter()
                    .map(|d| d.short())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        let w = Workload::new("gw", "istio-system").labels([("istio", "ingressgateway")]);
        let servers = super::super::table::servers(&snap, &w);
        let table = Table::compile(&snap, servers, &HashMap::from([(80, false)]), &|_| true);
        let mesh = Arc::new(CompiledMesh::compile(&snap));
        (Routes::compile(Arc::new(table), mesh, &w), w)
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
    fn chosen(r: &Routes, name: &str) -> Option<(String, Vec<String>)> {
        let h = r.virtual_hosts(80, None)?.find(name)?;
        Some((
            h.domain.to_string(),
            h.routes
                .iter()
                .map(|r| r.virtual_host.name.to_string())
                .collect(),
        ))
    }

    #[test]
    fn virtual_hosts_are_the_intersection_merged_across_servers() {
        let (r, _) = setup(
            &(gateway("a-star", "\"*\"", false)
                + &gateway("b-wild", "\"*.example.com\"", false)
                + &vs("shop", "shop.example.com", "a-star", TO)
                + &vs("wild", "\"*.example.com\"", "b-wild", TO)
                + &vs("all", "\"*\"", "b-wild", TO)
                + &vs("star", "\"*\"", "a-star", TO)),
        );
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
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

    #[test]
    fn namespaced_server_hosts_filter_virtual_services() {
        let (r, _) = setup(
            &(gateway("gw", "\"other/*\", \"./open.example.com\"", false)
                + &vs("all", "\"*\"", "gw", TO)),
        );
        assert_eq!(
            chosen(&r, "open.example.com").map(|c| c.0),
            Some("open.example.com".into())
        );
        assert_eq!(chosen(&r, "closed.example.com"), None);
    }

    #[test]
    fn https_redirect_servers_require_tls_even_without_a_virtual_service() {
        let (r, _) = setup(&gateway("gw", "secure.example.com", true));
        let h = r
            .virtual_hosts(80, None)
            .and_then(|v| v.find("secure.example.com"));
        assert!(h.is_some_and(|h| h.require_tls && h.routes.is_empty()));
        let (r, _) = setup(&gateway("gw", "\"*\"", false));
        assert!(
            r.virtual_hosts(80, None)
                .is_some_and(VirtualHosts::is_empty)
        );
    }

    #[test]
    fn catch_all_routes_go_last_across_virtual_services() {
        let (r, w) = setup(
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
        let host = r
            .virtual_hosts(80, None)
            .and_then(|v| v.find("x.org"))
            .cloned();
        let gr = GatewayRoute {
            mesh: r.mesh.clone(),
            host: host.unwrap_or_else(|| panic!("no virtual host")),
        };
        let route = |path: &str| {
            let req = http::Request::get(format!("http://x.org{path}"))
                .body(())
                .unwrap_or_else(|e| panic!("{e}"));
            let head = RequestHead::from_request(&req, 80);
            let d = gr.route(&head, &w, &mut rand::rng());
            d.ok()
                .and_then(|d| d.virtual_host.map(|v| v.name.to_string()))
        };
        assert_eq!(route("/api/v1").as_deref(), Some("default/second"));
        assert_eq!(route("/other").as_deref(), Some("default/first"));
    }

    /// A request the gateway admitted with one configuration is routed with it, even
    /// when `MeshConfig::update` swapped another in meanwhile; without the gateway's
    /// virtual host the route layer takes the current one.
    #[tokio::test]
    async fn the_route_layer_routes_with_the_configuration_the_gateway_admitted() {
        use crate::route::Routed;
        use crate::{BoxError, MeshConfig, ReqBody, ResBody};
        use tower::ServiceExt;

        let yaml = |to: &str| {
            format!(
                "{}{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: static}}\nspec:\n  hosts: [a.example.com, b.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n",
                gateway("gw", "\"*\"", false),
                vs(
                    "v",
                    "\"*\"",
                    "gw",
                    &format!("  - route: [{{destination: {{host: {to}}}}}]\n"),
                ),
            )
        };
        let (a, b) = (yaml("a.example.com"), yaml("b.example.com"));
        let (routes, w) = setup(&a);
        let config = MeshConfig::from_snapshot(&{
            let mut set = ConfigSet::new();
            set.add_str("t.yaml", &a);
            set.check().snapshot.unwrap()
        });
        let host = routes
            .virtual_hosts(80, None)
            .and_then(|v| v.find("x.org"))
            .cloned()
            .unwrap();
        let mut set = ConfigSet::new();
        set.add_str("t.yaml", &b);
        config.update(&set.check().snapshot.unwrap());

        // Answers with the destination host the route layer chose.
        let stub = tower::service_fn(|req: http::Request<ReqBody>| async move {
            let to = req
                .extensions()
                .get::<std::sync::Arc<Routed>>()
                .and_then(|r| r.target().map(|t| t.host.to_string()))
                .unwrap_or_default();
            Ok::<_, BoxError>(http::Response::new(crate::body::full(to)))
        });
        let client = config.workload(w).client_over(stub);
        let send = |with_route: bool| {
            let mut req = http::Request::get("http://x.org/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            req.extensions_mut()
                .insert(super::super::GatewaySource("default/gw".into()));
            if with_route {
                req.extensions_mut().insert(GatewayRoute {
                    mesh: routes.mesh.clone(),
                    host: host.clone(),
                });
            }
            client.clone().oneshot(req)
        };
        let body = |resp: http::Response<ResBody>| async move {
            use http_body_util::BodyExt;
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        assert_eq!(body(send(true).await.unwrap()).await, "a.example.com");
        assert_eq!(body(send(false).await.unwrap()).await, "b.example.com");
    }
}
