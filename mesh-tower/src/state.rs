//! Runtime state that outlives a configuration, keyed by stable ids.
//!
//! A compiled mesh is immutable and thrown away at the next reload; what the mesh learns
//! while it runs must not be. Each endpoint (by `address:port`) keeps one
//! [`EndpointState`] for as long as some cluster of the configuration in force has it:
//! its load (outstanding requests and latency, what LEAST_REQUEST and peak-EWMA read) and
//! its connection pools. A reload hands the same states to the new clusters, so the
//! balancers keep steering away from a busy endpoint and connections stay warm.
//!
//! Each cluster (by its Envoy name, `outbound|port|subset|host`) likewise keeps one
//! [`ClusterState`]: its circuit breakers' counters (requests, pending requests,
//! connections and retries in flight, and how often each overflowed) and what outlier
//! detection learnt of its endpoints. Envoy keeps these per cluster, so subsets of one
//! service count apart even where they share endpoints.
//!
//! The tables are built when a configuration is swapped in, never on the request path:
//! a request reaches its endpoint's state by the cluster's id and the endpoint's index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use mesh_config::model::RequestRetryBudget;
use mesh_core::CompiledMesh;
use mesh_core::balance::{EndpointLoad, HasLoad};
use tower::retry::budget::TpsBudget;

use crate::transport::pool::EndpointPools;

thread_local! {
    /// The calling thread's worker index, once known.
    static WORKER_INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The calling thread's worker index: with pools per worker, the pool it uses (modulo
/// their number). Set by [`set_worker_index`], or else given on the thread's first
/// request through a mesh, in the order of those first requests (process-wide).
fn worker_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    WORKER_INDEX.with(|i| match i.get() {
        Some(index) => index,
        None => {
            let index = NEXT.fetch_add(1, Ordering::Relaxed);
            i.set(Some(index));
            index
        }
    })
}

/// Makes the calling thread worker `index`: with
/// [`RuntimeOptions::worker_pools`](crate::RuntimeOptions::worker_pools)`(n)`, its requests
/// use the endpoints' pool `index % n`, as an Envoy worker uses its own. Call it at the
/// start of each worker thread (a current-thread runtime per core, or tokio's
/// `on_thread_start` with a counter of your own); threads that never call it are
/// numbered in the order of their first request.
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|i| i.set(Some(index)));
}

/// What the runtime knows of one endpoint (see the module documentation).
#[derive(Debug)]
pub struct EndpointState {
    id: Arc<str>,
    load: EndpointLoad,
    /// Its open connections (every transport).
    connections: AtomicU32,
    /// Its connection pools: one, or one per worker thread (see
    /// [`RuntimeOptions::worker_pools`](crate::RuntimeOptions::worker_pools)).
    pools: Box<[EndpointPools]>,
    /// When it was last used, in milliseconds since its table was made (passthrough
    /// endpoints only).
    used: AtomicU64,
}

impl EndpointState {
    fn new(id: Arc<str>, worker_pools: usize) -> Self {
        let pools = (0..worker_pools.max(1))
            .map(|_| EndpointPools::new(&id))
            .collect();
        Self::with_pools(pools, id)
    }

