//! The Snapshot: a validated, immutable, versioned configuration.
//!
//! Everything after `mesh-config` compiles from a `Snapshot`. It is plain data behind an
//! `Arc` (`Send + Sync`, cloned in O(1)), so that a new configuration can be swapped in
//! atomically while requests still read the old one. A snapshot exists only for a
//! configuration without errors; its warnings travel with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::analyze::{self, Input};
use crate::diag::{Code, Diagnostic, Severity};
use crate::load::ConfigSet;
use crate::model::*;
use crate::path::FieldPath;
use crate::registry::{Registry, WorkloadChange};
use crate::validate;

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// What an endpoint change leaves as it is: every kind but WorkloadEntries, the mesh
/// settings, and the DestinationRules' index.
#[derive(Debug, Default)]
struct Kinds {
    virtual_services: Vec<Arc<Resource<VirtualService>>>,
    destination_rules: Vec<Arc<Resource<DestinationRule>>>,
    gateways: Vec<Arc<Resource<Gateway>>>,
    service_entries: Vec<Arc<Resource<ServiceEntry>>>,
    peer_authentications: Vec<Arc<Resource<PeerAuthentication>>>,
    authorization_policies: Vec<Arc<Resource<AuthorizationPolicy>>>,
    request_authentications: Vec<Arc<Resource<RequestAuthentication>>>,
    envoy_filters: Vec<Arc<Resource<EnvoyFilter>>>,
    local_rate_limit_policies: Vec<Arc<Resource<LocalRateLimitPolicy>>>,
    telemetries: Vec<Arc<Resource<Telemetry>>>,
    workload_groups: Vec<Arc<Resource<WorkloadGroup>>>,
    mesh: MeshSettings,
    rule_index: DestinationRuleIndex,
    /// Every resource but the WorkloadEntries, in load order.
    others: Vec<AnyResource>,
}

#[derive(Debug, Default)]
struct Inner {
    version: u64,
    kinds: Arc<Kinds>,
    /// Every resource: in load order after a whole check; after an endpoint change,
    /// listed when first asked for (the other kinds in load order, then the
    /// WorkloadEntries by namespace and name).
    resources: std::sync::OnceLock<Vec<AnyResource>>,
    /// The WorkloadEntries, the same way.
    workload_entries: std::sync::OnceLock<Vec<Arc<Resource<WorkloadEntry>>>>,
    registry: Registry,
    diagnostics: Arc<[Diagnostic]>,
    /// Positions in `resources` by key, built when first asked.
    index: std::sync::OnceLock<std::collections::HashMap<ResourceKey, usize>>,
}

/// DestinationRules with their qualified hosts, indexed by exact host: finding the rule
/// of a host tests the rules of that host and the wildcard ones, not every rule (a mesh
/// of 10 000 services may have as many).
#[derive(Debug, Default, Clone)]
pub struct DestinationRuleIndex {
    rules: Vec<(Arc<Resource<DestinationRule>>, String)>,
    exact: std::collections::HashMap<String, Vec<usize>>,
    wildcards: Vec<usize>,
}

impl DestinationRuleIndex {
    /// The index of `rules` (in load order).
    pub fn new(rules: &[Arc<Resource<DestinationRule>>]) -> Self {
        let mut index = DestinationRuleIndex::default();
        for (i, d) in rules.iter().enumerate() {
            let host = crate::host::qualify(&d.spec.host, d.namespace());
            if crate::host::is_wildcard(&host) {
                index.wildcards.push(i);
            } else {
                index.exact.entry(host.clone()).or_default().push(i);
            }
            index.rules.push((d.clone(), host));
        }
        index
    }

    /// Istio's DestinationRule precedence for `host` (see
    /// [`Snapshot::destination_rule_for`]).
    pub fn rule_for(
        &self,
        mesh: &MeshSettings,
        host: &str,
        from: &str,
        service_ns: &str,
    ) -> Option<&Arc<Resource<DestinationRule>>> {
        let lower = host.to_ascii_lowercase();
        let candidates: Vec<usize> = if crate::host::is_wildcard(&lower) {
            (0..self.rules.len()).collect()
        } else {
            let mut c: Vec<usize> = self.exact.get(&lower).cloned().unwrap_or_default();
            c.extend(self.wildcards.iter().copied());
            c.sort_unstable();
            c
        };
        destination_rule_among(
            candidates
                .iter()
                .filter_map(|&i| self.rules.get(i))
                .map(|(d, h)| (d, h.as_str())),
            mesh,
            host,
            from,
            service_ns,
        )
    }
}

