//! Gateways: the virtual hosts Istio builds for a gateway workload, and the routing of a
//! request that arrives through one — the same rule matching as workload traffic.
//!
//! In Istio an ingress gateway is an Envoy deployment whose listeners come from the
//! Gateways that select it and whose routes come from the VirtualServices bound to those
//! Gateways. [`GatewayRoutes`] is that configuration for one gateway workload, compiled
//! when the configuration is swapped in, as Istio's `buildGatewayHTTPRouteConfig` builds
//! it:
//!
//! * A plaintext port has one route configuration for all its servers; a TLS server has
//!   one of its own (its filter chain, chosen by SNI: [`GatewayRoutes::find_sni`]).
//! * For each server in order, each VirtualService bound to the server's Gateway (visible
//!   to the gateway workload's namespace; private, then exported by name, then public,
//!   then load order) adds its routes to one virtual host per name of `VirtualService
//!   hosts ∩ server hosts` (only the server hosts whose `namespace/` admits the
//!   VirtualService's namespace). A name already there gets the routes appended. An
//!   `httpsRedirect` server marks its virtual hosts (and its own hosts) as requiring TLS.
//! * The request's host (lower case, port removed) picks a virtual host as Envoy does: an
//!   exact name, else the longest `*.suffix`, else `*`. None → 404. Within it, routes are
//!   tried in order, each VirtualService's rules seeing the request as arriving through
//!   its server's Gateway, catch-all routes (no condition but a `/` prefix) last, as
//!   Istio's `SortVHostRoutes` sorts them; no match → 404.
//!
//! `meshctl route --gateway` and the running gateway both call [`GatewayRoutes::route`].

mod servers;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use mesh_config::host;
use mesh_config::model::Labels;
use rand_core::Rng;

pub(crate) use servers::{CompiledGateway, compile};
pub use servers::{HostPattern, Server, ServerRef, SkippedServer, TlsSettings, TlsVersions};

use crate::matcher::{Caller, RequestHead};
use crate::mesh::{
    CompiledMesh, Decision, Outcome, Pass, RouteError, VirtualServiceRules, export_rank,
    first_match,
};
use crate::route::split_authority;

/// The filter chain of a TLS connection: the server its SNI chose, with the TLS settings
/// the handshake used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The server.
    pub at: ServerRef,
    /// The TLS settings the connection negotiated.
    pub tls: Arc<TlsSettings>,
}

impl Chain {
    /// The chain of `server`, when it terminates TLS.
    pub fn of(server: &Server) -> Option<Chain> {
        Some(Chain {
            at: server.at.clone(),
            tls: server.tls.clone()?,
        })
    }

    /// True when `other` is the same server with the same TLS settings: a connection keeps
    /// its chain across configurations only while its server keeps its settings.
    fn same(&self, other: &Chain) -> bool {
        self.at.gateway == other.at.gateway
            && self.at.index == other.at.index
            && *self.tls == *other.tls
    }
}

/// The route configurations of one port.
#[derive(Debug, Default)]
struct PortRoutes {
    /// Plaintext: one for all servers.
    plain: Option<VirtualHosts>,
    /// TLS: one per server (filter chain).
    chains: Vec<(Chain, VirtualHosts)>,
}

/// What one gateway workload serves: the servers of the Gateways that select it and the
/// virtual hosts of its ports (see the module documentation).
#[derive(Debug)]
pub struct GatewayRoutes {
    /// The servers, in Istio's order.
    servers: Vec<Server>,
    /// Servers of the selecting Gateways it cannot serve.
    skipped: Vec<SkippedServer>,
    ports: HashMap<u32, PortRoutes>,
}

impl GatewayRoutes {
    /// The routes of a gateway workload in `namespace` with `labels`, with the Gateways and
    /// VirtualServices of `mesh`; `None` when no Gateway selects it.
    pub fn build(mesh: &CompiledMesh, namespace: &str, labels: &Labels) -> Option<Self> {
        let selecting: Vec<&CompiledGateway> =
            mesh.gateways.iter().filter(|g| g.selects(labels)).collect();
        if selecting.is_empty() {
            return None;
        }
        let servers: Vec<Server> = selecting
            .iter()
            .flat_map(|g| g.servers.iter().cloned())
            .collect();
        let skipped = selecting
            .iter()
            .flat_map(|g| g.skipped.iter().cloned())
            .collect();
        let mut by_port: HashMap<u32, Vec<&Server>> = HashMap::new();
        for s in &servers {
            by_port.entry(s.at.port).or_default().push(s);
        }
        let mut ports = HashMap::new();
        for (port, list) in by_port {
            let mut routes = PortRoutes::default();
            let plain: Vec<&Server> = list.iter().copied().filter(|s| s.tls.is_none()).collect();
            if !plain.is_empty() {
                routes.plain = Some(VirtualHosts::build(&plain, mesh, namespace));
            }
            for s in list {
                if let Some(chain) = Chain::of(s) {
                    routes
                        .chains
                        .push((chain, VirtualHosts::build(&[s], mesh, namespace)));
                }
            }
            ports.insert(port, routes);
        }
        Some(GatewayRoutes {
            servers,
            skipped,
            ports,
        })
    }

