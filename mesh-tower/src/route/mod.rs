//! Routing: the first layer of the outbound stack.
//!
//! [`RouteLayer`] asks the current [`CompiledMesh`](mesh_core::CompiledMesh) where the
//! request goes — VirtualService, rule, weighted destination, cluster — and records the
//! answer as a [`Routed`] extension for the layers below. Redirects and direct responses
//! are answered here; so are requests no rule matches (404, as Envoy does). The request
//! keeps the configuration it started with: a configuration swapped in mid-request does
//! not affect it.
//!
//! ```
//! use mesh_tower::route::RouteLayer;
//! # fn f(config: mesh_tower::MeshConfig, workload: mesh_tower::Workload) {
//! let layer = RouteLayer::new(config, workload);
//! # }
//! ```

mod layer;
mod service;

pub use layer::RouteLayer;
pub use service::{RouteService, Routed};
