use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{COOKIE, HOST, SET_COOKIE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use mesh_core::Upstream;
use mesh_core::balance::{LbAlgorithm, Pick};
use mesh_core::cluster::{Cluster, Codec, HashOn, UpstreamTls, host_port};
use mesh_core::outlier::{Outcome, grpc_to_http};
use pin_project_lite::pin_project;
use rand::RngExt;
use tower::{Layer, Service};

use super::super::outlier::{OutlierReport, OutlierState};
use super::super::{ResponseFuture, Route, Routed, RoutedParts};
use crate::identity::WorkloadIdentity;
use crate::state::{EndpointState, InFlight};
use crate::transport::origination;
use crate::transport::pool::{ClusterLimits, MutualTls, Outgoing, Protocol, UpstreamTransport};
use crate::{BoxError, MeshFailure, ReqBody, ResBody, ResetReason};

/// Picks the endpoint of each attempt and how to speak to it (see the module
/// documentation).
#[derive(Clone, Debug, Default)]
pub struct BalanceLayer {
    identity: Option<Arc<WorkloadIdentity>>,
}

impl BalanceLayer {
    /// The layer of a workload with `identity` (mutual TLS to the endpoints that take
    /// it), or without one (plaintext).
    pub fn new(identity: Option<Arc<WorkloadIdentity>>) -> Self {
        BalanceLayer { identity }
    }
}

impl<U> Layer<U> for BalanceLayer {
    type Service = Balance<U>;

    fn layer(&self, inner: U) -> Balance<U> {
        Balance {
            inner,
            identity: self.identity.clone(),
        }
    }
}

/// See [`BalanceLayer`].
#[derive(Clone, Debug)]
pub struct Balance<U> {
    inner: U,
    identity: Option<Arc<WorkloadIdentity>>,
}

/// How many picks may be spent looking for an endpoint not tried yet (Envoy's default
/// `host_selection_retry_max_attempts` in Istio's retry policy).
const HOST_SELECTION_ATTEMPTS: usize = 5;

/// What was picked.
struct Picked {
    endpoint: Arc<EndpointState>,
    /// Its index in the cluster (for retries to avoid it), when it is a cluster's.
    index: Option<u32>,
    /// The cluster's balancing, when it is a cluster's.
    lb: Option<LbAlgorithm>,
    codec: Codec,
    /// How the cluster's connections are secured and the endpoint's side of it, when it
    /// is a cluster's.
    tls: Option<(UpstreamTls, bool, Arc<str>)>,
    /// Where the attempt's outcome goes, when the cluster has outlier detection.
    outlier: Option<OutlierReport>,
}

impl<U> Service<Routed> for Balance<U>
where
    U: Service<Outgoing, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<BalanceFuture<U::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        let RoutedParts { mut request, route } = routed.into_parts();
        let mut set_cookie = None;
        let picked = match pick(&route, &request, &mut set_cookie) {
            Ok(p) => p,
            Err(failure) => {
                if let Some(span) = super::super::telemetry::current() {
                    span.record("endpoint", "none");
                }
                return ResponseFuture::ready(failure.into_response());
            }
        };
        if let Some(span) = super::super::telemetry::current() {
            span.record("endpoint", &**picked.endpoint.id());
        }
        let protocol = match picked.codec {
            Codec::Http1 => Protocol::Http1,
            Codec::Http2 => Protocol::Http2,
            Codec::FromClient if request.version() == Version::HTTP_2 => Protocol::Http2,
            Codec::FromClient => Protocol::Http1,
        };
        // The application asked for TLS: it is never sent in plaintext.
        let https = request.uri().scheme() == Some(&Scheme::HTTPS);
        if let Err(e) = point_at(&mut request, protocol, https) {
            return ResponseFuture::ready(e.into_response());
        }
        // A request is outstanding on its endpoint until its response body is done, not
        // only until its headers arrive: what the least-request balancers read, and the
        // admin view's active requests.
        let in_flight = Some(InFlight::start(picked.endpoint.clone()));
        let ewma = match picked.lb {
            Some(LbAlgorithm::PeakEwma { decay_ns, .. }) => {
                Some((picked.endpoint.clone(), Instant::now(), decay_ns))
            }
            _ => None,
        };
        let tls = match transport(self.identity.as_ref(), picked.tls, https) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(endpoint = %picked.endpoint.id(), error = %e, "no connection to the endpoint");
                return ResponseFuture::ready(e.into_response());
            }
        };
        let mtls = matches!(tls, Some(UpstreamTransport::Mesh(_)));
        let fut = self.inner.call(Outgoing {
            request,
            endpoint: picked.endpoint,
            protocol,
            tls,
            limits: limits(&route),
        });
        ResponseFuture::inner(BalanceFuture {
            fut,
            in_flight,
            ewma,
            set_cookie,
            tried: picked.index,
            outlier: picked.outlier,
            mtls,
        })
    }
}

