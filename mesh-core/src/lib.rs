//! What the mesh decides, per request.
//!
//! `mesh-core` will compile a `mesh_config::Snapshot` into an immutable `CompiledMesh`:
//! route tables, matchers, weighted splits, subsets resolved to endpoint sets, load
//! balancers, retry/timeout/fault decisions, authorization and rate-limit accounting. It
//! stays pure and deterministic — no tokio, no hyper, no sockets; time and randomness are
//! passed in — so that its correctness is proven by unit and property tests.
//!
//! This crate is a placeholder in this version: routing and load balancing are the next
//! piece of work (see the README's feature table).

pub use mesh_config::ConfigSet;
