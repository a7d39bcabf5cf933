//! Outlier detection at run time: each cluster's detector, kept across configurations.
//!
//! The decisions are mesh-core's ([`mesh_core::outlier`]); this keeps their state where
//! requests reach it. A cluster with an `outlierDetection` has an [`OutlierState`] in its
//! [`ClusterState`](crate::state::ClusterState) (by Envoy cluster name, so it outlives a
//! reload) and, per configuration, an [`OutlierTable`]: its endpoints' counters by
//! index, the balancer over the endpoints not ejected, and what the balancer reads to
//! choose between the two — without a lock.
//!
//! Per request, for such a cluster only: the table is loaded (one atomic reference), the
//! balancer reads how many endpoints are ejected (one atomic load; the clock only while
//! some are, to see whether one is due back), and the attempt's outcome updates its
//! endpoint's counters (a few relaxed atomics). The lock is taken when a count reaches
//! its threshold, when an ejected endpoint is due back, and once per configuration to
//! carry the state over: an endpoint that stays keeps its counts and ejection (Envoy
//! keeps them per host object); one that leaves forgets them, and starts afresh if it
//! comes back.
//!
//! Sweeps run lazily on Envoy's interval grid: an ejected endpoint returns at the first
//! sweep after its ejection time, taken by the first request (or admin view) after that
//! instant. Ejections and returns are logged at `info` (Envoy's outlier event log).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use mesh_core::balance::{Balancer, LbAlgorithm};
use mesh_core::cluster::{Cluster, Endpoint};
use mesh_core::outlier::{
    Detections, EjectionType, Ejections, HostCounters, HostEjection, Outcome, OutlierSettings,
    Verdict,
};

use crate::state::ClusterState;

/// Time on the process's monotonic clock (since its first reading).
pub(crate) fn now() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// No ejected endpoint is due back.
const NEVER: u64 = u64::MAX;

/// One endpoint of a cluster as its detector sees it.
#[derive(Debug)]
pub(crate) struct HostMonitor {
    id: Arc<str>,
    pub(crate) counters: HostCounters,
}

/// A cluster's outlier detection for one configuration (see the module documentation).
#[derive(Debug)]
pub(crate) struct OutlierTable {
    /// Envoy's name of the cluster.
    name: Arc<str>,
    /// The cluster's state, whose detector decides (reached only on detections).
    cluster: Weak<ClusterState>,
    /// The endpoints it was made for (their identity tells configurations apart).
    endpoints: Arc<[Endpoint]>,
    /// The version of the configuration.
    version: u64,
    pub(crate) settings: OutlierSettings,
    lb: LbAlgorithm,
    /// By endpoint index.
    hosts: Box<[Arc<HostMonitor>]>,
    /// Endpoints ejected now.
    active: AtomicU32,
    /// The cluster is in panic: its own balancer picks among every endpoint.
    panic: AtomicBool,
    /// When the next ejected endpoint is due back, in nanoseconds on [`now`]'s clock.
    next_return: AtomicU64,
    /// The balancer over the endpoints not ejected, while some are.
    healthy: ArcSwapOption<Balancer>,
}

impl OutlierTable {
    /// The balancer to pick with: `None` for the cluster's own (nothing ejected, or the
    /// cluster in panic), else the one over the endpoints not ejected (empty when every
    /// endpoint is: no healthy upstream). Runs the sweep when an endpoint is due back.
    pub(crate) fn healthy(&self, state: &OutlierState) -> Option<Arc<Balancer>> {
        if self.active.load(Ordering::Relaxed) == 0 {
            return None;
        }
        if as_nanos(now()) >= self.next_return.load(Ordering::Relaxed) {
            state.sweep(self);
            if self.active.load(Ordering::Relaxed) == 0 {
                return None;
            }
        }
        if self.panic.load(Ordering::Relaxed) {
            return None;
        }
        self.healthy.load_full()
    }

    /// The counters of endpoint `i`.
    pub(crate) fn host(&self, i: usize) -> Option<&Arc<HostMonitor>> {
        self.hosts.get(i)
    }

    /// True when the table was made for `c`'s endpoints.
    fn made_for(&self, c: &Cluster) -> bool {
        Arc::ptr_eq(&self.endpoints, &c.endpoints)
    }

    /// True when `c`'s endpoints are the table's, in the same order.
    fn same_endpoints(&self, c: &Cluster) -> bool {
        self.endpoints.len() == c.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(c.endpoints.iter())
                .all(|(a, b)| a.id == b.id)
    }

    /// Makes what requests read agree with `e`.
    fn publish(&self, e: &Ejections) {
        let active = e.active();
        if active > 0 {
            let weights: Vec<u32> = self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| if e.is_ejected(i) { 0 } else { ep.weight })
                .collect();
            let ids: Vec<&str> = self.endpoints.iter().map(|ep| &*ep.id).collect();
            self.healthy
                .store(Some(Arc::new(Balancer::new(&self.lb, &ids, &weights))));
        } else {
            self.healthy.store(None);
        }
        let next = (0..e.len())
            .filter_map(|i| e.returns_at(&self.settings, i))
            .min()
            .map_or(NEVER, as_nanos);
        self.next_return.store(next, Ordering::Relaxed);
        self.panic
            .store(e.in_panic(&self.settings), Ordering::Relaxed);
        self.active.store(active, Ordering::Relaxed);
    }
}