/// The circuit breakers and connection settings of the route's cluster, when it has
/// some.
fn limits(route: &Route) -> Option<ClusterLimits> {
    let id = match route.upstream() {
        Upstream::Cluster(c) if c.limits.configured() => c.id,
        _ => return None,
    };
    Some(ClusterLimits {
        cluster: route.mesh().clusters().get(id as usize)?.clone(),
        state: route.cluster_state()?.clone(),
    })
}

/// The endpoint of a request, or the failure answered instead.
fn pick(
    route: &Route,
    request: &Request<ReqBody>,
    set_cookie: &mut Option<HeaderValue>,
) -> Result<Picked, MeshFailure> {
    let c = match route.upstream() {
        Upstream::Missing { .. } => return Err(MeshFailure::ClusterNotFound),
        Upstream::Passthrough { host, port } => {
            return Ok(Picked {
                endpoint: route.passthrough(&host_port(&host, port)),
                index: None,
                lb: None,
                codec: Codec::FromClient,
                tls: None,
                outlier: None,
            });
        }
        Upstream::Cluster(c) => c,
    };
    // PASSTHROUGH balancing and resolution NONE: the address the caller asked for (as
    // routed, before rewrites), spoken to with the cluster's codec and TLS origination as
    // Istio configures them (not auto mTLS, which Istio leaves out of such clusters).
    if let Some((host, port)) = route.original_dst() {
        return Ok(Picked {
            endpoint: route.passthrough(&host_port(host, port)),
            index: None,
            lb: None,
            codec: c.codec,
            // An explicit ISTIO_MUTUAL applies too (verified against its
            // `subjectAltNames`; without any, no server can be verified and the request
            // fails rather than go in plaintext).
            tls: matches!(
                c.tls,
                UpstreamTls::Origination(_) | UpstreamTls::IstioMutual { .. }
            )
            .then(|| (c.tls.clone(), false, Arc::from(""))),
            outlier: None,
        });
    }
    let mut rng = rand::rng();
    let key = hash_key(c, request, route, set_cookie, &mut rng);
    let avoid = route.retries().ignore_previous_hosts && !c.lb.is_hash();
    let loads = route.endpoints();
    // Outlier detection: the balancer over the endpoints not ejected, while some are
    // (and the cluster is not in panic).
    let outlier = match &c.outlier {
        None => None,
        Some(settings) => route.cluster_state().and_then(|state| {
            let table = OutlierState::table_for(state, c, settings, route.mesh().version())?;
            Some((state, table))
        }),
    };
    let healthy = outlier
        .as_ref()
        .and_then(|(state, table)| table.healthy(&state.outlier));
    let balancer = healthy.as_deref().unwrap_or(&c.balancer);
    let mut picked = None;
    for _ in 0..HOST_SELECTION_ATTEMPTS {
        let mut p = match &key {
            Some(k) => Pick::with_key(&mut rng, k),
            None => Pick::new(&mut rng),
        };
        let Some(i) = balancer.pick(loads, &mut p) else {
            break;
        };
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        picked = Some(i);
        // Consistent hashing always picks the same endpoint: keep it.
        if !avoid || !route.tried.contains(i) {
            break;
        }
    }
    let Some(i) = picked else {
        return Err(MeshFailure::NoHealthyUpstream);
    };
    if let Some(slot) = &route.picked {
        slot.store(i, std::sync::atomic::Ordering::Relaxed);
    }
    let endpoint = loads
        .get(i as usize)
        .cloned()
        .ok_or(MeshFailure::NoHealthyUpstream)?;
    let tls = c
        .endpoints
        .get(i as usize)
        .map(|e| (c.tls.clone(), e.mtls, e.identity.clone()))
        .ok_or(MeshFailure::NoHealthyUpstream)?;
    let outlier = outlier.map(|(_, table)| {
        OutlierReport::new(
            table,
            i as usize,
            crate::inbound::is_grpc(request.headers()),
            attempt_timeout(route),
        )
    });
    Ok(Picked {
        endpoint,
        index: Some(i),
        lb: Some(c.lb.clone()),
        codec: c.codec,
        tls: Some(tls),
        outlier,
    })
}

