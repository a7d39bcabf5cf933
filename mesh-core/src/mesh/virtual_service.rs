//! VirtualServices compiled into rules, and which of them a caller sees for a host.
//!
//! Each VirtualService compiles once into [`VirtualServiceRules`] (delegates inlined).
//! Which one answers a host depends on the caller's namespace, as Istio's PushContext
//! indexes them: an exact host before wildcards (the longest first); among equals, those
//! private to the caller's namespace, then those exported to it by name, then public ones,
//! the first loaded within each ([`export_rank`]). That choice is made at compile time, per
//! namespace that can see differently ([`VisibleHosts`]): a request only looks its host up.

use foldhash::{HashMap, HashMapExt};
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
    /// `*.suffix` and `*` hosts, each with its VirtualServices in load order.
    wildcard: HashMap<Box<str>, Vec<Arc<VirtualServiceRules>>>,
    /// For each namespace a VirtualService that is not public names (its own, or one of
    /// its `exportTo`), the exact and wildcard hosts of those VirtualServices: the only
    /// hosts that namespace may see differently from every other.
    mentions: HashMap<Box<str>, Mentioned>,
}

/// The exact and the wildcard hosts a namespace may see differently.
type Mentioned = (Vec<Box<str>>, Vec<Box<str>>);

/// True when `vs` is visible to every namespace alike.
fn is_public(vs: &VirtualServiceRules) -> bool {
    vs.export_to.iter().any(|e| e == "*")
}

impl HostTable {
    /// The table of the VirtualServices in `all` that apply to workload traffic.
    pub(super) fn new(all: &[Arc<VirtualServiceRules>]) -> Self {
        let mut t = HostTable::default();
        for vs in all.iter().filter(|v| v.applies_to_mesh()) {
            for h in &vs.hosts {
                let wildcard = host::is_wildcard(h);
                let table = if wildcard {
                    &mut t.wildcard
                } else {
                    &mut t.exact
                };
                table.entry(h.clone()).or_default().push(vs.clone());
                if is_public(vs) {
                    continue;
                }
                // The namespaces it is visible to: its own when exported to `.`, and
                // those named.
                let own = vs
                    .export_to
                    .iter()
                    .any(|e| e == ".")
                    .then_some(&*vs.namespace);
                let named = own.into_iter().chain(vs.export_to.iter().map(|s| &**s));
                for n in named.filter(|n| !matches!(*n, "." | "~")) {
                    let (exact, wild) = t.mentions.entry(n.into()).or_default();
                    let list = if wildcard { wild } else { exact };
                    if !list.contains(h) {
                        list.push(h.clone());
                    }
                }
            }
        }
        t
    }

    /// Namespaces that may see the table differently from any other.
    pub(super) fn namespaces(&self) -> Vec<&str> {
        self.mentions.keys().map(|n| &**n).collect()
    }

    /// What every namespace no non-public VirtualService names sees.
    pub(super) fn shared(&self) -> Arc<HostAnswers> {
        // A namespace no VirtualService can be defined in or exported to by name.
        let other = "\0";
        let exact = self
            .exact
            .iter()
            .filter_map(|(h, list)| Some((h.clone(), best(list.iter(), other)?.clone())))
            .collect();
        let wildcard = self
            .wildcard
            .iter()
            .filter_map(|(h, list)| Some((h.clone(), best(list.iter(), other)?.clone())))
            .collect();
        Arc::new(HostAnswers::new(exact, wildcard))
    }