/// What the detector keeps of a cluster across configurations.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    current: ArcSwapOption<OutlierTable>,
    /// The decisions, indexed like `current`'s endpoints.
    decisions: Mutex<Option<Ejections>>,
}

impl OutlierState {
    fn lock(&self) -> MutexGuard<'_, Option<Ejections>> {
        self.decisions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The table of cluster `c` (with `settings`) of configuration `version`: the current
    /// one when made for it, a new one when `c` is of a newer configuration (the state
    /// carried over), the current one again for an older configuration whose endpoints
    /// are the same; `None` for an older configuration whose endpoints differ (its
    /// requests in flight are not counted).
    pub(crate) fn table_for(
        cluster: &Arc<ClusterState>,
        c: &Cluster,
        settings: &OutlierSettings,
        version: u64,
    ) -> Option<Arc<OutlierTable>> {
        let state = &cluster.outlier;
        if let Some(t) = state.current.load_full() {
            if t.made_for(c) {
                return Some(t);
            }
            if version <= t.version {
                return t.same_endpoints(c).then_some(t);
            }
        }
        state.carry_over(cluster, c, settings, version)
    }

    /// Makes the table of `c`, keeping what the previous one knew of the endpoints that
    /// stay.
    fn carry_over(
        &self,
        cluster: &Arc<ClusterState>,
        c: &Cluster,
        settings: &OutlierSettings,
        version: u64,
    ) -> Option<Arc<OutlierTable>> {
        let mut decisions = self.lock();
        let previous = self.current.load_full();
        if let Some(t) = &previous {
            // Another request did it meanwhile, or this one is of an older configuration.
            if t.made_for(c) || version <= t.version {
                return (t.made_for(c) || t.same_endpoints(c)).then(|| t.clone());
            }
        }
        let known: HashMap<&str, usize> = previous
            .as_ref()
            .map(|t| {
                t.hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (&*h.id, i))
                    .collect()
            })
            .unwrap_or_default();
        let old_index = |i: usize| c.endpoints.get(i).and_then(|e| known.get(&*e.id).copied());
        let hosts: Box<[Arc<HostMonitor>]> = c
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                old_index(i)
                    .and_then(|o| previous.as_ref()?.hosts.get(o).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(HostMonitor {
                            id: e.id.clone(),
                            counters: HostCounters::default(),
                        })
                    })
            })
            .collect();
        let ejections = match decisions.as_ref() {
            Some(e) => e.remap(c.endpoints.len(), old_index),
            None => Ejections::new(c.endpoints.len(), now()),
        };
        let table = Arc::new(OutlierTable {
            name: c.name.clone(),
            cluster: Arc::downgrade(cluster),
            endpoints: c.endpoints.clone(),
            version,
            settings: settings.clone(),
            lb: c.lb.clone(),
            hosts,
            active: AtomicU32::new(0),
            panic: AtomicBool::new(false),
            next_return: AtomicU64::new(NEVER),
            healthy: ArcSwapOption::empty(),
        });
        table.publish(&ejections);
        self.current.store(Some(table.clone()));
        *decisions = Some(ejections);
        drop(decisions);
        Some(table)
    }

    /// Runs the sweeps due (an ejected endpoint of `table` is due back). Skipped when
    /// another thread holds the lock: it will see the same time has come.
    fn sweep(&self, table: &OutlierTable) {
        let mut decisions = match self.decisions.try_lock() {
            Ok(d) => d,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let Some(current) = self.current.load_full() else {
            return;
        };
        let Some(e) = decisions.as_mut() else {
            return;
        };
        if !std::ptr::eq(table, &*current) {
            return;
        }
        let s = &current.settings;
        let returned = e.tick(s, now(), &mut |i| returned(&current, i));
        if returned {
            current.publish(e);
        }
    }

    /// Endpoint `i` of `table` completed `detections`: the detector decides (see
    /// [`Ejections::on_detected`]).
    fn detected(&self, table: &OutlierTable, i: usize, detections: Detections) {
        let mut decisions = self.lock();
        let Some(current) = self.current.load_full() else {
            return;
        };
        let Some(e) = decisions.as_mut() else {
            return;
        };
        let Some(host) = table.hosts.get(i) else {
            return;
        };
        // A request of an older configuration: its endpoint's index now.
        let index = if std::ptr::eq(table, &*current) {
            Some(i)
        } else {
            current.hosts.iter().position(|h| Arc::ptr_eq(h, host))
        };
        let Some(index) = index else {
            return;
        };
        let s = &current.settings;
        let before = e.active();
        let mut changed = false;
        for kind in detections {
            let verdict = e.on_detected(s, index, now(), &mut |r| {
                changed = true;
                returned(&current, r);
            });
            match verdict {
                Verdict::Ejected { until } => {
                    changed = true;
                    tracing::info!(
                        cluster = %current.name,
                        endpoint = %host.id,
                        kind = kind.as_str(),
                        ejections = e.host(index).map_or(0, |h| h.ejections),
                        ejected_for_ms = until.saturating_sub(now()).as_millis() as u64,
                        "outlier detection: endpoint ejected"
                    );
                    host.counters.reset(kind);
                }
                Verdict::Overflow => {
                    tracing::debug!(
                        cluster = %current.name,
                        endpoint = %host.id,
                        kind = kind.as_str(),
                        "outlier detection: not ejected (maxEjectionPercent reached)"
                    );
                    host.counters.reset(kind);
                }
                Verdict::AlreadyEjected | Verdict::Unknown => {}
            }
        }
        if changed || e.active() != before {
            current.publish(e);
        }
    }

    /// What the detector knows now (the sweeps due run first), for the admin view: per
    /// endpoint of the current table, and the cluster's counters.
    pub(crate) fn view(&self) -> Option<(Arc<OutlierTable>, Ejections)> {
        let mut decisions = self.lock();
        let current = self.current.load_full()?;
        let e = decisions.as_mut()?;
        let s = &current.settings;
        if e.tick(s, now(), &mut |i| returned(&current, i)) {
            current.publish(e);
        }
        Some((current, e.clone()))
    }
}

