//! The compiled mesh: one immutable value per configuration, asked per request.
//!
//! [`CompiledMesh::compile`] turns a Snapshot into route tables (per host, for the mesh
//! and per gateway), compiled rules and clusters with their balancers. It is compiled once
//! per configuration and per process — never per workload or per request — and is
//! shared by every workload of the process; each asks it with its own [`Source`].
//!
//! Per request, [`CompiledMesh::route`] resolves the authority the way Kubernetes DNS
//! would from the caller's namespace (`reviews` → `reviews.<ns>.svc.cluster.local`), finds
//! the VirtualService for the host (exact host before wildcards; among equals, as Istio's
//! PushContext orders them for the caller's namespace: those private to it, then those
//! exported to it by name, then public ones, the first loaded within each), takes the
//! first rule that matches, and for a route draws a weighted destination and finds its
//! cluster. The destination is resolved from the caller's namespace too: which service a
//! host names, which DestinationRule applies (the caller's namespace, then the
//! service's, then the root namespace) — not from the VirtualService's namespace.
//!
//! Clusters are built at compile time, one per (service, DestinationRule, subset, port);
//! a request picks one without scanning DestinationRules: per service host, the answer
//! for every caller namespace that could see the host differently is precomputed, with
//! one shared answer for all other namespaces. A destination whose subset no
//! DestinationRule defines, or a port the service lacks, is [`Upstream::Missing`].

use std::collections::HashMap;
use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::host::{self, SERVICE_DOMAIN, qualify};
use mesh_config::model::{
    DestinationRule, MeshSettings, OutboundTrafficPolicyMode, Resource, VirtualService,
};
use mesh_config::registry::Registry;
use rand_core::Rng;

use crate::cluster::{Cluster, ClusterKey, LB_ANNOTATION};
use crate::matcher::{MatchBlock, MatchError, RequestHead, Source, qualify_gateway};
use crate::route::{Action, Rule, RuleOrigin, Target, split_authority};

/// The rules of one VirtualService for one host.
#[derive(Debug)]
pub struct VirtualHost {
    /// `namespace/name`.
    pub name: Arc<str>,
    /// Namespace of the VirtualService.
    pub namespace: Arc<str>,
    /// Gateways it is bound to, qualified (`mesh` or `ns/name`); empty means `mesh`.
    pub gateways: Vec<Box<str>>,
    /// Namespaces it is visible to.
    pub export_to: Vec<String>,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Index over the rules.
    pub index: crate::index::RuleIndex,
}

/// Hosts to virtual hosts: exact names, then wildcards from the most specific.
#[derive(Debug, Default)]
struct HostTable {
    exact: HashMap<String, Vec<Arc<VirtualHost>>>,
    wildcard: Vec<(String, Arc<VirtualHost>)>,
}

impl HostTable {
    fn insert(&mut self, host: String, vh: Arc<VirtualHost>) {
        if host::is_wildcard(&host) {
            self.wildcard.push((host, vh));
        } else {
            self.exact.entry(host).or_default().push(vh);
        }
    }

    fn finish(&mut self) {
        // Longest suffix first; the sort is stable, so load order breaks ties.
        self.wildcard
            .sort_by_key(|(h, _)| std::cmp::Reverse(h.len()));
    }

    /// The VirtualService for `host` seen from namespace `from`: an exact host before
    /// wildcards (the longest first); among VirtualServices for the same host, Istio's
    /// order for the caller's namespace ([`export_rank`]), then load order.
    fn find(&self, host: &str, from: &str) -> Option<&Arc<VirtualHost>> {
        if let Some(list) = self.exact.get(host) {
            let mut best: Option<(u8, &Arc<VirtualHost>)> = None;
            for vh in list {
                match export_rank(vh, from) {
                    Some(0) => return Some(vh),
                    Some(r) if best.is_none_or(|(b, _)| r < b) => best = Some((r, vh)),
                    _ => {}
                }
            }
            if let Some((_, vh)) = best {
                return Some(vh);
            }
        }
        // Sorted by length, longest first, then in load order.
        let mut best: Option<(usize, u8, &Arc<VirtualHost>)> = None;
        for (p, vh) in &self.wildcard {
            if best.is_some_and(|(len, _, _)| p.len() < len) {
                break;
            }
            if !host::matches(p, host) {
                continue;
            }
            if let Some(r) = export_rank(vh, from)
                && best.is_none_or(|(_, b, _)| r < b)
            {
                best = Some((p.len(), r, vh));
            }
        }
        best.map(|(_, _, vh)| vh)
    }
}

