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
    exact: HashMap<String, Vec<usize>>,
    /// Indexes of the services whose host is a wildcard, in load order.
    wildcards: Vec<usize>,
}

/// WorkloadEntries by namespace and by label, to find those a selector selects without
/// testing every one (a mesh of 100 000 endpoints has as many entries).
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    /// Indexes of the entries of each namespace, in load order.
    by_namespace: HashMap<String, Vec<usize>>,
    /// Indexes of the entries of each (namespace, label key, label value), in load order.
    by_label: HashMap<(String, String, String), Vec<usize>>,
}

impl WorkloadIndex {
    /// The index of `entries`, by their namespaces and labels.
    pub fn new(entries: &[Arc<Resource<WorkloadEntry>>]) -> Self {
        let mut index = WorkloadIndex::default();
        for (i, we) in entries.iter().enumerate() {
            let ns = we.namespace().to_string();
            for (k, v) in &we.spec.labels {
                index
                    .by_label
                    .entry((ns.clone(), k.clone(), v.clone()))
                    .or_default()
                    .push(i);
            }
            index.by_namespace.entry(ns).or_default().push(i);
        }
        index
    }

    /// Indexes of the entries of `namespace` that `selector` selects, in load order (the
    /// candidates of its rarest label, each tested against the whole selector).
    pub fn selected<'a>(
        &'a self,
        entries: &'a [Arc<Resource<WorkloadEntry>>],
        namespace: &str,
        selector: &'a Labels,
    ) -> impl Iterator<Item = usize> + 'a {
        let candidates: &[usize] = if selector.is_empty() {
            self.by_namespace.get(namespace).map_or(&[], Vec::as_slice)
        } else {
            selector
                .iter()
                .map(|(k, v)| {
                    self.by_label
                        .get(&(namespace.to_string(), k.clone(), v.clone()))
                        .map_or(&[][..], Vec::as_slice)
                })
                .min_by_key(|c| c.len())
                .unwrap_or(&[])
        };
        candidates.iter().copied().filter(move |&i| {
            entries
                .get(i)
                .is_some_and(|we| selects(selector, &we.spec.labels))
        })
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
    /// `exportTo` are kept (see [`Registry::merges`]).
    pub fn build(
        service_entries: &[Arc<Resource<ServiceEntry>>],
        workload_entries: &[Arc<Resource<WorkloadEntry>>],
        default_export_to: &[String],
    ) -> Registry {
        let mut services: Vec<Service> = Vec::new();
        // (host, namespace) → index in `services`, for ServiceEntries that merge.
        let mut defined: HashMap<(String, String), usize> = HashMap::new();
        let mut merges = Vec::new();
        let workloads = WorkloadIndex::new(workload_entries);
        for se in service_entries {
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
            let mut endpoints: Vec<Endpoint> = spec
                .endpoints
                .iter()
                .map(|e| endpoint(e, &ns, None))
                .collect();
            if let Some(sel) = &spec.workload_selector {
                for i in workloads.selected(workload_entries, &ns, &sel.labels) {
                    let we = &workload_entries[i];
                    endpoints.push(endpoint(
                        &we.spec,
                        &ns,
                        Some(ResourceKey {
                            kind: Kind::WorkloadEntry,
                            namespace: ns.clone(),
                            name: we.name().to_string(),
                        }),
                    ));
                }
            }
            let export_to = if spec.export_to.is_empty() {
                default_export_to.to_vec()
            } else {
                spec.export_to.clone()
            };
            for h in &spec.hosts {
                let h = h.to_ascii_lowercase();
                if let Some(first) = defined
                    .get(&(h.clone(), ns.clone()))
                    .and_then(|&i| services.get_mut(i))
                {
                    let mut all: Vec<Endpoint> = first.endpoints.to_vec();
                    all.extend(endpoints.iter().cloned());
                    first.endpoints = Arc::from(all);
                    merges.push(Merge {
                        host: h,
                        first: first.source.clone(),
                        other: key.clone(),
                        differs: first.ports != ports || first.resolution != resolution,
                    });
                    continue;
                }
                let eps: Arc<[Endpoint]> = if endpoints.is_empty()
                    && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                    && !host::is_wildcard(&h)
                {
                    Arc::from(vec![Endpoint {
                        address: h.clone(),
                        ports: BTreeMap::new(),
                        labels: Labels::new(),
                        locality: None,
                        weight: 1,
                        service_account: "default".into(),
                        namespace: ns.clone(),
                        workload: None,
                    }])
                } else {
                    Arc::from(endpoints.clone())
                };
                defined.insert((h.clone(), ns.clone()), services.len());
                services.push(Service {
                    host: h,
                    namespace: ns.clone(),
                    ports: ports.clone(),
                    resolution,
                    location: spec.location.unwrap_or_default(),
                    endpoints: eps,
                    export_to: export_to.clone(),
                    source: key.clone(),
                });
            }
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, s) in services.iter().enumerate() {
            if host::is_wildcard(&s.host) {
                wildcards.push(i);
            } else {
                exact.entry(s.host.clone()).or_default().push(i);
            }
        }
        Registry {
            services: services.into_iter().map(Arc::new).collect(),
            merges,
            exact,
            wildcards,
        }
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
fn topology_labels(we: &WorkloadEntry) -> Labels {
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
