//! Load balancing: the endpoint of each attempt, and the codec to speak to it.
//!
//! The cluster's balancer picks (ROUND_ROBIN, RANDOM, LEAST_REQUEST, consistent hashing
//! on a header, cookie, query parameter or the caller's identity, peak-EWMA), reading the
//! endpoints' load from the runtime's state, which outlives configurations: a reload does
//! not make LEAST_REQUEST forget which endpoint is busy. Endpoints earlier attempts tried
//! are avoided when the route's retries say so (up to 5 picks, Envoy's
//! `host_selection_retry_max_attempts`). A request counts as outstanding on its endpoint
//! until its response body ends. With a DestinationRule's `outlierDetection`, the
//! endpoints it ejected are left out (a balancer over the others picks) unless the
//! cluster is in panic, and each attempt's outcome is counted (see
//! [`mesh_core::outlier`]). The endpoint that answered travels in the response
//! body ([`ResBody`](crate::ResBody)) to the retry layer above, which avoids it on the
//! next attempt: a layer placed between the two that replaces the response body drops
//! that note, and with it the avoidance of previous hosts. PASSTHROUGH balancing, resolution NONE and hosts outside
//! the registry go to the address the caller asked for. The codec is the cluster's
//! ([`Codec`](mesh_core::cluster::Codec)), and so is how its connections are secured
//! ([`UpstreamTls`](mesh_core::cluster::UpstreamTls)): with a workload identity, mutual
//! TLS under `ISTIO_MUTUAL`, and under auto mTLS to endpoints of the mesh that accept it,
//! the server's SPIFFE ID checked against the picked endpoint's; TLS origination under
//! `SIMPLE` and `MUTUAL`, and for `https://` requests (never cleartext). The request is then
//! handed to the transport as an [`Outgoing`](crate::transport::pool::Outgoing).
//!
//! ```
//! # fn main() -> Result<(), mesh_tower::BoxError> {
//! use http::{Request, Response};
//! use mesh_tower::outbound::{BalanceLayer, RouteLayer};
//! use mesh_tower::transport::pool::Outgoing;
//! use mesh_tower::{MeshRuntime, ReqBody, ResBody, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("se.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.7}]\n");
//! let runtime = MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let mesh = runtime.workload(Workload::new("app", "default"));
//! // The transport learns which endpoint to dial.
//! let transport = tower::service_fn(|out: Outgoing| async move {
//!     Ok::<_, mesh_tower::BoxError>(Response::new(ResBody::full(out.endpoint.id().to_string())))
//! });
//! let service = ServiceBuilder::new().layer(RouteLayer::new(mesh)).layer(BalanceLayer::default()).service(transport);
//! let req = Request::get("http://api.example.com/").body(ReqBody::empty())?;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! let body = rt.block_on(async { http_body_util::BodyExt::collect(service.oneshot(req).await?.into_body()).await })?;
//! assert_eq!(body.to_bytes(), "10.0.0.7:80");
//! # Ok(()) }
//! ```

mod service;

pub use service::{Balance, BalanceFuture, BalanceLayer, reset_reason};