/// How a VirtualService ranks for callers in `from`, as Istio's PushContext indexes
/// VirtualServices (`privateByNamespaceAndGateway`, `exportedToNamespaceByGateway`,
/// `publicByGateway`): 0 when private to `from` (defined there, exported to `.` or to
/// its own namespace), 1 when exported to `from` by name, 2 when public (`*`); `None`
/// when not visible (`~` hides it from everyone unless `*` is also given).
pub fn export_rank(vh: &VirtualHost, from: &str) -> Option<u8> {
    let export = &vh.export_to;
    if export.iter().any(|e| e == "*") {
        return Some(2);
    }
    if export.iter().any(|e| e == "~") {
        return None;
    }
    if &*vh.namespace == from && export.iter().any(|e| e == "." || e == from) {
        return Some(0);
    }
    if export.iter().any(|e| e == from) {
        return Some(1);
    }
    None
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A VirtualService exists for the host but no rule matched (Envoy: 404 `NR`).
    #[error("no route matched the request")]
    NoRouteMatched,
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
pub enum Upstream {
    /// A cluster of the registry.
    Cluster(Arc<Cluster>),
    /// A host the registry does not know, forwarded as it is (ALLOW_ANY), or a
    /// PASSTHROUGH/NONE service.
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
    /// The fully qualified host the authority resolved to.
    pub host: Arc<str>,
    /// The request's port.
    pub port: u16,
    /// The VirtualService that applied, if any.
    pub virtual_host: Option<&'m Arc<VirtualHost>>,
    /// The rule that matched and its index in the virtual host, if any (None: the
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
        upstream: Upstream,
    },
    /// Answer with a redirect.
    Redirect(&'m crate::route::Redirect),
    /// Answer directly.
    Direct(&'m crate::route::DirectResponse),
}

/// A configuration, compiled.
#[derive(Debug)]
pub struct CompiledMesh {
    version: u64,
    settings: MeshSettings,
    registry: Registry,
    mesh_hosts: HostTable,
    gateway_hosts: HashMap<String, HostTable>,
    /// Per service host: its services, the DestinationRules that cover it, its clusters.
    services: HashMap<Box<str>, HostServices>,
    /// Services with a wildcard host, the most specific first.
    wildcard_services: Vec<Arc<mesh_config::Service>>,
    resolver: Resolver,
    default_retry: crate::policy::RetryPolicy,
    /// Problems found while compiling (rules that could not be compiled are skipped).
    pub errors: Vec<String>,
}

impl CompiledMesh {
    /// Compiles a snapshot.
    pub fn compile(snapshot: &Snapshot) -> Self {
        let settings = snapshot.mesh().clone();
        let registry = snapshot.registry().clone();
        let mut errors = Vec::new();
        let mut mesh_hosts = HostTable::default();
        let mut gateway_hosts: HashMap<String, HostTable> = HashMap::new();
        let mut known: Vec<String> = registry.services().iter().map(|s| s.host.clone()).collect();
        let vss = snapshot.virtual_services();
        for vs in vss.iter().filter(|v| !v.spec.hosts.is_empty()) {
            let vh = match compile_virtual_host(vs, vss, &settings) {
                Ok(vh) => Arc::new(vh),
                Err(e) => {
                    errors.push(format!(
                        "VirtualService {}/{}: {e}",
                        vs.namespace(),
                        vs.name()
                    ));
                    continue;
                }
            };
            let to_mesh = vh.gateways.is_empty() || vh.gateways.iter().any(|g| &**g == "mesh");
            for h in &vs.spec.hosts {
                let q = qualify(h, vs.namespace());
                known.push(q.clone());
                if to_mesh {
                    mesh_hosts.insert(q.clone(), vh.clone());
                }
                for g in vh.gateways.iter().filter(|g| &***g != "mesh") {
                    gateway_hosts
                        .entry(g.to_string())
                        .or_default()
                        .insert(q.clone(), vh.clone());
                }
            }
        }
        mesh_hosts.finish();
        for t in gateway_hosts.values_mut() {
            t.finish();
        }
        let (services, wildcard_services) = compile_services(snapshot, &settings);
        let resolver = Resolver::new(&known, !wildcard_services.is_empty());
        let default_retry =
            crate::policy::RetryPolicy::compile(None, &settings.default_http_retry_policy);
        CompiledMesh {
            default_retry,
            version: snapshot.version(),
            settings,
            registry,
            mesh_hosts,
            gateway_hosts,
            services,
            wildcard_services,
            resolver,
            errors,
        }
    }

    /// The version of the snapshot it was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Mesh-wide settings.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The retry policy of requests no rule sets one for (the mesh's default).
    pub fn default_retry(&self) -> &crate::policy::RetryPolicy {
        &self.default_retry
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A cluster by key.
    pub fn cluster(&self, key: &ClusterKey) -> Option<&Arc<Cluster>> {
        self.clusters().find(|c| &c.key == key)
    }

    /// Every cluster.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.services.values().flat_map(|h| h.clusters.iter())
    }

    /// Resolves a host name the way Kubernetes DNS does for a pod in `namespace`
    /// (`ndots: 5`, search path `<ns>.svc.cluster.local svc.cluster.local cluster.local`):
    /// the first candidate the mesh knows, else the name itself. Known names resolve
    /// without allocating.
    pub fn resolve_host(&self, name: &str, namespace: &str) -> Arc<str> {
        self.resolver.resolve(name, namespace, |h| {
            self.wildcard_services
                .iter()
                .any(|s| host::matches(&s.host, h))
        })
    }

    /// The service a request for `host` (qualified) resolves to, seen from `from`: an
    /// exact host before wildcards (the longest first), the caller's namespace before
    /// others, then the first loaded — as [`Registry::lookup`] decides.
    pub fn service(&self, host: &str, from: &str) -> Option<&Arc<mesh_config::Service>> {
        if let Some(h) = self.services.get(host) {
            if let Some(v) = h.views.get(from) {
                return h.services.get(v.service);
            }
            if let Some(s) = h.choose_service(from) {
                return Some(s);
            }
        }
        let mut best: Option<&Arc<mesh_config::Service>> = None;
        for s in self
            .wildcard_services
            .iter()
            .filter(|s| s.visible_to(from) && host::matches(&s.host, host))
        {
            match best {
                None => best = Some(s),
                Some(b)
                    if b.host.len() == s.host.len()
                        && b.namespace != from
                        && s.namespace == from =>
                {
                    best = Some(s)
                }
                _ => {}
            }
        }
        best
    }

    /// The VirtualService for `host` (qualified), seen by `src`.
    pub fn virtual_host(&self, host: &str, src: &Source<'_>) -> Option<&Arc<VirtualHost>> {
        match src.gateway {
            None => self.mesh_hosts.find(host, src.namespace),
            Some(g) => {
                let table = self.gateway_hosts.get(g)?;
                table.find(host, src.namespace).or_else(|| {
                    // Gateway VirtualServices often name external hosts; `*` catches all.
                    table
                        .wildcard
                        .iter()
                        .find(|(p, _)| p == "*")
                        .map(|(_, v)| v)
                })
            }
        }
    }

    /// Routes one request (see the module documentation).
    pub fn route<'m>(
        &'m self,
        head: &RequestHead<'_>,
        src: &Source<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Decision<'m>, RouteError> {
        let (name, _) = split_authority(head.authority);
        if name.is_empty() {
            return Err(RouteError::NoAuthority);
        }
        let host: Arc<str> = match src.gateway {
            // At a gateway, hosts are matched as the client wrote them.
            Some(_) => name.to_ascii_lowercase().into(),
            None => self.resolve_host(name, src.namespace),
        };
        let port = head.port;
        let Some(vh) = self.virtual_host(&host, src) else {
            // No VirtualService: the default route to the host itself.
            let upstream = self.upstream(&host, None, port, port, src.namespace)?;
            return Ok(Decision {
                host,
                port,
                virtual_host: None,
                rule: None,
                block: None,
                outcome: Outcome::Forward {
                    target: None,
                    upstream,
                },
            });
        };
        let gateways = &vh.gateways;
        let mut found = None;
        vh.index.for_candidates(head, vh.rules.len(), |ri| {
            let Some(rule) = vh.rules.get(ri) else {
                return false;
            };
            match rule.matching_block(head, src, gateways) {
                Some(block) => {
                    found = Some((ri, rule, block));
                    true
                }
                None => false,
            }
        });
        if let Some((ri, rule, block)) = found {
            let outcome = match &rule.action {
                Action::Redirect(r) => Outcome::Redirect(r),
                Action::Direct(d) => Outcome::Direct(d),
                Action::Route(split) => {
                    let target = split.pick(rng);
                    let upstream = match target {
                        // The caller's namespace decides, not the VirtualService's.
                        Some((_, t)) => self.upstream_of(
                            &t.host,
                            t.subset.as_deref(),
                            t.subset.as_ref(),
                            t.port.unwrap_or(0),
                            port,
                            src.namespace,
                        )?,
                        None => return Err(RouteError::NoRouteMatched),
                    };
                    Outcome::Forward { target, upstream }
                }
            };
            return Ok(Decision {
                host,
                port,
                virtual_host: Some(vh),
                rule: Some((ri, rule)),
                block,
                outcome,
            });
        }
        Err(RouteError::NoRouteMatched)
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
    ) -> Result<Upstream, RouteError> {
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
    ) -> Result<Upstream, RouteError> {
        // The destination's port; else the service's only port; else the request's.
        let port_of = |svc: &mesh_config::Service| {
            if dest_port != 0 {
                dest_port
            } else if svc.ports.len() == 1 {
                svc.ports[0].number as u16
            } else {
                req_port
            }
        };
        // Fast path: an exact service host, answered per caller namespace at compile time.
        if let Some(e) = self.services.get(host)
            && let Some(v) = e.views.get(from)
            && let (Some(svc), Some(group)) = (e.services.get(v.service), e.groups.get(v.group))
        {
            return Ok(group.upstream(&e.host, subset, subset_arc, port_of(svc)));
        }
        let Some(svc) = self.service(host, from) else {
            return match self.settings.outbound_traffic_policy {
                OutboundTrafficPolicyMode::AllowAny => Ok(Upstream::Passthrough {
                    host: host.into(),
                    port: if dest_port == 0 { req_port } else { dest_port },
                }),
                OutboundTrafficPolicyMode::RegistryOnly => {
                    Err(RouteError::RegistryOnly(host.to_string()))
                }
            };
        };
        let port = port_of(svc);
        let Some(e) = self.services.get(svc.host.as_str()) else {
            return Ok(Upstream::Missing {
                host: svc.host.as_str().into(),
                subset: subset_arc.cloned().or_else(|| subset.map(Into::into)),
            });
        };
        // A wildcard service: the DestinationRule depends on the host asked for.
        let rule = e.rule_for(&self.settings, host, from, svc);
        match e.group(svc, rule) {
            Some(g) => Ok(g.upstream(&e.host, subset, subset_arc, port)),
            None => Ok(Upstream::Missing {
                host: e.host.clone(),
                subset: subset_arc.cloned().or_else(|| subset.map(Into::into)),
            }),
        }
    }
}

fn compile_virtual_host(
    vs: &Resource<VirtualService>,
    all: &[Arc<Resource<VirtualService>>],
    settings: &MeshSettings,
) -> Result<VirtualHost, MatchError> {
    let ns = vs.namespace();
    let name: Arc<str> = format!("{ns}/{}", vs.name()).into();
    let mut rules = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        let origin = rule_origin(vs, &name, i);
        if let Some(d) = &r.delegate {
            // Inline the delegate's rules, each also requiring one of this rule's blocks.
            let dns = d.namespace.as_deref().unwrap_or(ns);
            let Some(dvs) = all
                .iter()
                .find(|o| o.namespace() == dns && o.name() == d.name)
            else {
                continue;
            };
            let parent: Vec<MatchBlock> = r
                .match_
                .iter()
                .map(|m| MatchBlock::compile(m, ns))
                .collect::<Result<_, _>>()?;
            let dname: Arc<str> = format!("{dns}/{}", dvs.name()).into();
            for (j, dr) in dvs.spec.http.iter().enumerate() {
                let mut rule = Rule::compile(
                    dr,
                    dvs.namespace(),
                    rule_origin(dvs, &dname, j),
                    &settings.default_http_retry_policy,
                )?;
                rule.parent_matches.clone_from(&parent);
                rules.push(rule);
            }
            continue;
        }
        rules.push(Rule::compile(
            r,
            ns,
            origin,
            &settings.default_http_retry_policy,
        )?);
    }
    Ok(VirtualHost {
        name,
        namespace: ns.into(),
        gateways: vs
            .spec
            .gateways
            .iter()
            .map(|g| qualify_gateway(g, ns).into())
            .collect(),
        export_to: if vs.spec.export_to.is_empty() {
            settings.default_virtual_service_export_to.clone()
        } else {
            vs.spec.export_to.clone()
        },
        index: crate::index::RuleIndex::new(&rules),
        rules,
    })
}

