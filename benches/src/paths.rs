//! The paths under test, from a client in this process to the backend, and the only
//! module that touches the mesh's API: keeping every use here makes a change of that
//! API a few-line change to the benchmark. The rest of the benchmark sees
//! a [`Path`] with a [`Sender`] that sends one GET and checks its answer.
//!
//! - `bare`: a hyper-util legacy pooled client straight to the backend.
//! - `bare-headers`: the `bare` client, each request carrying the headers a meshed caller
//!   adds with Istio's defaults and tracing on (`x-request-id`, `traceparent` and the peer
//!   metadata `baggage` of `productpage-v1`), their values built once: what the headers
//!   cost on the wire alone (written, sent, parsed by the backend), without the work of
//!   making them. `bare-headers` ÷ `bare` is the floor of any implementation that
//!   propagates them.
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
//! - `mesh-inbound`: `mesh.client()` → plaintext → `mesh.serve()` with `mesh.inbound()`
//!   around the backend's application: a ServiceEntry with a plain endpoint (no
//!   WorkloadEntry) and a runtime without identities, so no auto mTLS; Istio's defaults
//!   otherwise, as `mesh-defaults`. The mesh on both sides, in plaintext.
//! - `mesh-ratelimit`: `mesh-inbound` with a `LocalRateLimitPolicy` on the serving
//!   workload whose total limit (100,000,000 requests/s, an equal burst) never refuses
//!   during a run: `mesh-ratelimit` minus `mesh-inbound` is what a local limit costs.
//!   Its setup checks that a tiny limit of the same runtime refuses with Envoy's
//!   `429 local_rate_limited`, and that the serving workload's limit counted every setup
//!   request; after the run, [`Path::check_rate_limit`] checks that it refused none.
//! - `bare-tls`: the floor of mutual TLS: the `bare` path's client over rustls, with a
//!   client certificate, to the backend's application served over rustls by the same
//!   HTTP/1.1 server, requiring a client certificate (see [`crate::tls`]). Certificates
//!   from the mesh's in-process CA, so both TLS paths use the same key types.
//! - `mesh-mtls`: `mesh.client()` → mutual TLS → `mesh.serve()` around the backend's
//!   application (with `mesh.inbound()`): a ServiceEntry selecting a WorkloadEntry with a
//!   service account, so auto mTLS applies; otherwise Istio's defaults, as
//!   `mesh-defaults`. Its setup checks that the server saw the client's identity.
//! - `nginx-sidecars`: a bare client through two nginx proxies (see [`crate::nginx`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::ValueEnum;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_tower::identity::{CertificateAuthority, Identities, PeerIdentity, SpiffeId};
use mesh_tower::ratelimit::local::{self, CounterSnapshot};
use mesh_tower::state::EndpointState;
use mesh_tower::transport::pool::{Outgoing, Pools, Protocol};
use mesh_tower::{Mesh, MeshClient, MeshRuntime, ReqBody, Workload};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use crate::backend::{self, BODY, Backend, PATH, TlsListener};
use crate::nginx::Sidecars;
use crate::tls::{self, Material, TlsHttpConnector};

/// The name of a path under test, as given to `--paths` and printed in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathName {
    /// A bare hyper-util pooled client to the backend.
    Bare,
    /// The bare client sending the headers a meshed caller adds, their values built once.
    BareHeaders,
    /// The mesh's connection pool alone, without routing.
    MeshPool,
    /// `mesh.client()` with only a ServiceEntry.
    MeshDefaults,
    /// `mesh.client()` with a DestinationRule and a VirtualService.
    MeshVs,
    /// `mesh.client()` → plaintext → `mesh.serve()` around the backend's application.
    MeshInbound,
    /// `mesh-inbound` with a local rate limit on the serving workload that never refuses.
    MeshRatelimit,
    /// The bare client over mutual TLS (rustls) to the backend served over rustls.
    BareTls,
    /// `mesh.client()` → mutual TLS → `mesh.serve()` around the backend's application.
    MeshMtls,
    /// A bare client through an nginx client sidecar and an nginx server sidecar.
    NginxSidecars,
}

impl PathName {
    /// Every path, in the order they are run and printed.
    pub(crate) const ALL: [PathName; 10] = [
        PathName::Bare,
        PathName::BareHeaders,
        PathName::MeshPool,
        PathName::MeshDefaults,
        PathName::MeshVs,
        PathName::MeshInbound,
        PathName::MeshRatelimit,
        PathName::BareTls,
        PathName::MeshMtls,
        PathName::NginxSidecars,
    ];

