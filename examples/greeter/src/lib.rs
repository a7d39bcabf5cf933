//! A gRPC greeter behind the mesh: gRPC's `helloworld.Greeter` in [tonic], two versions
//! of it as two workloads of one process, and a client workload calling them — all
//! configured with Istio YAML (`config/`):
//!
//! - routing by gRPC method: a VirtualService matches the method's path
//!   (`/helloworld.Greeter/SayGoodbye` → v2, everything else → v1);
//! - retries on `unavailable` (`grpc-status: 14`);
//! - mutual TLS with identities from the in-process CA, the caller's principal handed to
//!   the application ([`mesh_tower::identity::PeerIdentity`]);
//! - AuthorizationPolicies on the method's path and the caller's principal.
//!
//! tonic runs without its own transport: the server side ([`server::GreeterServer`]) is
//! a tower service the mesh serves, the client side ([`client::GreeterClient`]) sends
//! its requests through the calling workload's `mesh.client()`. The protobuf messages
//! ([`pb`]) and the service glue are written by hand, as `tonic-build` would generate
//! them from `proto/helloworld.proto`, so that nothing needs `protoc`.

pub mod client;
pub mod pb;
pub mod run;
pub mod server;
pub mod service;
