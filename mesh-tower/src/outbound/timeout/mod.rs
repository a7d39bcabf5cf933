//! The route timeout: Envoy's, which starts once the whole request has been received and
//! covers the response to its last byte.
//!
//! When the rule sets a `timeout` and it expires before the response headers, the caller
//! gets Envoy's 504 `upstream request timeout`; when it expires while the response body
//! is being received, the body fails with [`BodyTimeout`](crate::body::BodyTimeout) (where
//! Envoy resets the stream). An answer that comes before the request body has ended
//! (an early response) starts the timer for its body at once. Without a timeout (Istio's
//! default) the request is not touched.
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use std::time::Duration;
//! use http::{Request, Response};
//! use mesh_tower::outbound::{RouteLayer, Routed, TimeoutLayer};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backend}\nspec:\n  hosts: [slow.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: slow}\nspec:\n  hosts: [slow.example.com]\n  http:\n  - timeout: 50ms\n    route: [{destination: {host: slow.example.com}}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! let upstream = tower::service_fn(|_: Routed| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::empty()))
//! });
//! let service = ServiceBuilder::new().layer(RouteLayer::new(mesh)).layer(TimeoutLayer).service(upstream);
//! let req = Request::get("http://slow.example.com/").body(ReqBody::empty())?;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! let resp = rt.block_on(service.oneshot(req))?;
//! assert_eq!(resp.status(), 504);
//! # Ok(()) }
//! ```

mod service;

pub use service::{Timeout, TimeoutFuture, TimeoutLayer};
