//! The `Mesh` handle: a configuration shared by the workloads of a process, and the
//! outbound client of each.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response};
use mesh_config::Snapshot;
use mesh_config::model::Labels;
use mesh_core::CompiledMesh;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::balance::{Balance, BalanceLayer};
use crate::cors::{Cors, CorsLayer};
use crate::fault::{Fault, FaultLayer};
use crate::headers::{HeadersLayer, HeadersService};
use crate::mirror::{DEFAULT_MAX_MIRRORS_IN_FLIGHT, Mirror, MirrorLayer};
use crate::retry::{Retry, RetryLayer};
use crate::route::{RouteLayer, RouteService};
use crate::telemetry::{Telemetry, TelemetryLayer};
use crate::timeout::{Timeout, TimeoutLayer};
use crate::upstream::UpstreamService;
use crate::{BoxError, BoxFuture, ReqBody, ResBody, UnsupportedScheme};

/// A workload: one instance of a service, with the identity and labels Istio gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Name (`reviews-v2`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels (`app`, `version`, ...): VirtualService `sourceLabels` match on them.
    pub labels: Labels,
    /// Service account: the workload's identity.
    pub service_account: String,
}

impl Workload {
    /// A workload `name` in `namespace`, without labels, with the `default` account.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Workload {
            name: name.into(),
            namespace: namespace.into(),
            labels: Labels::new(),
            service_account: "default".into(),
        }
    }

    /// Sets its labels.
    pub fn labels<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.labels = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets its service account.
    pub fn service_account(mut self, sa: impl Into<String>) -> Self {
        self.service_account = sa.into();
        self
    }
}

struct Inner {
    current: ArcSwap<CompiledMesh>,
    upstream: UpstreamService,
    /// Mirror copies in flight, for the whole process.
    mirror_slots: Arc<Semaphore>,
}

/// The configuration of a process: the current compiled mesh, swapped atomically, and
/// the connection pools every workload of the process shares.
#[derive(Clone)]
pub struct MeshConfig {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("version", &self.current().version())
            .finish()
    }
}

impl MeshConfig {
    /// Compiles `snapshot` (once for the whole process).
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        MeshConfig {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(CompiledMesh::compile(snapshot)),
                upstream: UpstreamService::new(),
                mirror_slots: Arc::new(Semaphore::new(DEFAULT_MAX_MIRRORS_IN_FLIGHT)),
            }),
        }
    }

    /// Compiles `snapshot` and swaps it in: requests that start afterwards use it, those
    /// in flight finish on the configuration they started with. No lock is taken on the
    /// request path.
    pub fn update(&self, snapshot: &Snapshot) {
        self.inner
            .current
            .store(Arc::new(CompiledMesh::compile(snapshot)));
    }

    /// The current compiled configuration.
    pub fn current(&self) -> Arc<CompiledMesh> {
        self.inner.current.load_full()
    }

    /// The handle of one workload of the process.
    pub fn workload(&self, workload: Workload) -> Mesh {
        Mesh {
            config: self.clone(),
            workload: Arc::new(workload),
        }
    }
}

/// One workload's view of the mesh.
#[derive(Clone, Debug)]
pub struct Mesh {
    config: MeshConfig,
    workload: Arc<Workload>,
}

/// The outbound stack over upstream dispatch `U`, outermost first.
pub type OutboundStack<U = UpstreamService> = Telemetry<
    RouteService<Cors<Fault<HeadersService<Mirror<Timeout<Retry<Balance<U>>>, Balance<U>>>>>>,
>;

impl Mesh {
    /// The workload.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The shared configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// Swaps in a new configuration for every workload of the process.
    pub fn update(&self, snapshot: &Snapshot) {
        self.config.update(snapshot);
    }

    /// The outbound client: a `Clone` tower `Service<http::Request<B>>` that routes,
    /// balances, retries, times out, injects faults and mirrors as the configuration
    /// says. Cheap to call repeatedly (it shares the process's pools).
    pub fn client(&self) -> MeshClient {
        self.client_over(self.config.inner.upstream.clone())
    }

    /// The outbound client over another upstream dispatch than the process's connection
    /// pools (a stub in tests and benchmarks, or a custom transport).
    pub fn client_over<U: crate::MeshService>(&self, upstream: U) -> MeshClient<U> {
        let dispatch = BalanceLayer::new(self.workload.clone()).layer(upstream);
        let stack = TelemetryLayer::new().layer(
            RouteLayer::new(self.config.clone(), self.workload.clone()).layer(
                CorsLayer.layer(
                    FaultLayer.layer(
                        HeadersLayer.layer(
                            MirrorLayer::with_slots(
                                dispatch.clone(),
                                self.workload.clone(),
                                self.config.inner.mirror_slots.clone(),
                            )
                            .layer(TimeoutLayer.layer(RetryLayer.layer(dispatch))),
                        ),
                    ),
                ),
            ),
        );
        MeshClient {
            stack,
            buffer_limit: crate::body::DEFAULT_BUFFER_LIMIT,
        }
    }
}

/// The outbound client of a workload (see [`Mesh::client`]).
#[derive(Clone)]
pub struct MeshClient<U = UpstreamService> {
    stack: OutboundStack<U>,
    buffer_limit: usize,
}

impl<U> std::fmt::Debug for MeshClient<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient").finish_non_exhaustive()
    }
}

impl<U> MeshClient<U> {
    /// Sets how much of a request body is kept for retries and mirrors (64 KiB by
    /// default); longer bodies are sent once, never retried.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }
}

impl<B, U> Service<Request<B>> for MeshClient<U>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    U: crate::MeshService,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(scheme) = req.uri().scheme()
            && *scheme != Scheme::HTTP
        {
            let e = UnsupportedScheme {
                scheme: scheme.as_str().into(),
            };
            return Box::pin(async move { Err(e.into()) });
        }
        // The request goes out at once; its body streams (see `crate::body`).
        let (parts, body) = req.into_parts();
        let body = ReqBody::streaming(body, self.buffer_limit);
        Box::pin(self.stack.call(Request::from_parts(parts, body)))
    }
}