    /// The name as printed.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PathName::Bare => "bare",
            PathName::BareHeaders => "bare-headers",
            PathName::MeshPool => "mesh-pool",
            PathName::MeshDefaults => "mesh-defaults",
            PathName::MeshVs => "mesh-vs",
            PathName::MeshInbound => "mesh-inbound",
            PathName::MeshRatelimit => "mesh-ratelimit",
            PathName::BareTls => "bare-tls",
            PathName::MeshMtls => "mesh-mtls",
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
    /// The path's own server, if the backend's plaintext listener is not it; stopped
    /// when dropped.
    _server: Option<Server>,
    /// The local rate limit of the path's server (`mesh-ratelimit`).
    limit: Option<Limit>,
}

/// The local rate limit of a path's server, to read its counters.
struct Limit {
    /// The runtime holding its buckets.
    runtime: MeshRuntime,
    /// Requests it had admitted when the path's setup ended.
    admitted_at_setup: u64,
}

impl Path {
    /// For a path with a local rate limit (`mesh-ratelimit`): what the limit counted since
    /// the path's setup, an error unless it refused none and admitted at least the
    /// `measured` requests (the requests of the phases kept; warm-ups and phases run
    /// again add more). `None` for the other paths.
    pub(crate) fn check_rate_limit(&self, measured: u64) -> Option<Result<String>> {
        let limit = self.limit.as_ref()?;
        let name = self.name.as_str();
        let Some(c) = served_limit(&limit.runtime) else {
            return Some(Err(anyhow!("{name}: the local rate limit has no counters")));
        };
        let admitted = c.ok - limit.admitted_at_setup;
        Some(if c.rate_limited > 0 || c.enforced > 0 {
            Err(anyhow!(
                "{name}: the local rate limit found {} requests over it and refused {} (it must never refuse: a 429 measures the refusal, not the limit)",
                c.rate_limited,
                c.enforced
            ))
        } else if admitted < measured {
            Err(anyhow!(
                "{name}: the local rate limit admitted {admitted} requests after the setup, fewer than the {measured} measured (not on the path measured)"
            ))
        } else {
            Ok(format!(
                "{name}: the local rate limit checked and admitted {admitted} requests after the setup ({measured} in the phases kept), none over the limit, none refused."
            ))
        })
    }
}

/// A server of the backend's application other than its plaintext listener.
enum Server {
    /// The backend's rustls listener (`bare-tls`).
    Tls(#[allow(dead_code, reason = "held for its Drop")] TlsListener),
    /// The task running `mesh.serve()` (`mesh-inbound`, `mesh-ratelimit`, `mesh-mtls`).
    Mesh(JoinHandle<()>),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Mesh(task) = self {
            task.abort();
        }
    }
}

/// Sends one GET along a path; cheap to clone, one clone per task.
#[derive(Clone)]
pub(crate) struct Sender(Inner);

type BareClient = Client<HttpConnector, Empty<Bytes>>;

type TlsClient = Client<TlsHttpConnector, Empty<Bytes>>;

#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few senders, cloned once per task; boxing would add a pointer chase per request"
)]
enum Inner {
    Bare {
        client: BareClient,
        /// The headers every request carries (none for `bare`).
        headers: Arc<http::HeaderMap>,
        uri: Uri,
    },
    BareTls {
        client: TlsClient,
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
            Inner::Bare {
                client,
                uri,
                headers,
            } => {
                let mut req = Request::get(uri.clone()).body(Empty::new())?;
                if !headers.is_empty() {
                    let h = req.headers_mut();
                    h.reserve(headers.len());
                    for (name, value) in headers.iter() {
                        h.insert(name, value.clone());
                    }
                }
                let resp = client.request(req).await?;
                check(resp).await
            }
            Inner::BareTls { client, uri } => {
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
                    limits: None,
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
            headers: Arc::default(),
        }),
        sidecars: None,
        _mesh: None,
        _server: None,
        limit: None,
    })
}