    /// The servers it serves, in order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Servers of the selecting Gateways an in-process gateway cannot serve, and why.
    pub fn skipped(&self) -> &[SkippedServer] {
        &self.skipped
    }

    /// The TLS server of `port` a client asking for `sni` (lower case) gets, among those
    /// `usable` admits (a gateway can only answer with the TLS settings it has loaded).
    /// Without SNI only a server with a `*` host matches, as in Envoy, whose filter chains
    /// for named hosts require SNI. The most specific host wins (an exact host, then the
    /// longest wildcard, `*` last), the first server in order among equals.
    pub fn find_sni(
        &self,
        port: u32,
        sni: Option<&str>,
        usable: impl Fn(&TlsSettings) -> bool,
    ) -> Option<&Server> {
        let name = sni.unwrap_or("");
        let mut found: Option<(usize, &Server)> = None;
        let candidates = self
            .servers
            .iter()
            .filter(|s| s.at.port == port && s.tls.as_deref().is_some_and(&usable));
        for s in candidates {
            if let Some(score) = s.score(name)
                && found.is_none_or(|(b, _)| score > b)
            {
                found = Some((score, s));
            }
        }
        found.map(|(_, s)| s)
    }

    /// The virtual hosts that answer on `port`: a plaintext port's (`chain` None), or
    /// those of the filter chain `chain` of a TLS port.
    pub fn virtual_hosts(&self, port: u32, chain: Option<&Chain>) -> Option<&VirtualHosts> {
        let p = self.ports.get(&port)?;
        match chain {
            None => p.plain.as_ref(),
            Some(c) => p.chains.iter().find(|(k, _)| k.same(c)).map(|(_, v)| v),
        }
    }

    /// The virtual host that answers a request for `authority` (as the client sent it:
    /// its port is ignored, its case too) arriving on Gateway server port `port`, over the
    /// TLS filter chain `chain` or in plaintext: Envoy's domain rules (an exact name, else
    /// the longest `*.suffix`, else `*`).
    pub fn virtual_host(
        &self,
        port: u16,
        chain: Option<&Chain>,
        authority: &str,
    ) -> Result<&VirtualHost, RouteError> {
        let (name, _) = split_authority(authority);
        if name.is_empty() {
            return Err(RouteError::NoAuthority);
        }
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            &lowered
        } else {
            name
        };
        self.virtual_hosts(u32::from(port), chain)
            .and_then(|v| v.find(name))
            .ok_or(RouteError::NoVirtualHost)
    }

    /// Routes a request within `vhost`: each VirtualService's rules seeing the request as
    /// arriving through its server's Gateway, catch-all routes after every other route of
    /// the virtual host; the gateway workload is in `namespace` with `labels`.
    pub fn route_in<'m>(
        mesh: &'m CompiledMesh,
        vhost: &'m VirtualHost,
        head: &RequestHead<'_>,
        namespace: &str,
        labels: &Labels,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'m>, RouteError> {
        for pass in [Pass::Specific, Pass::CatchAll] {
            for r in &vhost.routes {
                let caller = Caller {
                    namespace,
                    labels,
                    gateway: Some(&r.gateway),
                };
                if let Some((ri, rule, block)) =
                    first_match(&r.virtual_service, head, &caller, pass)
                {
                    return Ok(Decision {
                        host: vhost.domain.clone(),
                        port: head.port,
                        gateway: Some(&r.gateway),
                        virtual_service: Some(&r.virtual_service),
                        rule: Some((ri, rule)),
                        block,
                        outcome: mesh.outcome(rule, head.port, namespace, rng)?,
                    });
                }
            }
        }
        Err(RouteError::NoRouteMatched)
    }

    /// Routes a request that arrived on Gateway server port `head.port` (on the TLS
    /// connection of filter chain `chain`, or in plaintext), from the gateway workload in
    /// `namespace` with `labels`: [`virtual_host`](Self::virtual_host), Envoy's
    /// `require_tls` for a plaintext request to an `httpsRedirect` server's host
    /// ([`Outcome::RequireTls`]), then [`route_in`](Self::route_in).
    pub fn route<'m>(
        &'m self,
        mesh: &'m CompiledMesh,
        chain: Option<&Chain>,
        head: &RequestHead<'_>,
        namespace: &str,
        labels: &Labels,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'m>, RouteError> {
        let vhost = self.virtual_host(head.port, chain, head.authority)?;
        if vhost.require_tls && chain.is_none() {
            return Ok(Decision {
                host: vhost.domain.clone(),
                port: head.port,
                gateway: None,
                virtual_service: None,
                rule: None,
                block: None,
                outcome: Outcome::RequireTls,
            });
        }
        Self::route_in(mesh, vhost, head, namespace, labels, rng)
    }
}

