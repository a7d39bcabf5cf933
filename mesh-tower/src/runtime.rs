//! The runtime of a process: the configuration in force, compiled once and swapped
//! atomically, each workload's view of it, and the state that outlives it.
//!
//! [`MeshRuntime::update`] compiles a snapshot once for the whole process
//! ([`CompiledMesh`]), picks what applies to each workload of the process
//! ([`WorkloadView`]: the hosts its namespace sees, the Gateways that select it),
//! hands the endpoints' state over ([`crate::state`]), and swaps the result in with one
//! atomic pointer store. Requests read the generation in force without a lock and keep
//! the one they started with; nothing is compiled on the request path.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::Service;

use arc_swap::ArcSwap;
use mesh_config::Snapshot;
use mesh_core::{CompiledMesh, Role, Workload, WorkloadView};
use tokio::sync::{Semaphore, watch};

use crate::BoxError;
use crate::identity::{Identities, SpiffeId, WorkloadIdentity};
use crate::inbound::InboundLayer;
use crate::inbound::ext_authz::{AuthzProvider, CheckRequest, CheckResponse};
use crate::outbound::mirror::DEFAULT_MAX_MIRRORS_IN_FLIGHT;
use crate::outbound::{MeshClient, Stack};
use crate::state::{ClusterEndpoints, ClusterState, EndpointStates};
use crate::transport::pool::Pools;

/// One configuration in force: the compiled mesh, every workload's view of it, and the
/// endpoints' state by cluster.
#[derive(Debug)]
pub(crate) struct Generation {
    /// The configuration compiled.
    pub(crate) snapshot: Snapshot,
    pub(crate) mesh: Arc<CompiledMesh>,
    /// By workload slot.
    pub(crate) views: Vec<Arc<WorkloadView>>,
    /// By cluster id.
    pub(crate) endpoints: Vec<ClusterEndpoints>,
    /// By cluster id.
    pub(crate) clusters: Vec<Arc<ClusterState>>,
    /// Every endpoint's state (passthrough destinations are looked up here).
    pub(crate) states: Arc<EndpointStates>,
}

impl Generation {
    /// The view of the workload in `slot`.
    pub(crate) fn view(&self, slot: u32) -> Option<&Arc<WorkloadView>> {
        self.views.get(slot as usize)
    }
}

/// A workload of the process, what it is to the mesh, and its identity.
type Registered = (Arc<Workload>, Role, Option<Arc<WorkloadIdentity>>);

/// What updates and registrations share.
#[derive(Default)]
struct Registry {
    /// The workloads of the process, by slot.
    workloads: Vec<Registered>,
    /// The ticket of the update in force.
    ticket: u64,
    /// Where workloads registered from now on get their certificates.
    identities: Option<Identities>,
}

impl Registry {
    /// Every workload's view of `mesh`, by slot.
    fn views(&self, mesh: &Arc<CompiledMesh>) -> Vec<Arc<WorkloadView>> {
        self.workloads
            .iter()
            .map(|(w, role, _)| Arc::new(WorkloadView::compile(mesh.clone(), w.clone(), *role)))
            .collect()
    }
}

struct Inner {
    current: ArcSwap<Generation>,
    /// Held while a generation is swapped in, so that an update and a new workload never
    /// lose one another.
    registry: Mutex<Registry>,
    /// Tickets of updates, in the order they were called.
    tickets: std::sync::atomic::AtomicU64,
    states: Arc<EndpointStates>,
    /// Mirror copies in flight, for the whole process.
    pub(crate) mirror_slots: Arc<Semaphore>,
    /// The version in force, for those who wait for changes.
    version: watch::Sender<u64>,
    /// JWT keys, by source (RequestAuthentication).
    jwks: crate::inbound::jwt::JwksCache,
    /// CUSTOM authorization providers, by name.
    providers: std::sync::RwLock<std::collections::HashMap<String, AuthzProvider>>,
    /// Local rate limit buckets, by stable key (they outlive configurations).
    local_rate_limits: crate::ratelimit::local::LocalRateLimiters,
    /// The global rate limiter the `ratelimit` filters ask, when one is set.
    rate_limit_service: arc_swap::ArcSwapOption<crate::ratelimit::global::GlobalRateLimiter>,
    /// Set once a request met a global rate limit filter with no limiter (logged once).
    rate_limit_service_missing: std::sync::atomic::AtomicBool,
    /// Istio's standard metrics of the process's requests.
    metrics: Arc<crate::telemetry::Metrics>,
    /// Where access log entries go (standard output when unset).
    access_log: arc_swap::ArcSwapOption<crate::telemetry::AccessLogSink>,
    spans: arc_swap::ArcSwapOption<crate::telemetry::otlp::SpanExporter>,
    /// Whether `spans` holds an exporter: read per request, where loading the guard would
    /// cost a hundred instructions for the one request in a hundred that is sampled.
    tracing: std::sync::atomic::AtomicBool,
}