fn rule_origin(vs: &Resource<VirtualService>, name: &Arc<str>, i: usize) -> RuleOrigin {
    let path = mesh_config::FieldPath::root()
        .key("spec")
        .key("http")
        .index(i);
    let loc = vs.origin.locate(&path);
    RuleOrigin {
        virtual_service: name.clone(),
        index: i,
        location: format!("{}:{}", loc.source.name(), loc.span.start.line).into(),
        name: vs.spec.http[i].name.as_deref().map(Into::into),
    }
}

fn rule_id(r: &Resource<DestinationRule>) -> Arc<str> {
    format!("{}/{}", r.namespace(), r.name()).into()
}

/// What the mesh knows of one service host.
#[derive(Debug)]
struct HostServices {
    /// The host.
    host: Arc<str>,
    /// Services with this host (one per namespace), in load order.
    services: Vec<Arc<mesh_config::Service>>,
    /// DestinationRules covering the host, with their qualified hosts.
    rules: Vec<(Arc<Resource<DestinationRule>>, Box<str>)>,
    /// Clusters: per service and port, one without a DestinationRule, and for every
    /// covering DestinationRule one with its policy plus one per subset (the rule that
    /// applies depends on the caller's namespace).
    clusters: Vec<Arc<Cluster>>,
    /// The same clusters grouped by (service, DestinationRule): what one caller reaches.
    groups: Vec<ClusterGroup>,
    /// For requests to exactly this host: the service and group per caller namespace.
    views: NamespaceViews,
}