/// A validated configuration (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    inner: Arc<Inner>,
}

/// The result of checking a [`ConfigSet`]: every diagnostic, and a snapshot when there
/// is no error.
#[derive(Debug, Clone)]
pub struct Checked {
    /// All diagnostics (loading, validation, analysis), sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// The snapshot, absent when any diagnostic is an error.
    pub snapshot: Option<Snapshot>,
}

impl Checked {
    /// True when there is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Every diagnostic in its one-line form ([`Diagnostic::short`]), one per line.
    pub fn summary(&self) -> String {
        let lines: Vec<String> = self.diagnostics.iter().map(Diagnostic::short).collect();
        lines.join("\n")
    }
}

macro_rules! accessors {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $($(#[$doc])* pub fn $name(&self) -> &[Arc<Resource<$ty>>] {
            &self.inner.kinds.$name
        })*
    };
}

impl Snapshot {
    /// The version: unique and increasing within a process.
    pub fn version(&self) -> u64 {
        self.inner.version
    }

    /// Every resource, in load order (after an endpoint change
    /// ([`Snapshot::with_workload_entries`]), the WorkloadEntries come last, by namespace
    /// and name).
    pub fn resources(&self) -> &[AnyResource] {
        self.inner.resources.get_or_init(|| {
            let mut all = self.inner.kinds.others.clone();
            all.extend(
                self.workload_entries()
                    .iter()
                    .map(|w| AnyResource::WorkloadEntry(w.clone())),
            );
            all
        })
    }

    accessors! {
        /// VirtualServices.
        virtual_services: VirtualService;
        /// DestinationRules.
        destination_rules: DestinationRule;
        /// Gateways.
        gateways: Gateway;
        /// ServiceEntries.
        service_entries: ServiceEntry;
        /// PeerAuthentications.
        peer_authentications: PeerAuthentication;
        /// AuthorizationPolicies.
        authorization_policies: AuthorizationPolicy;
        /// RequestAuthentications.
        request_authentications: RequestAuthentication;
        /// EnvoyFilters.
        envoy_filters: EnvoyFilter;
        /// LocalRateLimitPolicies.
        local_rate_limit_policies: LocalRateLimitPolicy;
        /// Telemetries.
        telemetries: Telemetry;
        /// WorkloadGroups (the templates workloads register from).
        workload_groups: WorkloadGroup;
    }

    /// WorkloadEntries (the static ones and the registered ones alike), in load order
    /// (after an endpoint change, by namespace and name).
    pub fn workload_entries(&self) -> &[Arc<Resource<WorkloadEntry>>] {
        self.inner
            .workload_entries
            .get_or_init(|| self.inner.registry.workloads().iter().cloned().collect())
    }

    /// Mesh-wide settings (Istio's defaults unless a MeshConfig sets them).
    pub fn mesh(&self) -> &MeshSettings {
        &self.inner.kinds.mesh
    }

