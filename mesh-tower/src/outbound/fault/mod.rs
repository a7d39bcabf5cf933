//! Fault injection: the rule's `fault`, as Envoy's fault filter applies it.
//!
//! Per request the delay and the abort are drawn independently, each with its share: a
//! delayed request waits before it goes on; an aborted one is answered with the HTTP
//! status (body `fault filter abort`) or, for a gRPC abort, with HTTP 200 and
//! `grpc-status`. A request neither delayed nor aborted costs one draw.
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use http::{Request, Response};
//! use mesh_tower::outbound::{FaultLayer, RouteLayer, Routed};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backend}\nspec:\n  hosts: [ratings.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings.example.com]\n  http:\n  - fault: {abort: {httpStatus: 555, percentage: {value: 100}}}\n    route: [{destination: {host: ratings.example.com}}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! let upstream = tower::service_fn(|_: Routed| async { Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::empty())) });
//! let service = ServiceBuilder::new().layer(RouteLayer::new(mesh)).layer(FaultLayer).service(upstream);
//! let req = Request::get("http://ratings.example.com/").body(ReqBody::empty())?;
//! let resp = tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(service.oneshot(req))?;
//! assert_eq!(resp.status(), 555);
//! # Ok(()) }
//! ```

mod service;

pub use service::{Fault, FaultFuture, FaultLayer};