/// The clusters of one service shaped by one DestinationRule (or none): per port, one
/// without a subset and one per subset. A short list.
#[derive(Debug)]
struct ClusterGroup {
    /// Index in [`HostServices::services`].
    service: usize,
    /// Index in [`HostServices::rules`].
    rule: Option<usize>,
    clusters: Box<[Arc<Cluster>]>,
}

impl ClusterGroup {
    /// The cluster for `subset` and `port`, else [`Upstream::Missing`].
    fn upstream(
        &self,
        host: &Arc<str>,
        subset: Option<&str>,
        subset_arc: Option<&Arc<str>>,
        port: u16,
    ) -> Upstream {
        match self
            .clusters
            .iter()
            .find(|c| c.key.port == port && c.key.subset.as_deref() == subset)
        {
            Some(c) => Upstream::Cluster(c.clone()),
            None => Upstream::Missing {
                host: host.clone(),
                subset: subset_arc.cloned().or_else(|| subset.map(Into::into)),
            },
        }
    }
}

/// Which service and cluster group a caller namespace reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    service: usize,
    group: usize,
}

/// Per caller namespace, the [`View`] of one host (`None`: no service of the host is
/// visible). Only namespaces that can see the host differently are listed — those of its
/// services and DestinationRules and those their `exportTo` names —; every other
/// namespace sees `other`.
#[derive(Debug, Default)]
struct NamespaceViews {
    /// A few namespaces: scanned.
    few: Box<[(Box<str>, Option<View>)]>,
    /// Many namespaces: hashed.
    many: HashMap<Box<str>, Option<View>>,
    other: Option<View>,
}

