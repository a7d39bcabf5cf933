//! The compiled mesh: one immutable value per configuration, asked per request.
//!
//! [`CompiledMesh::compile`] turns a Snapshot into compiled VirtualServices, the hosts
//! each caller namespace sees, the servers of every Gateway, and clusters with their
//! balancers. It is compiled once per configuration and per process — never per
//! workload or per request — and is shared by every workload of the process; each asks
//! it as its own [`Caller`], usually through its [`WorkloadView`](crate::WorkloadView).
//!
//! Per request, [`CompiledMesh::route`] resolves the authority the way Kubernetes DNS
//! would from the caller's namespace (`reviews` → `reviews.<ns>.svc.cluster.local`), finds
//! the VirtualService for the host (exact host before wildcards; among equals, as Istio's
//! PushContext orders them for the caller's namespace: those private to it, then those
//! exported to it by name, then public ones, the first loaded within each), takes the
//! first rule that matches, and for a route draws a weighted destination and finds its
//! cluster. The destination is resolved from the caller's namespace too: which service a
//! host names, which DestinationRule applies (the caller's namespace, then the
//! service's, then the root namespace) — not from the VirtualService's namespace. A
//! destination whose subset no DestinationRule defines, or a port the service lacks, is
//! [`Upstream::Missing`]. Requests arriving through a Gateway are routed by the same
//! rule matching, within the virtual hosts Istio builds for the gateway (see
//! [`crate::gateway`]).

mod by_namespace;
mod resolve;
mod services;
mod virtual_service;

use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::model::{Labels, MeshSettings, OutboundTrafficPolicyMode};
use mesh_config::registry::Registry;
use rand_core::Rng;

pub(crate) use by_namespace::ByNamespace;
pub use virtual_service::{VirtualServiceRules, VisibleHosts, export_rank};

use crate::cluster::{Cluster, ClusterKey};
use crate::gateway::CompiledGateway;
use crate::matcher::{Caller, MatchBlock, RequestHead};
use crate::peer_auth::{CompiledPeerAuthentication, MtlsMode, PeerAuthn};
use crate::retry::Retries;
use crate::route::{Action, Rule, Target, split_authority};
use resolve::Resolver;
use services::Services;
use virtual_service::HostTable;

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A VirtualService exists for the host but no rule matched (Envoy: 404 `NR`).
    #[error("no route matched the request")]
    NoRouteMatched,
    /// At a gateway, no virtual host serves the request's host (Envoy: 404 `NR`).
    #[error("no virtual host of the gateway serves the host")]
    NoVirtualHost,
    /// The host is not in the registry and the outbound policy is REGISTRY_ONLY
    /// (Envoy: 502 from the BlackHole cluster).
    #[error("host {0} is not in the registry and outbound traffic is REGISTRY_ONLY")]
    RegistryOnly(String),
    /// The request has no authority.
    #[error("the request has no authority")]
    NoAuthority,
}

