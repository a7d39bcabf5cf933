//! What the mesh decides, per request.
//!
//! `mesh-core` compiles a [`mesh_config::Snapshot`] into the decisions the mesh makes for
//! each request: compiled VirtualServices and matchers, the virtual hosts of gateways,
//! weighted splits, subsets resolved to endpoint sets, load balancers, retry, timeout and
//! fault decisions, and each workload's view of it all. It stays pure and deterministic —
//! no tokio, no hyper, no sockets; time and randomness are passed in — so that its
//! correctness is proven by unit and property tests and its speed by micro benchmarks.
//!
//! Maps looked up per request use foldhash rather than SipHash: they are built from
//! configuration and only probed with request data, so a seeded fast hash is enough.
//!
//! One routing engine: workload traffic ([`WorkloadView::route`]), requests through a
//! gateway ([`WorkloadView::route_at_gateway`]) and `meshctl route` ([`explain`]) all
//! run the same rule matching.

pub mod authn;
pub mod authz;
pub mod balance;
pub mod cluster;
pub mod explain;
pub mod fault;
pub mod gateway;
pub mod index;
pub mod matcher;
pub mod mesh;
pub mod outlier;
pub mod peer_auth;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod telemetry;
pub mod trace;
pub mod workload;

pub use matcher::{Caller, RequestHead};
pub use mesh::{CompiledMesh, Decision, Outcome, RouteError, Upstream};
pub use mesh_config::Snapshot;
pub use peer_auth::PeerAuthn;
pub use workload::{Role, Workload, WorkloadView};

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use mesh_config::{ConfigSet, Snapshot};

    /// The snapshot of the YAML documents `yaml` (as file `test.yaml`); panics with the
    /// diagnostics when they are invalid.
    pub(crate) fn snapshot(yaml: &str) -> Snapshot {
        let mut set = ConfigSet::new();
        set.add_str("test.yaml", yaml);
        let checked = set.check();
        checked
            .snapshot
            .clone()
            .unwrap_or_else(|| panic!("{}", checked.summary()))
    }
}