/// The mesh of a process: the configuration in force, shared by the workloads of the
/// process, swapped atomically (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct MeshRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MeshRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRuntime")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// How a [`MeshRuntime`] is built (see [`MeshRuntime::from_snapshot_with`]).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    worker_pools: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { worker_pools: 1 }
    }
}

impl RuntimeOptions {
    /// Connection pools per endpoint, one per worker thread, as Envoy keeps them (default
    /// 1: one pool per endpoint for the whole process).
    ///
    /// Envoy's workers each have their own pools (an Istio sidecar runs 2 workers by
    /// default); the circuit breakers' counters are shared by the workers, but a pool
    /// without any connection may always make one, so that its pending requests are
    /// never stranded. A cluster with `maxConnections: 1` may thus have a connection per
    /// worker, and callers served by different workers seldom wait for each other —
    /// the "leeway" Istio's circuit-breaking task shows. With `n` pools, each endpoint
    /// has `n` and a thread sends through pool `i % n`, `i` its worker index: the one
    /// given with [`set_worker_index`](crate::set_worker_index), or else threads are
    /// numbered in the order of their first request through a mesh (any thread, the
    /// main one too). An application running one current-thread runtime per core, each
    /// thread calling `set_worker_index`, gets Envoy's behaviour; on tokio's multi-thread
    /// runtime a task may move between threads, so a caller does not keep one pool.
    /// With one pool, the limits hold strictly for the whole process.
    pub fn worker_pools(mut self, n: usize) -> Self {
        self.worker_pools = n.max(1);
        self
    }
}

/// Compiles `snapshot`, its YAML trees dropped first ([`Snapshot::release_trees_but`]):
/// they are most of a loaded configuration's memory and compiling needs none of them but
/// the sources of PeerAuthentications (it names their lines), so the compiled mesh takes
/// their place rather than adding to them. The rest are dropped after.
fn compile(snapshot: &Snapshot) -> CompiledMesh {
    snapshot.release_trees_but(&[mesh_config::model::Kind::PeerAuthentication]);
    let mesh = CompiledMesh::compile(snapshot);
    snapshot.release_trees();
    mesh
}

