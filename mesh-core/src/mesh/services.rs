//! The services of the mesh by host, with their clusters, and which service and
//! DestinationRule each caller namespace reaches.
//!
//! Clusters are built at compile time, one per (service, DestinationRule, subset, port);
//! a request picks one without scanning DestinationRules: per service host, the answer
//! for every caller namespace that could see the host differently is precomputed, with
//! one shared answer for all other namespaces ([`ByNamespace`]). The DestinationRule is
//! Istio's choice for the caller: its own namespace's, then the service's, then the root
//! namespace's, the most specific host first.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use mesh_config::Snapshot;
use mesh_config::host::{self, qualify};
use mesh_config::model::{DestinationRule, MeshSettings, Resource};

use super::Upstream;
use super::by_namespace::{ByNamespace, add_name};
use crate::cluster::{Cluster, LB_ANNOTATION};

fn rule_id(r: &Resource<DestinationRule>) -> Arc<str> {
    format!("{}/{}", r.namespace(), r.name()).into()
}

/// What the mesh knows of one service host.
#[derive(Debug)]
pub(super) struct HostServices {
    /// The host.
    pub(super) host: Arc<str>,
    /// Services with this host (one per namespace), in load order.
    pub(super) services: Vec<Arc<mesh_config::Service>>,
    /// DestinationRules covering the host, with their qualified hosts.
    pub(super) rules: Vec<(Arc<Resource<DestinationRule>>, Box<str>)>,
    /// Clusters: per service and port, one without a DestinationRule, and for every
    /// covering DestinationRule one with its policy plus one per subset (the rule that
    /// applies depends on the caller's namespace).
    pub(super) clusters: Vec<Arc<Cluster>>,
    /// The same clusters grouped by (service, DestinationRule): what one caller reaches.
    pub(super) groups: Vec<ClusterGroup>,
    /// For requests to exactly this host: the service and group per caller namespace.
    pub(super) views: ByNamespace<Option<View>>,
    /// Per service, what its clusters made of each of its endpoints.
    pub(super) facts: Vec<Vec<crate::cluster::EndpointFacts>>,
}

/// The clusters of one service shaped by one DestinationRule (or none): per port, one
/// without a subset and one per subset. A short list.
#[derive(Debug)]
pub(super) struct ClusterGroup {
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
    ) -> Upstream<'_> {
        match self
            .clusters
            .iter()
            .find(|c| c.key.port == port && c.key.subset.as_deref() == subset)
        {
            Some(c) => Upstream::Cluster(c),
            None => Upstream::Missing {
                host: host.clone(),
                subset: subset_arc.cloned().or_else(|| subset.map(Into::into)),
            },
        }
    }
}

/// Which service and cluster group a caller namespace reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct View {
    service: usize,
    group: usize,
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
    pub(super) fn view(&self, settings: &MeshSettings, from: &str) -> Option<View> {
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
        let mut names: Vec<&str> = Vec::new();
        for s in &self.services {
            add_name(&s.namespace, &mut names);
            for e in &s.export_to {
                add_name(e, &mut names);
            }
        }
        for (d, _) in &self.rules {
            add_name(d.namespace(), &mut names);
            let export = if d.spec.export_to.is_empty() {
                &settings.default_destination_rule_export_to
            } else {
                &d.spec.export_to
            };
            for e in export {
                add_name(e, &mut names);
            }
        }
        add_name(&settings.root_namespace, &mut names);
        let views = ByNamespace::build(&names, |ns| self.view(settings, ns));
        self.views = views;
    }
}

/// The next cluster id.
fn next(id: &mut u32) -> u32 {
    let this = *id;
    *id += 1;
    this
}

/// The services of the mesh: by exact host, and those with a wildcard host.
#[derive(Debug, Default, Clone)]
pub(super) struct Services {
    /// Per service host: its services, the DestinationRules that cover it, its clusters.
    /// (By position in `hosts`: an endpoint change replaces hosts, never adds one, so
    /// the index is shared between the meshes before and after it.)
    by_host: Arc<HashMap<Box<str>, usize>>,
    /// Per service host, in the order hosts first appear in the registry.
    pub(super) hosts: Vec<Arc<HostServices>>,
    /// Services with a wildcard host, the most specific first.
    pub(super) wildcard: Vec<Arc<mesh_config::Service>>,
    /// Every cluster, by id.
    pub(super) clusters: Vec<Arc<Cluster>>,
    /// The mesh settings (root namespace and export defaults decide DestinationRules).
    settings: MeshSettings,
}

impl Services {
    /// What the mesh knows of the service host `host`.
    fn host(&self, host: &str) -> Option<&HostServices> {
        self.by_host
            .get(host)
            .and_then(|&i| self.hosts.get(i))
            .map(|h| &**h)
    }

