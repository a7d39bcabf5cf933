//! The service registry, built from ServiceEntry and WorkloadEntry.
//!
//! Istio describes services outside Kubernetes with these two kinds, so the mesh uses them
//! as its registry and needs no invented format: a ServiceEntry names a service (hosts,
//! ports, resolution) and either lists its endpoints inline or selects WorkloadEntries of
//! its namespace by label. Each host of a ServiceEntry becomes one [`Service`]; endpoints
//! carry the labels that DestinationRule subsets select, the service account that gives a
//! workload its identity, a weight and a locality.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::host;
use crate::model::{
    Kind, Labels, Resolution, Resource, ResourceKey, ServiceEntry, ServiceLocation, WorkloadEntry,
};

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients call.
    pub number: u32,
    /// Its name (matched by endpoints' port maps).
    pub name: String,
    /// Protocol in upper case (`HTTP`, `GRPC`, ...); `TCP` when not given.
    pub protocol: String,
    /// The port on the endpoints, when the ServiceEntry sets one.
    pub target_port: Option<u32>,
}

/// One endpoint (instance) of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address, host name or `unix://` path.
    pub address: String,
    /// Port name to port number on this endpoint.
    pub ports: BTreeMap<String, u32>,
    /// Labels (subsets select on them).
    pub labels: Labels,
    /// Locality (`region/zone/subzone`).
    pub locality: Option<String>,
    /// Load balancing weight (1 when not given).
    pub weight: u32,
    /// Service account (`default` when not given).
    pub service_account: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// The WorkloadEntry it came from, when it was not inline.
    pub workload: Option<ResourceKey>,
}

impl Endpoint {
    /// The port to connect to on this endpoint for service port `port`: the endpoint's own
    /// mapping for the port's name, else the port's `targetPort`, else its number.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }

    /// True when the endpoint has every label of `selector`.
    pub fn selected_by(&self, selector: &Labels) -> bool {
        selects(selector, &self.labels)
    }

    /// The workload's principal as AuthorizationPolicy writes it:
    /// `<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!(
            "{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// The workload's SPIFFE identity: `spiffe://<principal>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{}", self.principal(trust_domain))
    }
}

/// One service: a host of a ServiceEntry with its ports and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The host, in lower case, as the ServiceEntry wrote it (possibly a wildcard).
    pub host: String,
    /// Namespace of the ServiceEntry.
    pub namespace: String,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Inside or outside the mesh.
    pub location: ServiceLocation,
    /// Endpoints. For DNS resolution without endpoints, the host itself.
    pub endpoints: Arc<[Endpoint]>,
    /// Namespaces the service is visible to (the mesh default filled in).
    pub export_to: Vec<String>,
    /// The ServiceEntry it came from.
    pub source: ResourceKey,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// Endpoints that have every label of `selector`.
    pub fn endpoints_selected_by<'a>(
        &'a self,
        selector: &'a Labels,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .iter()
            .filter(move |e| e.selected_by(selector))
    }

    /// True when a resource in namespace `from` can see this service.
    pub fn visible_to(&self, from: &str) -> bool {
        visible(&self.export_to, &self.namespace, from)
    }
}

/// True when `labels` has every label of `selector` (an empty selector selects all).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Istio's `exportTo` rule: `*` everywhere, `.` the own namespace, `~` nowhere, or names.
pub fn visible(export_to: &[String], own: &str, from: &str) -> bool {
    export_to.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => own == from,
        "~" => false,
        ns => ns == from,
    })
}

/// All services of a configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    services: Vec<Arc<Service>>,
    merges: Vec<Merge>,
    /// Indexes of `services` by exact (non-wildcard) host, in load order.
    exact: Arc<HashMap<String, Vec<usize>>>,
    /// Indexes of the services whose host is a wildcard, in load order.
    wildcards: Arc<[usize]>,
    /// Per service, the ServiceEntries that define it (indexes in load order; the first
    /// one's ports and resolution are the service's).
    sources: Arc<[Box<[u32]>]>,
    /// The services defined by a ServiceEntry with a workload selector, by the
    /// selector's first label (`namespace\0key\0value`; `namespace` alone for an empty
    /// selector): a WorkloadEntry can only be selected through one of its own labels.
    selecting: Arc<HashMap<String, Vec<u32>>>,
    /// The WorkloadEntries.
    workloads: WorkloadSet,
    /// The ServiceEntries it was built from, in load order.
    entries: Entries,
}

