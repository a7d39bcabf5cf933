//! Routing: the first stage of the outbound stack.
//!
//! [`RouteLayer`] asks the workload's view of the configuration in force where the
//! request goes — VirtualService, rule, weighted destination, cluster — and hands the
//! request down with its [`Route`](super::Route) (a [`Routed`](super::Routed)).
//! Redirects and direct responses are answered here; so are requests no rule matches
//! (404, as Envoy does). The request keeps the configuration it started with: a
//! configuration swapped in mid-request does not affect it.
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use http::{Request, Response};
//! use mesh_tower::outbound::{RouteLayer, Routed};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{Layer, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: old}\nspec:\n  hosts: [old.example.com]\n  http:\n  - redirect: {authority: new.example.com}\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! // Whatever is below the route stage gets the request with its route.
//! let below = tower::service_fn(|r: Routed| async move {
//!     Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::full(format!("{:?}", r.route.cluster().map(|c| c.key.to_string())))))
//! });
//! let service = RouteLayer::new(mesh).layer(below);
//! let req = Request::get("http://old.example.com/x").body(ReqBody::empty())?;
//! let resp = tokio::runtime::Builder::new_current_thread().build()?.block_on(service.oneshot(req))?;
//! assert_eq!(resp.status(), 301);
//! assert_eq!(resp.headers()["location"], "http://new.example.com/x");
//! # Ok(()) }
//! ```

mod service;

pub use service::{RouteLayer, RouteService};
pub(crate) use service::{add_baggage, answer, failure, target_of};
