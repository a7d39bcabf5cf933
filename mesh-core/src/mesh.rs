//! The compiled mesh: one immutable value per configuration, asked per request.
//!
//! [`CompiledMesh::compile`] turns a Snapshot into route tables (per host, for the mesh
//! and per gateway), compiled rules and clusters with their balancers. It is compiled once
//! per configuration and per process — never per workload or per request — and is
//! shared by every workload of the process; each asks it with its own [`Source`].
//!
//! Per request, [`CompiledMesh::route`] resolves the authority the way Kubernetes DNS
//! would from the caller's namespace (`reviews` → `reviews.<ns>.svc.cluster.local`), finds
//! the VirtualService for the host (exact host before wildcards, the first loaded among
//! equals, honouring `exportTo`), takes the first rule that matches, and for a route draws
//! a weighted destination and finds its cluster.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::host::{self, SERVICE_DOMAIN, qualify};
use mesh_config::model::{
    DestinationRule, MeshSettings, OutboundTrafficPolicyMode, Resource, VirtualService,
};
use mesh_config::registry::{Registry, visible};
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

    fn find(&self, host: &str, from: &str) -> Option<&Arc<VirtualHost>> {
        let vis = |vh: &&Arc<VirtualHost>| visible(&vh.export_to, &vh.namespace, from);
        if let Some(v) = self.exact.get(host).and_then(|l| l.iter().find(vis)) {
            return Some(v);
        }
        self.wildcard
            .iter()
            .find(|(p, vh)| host::matches(p, host) && vis(&vh))
            .map(|(_, vh)| vh)
    }
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
            let visible = || h.services.iter().filter(|s| s.visible_to(from));
            if let Some(s) = visible()
                .find(|s| s.namespace == from)
                .or_else(|| visible().next())
            {
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
                        Some((_, t)) => self.upstream(
                            &t.host,
                            t.subset.as_deref(),
                            t.port.unwrap_or(0),
                            port,
                            &vh.namespace,
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
    /// the rule names none) of a request to `req_port`, seen from `from`.
    pub fn upstream(
        &self,
        host: &str,
        subset: Option<&str>,
        dest_port: u16,
        req_port: u16,
        from: &str,
    ) -> Result<Upstream, RouteError> {
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
        // The destination's port; else the service's only port; else the request's.
        let port = if dest_port != 0 {
            dest_port
        } else if svc.ports.len() == 1 {
            svc.ports[0].number as u16
        } else {
            req_port
        };
        let entry = self.services.get(svc.host.as_str());
        let rule = entry.and_then(|e| {
            mesh_config::snapshot::destination_rule_among(
                e.rules.iter().map(|(d, p)| (d, &**p)),
                &self.settings,
                host,
                from,
                &svc.namespace,
            )
        });
        let found = entry.and_then(|e| {
            e.clusters.iter().find(|c| {
                c.key.port == port
                    && c.key.subset.as_deref() == subset
                    && match (&c.rule, rule) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    }
                    && Arc::ptr_eq(&c.service, svc)
            })
        });
        match found {
            Some(c) => Ok(Upstream::Cluster(c.clone())),
            None => {
                // A subset no DestinationRule defines, or a port the service lacks: an
                // empty cluster, which answers "no healthy upstream".
                let key = ClusterKey {
                    host: svc.host.as_str().into(),
                    subset: subset.map(Into::into),
                    port,
                    rule: rule.map(|r| rule_id(r)),
                };
                Ok(Upstream::Cluster(Arc::new(empty_cluster(key, svc.clone()))))
            }
        }
    }
}

fn empty_cluster(key: ClusterKey, service: Arc<mesh_config::Service>) -> Cluster {
    use crate::balance::{Balancer, EndpointLoad, LbPolicy};
    Cluster {
        service,
        rule: None,
        port: mesh_config::registry::ServicePort {
            number: u32::from(key.port),
            name: String::new(),
            protocol: "HTTP".into(),
            target_port: None,
        },
        key,
        endpoints: Arc::from(Vec::new()),
        policy: Default::default(),
        lb: LbPolicy::RoundRobin,
        hash_on: None,
        balancer: Balancer::Empty,
        load: EndpointLoad::new(0),
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
#[derive(Debug, Default)]
struct HostServices {
    /// Services with this host (one per namespace), in load order.
    services: Vec<Arc<mesh_config::Service>>,
    /// DestinationRules covering the host, with their qualified hosts.
    rules: Vec<(Arc<Resource<DestinationRule>>, Box<str>)>,
    /// Clusters: per service and port, one without a DestinationRule, and for every
    /// covering DestinationRule one with its policy plus one per subset (the rule that
    /// applies depends on the caller's namespace).
    clusters: Vec<Arc<Cluster>>,
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
        let entry = out.entry(svc.host.as_str().into()).or_default();
        entry.services.push(svc.clone());
        for dr in &covering {
            if !entry.rules.iter().any(|(r, _)| Arc::ptr_eq(r, dr)) {
                let pattern = qualify(&dr.spec.host, dr.namespace()).into_boxed_str();
                entry.rules.push((dr.clone(), pattern));
            }
        }
        for port in &svc.ports {
            let c = Cluster::build(svc, port, None, None, &settings.trust_domain);
            entry.clusters.push(Arc::new(c));
            for dr in &covering {
                let peak = dr
                    .meta
                    .annotations
                    .get(LB_ANNOTATION)
                    .is_some_and(|v| v.eq_ignore_ascii_case("PEAK_EWMA"));
                let id = rule_id(dr);
                let c = Cluster::build(
                    svc,
                    port,
                    None,
                    Some((dr, peak, id.clone())),
                    &settings.trust_domain,
                );
                entry.clusters.push(Arc::new(c));
                for s in &dr.spec.subsets {
                    let c = Cluster::build(
                        svc,
                        port,
                        Some(s),
                        Some((dr, peak, id.clone())),
                        &settings.trust_domain,
                    );
                    entry.clusters.push(Arc::new(c));
                }
            }
        }
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
            if self.wildcards {
                let c = format!("{name}.{namespace}.{SERVICE_DOMAIN}");
                if wildcard_known(&c) {
                    return c.into();
                }
            }
            if let Some(h) = self.in_svc.get(name) {
                return h.clone();
            }
            if let Some(h) = self.in_cluster.get(name) {
                return h.clone();
            }
            if self.wildcards {
                for c in [
                    format!("{name}.{SERVICE_DOMAIN}"),
                    format!("{name}.cluster.local"),
                ] {
                    if wildcard_known(&c) {
                        return c.into();
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