    /// The service a request for `host` (qualified) resolves to, seen from `from`: an
    /// exact host before wildcards (the longest first), the caller's namespace before
    /// others, then the first loaded — as `Registry::lookup` decides.
    pub(super) fn service(&self, host: &str, from: &str) -> Option<&Arc<mesh_config::Service>> {
        if let Some(h) = self.host(host) {
            if let Some(v) = *h.views.get(from) {
                return h.services.get(v.service);
            }
            if let Some(s) = h.choose_service(from) {
                return Some(s);
            }
        }
        let mut best: Option<&Arc<mesh_config::Service>> = None;
        for s in self
            .wildcard
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

    /// The upstream for `host` (qualified), `subset` (also as an `Arc` when the caller has
    /// one, so that [`Upstream::Missing`] needs no allocation), destination port
    /// `dest_port` (0 when the rule names none) of a request to `req_port`, seen from
    /// `from`; `None` when no service of the mesh has the host.
    pub(super) fn upstream(
        &self,
        host: &str,
        subset: Option<&str>,
        subset_arc: Option<&Arc<str>>,
        dest_port: u16,
        req_port: u16,
        from: &str,
    ) -> Option<Upstream<'_>> {
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
        if let Some(e) = self.host(host)
            && let Some(v) = *e.views.get(from)
            && let (Some(svc), Some(group)) = (e.services.get(v.service), e.groups.get(v.group))
        {
            return Some(group.upstream(&e.host, subset, subset_arc, port_of(svc)));
        }
        let svc = self.service(host, from)?;
        let port = port_of(svc);
        let missing = |host: Arc<str>| Upstream::Missing {
            host,
            subset: subset_arc.cloned().or_else(|| subset.map(Into::into)),
        };
        let Some(e) = self.host(svc.host.as_str()) else {
            return Some(missing(svc.host.as_str().into()));
        };
        // A wildcard service: the DestinationRule depends on the host asked for.
        let rule = e.rule_for(&self.settings, host, from, svc);
        Some(match e.group(svc, rule) {
            Some(g) => g.upstream(&e.host, subset, subset_arc, port),
            None => missing(e.host.clone()),
        })
    }
}

impl HostServices {
    /// The services of one host (in registry order) with the DestinationRules covering
    /// the host (`rules`, in load order, with their qualified hosts), their clusters
    /// numbered by `id`: per service and port, one without a DestinationRule, and per
    /// rule one with its policy plus one per subset.
    fn build(
        host: &str,
        services: Vec<Arc<mesh_config::Service>>,
        rules: Vec<(Arc<Resource<DestinationRule>>, Box<str>)>,
        settings: &MeshSettings,
        ctx: &crate::cluster::TlsContext<'_>,
        id: &mut dyn FnMut() -> u32,
    ) -> HostServices {
        let mut clusters = Vec::new();
        let mut groups = Vec::new();
        let mut all_facts = Vec::with_capacity(services.len());
        for (si, svc) in services.iter().enumerate() {
            let facts = crate::cluster::EndpointFacts::of_service(svc, ctx.trust_domain);
            // One group without a DestinationRule, one per covering rule.
            let mut by_rule: Vec<Vec<Arc<Cluster>>> = vec![Vec::new(); rules.len() + 1];
            for port in &svc.ports {
                let c = Arc::new(Cluster::build(id(), svc, port, None, None, ctx, &facts));
                clusters.push(c.clone());
                by_rule[0].push(c);
                for (ri, (dr, _)) in rules.iter().enumerate() {
                    let peak = dr
                        .meta
                        .annotations
                        .get(LB_ANNOTATION)
                        .is_some_and(|v| v.eq_ignore_ascii_case("PEAK_EWMA"));
                    let rid = rule_id(dr);
                    let c = Arc::new(Cluster::build(
                        id(),
                        svc,
                        port,
                        None,
                        Some((dr, peak, rid.clone())),
                        ctx,
                        &facts,
                    ));
                    clusters.push(c.clone());
                    by_rule[ri + 1].push(c);
                    for subset in &dr.spec.subsets {
                        let c = Arc::new(Cluster::build(
                            id(),
                            svc,
                            port,
                            Some(subset),
                            Some((dr, peak, rid.clone())),
                            ctx,
                            &facts,
                        ));
                        clusters.push(c.clone());
                        by_rule[ri + 1].push(c);
                    }
                }
            }
            all_facts.push(facts);
            groups.extend(
                by_rule
                    .into_iter()
                    .enumerate()
                    .map(|(gi, cs)| ClusterGroup {
                        service: si,
                        rule: gi.checked_sub(1),
                        clusters: cs.into_boxed_slice(),
                    }),
            );
        }
        let mut entry = HostServices {
            host: host.into(),
            services,
            rules,
            clusters,
            groups,
            views: ByNamespace::default(),
            facts: all_facts,
        };
        entry.build_views(settings);
        entry
    }
}

/// The registry's services with a wildcard host, the most specific first.
fn wildcard_services(registry: &mesh_config::registry::Registry) -> Vec<Arc<mesh_config::Service>> {
    let mut wildcards: Vec<Arc<mesh_config::Service>> = registry
        .services()
        .iter()
        .filter(|s| host::is_wildcard(&s.host))
        .cloned()
        .collect();
    wildcards.sort_by_key(|s| std::cmp::Reverse(s.host.len()));
    wildcards
}