/// The timeout that cuts an attempt: its per-try timeout (when the route retries) or
/// the route's, the shorter of the two.
fn attempt_timeout(route: &Route) -> Option<Duration> {
    let retries = route.retries();
    let per_try = retries.per_try_timeout.filter(|_| retries.attempts > 0);
    match (per_try, route.timeout()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How a request (`https`: sent as `https://`) to an endpoint of a cluster secured
/// `tls` (`mtls`: the endpoint takes auto mTLS; `identity`: its SPIFFE ID) is secured,
/// by a workload with `client`'s identity: the cluster's TLS origination (`SIMPLE` or
/// `MUTUAL`), mutual TLS, or plaintext. A workload without an identity speaks plaintext
/// under auto mTLS and cannot reach an `ISTIO_MUTUAL` destination. An `https://` request
/// that would go in plaintext originates `SIMPLE` TLS instead, verified with the system's
/// roots against the host it names.
fn transport(
    client: Option<&Arc<WorkloadIdentity>>,
    tls: Option<(UpstreamTls, bool, Arc<str>)>,
    https: bool,
) -> Result<Option<UpstreamTransport>, MeshFailure> {
    let secured = match tls {
        Some((UpstreamTls::Origination(settings), _, _)) => {
            Some(UpstreamTransport::Origination(settings))
        }
        Some((tls, mtls, identity)) => {
            mutual_tls(client, tls, mtls, identity)?.map(UpstreamTransport::Mesh)
        }
        None => None,
    };
    Ok(match secured {
        None if https => Some(UpstreamTransport::Origination(
            origination::simple().clone(),
        )),
        secured => secured,
    })
}

/// The mutual TLS of a request to an endpoint of a cluster secured `tls` (see
/// [`transport`]).
fn mutual_tls(
    client: Option<&Arc<WorkloadIdentity>>,
    tls: UpstreamTls,
    mtls: bool,
    identity: Arc<str>,
) -> Result<Option<MutualTls>, MeshFailure> {
    match tls {
        UpstreamTls::Disable | UpstreamTls::Origination(_) => Ok(None),
        UpstreamTls::Auto { sni } => Ok(match client {
            Some(client) if mtls => Some(MutualTls {
                client: client.clone(),
                server: Arc::from([identity]),
                sni: Some(sni),
            }),
            _ => None,
        }),
        UpstreamTls::IstioMutual {
            sni,
            subject_alt_names,
        } => {
            let Some(client) = client else {
                return Err(MeshFailure::ConnectOrReset(ResetReason::ConnectionFailure));
            };
            let server = if subject_alt_names.is_empty() {
                Arc::from([identity])
            } else {
                subject_alt_names
            };
            Ok(Some(MutualTls {
                client: client.clone(),
                server,
                sni: Some(sni),
            }))
        }
    }
}

/// Makes the URI absolute with the authority the upstream should see — the caller's,
/// or a rewrite's (`Host`) — and the caller's scheme: `https` for an `https://` request
/// (it goes over TLS), else `http` (HTTP/2's `:scheme`: Envoy keeps the downstream one,
/// also over a TLS origination). HTTP/1.1 carries the authority in `Host` (a rewrite's,
/// or the one the connection pools add from the URI, as hyper does); HTTP/2 in
/// `:authority`, so a `Host` header is removed (RFC 9113 §8.3.1). The URI is rebuilt
/// only when it does not already say it.
fn point_at(
    req: &mut Request<ReqBody>,
    protocol: Protocol,
    https: bool,
) -> Result<(), MeshFailure> {
    let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
    let host = req.headers().get(HOST);
    let current = req.uri().authority().map(|a| a.as_str().as_bytes());
    let fits = req.uri().scheme() == Some(&scheme)
        && match host {
            Some(h) => current == Some(h.as_bytes()),
            None => current.is_some(),
        };
    if !fits {
        let authority = match host {
            Some(h) => Authority::try_from(h.as_bytes()).map_err(|_| MeshFailure::NoAuthority)?,
            None => req
                .uri()
                .authority()
                .cloned()
                .ok_or(MeshFailure::NoAuthority)?,
        };
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|_| MeshFailure::NoAuthority)?;
        *req.uri_mut() = uri;
    }
    if protocol == Protocol::Http2 {
        req.headers_mut().remove(HOST);
    }
    Ok(())
}

/// The consistent-hashing key of a request, generating the cookie when it is absent
/// and has a ttl.
fn hash_key(
    c: &Cluster,
    req: &Request<ReqBody>,
    route: &Route,
    set_cookie: &mut Option<HeaderValue>,
    rng: &mut rand::rngs::ThreadRng,
) -> Option<Vec<u8>> {
    match c.hash_on.as_ref()? {
        HashOn::Header(name) => req.headers().get(name).map(|v| v.as_bytes().to_vec()),
        HashOn::QueryParam(name) => req.uri().query().and_then(|q| {
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then(|| v.as_bytes().to_vec())
            })
        }),
        // In-process, the caller is the workload itself: all its requests share a key.
        HashOn::SourceIp => route.view().map(|v| v.source_key().to_vec()),
        HashOn::Cookie { name, path, ttl } => {
            if let Some(v) = cookie(req, name) {
                return Some(v.into_bytes());
            }
            let ttl = (*ttl)?;
            let value = format!("{:016x}", rng.random::<u64>());
            // A zero ttl makes a session cookie (no Max-Age), as Envoy does.
            let mut header = format!("{name}=\"{value}\"");
            if !ttl.is_zero() {
                header.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
            }
            if let Some(p) = path {
                header.push_str(&format!("; Path={p}"));
            }
            header.push_str("; HttpOnly");
            *set_cookie = HeaderValue::from_str(&header).ok();
            Some(value.into_bytes())
        }
    }
}

