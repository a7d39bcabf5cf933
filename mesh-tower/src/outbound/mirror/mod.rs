//! Mirroring: copies of requests to the rule's `mirror`/`mirrors`, fire and forget.
//!
//! As Envoy's request mirror policies: each mirror gets its share of requests; the copy
//! goes to the mirror's destination (resolved from the caller's namespace) with
//! `-shadow` appended to its authority, its response is read and dropped, and the
//! original request never waits for it. A copy is bounded by the route timeout (30 s
//! without one) and by a process-wide number of copies in flight: beyond it copies are
//! dropped rather than queued. Copies go through `dispatch` (the balancer in front of the
//! transport), not through the retry and timeout layers.
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use http::{Request, Response};
//! use mesh_tower::outbound::{MirrorLayer, RouteLayer, Routed};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backend}\nspec:\n  hosts: [api.example.com, shadow.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  http:\n  - mirror: {host: shadow.example.com}\n    route: [{destination: {host: api.example.com}}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! let copies = Arc::new(AtomicUsize::new(0));
//! let seen = copies.clone();
//! let dispatch = tower::service_fn(move |r: Routed| {
//!     assert_eq!(r.request.headers()["host"], "api.example.com-shadow");
//!     seen.fetch_add(1, Ordering::SeqCst);
//!     async { Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::empty())) }
//! });
//! let upstream = tower::service_fn(|_: Routed| async { Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::empty())) });
//! let service = ServiceBuilder::new()
//!     .layer(RouteLayer::new(mesh))
//!     .layer(MirrorLayer::new(dispatch))
//!     .service(upstream);
//! let req = Request::get("http://api.example.com/").body(ReqBody::empty())?;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! rt.block_on(async {
//!     service.oneshot(req).await?;
//!     tokio::task::yield_now().await;
//!     Ok::<_, mesh_tower::BoxError>(())
//! })?;
//! assert_eq!(copies.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```

mod service;

pub use service::{
    DEFAULT_MAX_MIRRORS_IN_FLIGHT, MIRROR_TIMEOUT_WITHOUT_ROUTE_TIMEOUT, Mirror, MirrorLayer,
    shadow_authority,
};
