//! The mesh's benchmarks live in `benches/`: `decisions` (route decisions with 10, 100
//! and 1,000 rules; balancer picks with 3, 100 and 1,000 endpoints) and `stack` (the whole
//! outbound stack against a bare hyper-util client to the same local server). Run them
//! with `cargo bench -p mesh-benches`; results are recorded in `docs/benchmarks.md`.