/// Where a forwarded request goes.
#[derive(Debug, Clone)]
pub enum Upstream<'m> {
    /// A cluster of the registry.
    Cluster(&'m Arc<Cluster>),
    /// A host the registry does not know, forwarded as it is (ALLOW_ANY).
    Passthrough {
        /// Host to connect to.
        host: Arc<str>,
        /// Port.
        port: u16,
    },
    /// A service of the registry, but no cluster for the destination: a subset no
    /// DestinationRule (applying to the caller) defines, or a port the service lacks.
    /// Envoy answers 503 with an empty body (cluster not found, response flag `NC`).
    Missing {
        /// The service's host.
        host: Arc<str>,
        /// The subset asked for, if any.
        subset: Option<Arc<str>>,
    },
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Decision<'m> {
    /// The fully qualified host the authority resolved to; at a gateway, the domain of the
    /// virtual host that answered.
    pub host: Arc<str>,
    /// The request's port (at a gateway, the Gateway server's port).
    pub port: u16,
    /// The Gateway (`namespace/name`) whose server the matched rule was reached through,
    /// for requests arriving at a gateway.
    pub gateway: Option<&'m Arc<str>>,
    /// The VirtualService that applied, if any.
    pub virtual_service: Option<&'m Arc<VirtualServiceRules>>,
    /// The rule that matched and its index in the VirtualService, if any (None: the
    /// default route to the host itself).
    pub rule: Option<(usize, &'m Rule)>,
    /// The match block that matched and its index (for prefix rewrites).
    pub block: Option<(usize, &'m MatchBlock)>,
    /// What to do.
    pub outcome: Outcome<'m>,
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Outcome<'m> {
    /// Forward to this destination.
    Forward {
        /// The destination drawn from the rule's split and its index (None for the
        /// default route).
        target: Option<(usize, &'m Target)>,
        /// Where it goes.
        upstream: Upstream<'m>,
    },
    /// Answer with a redirect.
    Redirect(&'m crate::route::Redirect),
    /// Answer directly.
    Direct(&'m crate::route::DirectResponse),
    /// A plaintext request to a virtual host of an `httpsRedirect` Gateway server:
    /// answer 301 to the same URL over `https` (Envoy's `require_tls`).
    RequireTls,
}

/// Which rules a pass over a VirtualService's rules considers: at a gateway, Istio moves
/// catch-all routes after every other route of the virtual host (`SortVHostRoutes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Every rule, in order.
    All,
    /// Only the blocks that are not catch-all.
    Specific,
    /// Only the catch-all blocks.
    CatchAll,
}

/// A configuration, compiled.
#[derive(Debug)]
pub struct CompiledMesh {
    version: u64,
    settings: Arc<MeshSettings>,
    registry: Registry,
    /// Every VirtualService, in load order.
    virtual_services: Arc<[Arc<VirtualServiceRules>]>,
    /// The VirtualServices of workload traffic each caller namespace sees, by host.
    visible: Arc<ByNamespace<Arc<VisibleHosts>>>,
    services: Services,
    resolver: Arc<Resolver>,
    default_retry: Arc<Retries>,
    /// Every Gateway's servers, in Istio's order.
    pub(crate) gateways: Arc<[CompiledGateway]>,
    /// Every AuthorizationPolicy, compiled, in load order.
    authorization: Arc<[Arc<crate::authz::Policy>]>,
    /// Every RequestAuthentication, compiled, in load order.
    request_authentication: Arc<[Arc<crate::authn::CompiledRequestAuthentication>]>,
    /// Every PeerAuthentication, compiled, in load order.
    peer_authentication: Arc<[Arc<CompiledPeerAuthentication>]>,
    /// EnvoyFilters and LocalRateLimitPolicies, interpreted.
    rate_limits: Arc<crate::ratelimit::Sources>,
    /// The workloads of the registry, for servers to name their callers in metrics.
    peers: crate::telemetry::PeerIndex,
    /// Every Telemetry, in load order.
    telemetries: Arc<[Arc<mesh_config::model::Resource<mesh_config::model::telemetry::Telemetry>>]>,
    /// The labels of a request to a host outside the registry (Istio's
    /// `PassthroughCluster`).
    passthrough: Arc<crate::telemetry::ServiceLabels>,
    /// Problems found while compiling (rules that could not be compiled are skipped).
    pub errors: Vec<String>,
}

impl CompiledMesh {
    /// Compiles a snapshot.
    pub fn compile(snapshot: &Snapshot) -> Self {
        let settings = snapshot.mesh().clone();
        let registry = snapshot.registry().clone();
        let mut errors = Vec::new();
        let mut known: Vec<String> = registry.services().iter().map(|s| s.host.clone()).collect();
        let vss = snapshot.virtual_services();
        let mut virtual_services = Vec::new();
        for vs in vss.iter().filter(|v| !v.spec.hosts.is_empty()) {
            let position = u32::try_from(virtual_services.len()).unwrap_or(u32::MAX);
            match virtual_service::compile(position, vs, vss, &settings) {
                Ok(rules) => {
                    known.extend(rules.hosts.iter().map(|h| h.to_string()));
                    virtual_services.push(Arc::new(rules));
                }
                Err(e) => errors.push(format!(
                    "VirtualService {}/{}: {e}",
                    vs.namespace(),
                    vs.name()
                )),
            }
        }
        let table = HostTable::new(&virtual_services);
        let shared = table.shared();
        let visible = ByNamespace::build(&table.namespaces(), |ns| {
            Arc::new(table.visible_to(ns, &shared))
        });
        let peer_authentication = snapshot
            .peer_authentications()
            .iter()
            .map(|p| Arc::new(CompiledPeerAuthentication::compile(p)))
            .collect::<Vec<_>>();
        let ctx = crate::cluster::TlsContext {
            trust_domain: &settings.trust_domain,
            root_namespace: &settings.root_namespace,
            auto_mtls: settings.enable_auto_mtls,
            peer_authentications: &peer_authentication,
        };
        let services = Services::compile(snapshot, &settings, &ctx);
        let resolver = Resolver::new(&known, !services.wildcard.is_empty());
        let default_retry = Retries::compile(None, &settings.default_http_retry_policy);
        let gateways = crate::gateway::compile(snapshot);
        let trust =
            crate::authz::TrustDomains::new(&settings.trust_domain, &settings.trust_domain_aliases);
        let authorization = snapshot
            .authorization_policies()
            .iter()
            .map(|p| Arc::new(crate::authz::Policy::compile_in(p, &trust)))
            .collect();
        let request_authentication = snapshot
            .request_authentications()
            .iter()
            .map(|r| Arc::new(crate::authn::CompiledRequestAuthentication::compile(r)))
            .collect();
        let rate_limits = crate::ratelimit::Sources::compile(snapshot);
        errors.extend(rate_limits.errors.iter().cloned());
        // The peers' labels the clusters made, shared rather than made again.
        let made: std::collections::HashMap<
            *const mesh_config::Service,
            &[crate::cluster::EndpointFacts],
        > = services
            .hosts
            .iter()
            .flat_map(|h| h.services.iter().zip(&h.facts))
            .map(|(s, f)| (Arc::as_ptr(s), f.as_slice()))
            .collect();
        let peers =
            crate::telemetry::PeerIndex::build_with(&registry, &settings.trust_domain, |s, i| {
                made.get(&Arc::as_ptr(s))
                    .and_then(|f| f.get(i))
                    .map(|f| f.peer().clone())
            });
        CompiledMesh {
            telemetries: snapshot.telemetries().into(),
            peers,
            passthrough: Arc::new(crate::telemetry::ServiceLabels::passthrough()),
            rate_limits: Arc::new(rate_limits),
            request_authentication,
            authorization,
            peer_authentication: peer_authentication.into(),
            default_retry: Arc::new(default_retry),
            version: snapshot.version(),
            settings: Arc::new(settings),
            registry,
            virtual_services: virtual_services.into(),
            visible: Arc::new(visible),
            services,
            resolver: Arc::new(resolver),
            gateways: gateways.into(),
            errors,
        }
    }

    /// The mesh of `snapshot`, made from `self` when `snapshot` differs from the
    /// snapshot `self` was compiled from only in its WorkloadEntries
    /// ([`Snapshot::with_workload_entries`], which gives `changed`, the indexes of the
    /// registry's services whose endpoints changed): only those services' clusters are
    /// built again, under the same ids, and everything else — route tables, policies,
    /// every other cluster — is shared. Also the ids of the clusters built again. `None`
    /// when the change is not one of endpoints only (compile anew).
    pub fn with_endpoints(
        &self,
        snapshot: &Snapshot,
        changed: &[usize],
    ) -> Option<(Self, Vec<u32>)> {
        let registry = snapshot.registry().clone();
        if registry.services().len() != self.registry.services().len() {
            return None;
        }
        let ctx = crate::cluster::TlsContext {
            trust_domain: &self.settings.trust_domain,
            root_namespace: &self.settings.root_namespace,
            auto_mtls: self.settings.enable_auto_mtls,
            peer_authentications: &self.peer_authentication,
        };
        let (services, ids) = self.services.with_changed(&registry, changed, &ctx)?;
        let peers = self.peers.with_services(
            &registry,
            changed,
            &self.registry,
            &self.settings.trust_domain,
        );
        Some((
            CompiledMesh {
                version: snapshot.version(),
                settings: self.settings.clone(),
                registry,
                virtual_services: self.virtual_services.clone(),
                visible: self.visible.clone(),
                services,
                resolver: self.resolver.clone(),
                default_retry: self.default_retry.clone(),
                gateways: self.gateways.clone(),
                authorization: self.authorization.clone(),
                request_authentication: self.request_authentication.clone(),
                peer_authentication: self.peer_authentication.clone(),
                rate_limits: self.rate_limits.clone(),
                peers,
                telemetries: self.telemetries.clone(),
                passthrough: self.passthrough.clone(),
                errors: self.errors.clone(),
            },
            ids,
        ))
    }

    /// Every Telemetry (`telemetry.istio.io`), in load order.
    pub fn telemetries(
        &self,
    ) -> &[Arc<mesh_config::model::Resource<mesh_config::model::telemetry::Telemetry>>] {
        &self.telemetries
    }

    /// The workloads of the registry (its WorkloadEntries), by name and namespace.
    pub fn peers(&self) -> &crate::telemetry::PeerIndex {
        &self.peers
    }

    /// What Istio's metrics call a host outside the registry, forwarded as it is
    /// (`PassthroughCluster`; the host itself is not a label: any request could make a
    /// new one).
    pub fn passthrough_labels(&self) -> &Arc<crate::telemetry::ServiceLabels> {
        &self.passthrough
    }

    /// Every RequestAuthentication, compiled, in load order.
    pub fn request_authentications(&self) -> &[Arc<crate::authn::CompiledRequestAuthentication>] {
        &self.request_authentication
    }

    /// The rate limit resources (EnvoyFilters, LocalRateLimitPolicies), interpreted.
    pub fn rate_limit_sources(&self) -> &crate::ratelimit::Sources {
        &self.rate_limits
    }

    /// Every AuthorizationPolicy, compiled, in load order.
    pub fn authorization_policies(&self) -> &[Arc<crate::authz::Policy>] {
        &self.authorization
    }

    /// Every PeerAuthentication, compiled, in load order (the order that breaks ties
    /// between policies of one level).
    pub fn peer_authentications(&self) -> &[Arc<CompiledPeerAuthentication>] {
        &self.peer_authentication
    }

    /// The mutual TLS modes a workload with `labels` in `namespace` enforces (what its
    /// [`WorkloadView::peer_authn`](crate::WorkloadView::peer_authn) holds).
    pub fn peer_authn(&self, namespace: &str, labels: &Labels) -> PeerAuthn {
        PeerAuthn::for_workload(
            &self.peer_authentication,
            &self.settings.root_namespace,
            namespace,
            labels,
        )
    }

    /// The mutual TLS mode a destination workload with `labels` in `namespace` enforces
    /// on `port` (the port its server listens on), without allocating: a client with
    /// auto mTLS sends mutual TLS unless it is DISABLE (see [`crate::peer_auth`]).
    pub fn server_mtls_mode(&self, namespace: &str, labels: &Labels, port: u16) -> MtlsMode {
        crate::peer_auth::server_mode(
            &self.peer_authentication,
            &self.settings.root_namespace,
            namespace,
            labels,
            port,
        )
    }

    /// The version of the snapshot it was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Mesh-wide settings.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The retries of requests whose rule sets none (the mesh's default).
    pub fn default_retry(&self) -> &Retries {
        &self.default_retry
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every VirtualService, compiled, in load order.
    pub fn virtual_services(&self) -> &[Arc<VirtualServiceRules>] {
        &self.virtual_services
    }

    /// A cluster by key.
    pub fn cluster(&self, key: &ClusterKey) -> Option<&Arc<Cluster>> {
        self.clusters().iter().find(|c| &c.key == key)
    }

    /// Every cluster, by id ([`Cluster::id`] is its index here).
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.services.clusters
    }

    /// Resolves a host name the way Kubernetes DNS does for a pod in `namespace`
    /// (`ndots: 5`, search path `<ns>.svc.cluster.local svc.cluster.local cluster.local`):
    /// the first candidate the mesh knows, else the name itself. Known names resolve
    /// without allocating.
    pub fn resolve_host(&self, name: &str, namespace: &str) -> Arc<str> {
        self.resolver.resolve(name, namespace, |h| {
            self.services
                .wildcard
                .iter()
                .any(|s| mesh_config::host::matches(&s.host, h))
        })
    }

    /// The service a request for `host` (qualified) resolves to, seen from `from`: an
    /// exact host before wildcards (the longest first), the caller's namespace before
    /// others, then the first loaded — as [`Registry::lookup`] decides.
    pub fn service(&self, host: &str, from: &str) -> Option<&Arc<mesh_config::Service>> {
        self.services.service(host, from)
    }

    /// The VirtualServices of workload traffic callers in namespace `from` see.
    pub fn visible_hosts(&self, from: &str) -> &Arc<VisibleHosts> {
        self.visible.get(from)
    }

    /// Routes one request of workload traffic (see the module documentation).
    pub fn route<'m>(
        &'m self,
        head: &RequestHead<'_>,
        caller: &Caller<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'m>, RouteError> {
        self.route_in(self.visible.get(caller.namespace), head, caller, rng)
    }

    /// Routes one request of workload traffic with the hosts its caller sees (what
    /// [`CompiledMesh::visible_hosts`] answers for the caller's namespace, kept by a
    /// workload's view so that a request does not look it up).
    pub fn route_in<'m>(
        &'m self,
        hosts: &'m VisibleHosts,
        head: &RequestHead<'_>,
        caller: &Caller<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'m>, RouteError> {
        let (name, _) = split_authority(head.authority);
        if name.is_empty() {
            return Err(RouteError::NoAuthority);
        }
        let host = self.resolve_host(name, caller.namespace);
        let port = head.port;
        let Some(vs) = hosts.find(&host) else {
            // No VirtualService: the default route to the host itself.
            let upstream = self.upstream(&host, None, port, port, caller.namespace)?;
            return Ok(Decision {
                host,
                port,
                gateway: None,
                virtual_service: None,
                rule: None,
                block: None,
                outcome: Outcome::Forward {
                    target: None,
                    upstream,
                },
            });
        };
        let Some((ri, rule, block)) = first_match(vs, head, caller, Pass::All) else {
            return Err(RouteError::NoRouteMatched);
        };
        Ok(Decision {
            host,
            port,
            gateway: None,
            virtual_service: Some(vs),
            rule: Some((ri, rule)),
            block,
            outcome: self.outcome(rule, head.port, caller.namespace, rng)?,
        })
    }

    /// What a matched rule does with a request to `port` from namespace `from`.
    pub(crate) fn outcome<'m>(
        &'m self,
        rule: &'m Rule,
        port: u16,
        from: &str,
        rng: &mut dyn Rng,
    ) -> Result<Outcome<'m>, RouteError> {
        Ok(match &rule.action {
            Action::Redirect(r) => Outcome::Redirect(r),
            Action::Direct(d) => Outcome::Direct(d),
            Action::Route(split) => {
                let Some((i, t)) = split.pick(rng) else {
                    return Err(RouteError::NoRouteMatched);
                };
                // The caller's namespace decides, not the VirtualService's.
                let upstream = self.upstream_of(
                    &t.host,
                    t.subset.as_deref(),
                    t.subset.as_ref(),
                    t.port.unwrap_or(0),
                    port,
                    from,
                )?;
                Outcome::Forward {
                    target: Some((i, t)),
                    upstream,
                }
            }
        })
    }

    /// The upstream for `host` (qualified), `subset`, destination port `dest_port` (0 when
    /// the rule names none) of a request to `req_port`, seen from `from` (the caller's
    /// namespace: it decides which service and which DestinationRule apply).
    pub fn upstream(
        &self,
        host: &str,
        subset: Option<&str>,
        dest_port: u16,
        req_port: u16,
        from: &str,
    ) -> Result<Upstream<'_>, RouteError> {
        self.upstream_of(host, subset, None, dest_port, req_port, from)
    }

    /// [`CompiledMesh::upstream`], with the subset also as an `Arc` when the caller has
    /// one (so that [`Upstream::Missing`] needs no allocation).
    fn upstream_of(
        &self,
        host: &str,
        subset: Option<&str>,
        subset_arc: Option<&Arc<str>>,
        dest_port: u16,
        req_port: u16,
        from: &str,
    ) -> Result<Upstream<'_>, RouteError> {
        if let Some(u) = self
            .services
            .upstream(host, subset, subset_arc, dest_port, req_port, from)
        {
            return Ok(u);
        }
        match self.settings.outbound_traffic_policy {
            OutboundTrafficPolicyMode::AllowAny => Ok(Upstream::Passthrough {
                host: host.into(),
                port: if dest_port == 0 { req_port } else { dest_port },
            }),
            OutboundTrafficPolicyMode::RegistryOnly => {
                Err(RouteError::RegistryOnly(host.to_string()))
            }
        }
    }
}