/// The bare client to the backend, each request carrying the headers a meshed
/// `productpage-v1` adds with Istio's defaults and tracing on, their values built once
/// (see the module documentation).
pub(crate) fn bare_headers(backend: &Backend) -> Result<Path> {
    use mesh_core::telemetry::{DEFAULT_CLUSTER_ID, PeerLabels};
    use mesh_core::trace::IdGenerator;
    // Values that live as long as the process, as the mesh's own baggage value does:
    // cloning them per request touches no shared count.
    fn value(text: String) -> http::HeaderValue {
        http::HeaderValue::from_static(Box::leak(text.into_boxed_str()))
    }
    let labels = [
        ("app".to_string(), "productpage".to_string()),
        ("version".to_string(), "v1".to_string()),
    ]
    .into();
    let me = PeerLabels::new(
        Some("productpage-v1"),
        "default",
        &labels,
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        DEFAULT_CLUSTER_ID,
    );
    let mut ids = IdGenerator::from_seed(7);
    let request_id = ids.request_id();
    // An unsampled context, as 99 requests in 100 carry.
    let traceparent = format!("00-{}-{}-00", ids.trace_id(), ids.span_id());
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::HeaderName::from_static("x-request-id"),
        value(request_id.to_str()?.to_string()),
    );
    headers.insert(
        http::HeaderName::from_static("traceparent"),
        value(traceparent),
    );
    headers.insert(
        http::HeaderName::from_static("baggage"),
        value(me.baggage()),
    );
    let mut path = bare(backend)?;
    path.name = PathName::BareHeaders;
    if let Inner::Bare { headers: h, .. } = &mut path.sender.0 {
        *h = Arc::new(headers);
    }
    Ok(path)
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
        _server: None,
        limit: None,
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
            headers: Arc::default(),
        }),
        sidecars: Some(sidecars),
        _mesh: None,
        _server: None,
        limit: None,
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
    traced(mesh.runtime());
    Ok(Path {
        name,
        sender: Sender(Inner::Mesh {
            client: mesh.client(),
            uri: uri(&format!("http://reviews:9080{PATH}"))?,
        }),
        sidecars: None,
        _mesh: Some(mesh),
        _server: None,
        limit: None,
    })
}

/// Sets up the in-process path `name` (every path but `nginx-sidecars`) to `backend`.
pub(crate) async fn start(name: PathName, backend: &Backend) -> Result<Path> {
    match name {
        PathName::Bare => bare(backend),
        PathName::BareHeaders => bare_headers(backend),
        PathName::MeshPool => pool(backend),
        PathName::MeshDefaults | PathName::MeshVs => mesh(name, backend),
        PathName::MeshInbound | PathName::MeshRatelimit => mesh_inbound(name, backend).await,
        PathName::BareTls => bare_tls(backend).await,
        PathName::MeshMtls => mesh_mtls(backend).await,
        PathName::NginxSidecars => bail!("nginx-sidecars is not an in-process path"),
    }
}

/// The trust domain of both TLS paths.
const TRUST_DOMAIN: &str = "cluster.local";

/// The service account of the server of both TLS paths.
const SERVER_SA: &str = "bookinfo-reviews";

/// The service account of the client of both TLS paths (`mesh_tests::mesh`'s workload).
const CLIENT_SA: &str = "bookinfo-productpage";

/// The bare client over mutual TLS to the backend's application served over rustls, with
/// certificates for the two service accounts from the mesh's in-process CA.
pub(crate) async fn bare_tls(backend: &Backend) -> Result<Path> {
    let ca = CertificateAuthority::new(TRUST_DOMAIN)?;
    let material = |sa: &str| -> Result<Material> {
        let now = SystemTime::now();
        let id = SpiffeId::new(TRUST_DOMAIN, "default", sa)?;
        let (chain, key) = ca.issue_der(
            &id,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(24 * 3600),
        )?;
        Ok(Material {
            chain,
            key,
            root: ca.root().clone(),
        })
    };
    let listener = backend
        .serve_tls(tls::server_config(&material(SERVER_SA)?)?)
        .await?;
    let connector = TlsHttpConnector::new(tls::client_config(&material(CLIENT_SA)?)?);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    Ok(Path {
        name: PathName::BareTls,
        sender: Sender(Inner::BareTls {
            client,
            uri: uri(&format!("https://127.0.0.1:{}{PATH}", listener.port))?,
        }),
        sidecars: None,
        _mesh: None,
        _server: Some(Server::Tls(listener)),
        limit: None,
    })
}

/// The path the servers of `mesh.serve()` answer with the principal of the caller, as
/// the mesh's `PeerIdentity` says (`none` without one).
const PEER_PATH: &str = "/peer";

/// The principal [`PEER_PATH`] answers for a caller without a verified identity.
const NO_PEER: &str = "none";