/// Above this many namespaces, views are hashed rather than scanned.
const MAX_SCANNED_VIEWS: usize = 8;

impl NamespaceViews {
    fn get(&self, from: &str) -> Option<View> {
        if self.many.is_empty() {
            match self.few.iter().find(|(ns, _)| &**ns == from) {
                Some((_, v)) => *v,
                None => self.other,
            }
        } else {
            self.many.get(from).copied().unwrap_or(self.other)
        }
    }
}

impl HostServices {
    /// The service `from` sees: visible, in its own namespace first, else the first
    /// loaded.
    fn choose_service(&self, from: &str) -> Option<&Arc<mesh_config::Service>> {
        let visible = || self.services.iter().filter(|s| s.visible_to(from));
        visible()
            .find(|s| s.namespace == from)
            .or_else(|| visible().next())
    }

    /// Index of the DestinationRule that applies to a request for `host` from `from` to
    /// `svc` (Istio's precedence, see `destination_rule_among`).
    fn rule_for(
        &self,
        settings: &MeshSettings,
        host: &str,
        from: &str,
        svc: &mesh_config::Service,
    ) -> Option<usize> {
        let rule = mesh_config::snapshot::destination_rule_among(
            self.rules.iter().map(|(d, p)| (d, &**p)),
            settings,
            host,
            from,
            &svc.namespace,
        )?;
        self.rules.iter().position(|(d, _)| Arc::ptr_eq(d, rule))
    }