    /// The service registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The warnings and remarks that came with this configuration.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.inner.diagnostics
    }

    /// A resource by kind, namespace and name.
    pub fn get(&self, key: &ResourceKey) -> Option<&AnyResource> {
        self.inner
            .index
            .get_or_init(|| {
                self.resources()
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.key(), i))
                    .collect()
            })
            .get(key)
            .and_then(|i| self.resources().get(*i))
    }

    /// The DestinationRule that applies to requests from namespace `from` to `host` (fully
    /// qualified) of a service in namespace `service_ns`, with Istio's precedence: a rule
    /// in the caller's namespace, else in the service's namespace, else in the root
    /// namespace; within a namespace the most specific host (exact, then the longest
    /// wildcard), then the first loaded. Only rules visible to `from` count; rules with a
    /// `workloadSelector` are not considered.
    pub fn destination_rule_for(
        &self,
        host: &str,
        from: &str,
        service_ns: &str,
    ) -> Option<&Arc<Resource<DestinationRule>>> {
        self.inner
            .kinds
            .rule_index
            .rule_for(&self.inner.kinds.mesh, host, from, service_ns)
    }

    /// Drops every resource's YAML tree (see [`Trees`]). A compiled configuration has no
    /// more use for them: the position of a resource is kept apart, and locating one of
    /// its fields afterwards (a later diagnostic) reads its source's text again. The
    /// trees are most of what a loaded configuration holds — many times its text.
    pub fn release_trees(&self) {
        self.release_trees_but(&[]);
    }

    /// Drops the YAML trees of every source that holds no resource of the kinds `keep`
    /// (see [`Snapshot::release_trees`]): compiling reads a few positions of some kinds
    /// (a PeerAuthentication's lines), and a source is parsed whole to read any of its
    /// positions again.
    pub fn release_trees_but(&self, keep: &[Kind]) {
        let mut kept: std::collections::HashSet<*const Trees> = self
            .inner
            .kinds
            .others
            .iter()
            .filter(|r| keep.contains(&r.kind()))
            .map(|r| Arc::as_ptr(&r.origin().trees))
            .collect();
        if keep.contains(&Kind::WorkloadEntry) {
            kept.extend(
                self.inner
                    .registry
                    .workloads()
                    .iter()
                    .map(|w| Arc::as_ptr(&w.origin.trees)),
            );
        }
        let release = |trees: &Arc<Trees>| {
            if !kept.contains(&Arc::as_ptr(trees)) {
                trees.release();
            }
        };
        for r in &self.inner.kinds.others {
            release(&r.origin().trees);
        }
        for w in self.inner.registry.workloads().iter() {
            release(&w.origin.trees);
        }
    }

    /// The snapshot after `changes` to its WorkloadEntries (registrations coming and
    /// going), and the indexes of the registry's services whose endpoints changed (see
    /// [`Registry::with_workloads`]): everything else is shared with `self`. Each changed
    /// entry must have been checked on its own; the one rule across resources that a
    /// WorkloadEntry can break with an error — two Telemetries selecting the same
    /// workload (IST0159) — is checked here for the changed entries, and breaking it is
    /// an error (only a whole check can report it as it reports it). The warnings stay
    /// those of the last whole check. The resources are listed when first asked for: the
    /// other kinds in load order, then the WorkloadEntries by namespace and name.
    pub fn with_workload_entries(
        &self,
        changes: &[WorkloadChange],
    ) -> Result<(Snapshot, Vec<usize>), String> {
        self.telemetry_conflicts(changes)?;
        let (registry, changed) = self.inner.registry.with_workloads(changes);
        let inner = Inner {
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            kinds: self.inner.kinds.clone(),
            resources: std::sync::OnceLock::new(),
            workload_entries: std::sync::OnceLock::new(),
            registry,
            diagnostics: self.inner.diagnostics.clone(),
            index: std::sync::OnceLock::new(),
        };
        Ok((
            Snapshot {
                inner: Arc::new(inner),
            },
            changed,
        ))
    }

    /// IST0159 for the entries `changes` bring: a workload that Telemetries of its
    /// namespace with selector labels select more than once (its labels, and the
    /// labels its endpoints get, as the whole check tests both).
    fn telemetry_conflicts(&self, changes: &[WorkloadChange]) -> Result<(), String> {
        let selecting: Vec<&Arc<Resource<Telemetry>>> = self
            .telemetries()
            .iter()
            .filter(|t| t.spec.selector_labels().is_some())
            .collect();
        if selecting.len() < 2 {
            return Ok(());
        }
        for we in changes.iter().filter_map(|c| c.entry.as_ref()) {
            for labels in [
                we.spec.labels.clone(),
                crate::registry::topology_labels(&we.spec),
            ] {
                let names: Vec<&str> = selecting
                    .iter()
                    .filter(|t| {
                        t.namespace() == we.namespace()
                            && t.spec
                                .selector_labels()
                                .is_some_and(|s| crate::registry::selects(s, &labels))
                    })
                    .map(|t| t.name())
                    .collect();
                if names.len() > 1 {
                    return Err(format!(
                        "WorkloadEntry {}/{}: the Telemetries {} select it (IST0159); not applied",
                        we.namespace(),
                        we.name(),
                        names.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// True when `a` and `b` hold the very same resources, in the same order.
fn same<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

impl ConfigSet {
    /// Validates every resource, builds the registry, analyzes the whole and, when there
    /// is no error, produces a [`Snapshot`].
    pub fn check(&self) -> Checked {
        self.check_with(None)
    }

    /// [`ConfigSet::check`], reusing what `previous` computed from the very same
    /// resources: its service registry, when the ServiceEntries and WorkloadEntries are
    /// the same ones in the same order and so is the mesh's default `exportTo` (a
    /// store's next revision in which only other kinds changed: see
    /// [`store::kv::KvStore`](crate::store::kv::KvStore), which keeps the resources of
    /// unchanged keys). After endpoint changes applied on their own
    /// ([`Snapshot::with_workload_entries`]) the entries in force are other objects (and
    /// listed in another order) than a store's view gives: the next whole configuration
    /// builds the registry anew, and the one after reuses it. The result is what `check`
    /// gives.
    pub fn check_after(&self, previous: &Snapshot) -> Checked {
        self.check_with(Some(previous))
    }

    fn check_with(&self, previous: Option<&Snapshot>) -> Checked {
        let mut diagnostics: Vec<Diagnostic> = self.diagnostics().to_vec();
        let mut inner = Kinds::default();
        let mut workload_entries = Vec::new();
        let mut mesh_configs = Vec::new();
        for r in self.resources() {
            let found = r.origin().validated(|| {
                let mut out = Vec::new();
                validate::validate(r, &mut out);
                out
            });
            diagnostics.extend(found.iter().cloned());
            match r {
                AnyResource::VirtualService(x) => inner.virtual_services.push(x.clone()),
                AnyResource::DestinationRule(x) => inner.destination_rules.push(x.clone()),
                AnyResource::Gateway(x) => inner.gateways.push(x.clone()),
                AnyResource::ServiceEntry(x) => inner.service_entries.push(x.clone()),
                AnyResource::WorkloadEntry(x) => workload_entries.push(x.clone()),
                AnyResource::PeerAuthentication(x) => inner.peer_authentications.push(x.clone()),
                AnyResource::AuthorizationPolicy(x) => inner.authorization_policies.push(x.clone()),
                AnyResource::RequestAuthentication(x) => {
                    inner.request_authentications.push(x.clone())
                }
                AnyResource::MeshConfig(x) => mesh_configs.push(x.clone()),
                AnyResource::EnvoyFilter(x) => inner.envoy_filters.push(x.clone()),
                AnyResource::LocalRateLimitPolicy(x) => {
                    inner.local_rate_limit_policies.push(x.clone())
                }
                AnyResource::Telemetry(x) => inner.telemetries.push(x.clone()),
                AnyResource::WorkloadGroup(x) => inner.workload_groups.push(x.clone()),
            }
        }
        if let Some(first) = mesh_configs.first() {
            inner.mesh = MeshSettings::from_spec(&first.spec);
            for extra in &mesh_configs[1..] {
                diagnostics.push(
                    Diagnostic::new(
                        Code::DuplicateEntry,
                        format!(
                            "only one MeshConfig is allowed; {}/{} is already defined",
                            first.namespace(),
                            first.name()
                        ),
                    )
                    .at(extra.origin.location())
                    .resource(AnyResource::MeshConfig(extra.clone()).reference())
                    .path(FieldPath::root())
                    .related(first.origin.location(), "the first MeshConfig"),
                );
            }
        }
        let registry = match previous.filter(|p| {
            same(p.service_entries(), &inner.service_entries)
                && same(p.workload_entries(), &workload_entries)
                && p.mesh().default_service_export_to == inner.mesh.default_service_export_to
        }) {
            Some(p) => p.registry().clone(),
            None => Registry::build(
                &inner.service_entries,
                &workload_entries,
                &inner.mesh.default_service_export_to,
            ),
        };
        analyze::analyze(
            &Input {
                virtual_services: &inner.virtual_services,
                destination_rules: &inner.destination_rules,
                gateways: &inner.gateways,
                service_entries: &inner.service_entries,
                workload_entries: &workload_entries,
                peer_authentications: &inner.peer_authentications,
                authorization_policies: &inner.authorization_policies,
                request_authentications: &inner.request_authentications,
                telemetries: &inner.telemetries,
                envoy_filters: &inner.envoy_filters,
                registry: &registry,
                mesh: &inner.mesh,
            },
            &mut diagnostics,
        );
        sort(&mut diagnostics);
        let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
        let snapshot = (!has_errors).then(|| {
            inner.rule_index = DestinationRuleIndex::new(&inner.destination_rules);
            inner.others = self
                .resources()
                .iter()
                .filter(|r| !matches!(r, AnyResource::WorkloadEntry(_)))
                .cloned()
                .collect();
            Snapshot {
                inner: Arc::new(Inner {
                    version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
                    kinds: Arc::new(inner),
                    resources: self.resources().to_vec().into(),
                    workload_entries: workload_entries.into(),
                    registry,
                    diagnostics: diagnostics.clone().into(),
                    index: std::sync::OnceLock::new(),
                }),
            }
        });
        Checked {
            diagnostics,
            snapshot,
        }
    }
}

/// Istio's DestinationRule precedence over `rules` (see
/// [`Snapshot::destination_rule_for`]); usable on a pre-filtered list.
pub fn destination_rule_for<'a>(
    rules: &'a [Arc<Resource<DestinationRule>>],
    mesh: &MeshSettings,
    host: &str,
    from: &str,
    service_ns: &str,
) -> Option<&'a Arc<Resource<DestinationRule>>> {
    let qualified: Vec<(&'a Arc<Resource<DestinationRule>>, String)> = rules
        .iter()
        .map(|d| (d, crate::host::qualify(&d.spec.host, d.namespace())))
        .collect();
    destination_rule_among(
        qualified.iter().map(|(d, h)| (*d, h.as_str())),
        mesh,
        host,
        from,
        service_ns,
    )
}

/// Istio's DestinationRule precedence over candidates given with their qualified hosts
/// (so that a caller can compute those once): a rule in the caller's namespace, else in
/// the service's, else in the root namespace; within a namespace an exact host before
/// the longest wildcard, then the first given. Rules not visible to `from`, and rules
/// with a `workloadSelector`, do not count.
pub fn destination_rule_among<'a, 'h>(
    candidates: impl Iterator<Item = (&'a Arc<Resource<DestinationRule>>, &'h str)> + Clone,
    mesh: &MeshSettings,
    host: &str,
    from: &str,
    service_ns: &str,
) -> Option<&'a Arc<Resource<DestinationRule>>> {
    let best_in = |ns: &str| {
        let mut best: Option<(usize, &'a Arc<Resource<DestinationRule>>)> = None;
        for (dr, pattern) in candidates.clone() {
            if dr.namespace() != ns || dr.spec.workload_selector.is_some() {
                continue;
            }
            let export = if dr.spec.export_to.is_empty() {
                &mesh.default_destination_rule_export_to
            } else {
                &dr.spec.export_to
            };
            if !crate::registry::visible(export, dr.namespace(), from)
                || !crate::host::matches(pattern, host)
            {
                continue;
            }
            // exact hosts rank above every wildcard; longer wildcards above shorter
            let rank = if pattern.eq_ignore_ascii_case(host) {
                usize::MAX
            } else {
                pattern.len()
            };
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, dr));
            }
        }
        best.map(|(_, d)| d)
    };
    best_in(from)
        .or_else(|| best_in(service_ns))
        .or_else(|| best_in(&mesh.root_namespace))
}

/// Sorts diagnostics by file, line and column; those without a place last.
fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            d.location.as_ref().map(|l| {
                (
                    l.source.name().to_string(),
                    l.span.start.line,
                    l.span.start.column,
                )
            })
        };
        match (key(a), key(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then(a.severity.cmp(&b.severity))
        .then(a.code.cmp(&b.code))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry that two Telemetries would select is refused by the endpoint path, as
    /// the whole check refuses it (IST0159); one that one Telemetry selects goes in.
    #[test]
    fn an_entry_two_telemetries_select_is_refused_as_a_whole_check_does() {
        let base = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: one}\nspec:\n  selector: {matchLabels: {app: x}}\n  accessLogging: [{providers: [{name: envoy}]}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: two}\nspec:\n  selector: {matchLabels: {tier: web}}\n  accessLogging: [{providers: [{name: envoy}]}]\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: 10.0.0.1, labels: {app: x}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b}\nspec: {address: 10.0.0.2, labels: {tier: web}}\n";
        let mut set = ConfigSet::new();
        set.add_str("base.yaml", base);
        let snapshot = set.check().snapshot.unwrap();
        let entry = |labels: &str| {
            let mut one = ConfigSet::new();
            one.add_str(
                "c.yaml",
                &format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: c}}\nspec: {{address: 10.0.0.3, labels: {labels}}}\n"),
            );
            let AnyResource::WorkloadEntry(we) = &one.resources()[0] else {
                panic!("not a WorkloadEntry");
            };
            (we.clone(), one)
        };
        let change = |we| WorkloadChange {
            namespace: "default".into(),
            name: "c".into(),
            entry: Some(we),
        };
        let (alone, _) = entry("{app: x}");
        assert!(snapshot.with_workload_entries(&[change(alone)]).is_ok());
        let (both, one) = entry("{app: x, tier: web}");
        let err = snapshot
            .with_workload_entries(&[change(both)])
            .err()
            .unwrap();
        assert!(err.contains("IST0159") && err.contains("one, two"), "{err}");
        // The whole check refuses it too.
        set.apply(one);
        let whole = set.check();
        assert!(
            whole
                .diagnostics
                .iter()
                .any(|d| d.code == Code::ConflictingTelemetryWorkloadSelectors && d.is_error()),
            "{}",
            whole.summary()
        );
    }

    /// A check after a snapshot of the very same ServiceEntries and WorkloadEntries
    /// reuses its registry; any change to them (or to the mesh's default `exportTo`)
    /// builds it anew; either way the registry is what a plain check builds.
    #[test]
    fn a_check_after_a_snapshot_reuses_its_registry_only_for_the_same_entries() {
        let base = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: svc}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: 10.0.0.1, labels: {app: svc}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc}\nspec:\n  hosts: [svc.example.com]\n  http: [{route: [{destination: {host: svc.example.com}}]}]\n";
        let mut set = ConfigSet::new();
        set.add_str("base.yaml", base);
        let first = set.check().snapshot.unwrap();
        let reused = |after: &ConfigSet| {
            let checked = after.check_after(&first);
            let snapshot = checked
                .snapshot
                .clone()
                .unwrap_or_else(|| panic!("{}", checked.summary()));
            assert_eq!(
                snapshot.registry(),
                after.check().snapshot.unwrap().registry(),
                "the registry a plain check builds"
            );
            Arc::ptr_eq(
                &snapshot.registry().services()[0],
                &first.registry().services()[0],
            )
        };
        let with = |text: &str| {
            let mut changed = set.clone();
            let mut one = ConfigSet::new();
            one.add_str("changed.yaml", text);
            changed.apply(one);
            changed
        };
        assert!(reused(&set), "the same entries");
        assert!(
            reused(&with(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc}\nspec:\n  hosts: [svc.example.com]\n  http: [{timeout: 1s, route: [{destination: {host: svc.example.com}}]}]\n"
            )),
            "only a VirtualService changed"
        );
        assert!(
            !reused(&with(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: 10.0.0.2, labels: {app: svc}}\n"
            )),
            "a WorkloadEntry changed"
        );
        assert!(
            !reused(&with(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.example.com]\n  ports: [{number: 81, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: svc}}\n"
            )),
            "a ServiceEntry changed"
        );
        assert!(
            !reused(&with(
                "apiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: istio-system}\nspec: {defaultServiceExportTo: [.]}\n"
            )),
            "the default exportTo changed"
        );
    }

    #[test]
    fn snapshot_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Snapshot>();
        let mut set = ConfigSet::new();
        set.add_str("a.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}\n");
        let s1 = set.check().snapshot.unwrap();
        let s2 = set.check().snapshot.unwrap();
        assert!(s2.version() > s1.version());
        let c = s1.clone();
        assert!(Arc::ptr_eq(&c.inner, &s1.inner));
        assert_eq!(s1.registry().services().len(), 1);
        assert_eq!(s1.mesh().trust_domain, "cluster.local");
    }
}