/// The first rule of `vs` (in order, through its index) with a block that matches the
/// request among the blocks `pass` considers: the rule, its index and the block.
#[allow(clippy::type_complexity)]
pub(crate) fn first_match<'m>(
    vs: &'m VirtualServiceRules,
    head: &RequestHead<'_>,
    caller: &Caller<'_>,
    pass: Pass,
) -> Option<(usize, &'m Rule, Option<(usize, &'m MatchBlock)>)> {
    let mut found = None;
    vs.index.for_candidates(head, vs.rules.len(), |ri| {
        let Some(rule) = vs.rules.get(ri) else {
            return false;
        };
        match rule.matching_block_in(head, caller, &vs.gateways, pass) {
            Some(block) => {
                found = Some((ri, rule, block));
                true
            }
            None => false,
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::resolve::joined;
    use super::*;

    fn compile(yaml: &str) -> CompiledMesh {
        CompiledMesh::compile(&crate::test_support::snapshot(yaml))
    }

    fn service_entry(name: &str, ns: &str, host: &str, export_to: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  exportTo: {export_to}\n  location: MESH_INTERNAL\n  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 8080, name: http-alt, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1, labels: {{v: one}}}}, {{address: 10.0.0.2, labels: {{v: two}}}}]\n---\n"
        )
    }

    fn destination_rule(name: &str, ns: &str, host: &str, export_to: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {host}\n  exportTo: {export_to}\n  subsets: [{{name: s-{name}-{ns}, labels: {{v: one}}}}, {{name: common, labels: {{v: two}}}}]\n---\n"
        )
    }

    /// The per-namespace views precomputed at compile time answer what the slow path
    /// (service choice, DestinationRule precedence) answers, for listed and unlisted
    /// namespaces alike.
    #[test]
    fn precomputed_views_agree_with_the_slow_path() {
        let mut yaml = String::new();
        yaml += &service_entry("api", "a", "api.example.com", "[.]");
        yaml += &service_entry("api", "b", "api.example.com", "['*']");
        yaml += &service_entry("api", "c", "api.example.com", "[d]");
        yaml += &service_entry("web", "a", "web.example.com", "['*']");
        yaml += &service_entry("wild", "w", "'*.wild.example.com'", "['*']");
        yaml += &destination_rule("api", "a", "api.example.com", "[.]");
        yaml += &destination_rule("api", "b", "api.example.com", "[e]");
        yaml += &destination_rule("api", "c", "'*.example.com'", "['*']");
        yaml += &destination_rule("api", "istio-system", "api.example.com", "['*']");
        yaml += &destination_rule("web", "d", "web.example.com", "[a]");
        yaml += &destination_rule("wild", "w", "'*.wild.example.com'", "['*']");
        let mesh = compile(&yaml);
        assert!(mesh.errors.is_empty(), "{:?}", mesh.errors);
        let namespaces = [
            "a",
            "b",
            "c",
            "d",
            "e",
            "w",
            "istio-system",
            "default",
            "zzz",
            "",
        ];
        let mut checked = 0;
        for e in &mesh.services.hosts {
            assert!(!e.groups.is_empty());
            for ns in namespaces {
                assert_eq!(
                    *e.views.get(ns),
                    e.view(&mesh.settings, ns),
                    "{} {ns}",
                    e.host
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * namespaces.len());
        // and route to what the DestinationRule precedence says
        let rule_of = |host: &str, subset: Option<&str>, from: &str| match mesh
            .upstream(host, subset, 80, 80, from)
        {
            Ok(Upstream::Cluster(c)) => c.key.rule.as_deref().map(String::from),
            Ok(Upstream::Missing { .. }) => Some("missing".into()),
            other => panic!("{other:?}"),
        };
        // (host, subset, caller namespace, DestinationRule)
        let table = [
            ("api.example.com", None, "a", Some("a/api")),
            ("api.example.com", None, "b", Some("istio-system/api")),
            // b's rule is exported to e only: not to b itself
            ("api.example.com", None, "e", Some("b/api")),
            ("api.example.com", None, "d", Some("istio-system/api")),
            ("api.example.com", None, "c", Some("c/api")),
            ("api.example.com", None, "zzz", Some("istio-system/api")),
            ("api.example.com", Some("s-api-a"), "a", Some("a/api")),
            ("api.example.com", Some("s-api-a"), "zzz", Some("missing")),
            (
                "api.example.com",
                Some("common"),
                "zzz",
                Some("istio-system/api"),
            ),
            // d/web is exported to a, but d is neither a's, the service's nor the root
            ("web.example.com", None, "a", None),
            ("web.example.com", None, "b", None),
            ("x.wild.example.com", None, "b", Some("w/wild")),
            ("x.wild.example.com", Some("common"), "q", Some("w/wild")),
        ];
        for (host, subset, from, want) in table {
            assert_eq!(
                rule_of(host, subset, from).as_deref(),
                want,
                "{host} {subset:?} from {from}"
            );
        }
    }

    /// Short names resolve against wildcard services without building strings on the
    /// heap, and still find the right host.
    #[test]
    fn resolution_with_wildcard_services() {
        let mut yaml = String::new();
        yaml += &service_entry("wild", "w", "'*.w.svc.cluster.local'", "['*']");
        yaml += &service_entry("wild2", "w", "'*.example.cluster.local'", "['*']");
        yaml += &service_entry("api", "a", "api.a.svc.cluster.local", "['*']");
        let mesh = compile(&yaml);
        // (name, caller namespace, host)
        let table = [
            ("api", "a", "api.a.svc.cluster.local"),
            ("x", "w", "x.w.svc.cluster.local"),
            ("X.", "w", "x.w.svc.cluster.local"),
            ("x.w", "a", "x.w.svc.cluster.local"),
            ("x.example", "a", "x.example.cluster.local"),
            ("api", "b", "api"),
            ("a.b.c.d.e.f", "a", "a.b.c.d.e.f"),
        ];
        for (name, ns, want) in table {
            assert_eq!(&*mesh.resolve_host(name, ns), want, "{name} from {ns}");
        }
        let long = "x".repeat(300);
        assert_eq!(joined(&[&long, ".", "y"], |s| s.len()), 302);
        assert_eq!(joined(&["a", ".", "b"], str::to_owned), "a.b");
    }
}
