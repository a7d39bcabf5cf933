//! The mesh's benchmarks. Criterion micro-benchmarks live in `benches/`: `decisions`
//! (route decisions with 10, 100 and 1,000 rules; balancer picks with 3, 100 and 1,000
//! endpoints) and `stack` (the whole outbound stack against a bare hyper-util client to
//! the same local server). Run them with `cargo bench -p mesh-bench`; results are
//! recorded in `docs/benchmarks.md`.
//!
//! The `mesh-bench` binary (`src/main.rs`) is a load benchmark over real loopback
//! connections: `cargo run --release -p mesh-bench -- load` compares a bare client, the
//! mesh, both over mutual TLS, and two nginx sidecars in closed and open loops (`--quick`
//! for a few seconds).
