//! What the mesh decides, per request.
//!
//! `mesh-core` compiles a [`mesh_config::Snapshot`] into the decisions the mesh makes for
//! each request: route tables, matchers, weighted splits, subsets resolved to endpoint
//! sets, load balancers, retry/timeout/fault decisions. It stays pure and deterministic —
//! no tokio, no hyper, no sockets; time and randomness are passed in — so that its
//! correctness is proven by unit and property tests and its speed by micro benchmarks.

pub mod balance;
pub mod cluster;
pub mod explain;
pub mod index;
pub mod matcher;
pub mod mesh;
pub mod policy;
pub mod route;

pub use matcher::{RequestHead, Source};
pub use mesh::{CompiledMesh, Decision, Outcome, RouteError, Upstream};
pub use mesh_config::Snapshot;