    /// The cluster group of `svc` shaped by rule `rule`.
    fn group(&self, svc: &Arc<mesh_config::Service>, rule: Option<usize>) -> Option<&ClusterGroup> {
        let si = self.services.iter().position(|s| Arc::ptr_eq(s, svc))?;
        self.groups
            .iter()
            .find(|g| g.service == si && g.rule == rule)
    }

    /// The view of a caller in `from`, computed the slow way.
    fn view(&self, settings: &MeshSettings, from: &str) -> Option<View> {
        let svc = self.choose_service(from)?;
        let service = self.services.iter().position(|s| Arc::ptr_eq(s, svc))?;
        let rule = self.rule_for(settings, &svc.host, from, svc);
        let group = self
            .groups
            .iter()
            .position(|g| g.service == service && g.rule == rule)?;
        Some(View { service, group })
    }

    /// Precomputes [`HostServices::views`].
    fn build_views(&mut self, settings: &MeshSettings) {
        fn add<'a>(n: &'a str, names: &mut Vec<&'a str>) {
            if !matches!(n, "*" | "." | "~") && !names.contains(&n) {
                names.push(n);
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for s in &self.services {
            add(&s.namespace, &mut names);
            for e in &s.export_to {
                add(e, &mut names);
            }
        }
        for (d, _) in &self.rules {
            add(d.namespace(), &mut names);
            let export = if d.spec.export_to.is_empty() {
                &settings.default_destination_rule_export_to
            } else {
                &d.spec.export_to
            };
            for e in export {
                add(e, &mut names);
            }
        }
        add(&settings.root_namespace, &mut names);
        // A namespace no name above is: it sees what every unlisted namespace sees.
        let mut other_ns = String::from("\0");
        while names.contains(&other_ns.as_str()) {
            other_ns.push('\0');
        }
        let other = self.view(settings, &other_ns);
        let listed: Vec<(Box<str>, Option<View>)> = names
            .iter()
            .map(|n| (Box::from(*n), self.view(settings, n)))
            .collect();
        self.views = if listed.len() > MAX_SCANNED_VIEWS {
            NamespaceViews {
                few: Box::default(),
                many: listed.into_iter().collect(),
                other,
            }
        } else {
            NamespaceViews {
                few: listed.into_boxed_slice(),
                many: HashMap::new(),
                other,
            }
        };
    }
}

#[allow(clippy::type_complexity)]
fn compile_services(
    snapshot: &Snapshot,
    settings: &MeshSettings,
) -> (
    HashMap<Box<str>, HostServices>,
    Vec<Arc<mesh_config::Service>>,
) {
    let mut out: HashMap<Box<str>, HostServices> = HashMap::new();
    let mut wildcards = Vec::new();
    for svc in snapshot.registry().services() {
        if host::is_wildcard(&svc.host) {
            wildcards.push(svc.clone());
        }
        let covering: Vec<Arc<Resource<DestinationRule>>> = snapshot
            .destination_rules()
            .iter()
            .filter(|dr| {
                dr.spec.workload_selector.is_none()
                    && host::matches(&qualify(&dr.spec.host, dr.namespace()), &svc.host)
            })
            .cloned()
            .collect();
        let entry = out
            .entry(svc.host.as_str().into())
            .or_insert_with(|| HostServices {
                host: svc.host.as_str().into(),
                services: Vec::new(),
                rules: Vec::new(),
                clusters: Vec::new(),
                groups: Vec::new(),
                views: NamespaceViews::default(),
            });
        let si = entry.services.len();
        entry.services.push(svc.clone());
        for dr in &covering {
            if !entry.rules.iter().any(|(r, _)| Arc::ptr_eq(r, dr)) {
                let pattern = qualify(&dr.spec.host, dr.namespace()).into_boxed_str();
                entry.rules.push((dr.clone(), pattern));
            }
        }
        // One group without a DestinationRule, one per covering rule.
        let mut groups: Vec<(Option<usize>, Vec<Arc<Cluster>>)> = std::iter::once(None)
            .chain(
                covering
                    .iter()
                    .map(|dr| entry.rules.iter().position(|(r, _)| Arc::ptr_eq(r, dr))),
            )
            .map(|r| (r, Vec::new()))
            .collect();
        for port in &svc.ports {
            let c = Arc::new(Cluster::build(
                svc,
                port,
                None,
                None,
                &settings.trust_domain,
            ));
            entry.clusters.push(c.clone());
            groups[0].1.push(c);
            for (gi, dr) in covering.iter().enumerate() {
                let peak = dr
                    .meta
                    .annotations
                    .get(LB_ANNOTATION)
                    .is_some_and(|v| v.eq_ignore_ascii_case("PEAK_EWMA"));
                let id = rule_id(dr);
                let c = Arc::new(Cluster::build(
                    svc,
                    port,
                    None,
                    Some((dr, peak, id.clone())),
                    &settings.trust_domain,
                ));
                entry.clusters.push(c.clone());
                groups[gi + 1].1.push(c);
                for s in &dr.spec.subsets {
                    let c = Arc::new(Cluster::build(
                        svc,
                        port,
                        Some(s),
                        Some((dr, peak, id.clone())),
                        &settings.trust_domain,
                    ));
                    entry.clusters.push(c.clone());
                    groups[gi + 1].1.push(c);
                }
            }
        }
        entry
            .groups
            .extend(groups.into_iter().map(|(rule, clusters)| ClusterGroup {
                service: si,
                rule,
                clusters: clusters.into_boxed_slice(),
            }));
    }
    for entry in out.values_mut() {
        entry.build_views(settings);
    }
    wildcards.sort_by_key(|s| std::cmp::Reverse(s.host.len()));
    (out, wildcards)
}

/// A namespace and the host `name.namespace.svc.cluster.local` in it.
type NamespacedHost = (Box<str>, Arc<str>);

/// Kubernetes DNS search, precomputed over the hosts the mesh knows.
#[derive(Debug, Default)]
struct Resolver {
    /// Every known host.
    known: HashMap<Box<str>, Arc<str>>,
    /// `name` → (namespace, host) for hosts `name.namespace.svc.cluster.local`.
    in_namespace: HashMap<Box<str>, Vec<NamespacedHost>>,
    /// `name` → host for hosts `name.svc.cluster.local`.
    in_svc: HashMap<Box<str>, Arc<str>>,
    /// `name` → host for hosts `name.cluster.local`.
    in_cluster: HashMap<Box<str>, Arc<str>>,
    /// Some services have wildcard hosts: candidates must also be tried against them.
    wildcards: bool,
}

impl Resolver {
    fn new(known: &[String], wildcards: bool) -> Self {
        let mut r = Resolver {
            wildcards,
            ..Resolver::default()
        };
        for h in known {
            let arc: Arc<str> = h.as_str().into();
            r.known.insert(h.as_str().into(), arc.clone());
            if let Some(rest) = h.strip_suffix(&format!(".{SERVICE_DOMAIN}")) {
                r.in_svc.entry(rest.into()).or_insert_with(|| arc.clone());
                if let Some((name, ns)) = rest.rsplit_once('.') {
                    r.in_namespace
                        .entry(name.into())
                        .or_default()
                        .push((ns.into(), arc.clone()));
                }
            }
            if let Some(rest) = h.strip_suffix(".cluster.local") {
                r.in_cluster
                    .entry(rest.into())
                    .or_insert_with(|| arc.clone());
            }
        }
        r
    }

