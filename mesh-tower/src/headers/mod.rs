//! Rewrites and header operations.
//!
//! The rule's `rewrite` (the matched prefix — or the whole path for an exact match —
//! replaced by `uri`, or `uriRegexRewrite`; the authority replaced by `authority`) and the
//! `headers` operations of the rule and of the chosen destination. Destination operations
//! are applied first and the rule's after them, so that the rule wins (Envoy's default
//! order). A `host` header set by a request operation rewrites the authority.
//!
//! ```
//! use mesh_tower::headers::HeadersLayer;
//! let layer = HeadersLayer;
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::HeadersLayer;
pub use service::HeadersService;
