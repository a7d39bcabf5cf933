//! The paths under test, from a client in this process to the backend, and the only
//! module that touches the mesh's API: keeping every use here makes a change of that
//! API a few-line change to the benchmark. The rest of the benchmark sees
//! a [`Path`] with a [`Sender`] that sends one GET and checks its answer.
//!
//! - `bare`: a hyper-util legacy pooled client straight to the backend.
//! - `mesh-pool`: the mesh's transport alone — its per-endpoint connection pool
//!   (`Pools`), no routing: what the mesh's layers add is `mesh-defaults` minus this.
//! - `mesh-defaults`: `mesh.client()` with only a ServiceEntry (Istio's defaults).
//! - `mesh-vs`: `mesh.client()` with a DestinationRule (subsets v1, v2) and a
//!   VirtualService (a header rule, then a 90/10 split with a timeout and retries).
//!   Requests carry no `end-user` header: each evaluates the header rule, misses, and
//!   takes the weighted split. Both subsets' endpoints are the one backend (two
//!   registry endpoints, labelled v1 and v2, at the same address), so that every path
//!   has the same physical topology — one backend, one set of pooled connections — and
//!   the ratios measure the mesh, not a second backend: with two backend addresses the
//!   runtime's two worker threads end up waking each other for the second connection
//!   set, which costs every path through it alike (see docs/benchmarks.md).
//! - `nginx-sidecars`: a bare client through two nginx proxies (see [`crate::nginx`]).

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::ValueEnum;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_tower::state::EndpointState;
use mesh_tower::transport::pool::{Outgoing, Pools, Protocol};
use mesh_tower::{Mesh, MeshClient, ReqBody};
use serde::Serialize;
use tower::ServiceExt;

use crate::backend::{BODY, Backend, PATH};
use crate::nginx::Sidecars;

/// The name of a path under test, as given to `--paths` and printed in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathName {
    /// A bare hyper-util pooled client to the backend.
    Bare,
    /// The mesh's connection pool alone, without routing.
    MeshPool,
    /// `mesh.client()` with only a ServiceEntry.
    MeshDefaults,
    /// `mesh.client()` with a DestinationRule and a VirtualService.
    MeshVs,
    /// A bare client through an nginx client sidecar and an nginx server sidecar.
    NginxSidecars,
}

impl PathName {
    /// Every path, in the order they are run and printed.
    pub(crate) const ALL: [PathName; 5] = [
        PathName::Bare,
        PathName::MeshPool,
        PathName::MeshDefaults,
        PathName::MeshVs,
        PathName::NginxSidecars,
    ];

    /// The name as printed.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PathName::Bare => "bare",
            PathName::MeshPool => "mesh-pool",
            PathName::MeshDefaults => "mesh-defaults",
            PathName::MeshVs => "mesh-vs",
            PathName::NginxSidecars => "nginx-sidecars",
        }
    }
}

/// A path ready to take requests.
pub(crate) struct Path {
    /// Which path this is.
    pub(crate) name: PathName,
    /// Sends one request along the path.
    pub(crate) sender: Sender,
    /// The nginx processes of the `nginx-sidecars` path, stopped when dropped.
    pub(crate) sidecars: Option<Sidecars>,
    /// Keeps the workload's mesh alive as long as its client.
    _mesh: Option<Mesh>,
}

/// Sends one GET along a path; cheap to clone, one clone per task.
#[derive(Clone)]
pub(crate) struct Sender(Inner);

type BareClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few senders, cloned once per task; boxing would add a pointer chase per request"
)]
enum Inner {
    Bare {
        client: BareClient,
        uri: Uri,
    },
    Mesh {
        client: MeshClient,
        uri: Uri,
    },
    Pool {
        endpoint: Arc<EndpointState>,
        uri: Uri,
    },
}