/// Requests each `mesh.serve()` path's setup sends: one to [`PEER_PATH`], then these
/// one after the other to the backend's path.
const SETUP_SEQUENTIAL: u64 = 40;

/// `mesh-mtls`: a runtime with identities from an in-process CA; the workload
/// `reviews-v1` (service account `bookinfo-reviews`) serving the backend's application
/// with `mesh.serve()` behind `mesh.inbound()`, reached through the WorkloadEntry of the
/// ServiceEntry `reviews` (auto mTLS: the endpoint is a workload of the mesh); and the
/// client workload `productpage-v1`, whose `mesh.client()` sends. Before it is measured,
/// the server must have seen the client's identity over mutual TLS, and the client must
/// have sent several requests over one pooled connection.
pub(crate) async fn mesh_mtls(backend: &Backend) -> Result<Path> {
    let listener = bind(PathName::MeshMtls).await?;
    let port = listener.local_addr()?.port();
    let runtime = MeshRuntime::from_snapshot(&mesh_tests::snapshot(&workload_entry(port)));
    traced(&runtime);
    // Before the workloads are registered: they get their identities when registered.
    runtime.set_identities(Identities::Ca(Arc::new(CertificateAuthority::new(
        TRUST_DOMAIN,
    )?)));
    let (server, client) = server_and_client(&runtime);
    if server.identity().is_none() || client.identity().is_none() {
        bail!("mesh-mtls: a workload has no identity from the in-process CA");
    }
    // The requests go over mutual TLS: the server sees the client's SPIFFE ID.
    let expected = SpiffeId::new(TRUST_DOMAIN, "default", CLIENT_SA)?;
    served(
        PathName::MeshMtls,
        server,
        client,
        listener,
        backend,
        expected.principal(),
    )
    .await
}

/// `mesh-inbound` and `mesh-ratelimit`: one runtime without identities; the workload
/// `reviews-v1` serving the backend's application with `mesh.serve()` behind
/// `mesh.inbound()`, reached through a plain endpoint of the ServiceEntry `reviews` (not
/// a workload of the mesh: no auto mTLS); and the client workload `productpage-v1`,
/// whose `mesh.client()` sends, in plaintext (checked: the server sees no identity).
///
/// `mesh-ratelimit` adds [`RATE_LIMITS`]: a limit on `reviews-v1` that never refuses
/// during a run, and a tiny one on a check workload. Its setup fails unless the tiny
/// limit refuses its second request with Envoy's `429 local_rate_limited` (limits of
/// this runtime are enforced), and unless the limit of `reviews-v1` counted every setup
/// request as admitted and none as limited (it is on the path measured).
pub(crate) async fn mesh_inbound(name: PathName, backend: &Backend) -> Result<Path> {
    let limited = match name {
        PathName::MeshInbound => false,
        PathName::MeshRatelimit => true,
        other => bail!("{} is not a plaintext mesh.serve() path", other.as_str()),
    };
    let listener = bind(name).await?;
    let port = listener.local_addr()?.port();
    let mut yaml = service_entry(port, &["127.0.0.1"]);
    if limited {
        yaml.push_str(RATE_LIMITS);
    }
    let runtime = MeshRuntime::from_snapshot(&mesh_tests::snapshot(&yaml));
    traced(&runtime);
    let (server, client) = server_and_client(&runtime);
    if limited {
        check_limit_refuses(&runtime).await?;
    }
    let mut path = served(name, server, client, listener, backend, NO_PEER).await?;
    let counters = served_limit(&runtime);
    let setup = SETUP_SEQUENTIAL + 1;
    match counters {
        None if !limited => {}
        Some(c) if limited && c.ok == setup && c.rate_limited == 0 => {
            path.limit = Some(Limit {
                runtime,
                admitted_at_setup: c.ok,
            });
        }
        other => bail!(
            "{}: the local rate limit of the server counted {other:?} for the {setup} setup requests; expected {}",
            name.as_str(),
            if limited {
                format!("{setup} admitted and none limited")
            } else {
                "no limit".to_string()
            }
        ),
    }
    Ok(path)
}

/// Two LocalRateLimitPolicies: on the server `reviews-v1`, a total limit no run can reach
/// (the benchmark sends well under a million requests per second; a check takes a token
/// of it and never refuses); on the check workload `ratelimit-check`, one request per
/// minute.
const RATE_LIMITS: &str = "---
apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  total: {requestsPerSecond: 100000000, burst: 100000000}
---
apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: ratelimit-check, namespace: default}
spec:
  workloadSelector: {labels: {app: ratelimit-check}}
  total: {requestsPerMinute: 1}