impl MeshRuntime {
    /// Compiles `snapshot` (once for the whole process). A configuration's YAML trees are
    /// dropped when it is compiled, here and in every update (positions are read from
    /// the text again when a diagnostic needs one).
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self::from_snapshot_with(snapshot, RuntimeOptions::default())
    }

    /// Compiles `snapshot`, with `options`.
    pub fn from_snapshot_with(snapshot: &Snapshot, options: RuntimeOptions) -> Self {
        let mesh = Arc::new(compile(snapshot));
        let states = Arc::new(EndpointStates::with_worker_pools(options.worker_pools));
        let generation = Generation {
            snapshot: snapshot.clone(),
            endpoints: states.for_mesh(&mesh),
            clusters: states.clusters_for_mesh(&mesh),
            mesh,
            views: Vec::new(),
            states: states.clone(),
        };
        MeshRuntime {
            inner: Arc::new(Inner {
                version: watch::Sender::new(snapshot.version()),
                current: ArcSwap::from_pointee(generation),
                registry: Mutex::new(Registry::default()),
                tickets: std::sync::atomic::AtomicU64::new(0),
                states,
                mirror_slots: Arc::new(Semaphore::new(DEFAULT_MAX_MIRRORS_IN_FLIGHT)),
                jwks: Default::default(),
                providers: Default::default(),
                local_rate_limits: Default::default(),
                rate_limit_service: Default::default(),
                rate_limit_service_missing: Default::default(),
                metrics: Default::default(),
                access_log: Default::default(),
                spans: Default::default(),
                tracing: Default::default(),
            }),
        }
    }

    /// Compiles `snapshot` and swaps it in for every workload of the process, the
    /// ingress gateways included: requests that start afterwards use it, those in flight
    /// finish on the configuration they started with. The endpoints' load and
    /// connections carry over. No lock is taken on the request path; the compilation
    /// itself holds no lock either (only handing over the state and picking the
    /// workloads' views does). Of two updates racing, the one called last stays in force
    /// whatever the order they finish in.
    pub fn update(&self, snapshot: &Snapshot) {
        let ticket = self
            .inner
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let mesh = Arc::new(compile(snapshot));
        let mut registry = self.registry();
        // Of two updates racing, the one called last stays in force.
        if registry.ticket > ticket {
            return;
        }
        registry.ticket = ticket;
        let endpoints = self.inner.states.for_mesh(&mesh);
        let clusters = self.inner.states.clusters_for_mesh(&mesh);
        let views = registry.views(&mesh);
        self.inner.current.store(Arc::new(Generation {
            snapshot: snapshot.clone(),
            endpoints,
            clusters,
            mesh,
            views,
            states: self.inner.states.clone(),
        }));
        self.inner.version.send_replace(snapshot.version());
        drop(registry);
    }

    /// Applies `changes` to the WorkloadEntries of the configuration in force —
    /// workloads registering and going away — and gives back the configuration now in
    /// force (an error, and nothing changed, when the changed entries break a rule only a
    /// whole check reports: see [`Snapshot::with_workload_entries`]). Only the clusters
    /// of the services that select a changed entry are built
    /// again (under the same ids); route tables, policies and every other cluster are
    /// shared with the configuration in force, and the endpoints' load and connections
    /// carry over ([`Snapshot::with_workload_entries`],
    /// [`CompiledMesh::with_endpoints`]). Each changed entry must have been checked on
    /// its own. Should the change turn out not to be one of endpoints only, the
    /// configuration is compiled anew, as [`update`](Self::update) would.
    ///
    /// The change applies to the configuration in force when it is called: an
    /// [`update`](Self::update) called before it and still compiling replaces it when it
    /// finishes.
    pub fn update_workloads(
        &self,
        changes: &[mesh_config::registry::WorkloadChange],
    ) -> Result<Snapshot, String> {
        let registry = self.registry();
        let current = self.inner.current.load_full();
        let (snapshot, changed) = current.snapshot.with_workload_entries(changes)?;
        let Some((mesh, ids)) = current.mesh.with_endpoints(&snapshot, &changed) else {
            drop(registry);
            self.update(&snapshot);
            return Ok(snapshot);
        };
        for entry in changes.iter().filter_map(|c| c.entry.as_ref()) {
            entry.origin.trees.release();
        }
        let mesh = Arc::new(mesh);
        let mut endpoints = current.endpoints.clone();
        self.inner.states.for_clusters(&mesh, &ids, &mut endpoints);
        let views = registry.views(&mesh);
        self.inner.current.store(Arc::new(Generation {
            snapshot: snapshot.clone(),
            endpoints,
            clusters: current.clusters.clone(),
            mesh,
            views,
            states: self.inner.states.clone(),
        }));
        self.inner.version.send_replace(snapshot.version());
        drop(registry);
        Ok(snapshot)
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.current.load().snapshot.clone()
    }

    /// The compiled configuration in force.
    pub fn current(&self) -> Arc<CompiledMesh> {
        self.inner.current.load().mesh.clone()
    }

    /// The version of the snapshot in force.
    pub fn version(&self) -> u64 {
        self.inner.current.load().mesh.version()
    }

    /// A receiver of the version in force, which changes at every
    /// [`update`](Self::update).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// The handle of one (application) workload of the process. Its view of the
    /// configuration is compiled now and at every update; registering an equal workload
    /// again gives the same view.
    pub fn workload(&self, workload: Workload) -> Mesh {
        self.register(workload, Role::Sidecar)
    }

    /// Gives the workloads registered from now on an identity from `identities`: their
    /// SPIFFE ID in the mesh's trust domain, a certificate proving it, and mutual TLS
    /// with the workloads of the mesh (see [`identity`](crate::identity)). Workloads of a
    /// runtime without identities speak plaintext.
    pub fn set_identities(&self, identities: Identities) {
        self.registry().identities = Some(identities);
    }

    /// The workloads of the process (the ingress gateways included) with their
    /// identities, in the order they were registered.
    pub fn workloads(&self) -> Vec<(Arc<Workload>, Option<Arc<WorkloadIdentity>>)> {
        self.registry()
            .workloads
            .iter()
            .map(|(w, _, id)| (w.clone(), id.clone()))
            .collect()
    }

    /// The handle of a workload in `role` (see [`workload`](Self::workload)).
    pub(crate) fn register(&self, workload: Workload, role: Role) -> Mesh {
        let mut registry = self.registry();
        if let Some(slot) = registry
            .workloads
            .iter()
            .position(|(w, r, _)| **w == workload && *r == role)
        {
            let (workload, _, identity) = registry.workloads[slot].clone();
            return Mesh {
                runtime: self.clone(),
                workload,
                identity,
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
            };
        }
        let identity = registry.identities.as_ref().and_then(|ids| {
            let mesh = self.current();
            let td = &mesh.settings().trust_domain;
            let issued = SpiffeId::new(td, &workload.namespace, &workload.service_account)
                .and_then(|id| ids.identity(&id));
            match issued {
                Ok(identity) => Some(identity),
                Err(e) => {
                    tracing::error!(workload = %workload.name, namespace = %workload.namespace, error = %e, "the workload has no identity: it cannot speak mutual TLS");
                    None
                }
            }
        });
        let workload = Arc::new(workload);
        let workloads = &mut registry.workloads;
        let slot = u32::try_from(workloads.len()).unwrap_or(u32::MAX);
        workloads.push((workload.clone(), role, identity.clone()));
        self.inner.current.rcu(|g| {
            let mut views = g.views.clone();
            views.push(Arc::new(WorkloadView::compile(
                g.mesh.clone(),
                workload.clone(),
                role,
            )));
            Generation {
                snapshot: g.snapshot.clone(),
                mesh: g.mesh.clone(),
                views,
                endpoints: g.endpoints.clone(),
                clusters: g.clusters.clone(),
                states: g.states.clone(),
            }
        });
        drop(registry);
        Mesh {
            runtime: self.clone(),
            workload,
            identity,
            slot,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot of every cluster of the configuration in force, per endpoint: requests
    /// in flight, connections, outlier detection's state (Envoy's `/clusters`; see
    /// [`admin`](crate::admin)).
    pub fn clusters(&self) -> crate::admin::Clusters {
        crate::admin::Clusters::of(&self.generation())
    }

    /// The generation in force.
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.inner.current.load_full()
    }

    /// Registers `service` as the CUSTOM authorization provider `name` (the
    /// `provider.name` of CUSTOM AuthorizationPolicies) for every workload of the
    /// process, replacing one of that name (see [`ext_authz`](crate::inbound::ext_authz)).
    /// Until a provider is registered, requests its policies match are denied.
    pub fn register_authz_provider<S>(&self, name: impl Into<String>, service: S)
    where
        S: tower::Service<CheckRequest, Response = CheckResponse, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.inner
            .providers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), AuthzProvider::new(service));
    }

    /// The CUSTOM authorization provider `name`, if registered.
    pub(crate) fn authz_provider(&self, name: &str) -> Option<AuthzProvider> {
        self.inner
            .providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The local rate limit buckets of the process's workloads and gateways, with their
    /// counters (see [`ratelimit::local`](crate::ratelimit::local)).
    pub fn local_rate_limits(&self) -> &crate::ratelimit::local::LocalRateLimiters {
        &self.inner.local_rate_limits
    }

    /// Sets the global rate limiter that the workloads' and gateways' global rate limit
    /// filters (`envoy.filters.http.ratelimit`) ask — Envoy's rate-limit service, here
    /// counting in Redis directly (see [`ratelimit::global`](crate::ratelimit::global)) —
    /// or removes it. Without one, a request a global filter applies to is treated as
    /// if the service failed: let through, or refused with the filter's
    /// `status_on_error` under `failure_mode_deny`.
    pub fn set_rate_limit_service(
        &self,
        limiter: Option<crate::ratelimit::global::GlobalRateLimiter>,
    ) {
        self.inner.rate_limit_service.store(limiter.map(Arc::new));
    }

    /// The global rate limiter, when one is set.
    pub fn rate_limit_service(&self) -> Option<Arc<crate::ratelimit::global::GlobalRateLimiter>> {
        self.inner.rate_limit_service.load_full()
    }

    /// True the first time it is called (once per runtime): the warning that a global
    /// filter found no limiter is logged once.
    pub(crate) fn first_missing_rate_limit_service(&self) -> bool {
        !self
            .inner
            .rate_limit_service_missing
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Istio's standard metrics of the requests of the process's workloads and
    /// gateways (`/stats/prometheus`: [`Metrics::prometheus_text`]).
    ///
    /// [`Metrics::prometheus_text`]: crate::telemetry::Metrics::prometheus_text
    pub fn metrics(&self) -> &Arc<crate::telemetry::Metrics> {
        &self.inner.metrics
    }

    /// Sends the access log entries of the process's workloads and gateways to `sink`
    /// (one call per entry, without a newline); `None` restores the default, standard
    /// output through a writer thread. Which requests are logged is the Telemetry API's
    /// and the MeshConfig's choice (see [`crate::telemetry::access_log`]).
    pub fn set_access_log_sink(&self, sink: Option<crate::telemetry::AccessLogSink>) {
        self.inner.access_log.store(sink.map(Arc::new));
    }

    /// Where access log entries go now.
    /// Where the workloads' spans go: an OTLP exporter (see
    /// [`SpanExporter::start`](crate::telemetry::otlp::SpanExporter::start)), or `None`
    /// (the default) for no tracing at all — no spans, and trace context headers left as
    /// they are. The Telemetry API's tracing providers all stand for this exporter.
    pub fn set_span_exporter(&self, exporter: Option<crate::telemetry::otlp::SpanExporter>) {
        let on = exporter.is_some();
        self.inner.spans.store(exporter.map(Arc::new));
        self.inner
            .tracing
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the workloads trace (an exporter is set): their requests' trace context is
    /// read and written, and sampled spans are made.
    pub(crate) fn tracing(&self) -> bool {
        self.inner
            .tracing
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The span exporter, when tracing is on: a guard, so that reading it touches no
    /// reference count all requests share (the `Arc` is cloned for a sampled span only).
    pub(crate) fn span_exporter(
        &self,
    ) -> arc_swap::Guard<Option<Arc<crate::telemetry::otlp::SpanExporter>>> {
        self.inner.spans.load()
    }

    pub(crate) fn access_log_sink(&self) -> crate::telemetry::AccessLogSink {
        match &*self.inner.access_log.load() {
            Some(sink) => crate::telemetry::AccessLogSink::clone(sink),
            None => crate::telemetry::access_log::stdout_sink().clone(),
        }
    }

    pub(crate) fn jwks(&self) -> &crate::inbound::jwt::JwksCache {
        &self.inner.jwks
    }

    pub(crate) fn mirror_slots(&self) -> &Arc<Semaphore> {
        &self.inner.mirror_slots
    }
}

/// One workload's handle on the mesh: its outbound client, its view of the
/// configuration. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mesh {
    runtime: MeshRuntime,
    workload: Arc<Workload>,
    identity: Option<Arc<WorkloadIdentity>>,
    slot: u32,
}

impl Mesh {
    /// The workload.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The workload's identity, when its runtime has [`Identities`].
    pub fn identity(&self) -> Option<&Arc<WorkloadIdentity>> {
        self.identity.as_ref()
    }

    /// The runtime of the process.
    pub fn runtime(&self) -> &MeshRuntime {
        &self.runtime
    }

    /// Swaps in a new configuration for every workload of the process (see
    /// [`MeshRuntime::update`]).
    pub fn update(&self, snapshot: &Snapshot) {
        self.runtime.update(snapshot);
    }

    /// The workload's view of the configuration in force (a slot is in every generation
    /// built after it was given).
    pub fn view(&self) -> Option<Arc<WorkloadView>> {
        self.runtime.generation().view(self.slot).cloned()
    }

    /// Its slot in the runtime's generations.
    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }

    /// The outbound client: a `Clone` tower `Service<http::Request<B>>` that routes,
    /// balances, retries, times out, injects faults and mirrors as the configuration
    /// says. Cheap to call repeatedly (it shares the process's pools).
    pub fn client(&self) -> MeshClient {
        self.client_over(Pools)
    }

    /// The layer of the workload's inbound policies (authorization), around its
    /// application: see [`inbound`](crate::inbound).
    pub fn inbound(&self) -> InboundLayer {
        InboundLayer::new(self.clone())
    }

    /// Serves `app` on `listener` as the workload: plaintext or mutual TLS as its
    /// PeerAuthentication says (see [`inbound`](crate::inbound)). Runs until the listener
    /// fails; see [`serve_with_shutdown`](Self::serve_with_shutdown).
    ///
    /// This is the transport only: RequestAuthentication and AuthorizationPolicy are
    /// enforced by the [`inbound`](Self::inbound) layer, which `app` must be wrapped in
    /// (`ServiceBuilder::new().layer(mesh.inbound()).service(app)`); without it, every
    /// request the transport admits reaches the application.
    pub async fn serve<S, B>(&self, listener: TcpListener, app: S) -> std::io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(listener, app, std::future::pending())
            .await
    }

    /// [`serve`](Self::serve) until `shutdown` completes; then the connections in
    /// progress finish their requests.
    pub async fn serve_with_shutdown<S, B>(
        &self,
        listener: TcpListener,
        app: S,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        crate::inbound::serve::serve(self.clone(), listener, app, shutdown).await
    }

    /// The outbound client over another transport than the process's connection pools
    /// (a stub in tests and benchmarks, or a custom transport): `transport` receives each
    /// request with the endpoint the balancer chose.
    pub fn client_over<U>(&self, transport: U) -> MeshClient<U>
    where
        U: crate::outbound::Transport,
    {
        MeshClient::new(Stack::new(self, transport))
    }
}
