//! CORS: the rule's `corsPolicy`, answered in-process as Envoy's CORS filter does.
//!
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is
//! answered here with the policy's `Access-Control-Allow-*` headers; one from another
//! origin is answered with no CORS header when `unmatchedPreflights: IGNORE`, else
//! forwarded. An actual request from an allowed origin is forwarded and its response gets
//! `Access-Control-Allow-Origin` (and `-Expose-Headers`, `-Allow-Credentials`).
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use http::{Request, Response};
//! use mesh_tower::outbound::{CorsLayer, RouteLayer, Routed};
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: backend}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  http:\n  - corsPolicy: {allowOrigins: [{exact: 'https://app.example.com'}], allowMethods: [GET, POST]}\n    route: [{destination: {host: api.example.com}}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! let upstream = tower::service_fn(|_: Routed| async { Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::full("from upstream"))) });
//! let service = ServiceBuilder::new().layer(RouteLayer::new(mesh)).layer(CorsLayer).service(upstream);
//! let preflight = Request::options("http://api.example.com/items")
//!     .header("origin", "https://app.example.com")
//!     .header("access-control-request-method", "POST")
//!     .body(ReqBody::empty())?;
//! let resp = tokio::runtime::Builder::new_current_thread().build()?.block_on(service.oneshot(preflight))?;
//! assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
//! assert_eq!(resp.headers()["access-control-allow-methods"], "GET,POST");
//! # Ok(()) }
//! ```

mod service;

pub use service::{Cors, CorsFuture, CorsLayer};
