//! Mirroring: copies of requests sent elsewhere, fire and forget.
//!
//! For each of the rule's `mirror`/`mirrors` (drawn with its percentage; 100% when it has
//! none) a copy of the request goes to the mirror destination with its authority suffixed
//! `-shadow`, as Envoy does (`reviews:9080` → `reviews-shadow:9080`). The copy is sent in
//! the background through the balancer; its response is read and discarded, and it never
//! delays or changes the caller's response. Each copy is bounded by the route's timeout
//! (or [`MIRROR_TIMEOUT_WITHOUT_ROUTE_TIMEOUT`]), and at most
//! [`DEFAULT_MAX_MIRRORS_IN_FLIGHT`] copies are in flight per process; beyond that copies
//! are dropped, never queued. The copy streams the request body behind the original (it
//! reads only what the original has pulled); a body larger than the replay bound fails
//! the copy, never the original.
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

pub use layer::{DEFAULT_MAX_MIRRORS_IN_FLIGHT, MirrorLayer};
pub use service::{MIRROR_TIMEOUT_WITHOUT_ROUTE_TIMEOUT, Mirror, shadow_authority};
