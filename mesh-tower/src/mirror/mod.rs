//! Mirroring: copies of requests sent elsewhere, fire and forget.
//!
//! For each of the rule's `mirror`/`mirrors` (drawn with its percentage; 100% when it has
//! none) a copy of the request goes to the mirror destination with its authority suffixed
//! `-shadow`, as Envoy does (`reviews:9080` → `reviews-shadow:9080`). The copy is sent in
//! the background through the balancer; its response is discarded and it never delays or
//! changes the caller's response. Only requests whose body was buffered are mirrored.
//!
//! ```
//! use std::sync::Arc;
//! use mesh_tower::balance::BalanceLayer;
//! use mesh_tower::mirror::MirrorLayer;
//! use mesh_tower::upstream::UpstreamService;
//! use mesh_tower::Workload;
//! use tower::Layer;
//!
//! let w = Arc::new(Workload::new("productpage-v1", "default"));
//! let dispatch = BalanceLayer::new(w.clone()).layer(UpstreamService::new());
//! let layer = MirrorLayer::new(dispatch, w);
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::MirrorLayer;
pub use service::{Mirror, shadow_authority};