impl Services {
    /// Compiles the registry's services and the DestinationRules that cover them.
    pub(super) fn compile(
        snapshot: &Snapshot,
        settings: &MeshSettings,
        ctx: &crate::cluster::TlsContext<'_>,
    ) -> Self {
        let mut next_id = 0u32;
        let mut id = || next(&mut next_id);
        // The rules' hosts qualified once, by exact host (and the wildcard ones apart):
        // a host's covering rules are those of that host and the wildcards, not a scan
        // of every rule.
        let rules: Vec<(&Arc<Resource<DestinationRule>>, String)> = snapshot
            .destination_rules()
            .iter()
            .filter(|dr| dr.spec.workload_selector.is_none())
            .map(|dr| (dr, qualify(&dr.spec.host, dr.namespace())))
            .collect();
        let mut rules_by_host: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut wildcard_rules = Vec::new();
        for (i, (_, h)) in rules.iter().enumerate() {
            if host::is_wildcard(h) {
                wildcard_rules.push(i);
            } else {
                rules_by_host.entry(h.as_str()).or_default().push(i);
            }
        }
        // The services by host, the hosts in the order they first appear.
        let mut hosts: Vec<&str> = Vec::new();
        let mut of_host: HashMap<&str, Vec<Arc<mesh_config::Service>>> = HashMap::new();
        for svc in snapshot.registry().services() {
            let list = of_host.entry(svc.host.as_str()).or_default();
            if list.is_empty() {
                hosts.push(svc.host.as_str());
            }
            list.push(svc.clone());
        }
        let mut by_host: HashMap<Box<str>, usize> = HashMap::with_capacity(hosts.len());
        let mut out: Vec<Arc<HostServices>> = Vec::with_capacity(hosts.len());
        for h in hosts {
            let mut candidates: Vec<usize> = rules_by_host.get(h).cloned().unwrap_or_default();
            candidates.extend(wildcard_rules.iter().copied());
            candidates.sort_unstable();
            let covering: Vec<(Arc<Resource<DestinationRule>>, Box<str>)> = candidates
                .into_iter()
                .filter_map(|i| rules.get(i))
                .filter(|(_, pattern)| host::matches(pattern, h))
                .map(|(dr, pattern)| ((*dr).clone(), pattern.as_str().into()))
                .collect();
            let services = of_host.remove(h).unwrap_or_default();
            let entry = HostServices::build(h, services, covering, settings, ctx, &mut id);
            by_host.insert(h.into(), out.len());
            out.push(Arc::new(entry));
        }
        let all: Vec<Arc<Cluster>> = out
            .iter()
            .flat_map(|h| h.clusters.iter().cloned())
            .collect();
        Services {
            by_host: Arc::new(by_host),
            hosts: out,
            wildcard: wildcard_services(snapshot.registry()),
            clusters: all,
            settings: settings.clone(),
        }
    }

    /// The services after the endpoints of the registry's services `changed` (indexes
    /// in `registry`, the registry after the change) changed: the hosts of those
    /// services are built again with the same DestinationRules and the same cluster ids,
    /// every other host is shared. Also the ids of the clusters built again. `None` when
    /// a host's services or clusters are not the same as before (then compile anew).
    pub(super) fn with_changed(
        &self,
        registry: &mesh_config::registry::Registry,
        changed: &[usize],
        ctx: &crate::cluster::TlsContext<'_>,
    ) -> Option<(Services, Vec<u32>)> {
        let hosts: std::collections::BTreeSet<&str> = changed
            .iter()
            .filter_map(|&i| registry.services().get(i))
            .map(|s| s.host.as_str())
            .collect();
        let mut next = self.clone();
        let mut ids = Vec::new();
        let mut wildcard = false;
        for h in hosts {
            let at = *self.by_host.get(h)?;
            let old = self.hosts.get(at)?;
            let services: Vec<Arc<mesh_config::Service>> = registry.with_host(h).cloned().collect();
            if services.len() != old.services.len() {
                return None;
            }
            let mut old_ids = old.clusters.iter().map(|c| c.id);
            let mut short = false;
            let entry = HostServices::build(
                h,
                services,
                old.rules.clone(),
                &self.settings,
                ctx,
                &mut || {
                    old_ids.next().unwrap_or_else(|| {
                        short = true;
                        u32::MAX
                    })
                },
            );
            if short || old_ids.next().is_some() {
                return None;
            }
            for c in &entry.clusters {
                *next.clusters.get_mut(c.id as usize)? = c.clone();
                ids.push(c.id);
            }
            wildcard |= host::is_wildcard(h);
            *next.hosts.get_mut(at)? = Arc::new(entry);
        }
        if wildcard {
            next.wildcard = wildcard_services(registry);
        }
        Some((next, ids))
    }
}
