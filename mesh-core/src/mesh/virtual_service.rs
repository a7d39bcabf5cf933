//! VirtualServices compiled into rules, and which of them a caller sees for a host.
//!
//! Each VirtualService compiles once into [`VirtualServiceRules`] (delegates inlined).
//! Which one answers a host depends on the caller's namespace, as Istio's PushContext
//! indexes them: an exact host before wildcards (the longest first); among equals, those
//! private to the caller's namespace, then those exported to it by name, then public ones,
//! the first loaded within each ([`export_rank`]). That choice is made at compile time, per
//! namespace that can see differently ([`VisibleHosts`]): a request only looks its host up.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_config::host;
use mesh_config::model::{MeshSettings, Resource, VirtualService};

use crate::matcher::{MatchBlock, MatchError, qualify_gateway};
use crate::route::{Rule, RuleOrigin};

/// The rules of one VirtualService, compiled.
#[derive(Debug)]
pub struct VirtualServiceRules {
    /// Its position in [`CompiledMesh::virtual_services`](crate::CompiledMesh::virtual_services).
    pub position: u32,
    /// `namespace/name`.
    pub name: Arc<str>,
    /// Namespace of the VirtualService.
    pub namespace: Arc<str>,
    /// Its hosts, qualified as Istio resolves short names (`reviews` in `default` is
    /// `reviews.default.svc.cluster.local`), lower case.
    pub hosts: Vec<Box<str>>,
    /// Gateways it is bound to, qualified (`mesh` or `ns/name`); empty means `mesh`.
    pub gateways: Vec<Box<str>>,
    /// Namespaces it is visible to.
    pub export_to: Vec<String>,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Index over the rules.
    pub index: crate::index::RuleIndex,
}

impl VirtualServiceRules {
    /// True when it applies to workload traffic (Istio's `mesh` gateway).
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| &**g == "mesh")
    }

    /// True when it is bound to `gateway` (`namespace/name`).
    pub fn bound_to(&self, gateway: &str) -> bool {
        self.gateways.iter().any(|g| &**g == gateway)
    }
}

/// How a VirtualService ranks for callers in `from`, as Istio's PushContext indexes
/// VirtualServices (`privateByNamespaceAndGateway`, `exportedToNamespaceByGateway`,
/// `publicByGateway`): 0 when private to `from` (defined there, exported to `.` or to
/// its own namespace), 1 when exported to `from` by name, 2 when public (`*`); `None`
/// when not visible (`~` hides it from everyone unless `*` is also given).
pub fn export_rank(vs: &VirtualServiceRules, from: &str) -> Option<u8> {
    let export = &vs.export_to;
    if export.iter().any(|e| e == "*") {
        return Some(2);
    }
    if export.iter().any(|e| e == "~") {
        return None;
    }
    if &*vs.namespace == from && export.iter().any(|e| e == "." || e == from) {
        return Some(0);
    }
    if export.iter().any(|e| e == from) {
        return Some(1);
    }
    None
}

/// The VirtualServices of the mesh (not bound to gateways only), by host.
#[derive(Debug, Default)]
pub(super) struct HostTable {
    exact: HashMap<Box<str>, Vec<Arc<VirtualServiceRules>>>,
    /// `*.suffix` and `*` hosts, in load order.
    wildcard: Vec<(Box<str>, Arc<VirtualServiceRules>)>,
}

impl HostTable {
    /// The table of the VirtualServices in `all` that apply to workload traffic.
    pub(super) fn new(all: &[Arc<VirtualServiceRules>]) -> Self {
        let mut t = HostTable::default();
        for vs in all.iter().filter(|v| v.applies_to_mesh()) {
            for h in &vs.hosts {
                if host::is_wildcard(h) {
                    t.wildcard.push((h.clone(), vs.clone()));
                } else {
                    t.exact.entry(h.clone()).or_default().push(vs.clone());
                }
            }
        }
        t
    }

    /// Namespaces that may see the table differently from any other: those of the
    /// VirtualServices and those their `exportTo` names.
    pub(super) fn namespaces(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let all = self
            .exact
            .values()
            .flatten()
            .chain(self.wildcard.iter().map(|(_, v)| v));
        for vs in all {
            for n in std::iter::once(&*vs.namespace).chain(vs.export_to.iter().map(|s| &**s)) {
                if !matches!(n, "*" | "." | "~") && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }

    /// What callers in namespace `from` see: per host, the VirtualService Istio's order
    /// gives them.
    pub(super) fn visible_to(&self, from: &str) -> VisibleHosts {
        let mut exact = HashMap::with_capacity(self.exact.len());
        for (h, list) in &self.exact {
            if let Some(vs) = best(list.iter(), from) {
                exact.insert(h.clone(), vs.clone());
            }
        }
        // One VirtualService per wildcard host (the best ranked), the longest host first;
        // the stable sort keeps load order among hosts of equal length.
        let mut wildcard: Vec<(Box<str>, Arc<VirtualServiceRules>)> = Vec::new();
        for (h, _) in &self.wildcard {
            if wildcard.iter().any(|(w, _)| w == h) {
                continue;
            }
            let same = self.wildcard.iter().filter(|(w, _)| w == h).map(|(_, v)| v);
            if let Some(vs) = best(same, from) {
                wildcard.push((h.clone(), vs.clone()));
            }
        }
        wildcard.sort_by_key(|(h, _)| std::cmp::Reverse(h.len()));
        VisibleHosts { exact, wildcard }
    }
}

/// The VirtualService among `list` that ranks first for `from` (the first of equals).
fn best<'a>(
    list: impl Iterator<Item = &'a Arc<VirtualServiceRules>>,
    from: &str,
) -> Option<&'a Arc<VirtualServiceRules>> {
    let mut found: Option<(u8, &Arc<VirtualServiceRules>)> = None;
    for vs in list {
        if let Some(r) = export_rank(vs, from)
            && found.is_none_or(|(b, _)| r < b)
        {
            found = Some((r, vs));
        }
    }
    found.map(|(_, vs)| vs)
}

/// The VirtualServices callers of one namespace see, by host: what a request looks up.
#[derive(Debug, Default)]
pub struct VisibleHosts {
    exact: HashMap<Box<str>, Arc<VirtualServiceRules>>,
    /// Wildcard hosts, the longest first.
    wildcard: Vec<(Box<str>, Arc<VirtualServiceRules>)>,
}

impl VisibleHosts {
    /// The VirtualService for `host` (qualified, lower case): an exact host before
    /// wildcards, the longest wildcard first.
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualServiceRules>> {
        if let Some(vs) = self.exact.get(host) {
            return Some(vs);
        }
        self.wildcard
            .iter()
            .find(|(p, _)| host::matches(p, host))
            .map(|(_, vs)| vs)
    }

    /// Number of hosts with a VirtualService.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when no host has a VirtualService.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compiles `vs` (`all` are the snapshot's VirtualServices, for delegates).
pub(super) fn compile(
    position: u32,
    vs: &Resource<VirtualService>,
    all: &[Arc<Resource<VirtualService>>],
    settings: &MeshSettings,
) -> Result<VirtualServiceRules, MatchError> {
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
    Ok(VirtualServiceRules {
        position,
        name,
        namespace: ns.into(),
        hosts: vs
            .spec
            .hosts
            .iter()
            .map(|h| host::qualify(h, ns).into_boxed_str())
            .collect(),
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