/// Endpoint `i` of `table` is back from an ejection: its counts start again.
fn returned(table: &OutlierTable, i: usize) {
    if let Some(h) = table.hosts.get(i) {
        h.counters.reset_all();
        tracing::info!(cluster = %table.name, endpoint = %h.id, "outlier detection: endpoint returned");
    }
}

/// An attempt to an endpoint of a cluster with outlier detection, whose outcome is
/// reported when it ends.
#[derive(Debug)]
pub(crate) struct OutlierReport {
    table: Arc<OutlierTable>,
    index: usize,
    /// A gRPC request: a `grpc-status` in the response headers counts.
    pub(crate) grpc: bool,
    /// When the attempt started and the timeout that cuts it (the per-try timeout, or the
    /// route's), when there is one.
    cut: Option<(Instant, Duration)>,
}

/// How early an abandoned attempt may look to its timeout: the timer was started just
/// before the attempt.
const TIMER_SLACK: Duration = Duration::from_millis(1);

impl OutlierReport {
    /// The report of an attempt to endpoint `index` of `table`, cut by `timeout` if any.
    pub(crate) fn new(
        table: Arc<OutlierTable>,
        index: usize,
        grpc: bool,
        timeout: Option<Duration>,
    ) -> Self {
        OutlierReport {
            table,
            index,
            grpc,
            cut: timeout.map(|t| (Instant::now(), t)),
        }
    }

    /// Counts the attempt's `outcome`.
    pub(crate) fn record(self, outcome: Outcome) {
        let Some(host) = self.table.host(self.index) else {
            return;
        };
        let detections = host.counters.record(&self.table.settings, outcome);
        if !detections.is_empty()
            && let Some(cluster) = self.table.cluster.upgrade()
        {
            cluster
                .outlier
                .detected(&self.table, self.index, detections);
        }
    }

    /// The attempt was dropped before it ended: a timeout cut it when it lasted as long
    /// as the timeout that governs it (Envoy's local-origin timeout); otherwise the
    /// caller gave up, which Envoy does not count either.
    pub(crate) fn abandoned(self) {
        if let Some((started, limit)) = self.cut
            && started.elapsed() + TIMER_SLACK >= limit
        {
            self.record(Outcome::Timeout);
        }
    }
}

/// What the admin view shows of one endpoint of a cluster with outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostOutlier {
    pub(crate) ejection: HostEjection,
    /// When it returns, from now.
    pub(crate) returns_in: Option<Duration>,
    pub(crate) successes: u64,
    pub(crate) errors: u64,
    pub(crate) consecutive_5xx: u32,
    pub(crate) consecutive_gateway: u32,
    pub(crate) consecutive_local_origin: u32,
}

/// The admin view of endpoint `i` of `table`, with the decisions `e`.
pub(crate) fn host_view(table: &OutlierTable, e: &Ejections, i: usize) -> Option<HostOutlier> {
    let h = table.hosts.get(i)?;
    let at = now();
    Some(HostOutlier {
        ejection: e.host(i).copied().unwrap_or_default(),
        returns_in: e
            .returns_at(&table.settings, i)
            .map(|r| r.saturating_sub(at)),
        successes: h.counters.successes(),
        errors: h.counters.errors(),
        consecutive_5xx: h.counters.consecutive(EjectionType::Consecutive5xx),
        consecutive_gateway: h
            .counters
            .consecutive(EjectionType::ConsecutiveGatewayFailure),
        consecutive_local_origin: h
            .counters
            .consecutive(EjectionType::ConsecutiveLocalOriginFailure),
    })
}