fn cookie(req: &Request<ReqBody>, name: &str) -> Option<String> {
    req.headers().get_all(COOKIE).iter().find_map(|h| {
        h.to_str().ok()?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
    })
}

/// Nanoseconds on a monotonic clock shared by the process.
fn clock_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pin_project! {
    /// The response future of [`Balance`]: the endpoint's in-flight count goes with the
    /// response body; peak-EWMA observes the latency; a failure to connect is answered
    /// as Envoy does; outlier detection counts the outcome (a timeout when the attempt is
    /// dropped by the timeout that governs it).
    pub struct BalanceFuture<F> {
        #[pin]
        fut: F,
        in_flight: Option<InFlight>,
        ewma: Option<(Arc<EndpointState>, Instant, u64)>,
        set_cookie: Option<HeaderValue>,
        tried: Option<u32>,
        outlier: Option<OutlierReport>,
        mtls: bool,
    }

    impl<F> PinnedDrop for BalanceFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(report) = this.project().outlier.take() {
                report.abandoned();
            }
        }
    }
}

impl<F> Future for BalanceFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.fut.poll(cx));
        if let Some((endpoint, started, decay_ns)) = this.ewma.take() {
            let rtt = started.elapsed().as_nanos() as u64;
            endpoint.load().observe(rtt, clock_ns(), decay_ns);
        }
        let mut resp = match result {
            Ok(mut resp) => {
                if let Some(v) = this.set_cookie.take() {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
                if let Some(guard) = this.in_flight.take() {
                    resp.body_mut().hold(guard);
                }
                resp
            }
            Err(e) => MeshFailure::ConnectOrReset(reset_reason(&*e)).into_response(),
        };
        if let Some(report) = this.outlier.take()
            && let Some(outcome) = outlier_outcome(&resp, report.grpc)
        {
            report.record(outcome);
        }
        // Where the attempt went, for a retry to avoid it.
        let body = resp.body_mut();
        body.endpoint = this.tried.take();
        body.mtls = *this.mtls;
        Poll::Ready(Ok(resp))
    }
}

/// What outlier detection counts of an attempt answered `resp` (a gRPC request's
/// `grpc-status` header, when the response has one, as Envoy's router maps it). A
/// circuit breaker's overflow is the cluster's, not the endpoint's: not counted (as in
/// Envoy); nor are the mesh's other local answers.
fn outlier_outcome(resp: &Response<ResBody>, grpc: bool) -> Option<Outcome> {
    match resp.extensions().get::<MeshFailure>() {
        Some(MeshFailure::ConnectOrReset(ResetReason::Overflow | ResetReason::LocalReset)) => None,
        Some(MeshFailure::ConnectOrReset(_) | MeshFailure::Protocol) => {
            Some(Outcome::ConnectFailed)
        }
        Some(MeshFailure::Timeout) => Some(Outcome::Timeout),
        Some(_) => None,
        None => {
            let grpc_status = grpc
                .then(|| resp.headers().get("grpc-status"))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            Some(Outcome::Response(
                grpc_status.map_or(resp.status().as_u16(), grpc_to_http),
            ))
        }
    }
}

/// Envoy's reset reason for a failed upstream call, from the error's type: a failed
/// connect is a connection failure; an HTTP/2 `REFUSED_STREAM` is a refused stream
/// (the request was not processed); the caller's own request body failing while it was
/// sent is a local reset (the mesh reset the upstream request); anything else happened
/// after the request was sent and is a connection termination, which Istio's default
/// retry policy does not retry.
pub fn reset_reason(e: &(dyn std::error::Error + 'static)) -> ResetReason {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<crate::transport::pool::ConnectError>()
            || err
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(|e| e.is_connect())
        {
            return ResetReason::ConnectionFailure;
        }
        if err.is::<crate::transport::pool::Overflow>() {
            return ResetReason::Overflow;
        }
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return ResetReason::RefusedStream;
            }
            // A stream the client reset itself (its request body failed).
            if h2e.is_reset() && !h2e.is_remote() && !h2e.is_library() {
                return ResetReason::LocalReset;
            }
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_user())
        {
            return ResetReason::LocalReset;
        }
        cur = err.source();
    }
    ResetReason::ConnectionTermination
}