    pub(crate) fn with_pools(pools: Box<[EndpointPools]>, id: Arc<str>) -> Self {
        debug_assert!(!pools.is_empty(), "an endpoint has at least one pool");
        EndpointState {
            pools,
            id,
            load: EndpointLoad::new(),
            connections: AtomicU32::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// The state of the endpoint `address:port` outside any mesh: for sending straight
    /// to it through [`Pools`](crate::transport::pool::Pools), the mesh's transport
    /// without its routing (a benchmark's floor, or a test's).
    pub fn standalone(id: &str) -> Arc<Self> {
        Arc::new(Self::new(id.into(), 1))
    }

    /// The connection pools requests of this thread use: the endpoint's one, or with
    /// pools per worker, this worker's.
    pub(crate) fn pools(&self) -> &EndpointPools {
        match &*self.pools {
            [one] => one,
            shards => &shards[worker_index() % shards.len()],
        }
    }

    /// `address:port` (an IPv6 address in brackets).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Its load.
    pub fn load(&self) -> &EndpointLoad {
        &self.load
    }

    /// Its open connections.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        let _ = self
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// What the runtime keeps of one cluster (see the module documentation).
#[derive(Debug)]
pub struct ClusterState {
    name: Arc<str>,
    /// Its circuit breakers' counters.
    pub(crate) breakers: BreakerCounters,
    /// Linkerd's retry budget (the `mesh.rs/retry-budget` annotation), with the settings
    /// it was made with: kept across configurations while they are unchanged.
    budget: ArcSwapOption<RequestBudget>,
    /// Its outlier detection's counters and ejections.
    pub(crate) outlier: crate::outbound::outlier::OutlierState,
}

/// A retry budget of requests (see [`ClusterState`]).
pub(crate) struct RequestBudget {
    settings: RequestRetryBudget,
    pub(crate) budget: TpsBudget,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClusterState {
    fn new(name: Arc<str>) -> Self {
        ClusterState {
            name,
            breakers: BreakerCounters::default(),
            budget: ArcSwapOption::empty(),
            outlier: Default::default(),
        }
    }

    /// Makes its retry budget the one `settings` describe (a budget with the same
    /// settings is kept, with what it has counted).
    fn set_budget(&self, settings: Option<RequestRetryBudget>) {
        let current = self.budget.load();
        if current.as_ref().map(|b| b.settings) == settings {
            return;
        }
        self.budget.store(settings.map(|s| {
            Arc::new(RequestBudget {
                settings: s,
                budget: TpsBudget::new(s.ttl, s.min_retries_per_second, s.retry_ratio),
            })
        }));
    }

    /// Its retry budget of requests, if it has one.
    pub(crate) fn request_budget(&self) -> Option<Arc<RequestBudget>> {
        self.budget.load_full()
    }

    /// Envoy's name of the cluster, `outbound|port|subset|host`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its circuit breakers' counters.
    pub fn breakers(&self) -> &BreakerCounters {
        &self.breakers
    }
}

/// A circuit breaker's gauges and overflow counters: what is in flight now, and how often
/// a limit turned a request away (Envoy's `upstream_rq_pending_overflow`,
/// `upstream_cx_overflow`, `upstream_rq_retry_overflow`).
#[derive(Debug, Default)]
pub struct BreakerCounters {
    /// Requests in flight (counted when the cluster has a circuit breaker or a retry
    /// budget).
    pub(crate) requests: AtomicU32,
    /// Requests waiting for a connection.
    pub(crate) pending: AtomicU32,
    /// Open connections, counted when the cluster limits them.
    pub(crate) connections: AtomicU32,
    /// Retries in flight.
    pub(crate) retries: AtomicU32,
    /// Requests refused because too many were in flight or pending.
    pub(crate) request_overflow: AtomicU64,
    /// Connections not made because the cluster had its maximum.
    pub(crate) connection_overflow: AtomicU64,
    /// Retries not made because the retry limit or budget was reached.
    pub(crate) retry_overflow: AtomicU64,
}

impl BreakerCounters {
    /// Requests in flight.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Connections counted against `maxConnections`.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Retries in flight.
    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Requests refused with `UO` (too many in flight or pending).
    pub fn request_overflow(&self) -> u64 {
        self.request_overflow.load(Ordering::Relaxed)
    }

    /// Connections not made because the cluster had `maxConnections`.
    pub fn connection_overflow(&self) -> u64 {
        self.connection_overflow.load(Ordering::Relaxed)
    }

    /// Retries not made (`maxRetries` or the retry budget).
    pub fn retry_overflow(&self) -> u64 {
        self.retry_overflow.load(Ordering::Relaxed)
    }
}

/// Takes one unit of `gauge` if it is below `max` (`None`: no limit, always taken).
pub(crate) fn take_below(gauge: &AtomicU32, max: Option<u32>) -> bool {
    match max {
        None => {
            gauge.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(max) => gauge
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok(),
    }
}

/// Gives back one unit of `gauge`.
pub(crate) fn give_back(gauge: &AtomicU32) {
    let _ = gauge.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// A request counted in flight against its cluster's `http2MaxRequests`; dropping it
/// ends it.
#[derive(Debug)]
pub(crate) struct ActiveRequest(Arc<ClusterState>);

impl ActiveRequest {
    /// Counts one more request in flight, unless `max` are already.
    pub(crate) fn start(cluster: &Arc<ClusterState>, max: Option<u32>) -> Option<Self> {
        if take_below(&cluster.breakers.requests, max) {
            Some(ActiveRequest(cluster.clone()))
        } else {
            cluster
                .breakers
                .request_overflow
                .fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        give_back(&self.0.breakers.requests);
    }
}

impl HasLoad for EndpointState {
    fn endpoint_load(&self) -> &EndpointLoad {
        &self.load
    }
}

/// One outstanding request to an endpoint; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub(crate) fn start(endpoint: Arc<EndpointState>) -> Self {
        endpoint.load.begin();
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.finish();
    }
}

/// The states of one cluster's endpoints, by endpoint index.
pub(crate) type ClusterEndpoints = Arc<[Arc<EndpointState>]>;

/// Beyond this many passthrough endpoints the least recently used quarter is forgotten
/// (their connections finish the requests they carry, and their idle ones close),
/// bounding memory when requests go to ever new destinations outside the registry.
const MAX_PASSTHROUGH: usize = 4096;

/// Registry endpoints' states by id, with how many clusters have each.
type Counted = HashMap<Arc<str>, (Arc<EndpointState>, u32)>;

/// Every endpoint's state, by id.
#[derive(Debug)]
pub(crate) struct EndpointStates {
    /// Endpoints of the registry's clusters, with how many clusters of the generation
    /// in force have each.
    clusters: Mutex<Counted>,
    /// The registry's clusters, by Envoy name and DestinationRule.
    cluster_states: Mutex<HashMap<Arc<str>, Arc<ClusterState>>>,
    /// Destinations outside the registry (ALLOW_ANY, PASSTHROUGH, resolution NONE).
    passthrough: RwLock<HashMap<Arc<str>, Arc<EndpointState>>>,
    epoch: Instant,
    /// Connection pools per endpoint (one per worker thread, or one).
    worker_pools: usize,
}

impl Default for EndpointStates {
    fn default() -> Self {
        Self::with_worker_pools(1)
    }
}

impl EndpointStates {
    /// States whose endpoints have `worker_pools` connection pools each.
    pub(crate) fn with_worker_pools(worker_pools: usize) -> Self {
        EndpointStates {
            clusters: Mutex::new(HashMap::new()),
            cluster_states: Mutex::new(HashMap::new()),
            passthrough: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            worker_pools: worker_pools.max(1),
        }
    }

    /// The endpoint states of every cluster of `mesh`, by cluster id: the states of
    /// endpoints already known are kept, new ones start idle, and those no cluster of
    /// `mesh` has any more are forgotten (requests still in flight keep theirs alive).
    pub(crate) fn for_mesh(&self, mesh: &CompiledMesh) -> Vec<ClusterEndpoints> {
        let mut known = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next: Counted = HashMap::with_capacity(known.len());
        let tables = mesh
            .clusters()
            .iter()
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| {
                        if let Some((s, n)) = next.get_mut(&e.id) {
                            *n += 1;
                            return s.clone();
                        }
                        let s = known.remove(&e.id).map_or_else(
                            || Arc::new(EndpointState::new(e.id.clone(), self.worker_pools)),
                            |(s, _)| s,
                        );
                        next.insert(e.id.clone(), (s.clone(), 1));
                        s
                    })
                    .collect()
            })
            .collect();
        *known = next;
        tables
    }

    /// Hands the endpoint states over for the clusters `ids` of `mesh` only (an
    /// endpoint change, see [`CompiledMesh::with_endpoints`]): `tables` holds the
    /// previous generation's, by cluster id; the tables of `ids` are replaced, keeping
    /// the states of endpoints still there, and an endpoint no cluster has any more is
    /// forgotten.
    pub(crate) fn for_clusters(
        &self,
        mesh: &CompiledMesh,
        ids: &[u32],
        tables: &mut [ClusterEndpoints],
    ) {
        let mut known = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Every new table first, then the old ones let go: an endpoint that moves from
        // one changed cluster to another keeps its state.
        let mut old = Vec::with_capacity(ids.len());
        for &id in ids {
            let (Some(cluster), Some(slot)) = (
                mesh.clusters().get(id as usize),
                tables.get_mut(id as usize),
            ) else {
                continue;
            };
            let table: ClusterEndpoints = cluster
                .endpoints
                .iter()
                .map(|e| match known.get_mut(&e.id) {
                    Some((s, n)) => {
                        *n += 1;
                        s.clone()
                    }
                    None => {
                        let s = Arc::new(EndpointState::new(e.id.clone(), self.worker_pools));
                        known.insert(e.id.clone(), (s.clone(), 1));
                        s
                    }
                })
                .collect();
            old.push(std::mem::replace(slot, table));
        }
        for s in old.iter().flat_map(|t| t.iter()) {
            if let Some((_, n)) = known.get_mut(&s.id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    known.remove(&s.id);
                }
            }
        }
    }

    /// The state of every cluster of `mesh`, by cluster id: clusters already known keep
    /// theirs, new ones start afresh, and those `mesh` has no more are forgotten
    /// (requests in flight keep theirs alive).
    pub(crate) fn clusters_for_mesh(&self, mesh: &CompiledMesh) -> Vec<Arc<ClusterState>> {
        let mut known = self
            .cluster_states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next: HashMap<Arc<str>, Arc<ClusterState>> = HashMap::with_capacity(known.len());
        let tables = mesh
            .clusters()
            .iter()
            .map(|c| {
                // One service port may have several clusters of one name, shaped by the
                // DestinationRules different namespaces see: each keeps its own state.
                let name = c.name.clone();
                let key: Arc<str> = match &c.key.rule {
                    Some(rule) => format!("{name} {rule}").into(),
                    None => name.clone(),
                };
                if let Some(s) = next.get(&key) {
                    return s.clone();
                }
                let s = known
                    .remove(&key)
                    .unwrap_or_else(|| Arc::new(ClusterState::new(name)));
                s.set_budget(c.limits.request_budget);
                next.insert(key, s.clone());
                s
            })
            .collect();
        *known = next;
        tables
    }

    /// The state of the passthrough destination `id` (`host:port`).
    pub(crate) fn passthrough(&self, id: &str) -> Arc<EndpointState> {
        let now = self.epoch.elapsed().as_millis() as u64;
        if let Ok(map) = self.passthrough.read()
            && let Some(s) = map.get(id)
        {
            s.used.store(now, Ordering::Relaxed);
            return s.clone();
        }
        let mut map = self
            .passthrough
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() >= MAX_PASSTHROUGH && !map.contains_key(id) {
            let mut by_age: Vec<(u64, Arc<str>)> = map
                .iter()
                .map(|(k, s)| (s.used.load(Ordering::Relaxed), k.clone()))
                .collect();
            by_age.sort_unstable_by_key(|(used, _)| *used);
            for (_, k) in by_age.iter().take(map.len() / 4) {
                map.remove(k);
            }
        }
        let state = map
            .entry(id.into())
            .or_insert_with(|| Arc::new(EndpointState::new(id.into(), self.worker_pools)));
        state.used.store(now, Ordering::Relaxed);
        state.clone()
    }

    /// Number of registry endpoints remembered, with how many clusters have each.
    #[cfg(test)]
    pub(crate) fn known(&self) -> HashMap<Arc<str>, u32> {
        self.clusters
            .lock()
            .map(|m| m.iter().map(|(k, (_, n))| (k.clone(), *n)).collect())
            .unwrap_or_default()
    }

    /// Number of passthrough destinations remembered.
    #[cfg(test)]
    pub(crate) fn passthrough_len(&self) -> usize {
        self.passthrough.read().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_thread_uses_its_own_pool() {
        let state = Arc::new(EndpointState::new("127.0.0.1:1".into(), 2));
        let mine = state.pools() as *const EndpointPools as usize;
        assert_eq!(state.pools() as *const EndpointPools as usize, mine);
        assert_eq!(worker_index(), worker_index());
        let pool_of = |index: usize| {
            let s = state.clone();
            std::thread::spawn(move || {
                set_worker_index(index);
                s.pools() as *const EndpointPools as usize
            })
            .join()
            .unwrap()
        };
        let (zero, one, two) = (pool_of(0), pool_of(1), pool_of(2));
        assert_ne!(zero, one, "workers 0 and 1 have a pool each");
        assert_eq!(zero, two, "worker 2 of 2 pools shares worker 0's");
        // Threads numbered by their first request get distinct indices.
        let first = std::thread::spawn(worker_index).join().unwrap();
        let second = std::thread::spawn(worker_index).join().unwrap();
        assert_ne!(first, second);
        let one = EndpointState::new("127.0.0.1:1".into(), 1);
        assert_eq!(one.pools.len(), 1);
    }

    #[tokio::test]
    async fn past_the_limit_the_least_recently_used_passthrough_quarter_is_forgotten() {
        let states = EndpointStates::default();
        let ep = |i: usize| format!("10.0.{}.{}:80", i / 256, i % 256);
        for i in 0..MAX_PASSTHROUGH {
            states.passthrough(&ep(i));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // A hot endpoint, used after all the others.
        let hot = states.passthrough(&ep(0));
        states.passthrough(&ep(MAX_PASSTHROUGH));
        assert_eq!(
            states.passthrough_len(),
            MAX_PASSTHROUGH - MAX_PASSTHROUGH / 4 + 1
        );
        assert!(
            Arc::ptr_eq(&hot, &states.passthrough(&ep(0))),
            "the hot one stays"
        );
    }

    /// An endpoint change hands the states over for the changed clusters only: an
    /// endpoint still there keeps its state (its load, its connections), in every
    /// cluster that has it; one that went is forgotten once no cluster has it; the
    /// other clusters' tables are the previous generation's.
    #[test]
    fn an_endpoint_change_keeps_the_states_of_the_endpoints_still_there() {
        use mesh_config::registry::WorkloadChange;
        let base = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc}\nspec:\n  hosts: [svc.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: svc}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc}\nspec:\n  host: svc.example.com\n  subsets: [{name: v1, labels: {version: v1}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: other}\nspec:\n  hosts: [other.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.9.9.9}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: zz}\nspec:\n  hosts: [zz.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: zz}}\n";
        let we = |name: &str, address: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: {address}, labels: {{app: svc, version: v1}}}}\n"
            )
        };
        let mut set = mesh_config::ConfigSet::new();
        set.add_str("base.yaml", base);
        set.add_str("a.yaml", &we("a", "10.0.0.1"));
        let snapshot = set.check().snapshot.unwrap();
        let runtime = crate::MeshRuntime::from_snapshot(&snapshot);
        let before = runtime.generation();
        let id_of = |g: &crate::runtime::Generation, host: &str, subset: Option<&str>| {
            g.mesh
                .clusters()
                .iter()
                .find(|c| {
                    &*c.key.host == host
                        && c.key.subset.as_deref() == subset
                        && (subset.is_some() || c.key.rule.is_none())
                })
                .map(|c| c.id as usize)
                .unwrap()
        };
        let plain = id_of(&before, "svc.example.com", None);
        let v1 = id_of(&before, "svc.example.com", Some("v1"));
        let other = id_of(&before, "other.example.com", None);
        let a = before.endpoints[plain][0].clone();
        assert!(
            Arc::ptr_eq(&a, &before.endpoints[v1][0]),
            "one state per endpoint"
        );
        // svc has 3 clusters (plain, the rule's, v1) with 10.0.0.1.
        assert_eq!(
            runtime.generation().states.known().get("10.0.0.1:80"),
            Some(&3)
        );

        let parse = |name: &str, address: &str| {
            let mut one = mesh_config::ConfigSet::new();
            one.add_str("we.yaml", &we(name, address));
            match one.resources() {
                [mesh_config::model::AnyResource::WorkloadEntry(w)] => w.clone(),
                _ => panic!("not a WorkloadEntry"),
            }
        };
        let added = runtime
            .update_workloads(&[WorkloadChange {
                namespace: "default".into(),
                name: "b".into(),
                entry: Some(parse("b", "10.0.0.2")),
            }])
            .unwrap();
        assert_eq!(added.workload_entries().len(), 2);
        let after = runtime.generation();
        assert_eq!(after.snapshot.version(), added.version());
        let ids: Vec<&str> = after.endpoints[plain].iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert!(
            Arc::ptr_eq(&after.endpoints[plain][0], &a),
            "10.0.0.1 kept its state"
        );
        assert!(Arc::ptr_eq(&after.endpoints[v1][0], &a));
        assert!(
            Arc::ptr_eq(&after.endpoints[other], &before.endpoints[other]),
            "other is shared"
        );
        assert!(Arc::ptr_eq(&after.clusters[plain], &before.clusters[plain]));

        // a goes: forgotten; b stays.
        runtime
            .update_workloads(&[WorkloadChange {
                namespace: "default".into(),
                name: "a".into(),
                entry: None,
            }])
            .unwrap();
        let last = runtime.generation();
        let ids: Vec<&str> = last.endpoints[v1].iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["10.0.0.2:80"]);
        let known = runtime.generation().states.known();
        assert_eq!(known.get("10.0.0.1:80"), None);
        assert_eq!(known.get("10.0.0.2:80"), Some(&3));
        assert_eq!(known.get("10.9.9.9:80"), Some(&1));
        assert!(Arc::ptr_eq(
            &last.endpoints[plain][0],
            &after.endpoints[plain][1]
        ));

        // b moves to another service (relabelled): its state goes with it, though the
        // service it leaves is handed over first.
        let b_state = last.endpoints[plain][0].clone();
        let mut moved = (*parse("b", "10.0.0.2")).clone();
        moved.spec.labels.insert("app".into(), "zz".into());
        runtime
            .update_workloads(&[WorkloadChange {
                namespace: "default".into(),
                name: "b".into(),
                entry: Some(Arc::new(moved)),
            }])
            .unwrap();
        let now = runtime.generation();
        let zz = id_of(&now, "zz.example.com", None);
        assert!(now.endpoints[plain].is_empty());
        assert!(
            Arc::ptr_eq(&now.endpoints[zz][0], &b_state),
            "b kept its state"
        );
        assert_eq!(now.states.known().get("10.0.0.2:80"), Some(&1));
    }

    /// A configuration's YAML trees are dropped when the runtime compiles it, and what
    /// compiling names (rules' and PeerAuthentications' lines) is the same as with them.
    #[test]
    fn the_runtime_compiles_without_the_yaml_trees() {
        use mesh_config::registry::WorkloadChange;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bookinfo/config");
        let mut set = mesh_config::ConfigSet::load(&[dir]).unwrap();
        set.add_str(
            "policies.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ratings}\nspec:\n  selector: {matchLabels: {app: ratings}}\n\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9080: {mode: PERMISSIVE}\n",
        );
        let snapshot = set.check().snapshot.unwrap();
        let kept = mesh_core::CompiledMesh::compile(&snapshot);
        let locations = |m: &mesh_core::CompiledMesh| -> Vec<String> {
            m.virtual_services()
                .iter()
                .flat_map(|vs| vs.rules.iter().map(|r| r.origin.location()))
                .collect()
        };
        // Computed while the trees are kept.
        let expected = locations(&kept);
        let policies = |s: &mesh_config::Snapshot| s.peer_authentications()[0].origin.trees.clone();
        assert_eq!(policies(&snapshot).rereads(), 0);
        let runtime = crate::MeshRuntime::from_snapshot(&snapshot);
        assert!(
            snapshot
                .resources()
                .iter()
                .all(|r| !r.origin().trees.is_kept()),
            "released, the PeerAuthentication's source too once compiled"
        );
        // Kept through the compile: its lines were read from the tree it had, not from
        // the text parsed again.
        assert_eq!(policies(&snapshot).rereads(), 0);
        let released = runtime.current();
        assert_eq!(locations(&released), expected);
        assert!(
            expected
                .iter()
                .any(|l| l.ends_with("bookinfo-gateway.yaml:28")),
            "{expected:?}"
        );
        assert_eq!(released.peer_authentications(), kept.peer_authentications());
        // An entry that registers: its tree goes once it is applied.
        let mut one = mesh_config::ConfigSet::new();
        one.add_str(
            "registered.yaml",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-x}\nspec: {address: 10.1.2.3, labels: {app: reviews, version: v1}}\n",
        );
        let Some(mesh_config::model::AnyResource::WorkloadEntry(entry)) =
            one.resources().first().cloned()
        else {
            panic!("one WorkloadEntry");
        };
        assert!(entry.origin.trees.is_kept());
        runtime
            .update_workloads(&[WorkloadChange {
                namespace: "default".into(),
                name: "reviews-x".into(),
                entry: Some(entry.clone()),
            }])
            .unwrap();
        assert!(!entry.origin.trees.is_kept());
    }
}