";

/// Sends `req` through `svc`: the answer's status and whole body.
async fn answer_of<S, Req, B>(svc: S, req: Req) -> Result<(StatusCode, Bytes)>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = svc.oneshot(req).await.map_err(|e| anyhow!(e.into()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!(e.into()))?
        .to_bytes();
    Ok((status, body))
}

/// The key prefix of the local rate limits of the server `reviews-v1`.
const SERVER_LIMITS: &str = "reviews-v1.default|";

/// The counters of the local rate limit of the server `reviews-v1` in `runtime`, if it
/// has one that has seen a request.
fn served_limit(runtime: &MeshRuntime) -> Option<CounterSnapshot> {
    runtime
        .local_rate_limits()
        .counters()
        .into_iter()
        .find(|(key, _)| key.starts_with(SERVER_LIMITS))
        .map(|(_, c)| c)
}

/// Sends two requests through `mesh.inbound()` of the check workload `ratelimit-check`
/// of `runtime` (one request per minute): the first must be admitted, the second
/// refused with Envoy's `429 local_rate_limited`.
async fn check_limit_refuses(runtime: &MeshRuntime) -> Result<()> {
    let check = runtime
        .workload(Workload::new("ratelimit-check", "default").labels([("app", "ratelimit-check")]));
    let app = tower::ServiceBuilder::new()
        .layer(check.inbound())
        .service(tower::service_fn(backend::answer::<Empty<Bytes>>));
    let mut answers = Vec::new();
    for _ in 0..2 {
        let req = Request::get(PATH).body(Empty::<Bytes>::new())?;
        let (status, body) = answer_of(app.clone(), req)
            .await
            .context("mesh-ratelimit: the limit check request failed")?;
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    let expected = [
        (StatusCode::OK, String::from_utf8_lossy(BODY).into_owned()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            local::LOCAL_RATE_LIMITED.to_string(),
        ),
    ];
    if answers != expected {
        bail!(
            "mesh-ratelimit: a limit of one request per minute answered {answers:?} to two requests; expected {expected:?} (local rate limits not enforced)"
        );
    }
    Ok(())
}

/// Binds the server of path `name` on an ephemeral port of 127.0.0.1.
async fn bind(name: PathName) -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("binding the {} server on 127.0.0.1", name.as_str()))
}

/// The server workload `reviews-v1` (service account `bookinfo-reviews`) and the client
/// workload `productpage-v1` (service account `bookinfo-productpage`) of `runtime`.
fn server_and_client(runtime: &MeshRuntime) -> (Mesh, Mesh) {
    let server = runtime.workload(
        Workload::new("reviews-v1", "default")
            .labels([("app", "reviews"), ("version", "v1")])
            .service_account(SERVER_SA),
    );
    let client = runtime.workload(
        Workload::new("productpage-v1", "default")
            .labels([("app", "productpage"), ("version", "v1")])
            .service_account(CLIENT_SA),
    );
    (server, client)
}