/// The authority a request through a gateway is routed with: the host the client sent,
/// in lower case, with the Gateway server's port (omitted for 80), so that VirtualService
/// `authority` and `port` matches see the Gateway's port, not a local listener's.
pub fn route_authority(authority: &str, server_port: u16) -> String {
    let name = split_authority(authority).0.to_ascii_lowercase();
    if server_port == 80 {
        name
    } else {
        format!("{name}:{server_port}")
    }
}

/// The `Location` of Envoy's `require_tls` redirect: `https://`, the authority as the
/// client sent it (port included), the path and query.
pub fn require_tls_location(authority: &str, path: &str, query: Option<&str>) -> String {
    let mut out =
        String::with_capacity(8 + authority.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str("https://");
    out.push_str(authority);
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The virtual hosts of one route configuration, by domain.
#[derive(Debug, Default)]
pub struct VirtualHosts {
    exact: HashMap<Box<str>, VirtualHost>,
    /// `*.suffix` domains, the longest first.
    wildcard: Vec<VirtualHost>,
    /// The `*` domain.
    any: Option<VirtualHost>,
}

/// One virtual host: a domain and the routes of the VirtualServices that contribute to it,
/// in order.
#[derive(Debug)]
pub struct VirtualHost {
    /// The domain: a name, `*.suffix` or `*`.
    pub domain: Arc<str>,
    /// Set by `httpsRedirect` servers: a plaintext request is redirected to `https`.
    pub require_tls: bool,
    /// The VirtualServices whose routes it holds, in order.
    pub routes: Vec<HostRoute>,
}

/// The routes one VirtualService adds to a virtual host, through one Gateway.
#[derive(Debug, Clone)]
pub struct HostRoute {
    /// The Gateway of the server (`namespace/name`): the rules see requests arriving
    /// through it.
    pub gateway: Arc<str>,
    /// The VirtualService.
    pub virtual_service: Arc<VirtualServiceRules>,
}

impl VirtualHosts {
    /// The virtual hosts of `servers` (in order) with the VirtualServices of `mesh` bound
    /// to their Gateways, for a gateway workload in `namespace`.
    fn build(servers: &[&Server], mesh: &CompiledMesh, namespace: &str) -> Self {
        let mut hosts: Vec<VirtualHost> = Vec::new();
        let mut index: HashMap<Box<str>, usize> = HashMap::new();
        let mut entry = |domain: &str| -> usize {
            if let Some(&i) = index.get(domain) {
                return i;
            }
            hosts.push(VirtualHost {
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
            for vs in bound_to(s.gateway(), mesh, namespace) {
                let server_hosts: Vec<&str> = s
                    .hosts
                    .iter()
                    .filter(|h| h.admits(&vs.namespace))
                    .map(HostPattern::host)
                    .collect();
                for domain in intersection(&server_hosts, &vs.hosts) {
                    let i = entry(domain);
                    adds.push((
                        i,
                        HostRoute {
                            gateway: s.gateway().clone(),
                            virtual_service: vs.clone(),
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
                    r.gateway == route.gateway
                        && Arc::ptr_eq(&r.virtual_service, &route.virtual_service)
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
            if &*h.domain == "*" {
                out.any = Some(h);
            } else if host::is_wildcard(&h.domain) {
                out.wildcard.push(h);
            } else {
                out.exact.insert(h.domain.as_ref().into(), h);
            }
        }
        out.wildcard
            .sort_by_key(|h| std::cmp::Reverse(h.domain.len()));
        out
    }

    /// The virtual host of `name` (lower case, without port), by Envoy's domain rules: an
    /// exact domain, else the longest matching `*.suffix`, else `*`.
    pub fn find(&self, name: &str) -> Option<&VirtualHost> {
        if let Some(h) = self.exact.get(name) {
            return Some(h);
        }
        self.wildcard
            .iter()
            .find(|h| host::matches(&h.domain, name))
            .or(self.any.as_ref())
    }

    /// True when there is no virtual host at all (Envoy's "blackhole" 404 host).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

/// The VirtualServices of `mesh` bound to `gateway` and visible to a gateway workload in
/// `namespace`, in the order of Istio's `VirtualServicesForGateway`: private to the
/// namespace, exported to it by name, public; then load order. Several VirtualServices
/// may claim the same hosts: each contributes its routes, as in Istio.
fn bound_to<'m>(
    gateway: &str,
    mesh: &'m CompiledMesh,
    namespace: &str,
) -> Vec<&'m Arc<VirtualServiceRules>> {
    let mut found: Vec<(u8, usize, &Arc<VirtualServiceRules>)> = mesh
        .virtual_services()
        .iter()
        .enumerate()
        .filter(|(_, vs)| vs.bound_to(gateway))
        .filter_map(|(i, vs)| export_rank(vs, namespace).map(|rank| (rank, i, vs)))
        .collect();
    found.sort_by_key(|(rank, i, _)| (*rank, *i));
    found.into_iter().map(|(_, _, vs)| vs).collect()
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

#[cfg(test)]
mod tests;