    fn resolve(
        &self,
        name: &str,
        namespace: &str,
        wildcard_known: impl Fn(&str) -> bool,
    ) -> Arc<str> {
        let lowered;
        let mut name = name.trim_end_matches('.');
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            name = &lowered;
        }
        if name.bytes().filter(|b| *b == b'.').count() < 5 {
            if let Some(h) = self
                .in_namespace
                .get(name)
                .and_then(|v| v.iter().find(|(ns, _)| &**ns == namespace))
            {
                return h.1.clone();
            }
            let known = |c: &str| wildcard_known(c).then(|| Arc::from(c));
            if self.wildcards
                && let Some(h) = joined(&[name, ".", namespace, ".", SERVICE_DOMAIN], known)
            {
                return h;
            }
            if let Some(h) = self.in_svc.get(name) {
                return h.clone();
            }
            if let Some(h) = self.in_cluster.get(name) {
                return h.clone();
            }
            if self.wildcards {
                for suffix in [SERVICE_DOMAIN, "cluster.local"] {
                    if let Some(h) = joined(&[name, ".", suffix], known) {
                        return h;
                    }
                }
            }
        }
        match self.known.get(name) {
            Some(h) => h.clone(),
            None => name.into(),
        }
    }
}

/// Calls `f` with `parts` joined, in a stack buffer (a heap one only for names longer
/// than any DNS name).
fn joined<R>(parts: &[&str], f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 256];
    let mut n = 0;
    for p in parts {
        match buf.get_mut(n..n + p.len()) {
            Some(dst) => dst.copy_from_slice(p.as_bytes()),
            None => return f(&parts.concat()),
        }
        n += p.len();
    }
    match std::str::from_utf8(&buf[..n]) {
        Ok(s) => f(s),
        Err(_) => f(&parts.concat()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::ConfigSet;

    fn compile(yaml: &str) -> CompiledMesh {
        let mut set = ConfigSet::new();
        set.add_str("test.yaml", yaml);
        let checked = set.check();
        let snap = checked.snapshot.unwrap_or_else(|| {
            panic!(
                "{:#?}",
                checked
                    .diagnostics
                    .iter()
                    .map(|d| d.short())
                    .collect::<Vec<_>>()
            )
        });
        CompiledMesh::compile(&snap)
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
        for e in mesh.services.values() {
            assert!(!e.groups.is_empty());
            for ns in namespaces {
                assert_eq!(
                    e.views.get(ns),
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