/// The path `name`: `server` serving [`served_app`] on `listener` with `mesh.serve()`
/// behind `mesh.inbound()`, its connections counted in the backend's counter, and
/// `client`'s `mesh.client()` sending to `reviews:9080`. Before it is measured, the
/// server must have seen the caller's principal `peer` ([`NO_PEER`] in plaintext), and
/// the client must have sent several requests over one pooled connection.
async fn served(
    name: PathName,
    server: Mesh,
    client: Mesh,
    listener: TcpListener,
    backend: &Backend,
    peer: &str,
) -> Result<Path> {
    let app = tower::ServiceBuilder::new()
        .layer(server.inbound())
        .service(tower::service_fn(served_app));
    let app = Counted {
        inner: app,
        accepted: Some(backend.connection_counter()),
    };
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(listener, app).await {
            eprintln!("mesh-bench: the {} server stopped: {e}", name.as_str());
        }
    });
    let path = Path {
        name,
        sender: Sender(Inner::Mesh {
            client: client.client(),
            uri: uri(&format!("http://reviews:9080{PATH}"))?,
        }),
        sidecars: None,
        _mesh: Some(client.clone()),
        _server: Some(Server::Mesh(task)),
        limit: None,
    };

    let connections = backend.connections();
    let req = Request::get(format!("http://reviews:9080{PEER_PATH}")).body(Empty::<Bytes>::new())?;
    let (status, body) = answer_of(client.client(), req)
        .await
        .with_context(|| format!("{}: the peer check request failed", name.as_str()))?;
    if status != StatusCode::OK || body.as_ref() != peer.as_bytes() {
        bail!(
            "{}: the server saw the caller as {:?} (status {status}), expected {peer:?}",
            name.as_str(),
            String::from_utf8_lossy(&body),
        );
    }
    // The client reuses its connections, and the server's connections are counted: a
    // few, not one per request. Sequential requests may take more than one: the pool
    // takes a connection back once a task of its own sees the response end, and a
    // request sent before that dials another (hyper-util's legacy client, the `bare`
    // path's, does the same; under valgrind, 3 for 11 requests).
    for _ in 0..SETUP_SEQUENTIAL {
        path.sender
            .send()
            .await
            .with_context(|| format!("{}: setup request", name.as_str()))?;
    }
    let made = backend.connections() - connections;
    let most = SETUP_SEQUENTIAL / 5;
    if !(1..=most).contains(&made) {
        bail!(
            "{}: the server counted {made} connections for {} requests sent one after the other, expected 1 to {most} (a pool not reused, or `mesh.serve()` no longer clones its application once per connection: see `Counted`)",
            name.as_str(),
            SETUP_SEQUENTIAL + 1,
        );
    }
    Ok(path)
}

/// The application of the `mesh.serve()` paths: the backend's, and the caller's
/// principal at [`PEER_PATH`] (one comparison more per request than the backend's own).
async fn served_app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != PEER_PATH {
        return backend::answer(req).await;
    }
    let principal = req
        .extensions()
        .get::<PeerIdentity>()
        .map_or(NO_PEER, |id| id.principal())
        .to_string();
    Ok(Response::new(Full::new(Bytes::from(principal))))
}

/// The application given to `mesh.serve()`, counting the connections the server
/// accepts in the backend's counter (so `new conns` means the same on every path):
/// `mesh.serve()` clones the service it was given once per accepted connection, and
/// hyper clones that copy once per request. Only clones of the original count; the
/// copies carry no counter, so a request costs nothing more. [`served`] checks the
/// count in the path's setup.
struct Counted<S> {
    inner: S,
    /// The backend's counter in the original; `None` in its copies.
    accepted: Option<Arc<AtomicU64>>,
}

impl<S: Clone> Clone for Counted<S> {
    fn clone(&self) -> Self {
        if let Some(accepted) = &self.accepted {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Counted {
            inner: self.inner.clone(),
            accepted: None,
        }
    }
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

/// The ServiceEntry `reviews` (port 9080, HTTP) selecting workloads `app: reviews`, and
/// the WorkloadEntry of the one on 127.0.0.1:`port`, service account `bookinfo-reviews`.
fn workload_entry(port: u16) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: reviews}}}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1, namespace: default}}\nspec:\n  address: 127.0.0.1\n  ports: {{http: {port}}}\n  labels: {{app: reviews, version: v1}}\n  serviceAccount: {SERVER_SA}\n"
    )
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

/// Whether the mesh paths trace (`--trace`): set once, before the paths start.
pub(crate) static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// With `--trace`, gives `runtime` a span exporter to an in-process OTLP/HTTP sink, so
/// that the mesh's default tracing applies: Istio's 1 % sampling (no Telemetry sets
/// another), the context headers on every request, spans for the sampled ones.
fn traced(runtime: &MeshRuntime) {
    use mesh_tower::telemetry::otlp::{BatchConfig, OtlpConfig, Protocol, SpanExporter};
    if !TRACE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    static EXPORTER: std::sync::OnceLock<Option<SpanExporter>> = std::sync::OnceLock::new();
    let exporter = EXPORTER.get_or_init(|| {
        let sink = span_sink().ok()?;
        let config =
            OtlpConfig::new(&format!("http://{sink}/v1/traces"), Protocol::HttpProtobuf).ok()?;
        SpanExporter::start(config, BatchConfig::default()).ok()
    });
    match exporter {
        Some(e) => runtime.set_span_exporter(Some(e.clone())),
        None => eprintln!("mesh-bench: --trace: the span sink could not start"),
    }
}

/// An OTLP/HTTP sink on 127.0.0.1: answers every export with an empty success.
fn span_sink() -> Result<std::net::SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        // Read the export whole, then answer.
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                                .unwrap_or_default(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
