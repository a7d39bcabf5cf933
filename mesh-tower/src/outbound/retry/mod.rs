//! Retries: the rule's `retries` (or the mesh's default), as Envoy's router
//! retries.
//!
//! An attempt whose outcome they name (`retryOn` conditions, retriable status
//! codes, connect failures, resets, per-try timeouts) is tried again after Envoy's
//! jittered exponential backoff, up to `attempts` retries; endpoints already tried are
//! avoided when they say so (Istio's default): the balancer below notes in each response
//! body which endpoint answered, so keep [`BalanceLayer`](super::BalanceLayer) under
//! this layer with nothing between them that replaces the response body. The request body is kept for replay
//! up to its bound ([`crate::body`]): a body that outgrew it is sent once, never retried.
//! An attempt a retry replaces is reset, as Envoy resets it. The first attempt's future is
//! not boxed; it costs a copy of the request's head (for a retry that may come), and,
//! when the route has a per-try timeout, a boxed timer and — to avoid previous hosts
//! after a timeout — a shared slot in which the balancer notes the endpoint it picked.
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use http::{Request, Response, StatusCode};
//! use mesh_tower::outbound::{RetryLayer, RouteLayer, Routed};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backend}\nspec:\n  hosts: [flaky.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: flaky}\nspec:\n  hosts: [flaky.example.com]\n  http:\n  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: flaky.example.com}}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! // Fails twice, then answers.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let seen = calls.clone();
//! let upstream = tower::service_fn(move |_: Routed| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let mut resp = Response::new(ResBody::empty());
//!         if n < 2 { *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE; }
//!         Ok::<_, mesh_tower::BoxError>(resp)
//!     }
//! });
//! let service = ServiceBuilder::new().layer(RouteLayer::new(mesh)).layer(RetryLayer).service(upstream);
//! let req = Request::get("http://flaky.example.com/").body(ReqBody::empty())?;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! let resp = rt.block_on(service.oneshot(req))?;
//! assert_eq!(resp.status(), 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(()) }
//! ```

mod service;

pub use service::{Retry, RetryFuture, RetryLayer};