/// ServiceEntries, compared by name and spec.
#[derive(Debug, Clone, Default)]
struct Entries(Arc<[Arc<Resource<ServiceEntry>>]>);

impl std::ops::Deref for Entries {
    type Target = [Arc<Resource<ServiceEntry>>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(other.0.iter()).all(|(a, b)| {
                Arc::ptr_eq(a, b)
                    || (a.namespace() == b.namespace() && a.name() == b.name() && a.spec == b.spec)
            })
    }
}

/// One WorkloadEntry that appeared, changed or went away: its namespace, its name and
/// what it is now (`None`: gone). Endpoint changes are applied as these (see
/// [`Registry::with_workloads`]), without building the registry again.
#[derive(Debug, Clone)]
pub struct WorkloadChange {
    /// The entry's namespace.
    pub namespace: String,
    /// The entry's name.
    pub name: String,
    /// The entry now, or `None` when it is gone. Its namespace and name are the
    /// change's.
    pub entry: Option<Arc<Resource<WorkloadEntry>>>,
}

/// Entries by name (the order endpoints take within a ServiceEntry).
type ByName = imbl::OrdMap<Arc<str>, Arc<Resource<WorkloadEntry>>>;

/// The WorkloadEntries of a configuration, by namespace and name and by label, to find
/// those a selector selects without testing every one (a mesh of 100 000 endpoints has
/// as many entries). The maps are persistent: a copy costs nothing and a change copies
/// only its own path, so an endpoint change does not copy the whole set.
#[derive(Debug, Clone, Default)]
pub struct WorkloadSet {
    /// Per namespace, its entries by name.
    by_namespace: imbl::HashMap<Arc<str>, ByName>,
    /// Per `namespace\0key\0value`, the names of the entries with that label.
    by_label: imbl::HashMap<Arc<str>, imbl::OrdSet<Arc<str>>>,
    len: usize,
}

impl PartialEq for WorkloadSet {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self.by_namespace.iter().all(|(ns, mine)| {
                other.by_namespace.get(ns).is_some_and(|theirs| {
                    mine.len() == theirs.len()
                        && mine.iter().zip(theirs.iter()).all(|((a, x), (b, y))| {
                            a == b && (Arc::ptr_eq(x, y) || x.spec == y.spec)
                        })
                })
            })
    }
}

fn label_key(namespace: &str, key: &str, value: &str) -> String {
    format!("{namespace}\0{key}\0{value}")
}

