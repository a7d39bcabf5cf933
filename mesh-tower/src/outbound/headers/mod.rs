//! Rewrites and header operations: the rule's `rewrite` (uri prefix, `uriRegexRewrite`,
//! authority) and the `headers` of the rule and of the destination drawn, applied as
//! Istio has Envoy apply them.
//!
//! For a single destination Istio merges the destination's operations into the rule's
//! (one list: every removal first, then the rule's sets and adds, then the
//! destination's — the destination's win). For a weighted split the destination's are
//! the weighted cluster's own list, applied before the route's (the rule's win). A `set`
//! or `add` of `host`/`:authority` rewrites the authority.
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use http::{Request, Response};
//! use mesh_tower::outbound::{HeadersLayer, RouteLayer, Routed};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backend}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  http:\n  - match: [{uri: {prefix: /v1/}}]\n    rewrite: {uri: /v2/}\n    headers: {request: {set: {x-api: v2}}}\n    route: [{destination: {host: api.example.com}}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! // Answers with what it received.
//! let upstream = tower::service_fn(|r: Routed| async move {
//!     let seen = format!("{} {}", r.request.uri().path(), r.request.headers()["x-api"].to_str()?);
//!     Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::full(seen)))
//! });
//! let service = ServiceBuilder::new().layer(RouteLayer::new(mesh)).layer(HeadersLayer).service(upstream);
//! let req = Request::get("http://api.example.com/v1/items").body(ReqBody::empty())?;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! let body = rt.block_on(async { http_body_util::BodyExt::collect(service.oneshot(req).await?.into_body()).await })?;
//! assert_eq!(body.to_bytes(), "/v2/items v2");
//! # Ok(()) }
//! ```

mod service;

pub use service::{Headers, HeadersFuture, HeadersLayer};