    /// What callers in namespace `from` see: `shared`, and for the hosts of the
    /// non-public VirtualServices that name `from`, the VirtualService Istio's order
    /// gives them where it differs.
    pub(super) fn visible_to(&self, from: &str, shared: &Arc<HostAnswers>) -> VisibleHosts {
        let mut own_exact = HashMap::new();
        let mut own_wildcard = Vec::new();
        if let Some((exact, wild)) = self.mentions.get(from) {
            let differs = |a: Option<&Arc<VirtualServiceRules>>,
                           b: Option<&Arc<VirtualServiceRules>>| {
                !matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
            };
            for h in exact {
                let mine = self.exact.get(h).and_then(|l| best(l.iter(), from));
                if let Some(vs) = mine
                    && differs(mine, shared.exact.get(h))
                {
                    own_exact.insert(h.clone(), vs.clone());
                }
            }
            for h in wild {
                let mine = self.wildcard.get(h).and_then(|l| best(l.iter(), from));
                let theirs = shared.wildcard.iter().find(|(p, _)| p == h).map(|(_, v)| v);
                if let Some(vs) = mine
                    && differs(mine, theirs)
                {
                    own_wildcard.push((h.clone(), vs.clone()));
                }
            }
        }
        VisibleHosts {
            shared: shared.clone(),
            own: HostAnswers::new(own_exact, own_wildcard),
        }
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

/// One VirtualService per host.
#[derive(Debug, Default)]
pub(super) struct HostAnswers {
    exact: HashMap<Box<str>, Arc<VirtualServiceRules>>,
    /// Wildcard hosts, the longest first.
    wildcard: Vec<(Box<str>, Arc<VirtualServiceRules>)>,
}

impl HostAnswers {
    fn new(
        exact: HashMap<Box<str>, Arc<VirtualServiceRules>>,
        mut wildcard: Vec<(Box<str>, Arc<VirtualServiceRules>)>,
    ) -> Self {
        // Longest first; among equal lengths, the order does not matter: two different
        // wildcards of one length never match the same host.
        wildcard.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        HostAnswers { exact, wildcard }
    }

    /// The longest wildcard that matches `host`, and its VirtualService.
    fn wildcard(&self, host: &str) -> Option<(&str, &Arc<VirtualServiceRules>)> {
        self.wildcard
            .iter()
            .find(|(p, _)| host::matches(p, host))
            .map(|(p, vs)| (&**p, vs))
    }
}

/// The VirtualServices callers of one namespace see, by host: what a request looks up.
/// What every namespace sees is shared; a namespace keeps only the hosts it sees
/// differently (those of VirtualServices not exported to everyone), so that memory and
/// compile time grow with the configuration, not with namespaces × hosts.
#[derive(Debug, Default)]
pub struct VisibleHosts {
    shared: Arc<HostAnswers>,
    own: HostAnswers,
}

impl VisibleHosts {
    /// The VirtualService for `host` (qualified, lower case): an exact host before
    /// wildcards, the longest wildcard first.
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualServiceRules>> {
        if let Some(vs) = self.own.exact.get(host) {
            return Some(vs);
        }
        if let Some(vs) = self.shared.exact.get(host) {
            return Some(vs);
        }
        match (self.own.wildcard(host), self.shared.wildcard(host)) {
            (Some((p, mine)), Some((q, _))) if p.len() >= q.len() => Some(mine),
            (_, Some((_, theirs))) => Some(theirs),
            (Some((_, mine)), None) => Some(mine),
            (None, None) => None,
        }
    }

    /// Number of hosts with a VirtualService for this namespace.
    pub fn len(&self) -> usize {
        let own = self.own.exact.len() + self.own.wildcard.len();
        let shared_only = self
            .shared
            .exact
            .keys()
            .filter(|h| !self.own.exact.contains_key(*h))
            .count()
            + self
                .shared
                .wildcard
                .iter()
                .filter(|(h, _)| !self.own.wildcard.iter().any(|(o, _)| o == h))
                .count();
        own + shared_only
    }

    /// True when no host has a VirtualService.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of hosts this namespace sees differently from every other.
    #[cfg(test)]
    pub(crate) fn own_len(&self) -> usize {
        self.own.exact.len() + self.own.wildcard.len()
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
    RuleOrigin::new(
        name.clone(),
        i,
        vs.spec.http[i].name.as_deref().map(Into::into),
        &vs.origin,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(
        position: u32,
        name: &str,
        ns: &str,
        hosts: &[&str],
        export: &[&str],
    ) -> Arc<VirtualServiceRules> {
        Arc::new(VirtualServiceRules {
            position,
            name: format!("{ns}/{name}").into(),
            namespace: ns.into(),
            hosts: hosts.iter().map(|h| Box::from(*h)).collect(),
            gateways: Vec::new(),
            export_to: export.iter().map(|e| e.to_string()).collect(),
            rules: Vec::new(),
            index: crate::index::RuleIndex::new(&[]),
        })
    }

    /// The VirtualService a namespace sees for a host, the slow way: every
    /// VirtualService of the host ranked; exact hosts first, then the longest wildcard.
    fn slow_find(all: &[Arc<VirtualServiceRules>], host: &str, from: &str) -> Option<String> {
        let of = |pattern: &str| {
            best(
                all.iter()
                    .filter(|v| v.hosts.iter().any(|h| &**h == pattern)),
                from,
            )
        };
        if let Some(v) = of(host) {
            return Some(v.name.to_string());
        }
        let mut patterns: Vec<&str> = all
            .iter()
            .flat_map(|v| v.hosts.iter().map(|h| &**h))
            .filter(|h| host::is_wildcard(h) && host::matches(h, host))
            .collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        patterns
            .into_iter()
            .find_map(of)
            .map(|v| v.name.to_string())
    }

    /// What a namespace sees — shared where it sees what everyone sees — agrees with the
    /// slow ranking for every namespace and host, and a namespace keeps only the hosts
    /// it sees differently.
    #[test]
    fn visible_hosts_agree_with_the_slow_ranking() {
        let all = vec![
            vs(0, "pub", "a", &["shop.example.com"], &["*"]),
            vs(1, "priv", "b", &["shop.example.com"], &["."]),
            vs(
                2,
                "to-c",
                "a",
                &["shop.example.com", "cart.example.com"],
                &["c", "d"],
            ),
            vs(3, "hidden", "c", &["cart.example.com"], &["~"]),
            vs(4, "wild-pub", "a", &["*.example.com"], &["*"]),
            vs(5, "wild-b", "b", &["*.example.com"], &["."]),
            vs(6, "wild-deep", "d", &["*.deep.example.com"], &["d"]),
            vs(7, "star", "e", &["*"], &["*"]),
            vs(8, "star-f", "f", &["*"], &["f"]),
            vs(9, "self-named", "g", &["cart.example.com"], &["g", "*"]),
        ];
        let table = HostTable::new(&all);
        let shared = table.shared();
        let hosts = [
            "shop.example.com",
            "cart.example.com",
            "x.example.com",
            "x.deep.example.com",
            "other.org",
        ];
        let mut checked = 0;
        for ns in ["a", "b", "c", "d", "e", "f", "g", "zzz"] {
            let seen = table.visible_to(ns, &shared);
            for h in hosts {
                let fast = seen.find(h).map(|v| v.name.to_string());
                assert_eq!(fast, slow_find(&all, h, ns), "{h} from {ns}");
                checked += 1;
            }
        }
        assert_eq!(checked, 40);
        let mut names = table.namespaces();
        names.sort_unstable();
        assert_eq!(names, ["b", "c", "d", "f"]);
        assert_eq!(table.visible_to("b", &shared).own_len(), 2);
        assert_eq!(table.visible_to("zzz", &shared).own_len(), 0);
        assert_eq!(table.visible_to("a", &shared).own_len(), 0);
    }
}