impl WorkloadSet {
    /// The set of `entries` (the first of a namespace and name wins; loading reports
    /// duplicates).
    pub fn new(entries: &[Arc<Resource<WorkloadEntry>>]) -> Self {
        let mut set = WorkloadSet::default();
        for we in entries {
            if set.get(we.namespace(), we.name()).is_none() {
                set.insert(we.clone());
            }
        }
        set
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry `name` of `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Resource<WorkloadEntry>>> {
        self.by_namespace.get(namespace)?.get(name)
    }

    /// Adds `entry`, replacing the one of its namespace and name.
    pub fn insert(&mut self, entry: Arc<Resource<WorkloadEntry>>) {
        let (ns, name) = (entry.namespace(), entry.name());
        self.remove(ns, name);
        let name: Arc<str> = name.into();
        for (k, v) in &entry.spec.labels {
            let key: Arc<str> = label_key(ns, k, v).into();
            let mut names = self.by_label.get(&key).cloned().unwrap_or_default();
            names.insert(name.clone());
            self.by_label.insert(key, names);
        }
        let mut entries = self.by_namespace.get(ns).cloned().unwrap_or_default();
        entries.insert(name, entry.clone());
        self.by_namespace.insert(ns.into(), entries);
        self.len += 1;
    }

    /// Removes the entry `name` of `namespace`, giving it back.
    pub fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<Resource<WorkloadEntry>>> {
        let mut entries = self.by_namespace.get(namespace)?.clone();
        let old = entries.remove(name)?;
        if entries.is_empty() {
            self.by_namespace.remove(namespace);
        } else {
            self.by_namespace.insert(namespace.into(), entries);
        }
        for (k, v) in &old.spec.labels {
            let key = label_key(namespace, k, v);
            if let Some(names) = self.by_label.get(key.as_str()) {
                let mut names = names.clone();
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(key.as_str());
                } else {
                    self.by_label.insert(key.into(), names);
                }
            }
        }
        self.len -= 1;
        Some(old)
    }

    /// Every entry, by namespace and then name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource<WorkloadEntry>>> {
        self.by_namespace.values().flat_map(|m| m.values())
    }

    /// The entries of `namespace` that `selector` selects, by name (the candidates of
    /// its rarest label, each tested against the whole selector).
    pub fn selected<'a>(
        &'a self,
        namespace: &str,
        selector: &'a Labels,
    ) -> Box<dyn Iterator<Item = &'a Arc<Resource<WorkloadEntry>>> + 'a> {
        let Some(entries) = self.by_namespace.get(namespace) else {
            return Box::new(std::iter::empty());
        };
        if selector.is_empty() {
            return Box::new(entries.values());
        }
        let rarest = selector
            .iter()
            .map(|(k, v)| self.by_label.get(label_key(namespace, k, v).as_str()))
            .min_by_key(|c| c.map_or(0, imbl::OrdSet::len));
        let Some(Some(names)) = rarest else {
            return Box::new(std::iter::empty());
        };
        Box::new(
            names
                .iter()
                .filter_map(move |n| entries.get(n))
                .filter(move |we| selects(selector, &we.spec.labels)),
        )
    }
}

/// A ServiceEntry whose host was already defined in its namespace by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The host.
    pub host: String,
    /// The ServiceEntry that defines the service's ports and resolution.
    pub first: ResourceKey,
    /// The ServiceEntry whose endpoints were added.
    pub other: ResourceKey,
    /// True when the two disagree on ports or resolution (the first wins).
    pub differs: bool,
}

impl Registry {
    /// Builds the registry from ServiceEntries and WorkloadEntries (in load order).
    /// `default_export_to` is used for ServiceEntries without `exportTo`.
    ///
    /// ServiceEntries that define one host in one namespace make one service, as in
    /// Istio: their endpoints are combined; the first one's ports, resolution and
    /// `exportTo` are kept (see [`Registry::merges`]). A service's endpoints are, per
    /// ServiceEntry, its inline endpoints, then the WorkloadEntries it selects by name.
    pub fn build(
        service_entries: &[Arc<Resource<ServiceEntry>>],
        workload_entries: &[Arc<Resource<WorkloadEntry>>],
        default_export_to: &[String],
    ) -> Registry {
        let mut services: Vec<Service> = Vec::new();
        let mut sources: Vec<Vec<u32>> = Vec::new();
        // (host, namespace) → index in `services`, for ServiceEntries that merge.
        let mut defined: HashMap<(String, String), usize> = HashMap::new();
        let mut merges = Vec::new();
        let workloads = WorkloadSet::new(workload_entries);
        for (sei, se) in service_entries.iter().enumerate() {
            let sei = u32::try_from(sei).unwrap_or(u32::MAX);
            let ns = se.namespace().to_string();
            let spec = &se.spec;
            let resolution = spec.resolution.unwrap_or_default();
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .map(|p| ServicePort {
                    number: p.number,
                    name: p.name.clone(),
                    protocol: p
                        .protocol
                        .as_deref()
                        .filter(|p| !p.is_empty())
                        .map(str::to_ascii_uppercase)
                        .unwrap_or_else(|| "TCP".into()),
                    target_port: p.target_port,
                })
                .collect();
            let key = ResourceKey {
                kind: Kind::ServiceEntry,
                namespace: ns.clone(),
                name: se.name().to_string(),
            };
            let export_to = if spec.export_to.is_empty() {
                default_export_to.to_vec()
            } else {
                spec.export_to.clone()
            };
            for h in &spec.hosts {
                let h = h.to_ascii_lowercase();
                if let Some(&i) = defined.get(&(h.clone(), ns.clone()))
                    && let Some(first) = services.get(i)
                {
                    merges.push(Merge {
                        host: h,
                        first: first.source.clone(),
                        other: key.clone(),
                        differs: first.ports != ports || first.resolution != resolution,
                    });
                    if let Some(s) = sources.get_mut(i) {
                        s.push(sei);
                    }
                    continue;
                }
                defined.insert((h.clone(), ns.clone()), services.len());
                sources.push(vec![sei]);
                services.push(Service {
                    host: h,
                    namespace: ns.clone(),
                    ports: ports.clone(),
                    resolution,
                    location: spec.location.unwrap_or_default(),
                    endpoints: Arc::from(Vec::new()),
                    export_to: export_to.clone(),
                    source: key.clone(),
                });
            }
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcards = Vec::new();
        let mut selecting: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, s) in services.iter_mut().enumerate() {
            let from = sources.get(i).map_or(&[][..], Vec::as_slice);
            s.endpoints = endpoints_of(s, from, service_entries, &workloads);
            if host::is_wildcard(&s.host) {
                wildcards.push(i);
            } else {
                exact.entry(s.host.clone()).or_default().push(i);
            }
            for &sei in from {
                if let Some(se) = service_entries.get(sei as usize)
                    && let Some(sel) = &se.spec.workload_selector
                {
                    let key = match sel.labels.iter().next() {
                        Some((k, v)) => label_key(se.namespace(), k, v),
                        None => se.namespace().to_string(),
                    };
                    let list = selecting.entry(key).or_default();
                    let i = u32::try_from(i).unwrap_or(u32::MAX);
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
        }
        Registry {
            services: services.into_iter().map(Arc::new).collect(),
            merges,
            exact: Arc::new(exact),
            wildcards: wildcards.into(),
            sources: sources.into_iter().map(Vec::into_boxed_slice).collect(),
            selecting: Arc::new(selecting),
            workloads,
            entries: Entries(service_entries.into()),
        }
    }

    /// The registry after `changes` to its WorkloadEntries, and the indexes of the
    /// services whose endpoints changed: only the services whose ServiceEntries select
    /// a changed entry (as it was or as it is now) get their endpoints again; every
    /// other service is shared with `self`. The result is what [`Registry::build`] makes
    /// of the changed entries.
    pub fn with_workloads(&self, changes: &[WorkloadChange]) -> (Registry, Vec<usize>) {
        let service_entries = &self.entries;
        let mut next = self.clone();
        let mut affected = std::collections::BTreeSet::new();
        for change in changes {
            let old = next.workloads.remove(&change.namespace, &change.name);
            for we in old.iter().chain(change.entry.iter()) {
                self.selecting_services(we, &mut affected);
            }
            if let Some(we) = &change.entry {
                next.workloads.insert(we.clone());
            }
        }
        for &i in &affected {
            let from = self.sources.get(i).map_or(&[][..], |s| &s[..]);
            if let Some(slot) = next.services.get_mut(i) {
                let mut service = (**slot).clone();
                service.endpoints = endpoints_of(&service, from, service_entries, &next.workloads);
                *slot = Arc::new(service);
            }
        }
        (next, affected.into_iter().collect())
    }

    /// The services with an endpoint of the WorkloadEntry `name` of `namespace` (those
    /// whose ServiceEntries select it), in load order.
    pub fn services_of_workload(&self, namespace: &str, name: &str) -> Vec<&Arc<Service>> {
        let Some(we) = self.workloads.get(namespace, name) else {
            return Vec::new();
        };
        let mut found = std::collections::BTreeSet::new();
        self.selecting_services(we, &mut found);
        found
            .into_iter()
            .filter_map(|i| self.services.get(i))
            .collect()
    }

    /// Adds to `out` the services with a ServiceEntry whose selector selects `we`.
    fn selecting_services(
        &self,
        we: &Resource<WorkloadEntry>,
        out: &mut std::collections::BTreeSet<usize>,
    ) {
        let service_entries = &self.entries;
        let ns = we.namespace();
        let candidates = std::iter::once(ns.to_string())
            .chain(we.spec.labels.iter().map(|(k, v)| label_key(ns, k, v)))
            .filter_map(|key| self.selecting.get(&key))
            .flatten();
        for &i in candidates {
            let from = self.sources.get(i as usize).map_or(&[][..], |s| &s[..]);
            let selects_it = from.iter().any(|&sei| {
                service_entries.get(sei as usize).is_some_and(|se| {
                    se.namespace() == we.namespace()
                        && se
                            .spec
                            .workload_selector
                            .as_ref()
                            .is_some_and(|sel| selects(&sel.labels, &we.spec.labels))
                })
            });
            if selects_it {
                out.insert(i as usize);
            }
        }
    }

    /// The WorkloadEntries the registry was built from.
    pub fn workloads(&self) -> &WorkloadSet {
        &self.workloads
    }

    /// The services that may match a host that is not a wildcard: those of that exact
    /// host and the wildcard ones, in load order. `None` for a wildcard host (every
    /// service may overlap it).
    fn candidates(&self, host: &str) -> Option<Vec<usize>> {
        if host::is_wildcard(host) {
            return None;
        }
        let mut out: Vec<usize> = self.exact.get(host).cloned().unwrap_or_default();
        out.extend(self.wildcards.iter().copied());
        out.sort_unstable();
        Some(out)
    }

    /// The services whose host is exactly `host` (one per namespace), in load order.
    pub fn with_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        let indexes: &[usize] = if host::is_wildcard(host) {
            &self.wildcards
        } else {
            self.exact.get(host).map_or(&[], Vec::as_slice)
        };
        indexes
            .iter()
            .filter_map(|&i| self.services.get(i))
            .filter(move |s| s.host == host)
    }

    /// ServiceEntries merged into an earlier one with the same host and namespace.
    pub fn merges(&self) -> &[Merge] {
        &self.merges
    }

    /// Every service, in load order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The service a request for `host` resolves to, seen from namespace `from`.
    ///
    /// An exact host wins over wildcards, the longest wildcard over shorter ones; among
    /// equals, a service of the caller's own namespace wins, then the first loaded.
    pub fn lookup(&self, host: &str, from: &str) -> Option<&Arc<Service>> {
        let host = host.to_ascii_lowercase();
        // (exact host, length of the host, same namespace): the larger wins.
        type Rank = (bool, usize, bool);
        let mut best: Option<(Rank, &Arc<Service>)> = None;
        let candidates: Box<dyn Iterator<Item = &Arc<Service>>> = match self.candidates(&host) {
            Some(c) => Box::new(c.into_iter().filter_map(|i| self.services.get(i))),
            None => Box::new(self.services.iter()),
        };
        for s in candidates {
            if !s.visible_to(from) || !host::matches(&s.host, &host) {
                continue;
            }
            let rank = (s.host == host, s.host.len(), s.namespace == from);
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, s));
            }
        }
        best.map(|(_, s)| s)
    }

    /// Services whose host `pattern` (possibly a wildcard) covers, seen from `from`.
    pub fn matching<'a>(
        &'a self,
        pattern: &'a str,
        from: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        let candidates: Box<dyn Iterator<Item = &'a Arc<Service>> + 'a> =
            match self.candidates(&pattern.to_ascii_lowercase()) {
                Some(c) => Box::new(c.into_iter().filter_map(|i| self.services.get(i))),
                None => Box::new(self.services.iter()),
            };
        candidates.filter(move |s| s.visible_to(from) && host::overlaps(pattern, &s.host))
    }
}

/// Labels Istio adds to every endpoint from its locality and network, so that subsets
/// can select on them (`topology.kubernetes.io/region`, ...).
pub(crate) fn topology_labels(we: &WorkloadEntry) -> Labels {
    let mut labels = we.labels.clone();
    let mut add = |k: &str, v: &str| {
        if !v.is_empty() {
            labels.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    };
    if let Some(loc) = &we.locality {
        let mut parts = loc.split('/');
        add("topology.kubernetes.io/region", parts.next().unwrap_or(""));
        add("topology.kubernetes.io/zone", parts.next().unwrap_or(""));
        add("topology.istio.io/subzone", parts.next().unwrap_or(""));
    }
    if let Some(net) = &we.network {
        add("topology.istio.io/network", net);
    }
    labels
}

fn endpoint(we: &WorkloadEntry, namespace: &str, workload: Option<ResourceKey>) -> Endpoint {
    Endpoint {
        address: we.address.clone(),
        ports: we.ports.clone(),
        labels: topology_labels(we),
        locality: we.locality.clone(),
        weight: we.weight.filter(|w| *w > 0).unwrap_or(1),
        service_account: we
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into()),
        namespace: namespace.to_string(),
        workload,
    }
}

/// A service's endpoints: per ServiceEntry that defines it (`sources`, indexes in
/// `service_entries`), its inline endpoints, then the WorkloadEntries of its namespace
/// that it selects, by name. A DNS service whose first ServiceEntry gives none resolves
/// its own host.
fn endpoints_of(
    service: &Service,
    sources: &[u32],
    service_entries: &[Arc<Resource<ServiceEntry>>],
    workloads: &WorkloadSet,
) -> Arc<[Endpoint]> {
    let mut out: Vec<Endpoint> = Vec::new();
    for (k, &sei) in sources.iter().enumerate() {
        let Some(se) = service_entries.get(sei as usize) else {
            continue;
        };
        let ns = se.namespace();
        out.extend(se.spec.endpoints.iter().map(|e| endpoint(e, ns, None)));
        if let Some(sel) = &se.spec.workload_selector {
            for we in workloads.selected(ns, &sel.labels) {
                out.push(endpoint(
                    &we.spec,
                    ns,
                    Some(ResourceKey {
                        kind: Kind::WorkloadEntry,
                        namespace: ns.to_string(),
                        name: we.name().to_string(),
                    }),
                ));
            }
        }
        if k == 0
            && out.is_empty()
            && matches!(
                service.resolution,
                Resolution::Dns | Resolution::DnsRoundRobin
            )
            && !host::is_wildcard(&service.host)
        {
            out.push(Endpoint {
                address: service.host.clone(),
                ports: BTreeMap::new(),
                labels: Labels::new(),
                locality: None,
                weight: 1,
                service_account: "default".into(),
                namespace: ns.to_string(),
                workload: None,
            });
        }
    }
    Arc::from(out)
}

/// The annotation Istio puts on a WorkloadEntry registered from a WorkloadGroup: the
/// group's name.
pub const AUTO_REGISTRATION_GROUP: &str = "istio.io/autoRegistrationGroup";

/// The name of the WorkloadEntry an instance of WorkloadGroup `group` at `address`
/// registers, as Istio's auto-registration names it: `<group>-<address>` (an IPv6
/// address's `:` as `-`), then `-<network>` for a proxy on a network of its own; of a
/// name longer than 253 bytes, the last 253 (on a character boundary).
pub fn instance_name(group: &str, address: &str, network: Option<&str>) -> String {
    let mut name = format!("{group}-{}", address.replace(':', "-"));
    if let Some(net) = network.filter(|n| !n.is_empty()) {
        name.push('-');
        name.push_str(net);
    }
    if name.len() <= 253 {
        return name;
    }
    let mut at = name.len() - 253;
    while !name.is_char_boundary(at) {
        at += 1;
    }
    name[at..].to_string()
}

/// The WorkloadEntry an instance of `group` at `address` registers, as Istio's
/// auto-registration makes it: named by [`instance_name`] (an instance has no network
/// of its own, so no network suffix), in the group's namespace, the template's spec at
/// that address (with `ports` when given: the ports the instance really listens on),
/// the template's labels overlaid with the group metadata's, and
/// [`AUTO_REGISTRATION_GROUP`] overlaid with the metadata's annotations. Its name and its
/// YAML text. `None` when the group has no template.
pub fn instance_entry(
    group: &Resource<crate::model::WorkloadGroup>,
    address: &str,
    ports: Option<&BTreeMap<String, u32>>,
) -> Option<(String, String)> {
    let template = group.spec.template.as_ref()?;
    let name = instance_name(group.name(), address, None);
    let mut labels = template.labels.clone();
    let mut annotations = BTreeMap::new();
    annotations.insert(
        AUTO_REGISTRATION_GROUP.to_string(),
        group.name().to_string(),
    );
    if let Some(meta) = &group.spec.metadata {
        labels.extend(meta.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        annotations.extend(meta.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let mut spec = serde_json::json!({
        "address": address,
        "ports": ports.unwrap_or(&template.ports),
        "labels": labels,
    });
    let optional = [
        (
            "network",
            template.network.clone().map(serde_json::Value::from),
        ),
        (
            "locality",
            template.locality.clone().map(serde_json::Value::from),
        ),
        ("weight", template.weight.map(serde_json::Value::from)),
        (
            "serviceAccount",
            template
                .service_account
                .clone()
                .map(serde_json::Value::from),
        ),
    ];
    for (field, value) in optional {
        if let (Some(value), Some(map)) = (value, spec.as_object_mut()) {
            map.insert(field.to_string(), value);
        }
    }
    let entry = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": name,
            "namespace": group.namespace(),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    });
    Some((name, entry.to_string()))
}
