//! Istio's configuration, read the way Istio reads it.
//!
//! `mesh-config` is the first of the mesh's three layers: it knows what the user wrote and
//! nothing about requests. It parses Istio YAML (files, directories, multi-document streams,
//! Kubernetes `List`s) into a typed model, validates it with diagnostics that point at
//! file, line and field path, builds the service registry from ServiceEntry and
//! WorkloadEntry, and produces an immutable, versioned [`Snapshot`] that the rest of the
//! mesh compiles from.
//!
//! ```
//! use mesh_config::ConfigSet;
//!
//! let mut set = ConfigSet::new();
//! set.add_str("reviews.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews.default.svc.cluster.local]
//!   ports: [{number: 9080, name: http, protocol: HTTP}]
//!   resolution: STATIC
//!   endpoints: [{address: 127.0.0.1, labels: {version: v1}}]
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews, subset: v9}
//! "#);
//! let checked = set.check();
//! let error = checked.diagnostics.iter().find(|d| d.is_error()).unwrap();
//! assert_eq!(error.code.as_str(), "IST0101");
//! assert_eq!(error.line(), Some(18));
//! assert_eq!(error.path.as_ref().unwrap().to_string(), "spec.http[0].route[0].destination.subset");
//! assert!(checked.snapshot.is_none());
//! ```

pub mod analyze;
pub mod calendar;
pub mod cel;
pub mod de;
pub mod diag;
pub mod duration;
pub mod host;
pub mod load;
pub mod model;
pub mod path;
pub mod re2;
pub mod registry;
pub mod rls;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod support;
pub mod validate;
pub mod yaml;

pub use diag::{Code, Diagnostic, Location, ResourceRef, Severity};
pub use load::{ConfigSet, LoadError};
pub use path::FieldPath;
pub use registry::{Endpoint, Registry, Service};
pub use snapshot::{Checked, Snapshot};