impl Sender {
    /// Sends `GET /reviews/0`, reads the whole body, and fails unless the answer is `200`
    /// with the backend's body.
    pub(crate) async fn send(&self) -> Result<()> {
        match &self.0 {
            Inner::Bare { client, uri } => {
                let req = Request::get(uri.clone()).body(Empty::new())?;
                let resp = client.request(req).await?;
                check(resp).await
            }
            Inner::Mesh { client, uri } => {
                let req = Request::get(uri.clone()).body(Empty::<Bytes>::new())?;
                let resp = client.clone().oneshot(req).await.map_err(|e| anyhow!(e))?;
                check(resp).await
            }
            Inner::Pool { endpoint, uri } => {
                let request = Request::get(uri.clone()).body(ReqBody::empty())?;
                let out = Outgoing {
                    request,
                    endpoint: endpoint.clone(),
                    protocol: Protocol::Http1,
                    tls: None,
                };
                let resp = Pools.oneshot(out).await.map_err(|e| anyhow!(e))?;
                check(resp).await
            }
        }
    }
}

async fn check<B>(resp: Response<B>) -> Result<()>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!(e.into()))
        .context("reading the response body")?
        .to_bytes();
    if status != StatusCode::OK {
        bail!("status {status}");
    }
    if body.as_ref() != BODY.as_slice() {
        bail!("unexpected body ({} bytes)", body.len());
    }
    Ok(())
}

fn bare_client() -> BareClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn uri(s: &str) -> Result<Uri> {
    s.parse().with_context(|| format!("parsing {s}"))
}

/// A bare client to the backend.
pub(crate) fn bare(backend: &Backend) -> Result<Path> {
    let uri = uri(&format!("http://127.0.0.1:{}{PATH}", backend.port))?;
    Ok(Path {
        name: PathName::Bare,
        sender: Sender(Inner::Bare {
            client: bare_client(),
            uri,
        }),
        sidecars: None,
        _mesh: None,
    })
}

/// The mesh's connection pool to the backend, without routing: the request carries the
/// logical authority the mesh paths use.
pub(crate) fn pool(backend: &Backend) -> Result<Path> {
    Ok(Path {
        name: PathName::MeshPool,
        sender: Sender(Inner::Pool {
            endpoint: EndpointState::standalone(&format!("127.0.0.1:{}", backend.port)),
            uri: uri(&format!("http://reviews:9080{PATH}"))?,
        }),
        sidecars: None,
        _mesh: None,
    })
}

/// A bare client to the nginx client sidecar of `sidecars`.
pub(crate) fn nginx(sidecars: Sidecars) -> Result<Path> {
    let uri = uri(&format!("http://127.0.0.1:{}{PATH}", sidecars.port()))?;
    Ok(Path {
        name: PathName::NginxSidecars,
        sender: Sender(Inner::Bare {
            client: bare_client(),
            uri,
        }),
        sidecars: Some(sidecars),
        _mesh: None,
    })
}

/// The mesh path `name` (`mesh-defaults` or `mesh-vs`) to the backend.
pub(crate) fn mesh(name: PathName, backend: &Backend) -> Result<Path> {
    let yaml = match name {
        PathName::MeshDefaults => service_entry(backend.port, &["127.0.0.1"]),
        PathName::MeshVs => {
            service_entry(backend.port, &["127.0.0.1", "127.0.0.1"])
                + DESTINATION_RULE
                + VIRTUAL_SERVICE
        }
        other => bail!("{} is not a mesh path", other.as_str()),
    };
    // The workload `productpage-v1` (labels app=productpage, version=v1, service account
    // bookinfo-productpage) in `default`, built by the test helper that follows the
    // mesh's API as it changes. Panics with the configuration's diagnostics if it is
    // invalid: a bug here.
    let mesh = mesh_tests::mesh(&yaml);
    Ok(Path {
        name,
        sender: Sender(Inner::Mesh {
            client: mesh.client(),
            uri: uri(&format!("http://reviews:9080{PATH}"))?,
        }),
        sidecars: None,
        _mesh: Some(mesh),
    })
}

/// A ServiceEntry for `reviews` (port 9080, HTTP) with one endpoint per address, all on
/// `port`, labelled `version: v1`, `v2`, ... in order.
fn service_entry(port: u16, addresses: &[&str]) -> String {
    let mut eps = String::new();
    for (i, address) in addresses.iter().enumerate() {
        let version = i + 1;
        eps.push_str(&format!(
            "  - address: {address}\n    ports: {{http: {port}}}\n    labels: {{version: v{version}}}\n"
        ));
    }
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n{eps}"
    )
}

const DESTINATION_RULE: &str = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

const VIRTUAL_SERVICE: &str = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    timeout: 10s
    retries: {attempts: 2, perTryTimeout: 2s, retryOn: \"5xx,connect-failure\"}
";
