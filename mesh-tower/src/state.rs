//! Runtime state that outlives a configuration, keyed by stable ids.
//!
//! A compiled mesh is immutable and thrown away at the next reload; what the mesh learns
//! while it runs must not be. Each endpoint (by `address:port`) keeps one
//! [`EndpointState`] for as long as some cluster of the configuration in force has it:
//! its load (outstanding requests and latency, what LEAST_REQUEST and peak-EWMA read) and
//! its connection pools. A reload hands the same states to the new clusters, so the
//! balancers keep steering away from a busy endpoint and connections stay warm. (Outlier
//! ejections, circuit-breaker counters and rate-limit buckets will live here too.)
//!
//! The tables are built when a configuration is swapped in, never on the request path:
//! a request reaches its endpoint's state by the cluster's id and the endpoint's index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use mesh_core::CompiledMesh;
use mesh_core::balance::{EndpointLoad, HasLoad};

use crate::transport::pool::EndpointPools;

/// What the runtime knows of one endpoint (see the module documentation).
#[derive(Debug)]
pub struct EndpointState {
    id: Arc<str>,
    load: EndpointLoad,
    pub(crate) pools: EndpointPools,
    /// When it was last used, in milliseconds since its table was made (passthrough
    /// endpoints only).
    used: AtomicU64,
}

impl EndpointState {
    fn new(id: Arc<str>) -> Self {
        Self::with_pools(EndpointPools::new(&id), id)
    }

    pub(crate) fn with_pools(pools: EndpointPools, id: Arc<str>) -> Self {
        EndpointState {
            pools,
            id,
            load: EndpointLoad::new(),
            used: AtomicU64::new(0),
        }
    }

    /// The state of the endpoint `address:port` outside any mesh: for sending straight
    /// to it through [`Pools`](crate::transport::pool::Pools), the mesh's transport
    /// without its routing (a benchmark's floor, or a test's).
    pub fn standalone(id: &str) -> Arc<Self> {
        Arc::new(Self::new(id.into()))
    }

    /// `address:port` (an IPv6 address in brackets).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Its load.
    pub fn load(&self) -> &EndpointLoad {
        &self.load
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

/// Every endpoint's state, by id.
#[derive(Debug)]
pub(crate) struct EndpointStates {
    /// Endpoints of the registry's clusters.
    clusters: Mutex<HashMap<Arc<str>, Arc<EndpointState>>>,
    /// Destinations outside the registry (ALLOW_ANY, PASSTHROUGH, resolution NONE).
    passthrough: RwLock<HashMap<Arc<str>, Arc<EndpointState>>>,
    epoch: Instant,
}

impl Default for EndpointStates {
    fn default() -> Self {
        EndpointStates {
            clusters: Mutex::new(HashMap::new()),
            passthrough: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

impl EndpointStates {
    /// The endpoint states of every cluster of `mesh`, by cluster id: the states of
    /// endpoints already known are kept, new ones start idle, and those no cluster of
    /// `mesh` has any more are forgotten (requests still in flight keep theirs alive).
    pub(crate) fn for_mesh(&self, mesh: &CompiledMesh) -> Vec<ClusterEndpoints> {
        let mut known = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next: HashMap<Arc<str>, Arc<EndpointState>> = HashMap::with_capacity(known.len());
        let tables = mesh
            .clusters()
            .iter()
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| {
                        if let Some(s) = next.get(&e.id) {
                            return s.clone();
                        }
                        let s = known
                            .remove(&e.id)
                            .unwrap_or_else(|| Arc::new(EndpointState::new(e.id.clone())));
                        next.insert(e.id.clone(), s.clone());
                        s
                    })
                    .collect()
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
            .or_insert_with(|| Arc::new(EndpointState::new(id.into())));
        state.used.store(now, Ordering::Relaxed);
        state.clone()
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
}
