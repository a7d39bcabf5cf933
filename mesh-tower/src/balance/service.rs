use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{COOKIE, HOST, SET_COOKIE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version};
use http_body_util::BodyExt;
use mesh_config::model::H2UpgradePolicy;
use mesh_config::model::Resolution;
use mesh_core::Upstream;
use mesh_core::balance::{LbPolicy, Pick};
use mesh_core::cluster::{Cluster, HashOn};
use rand::RngExt;
use tower::Service;

use crate::body::Guarded;
use crate::route::Routed;
use crate::upstream::{Endpoint, Protocol};
use crate::{BoxError, MeshFailure, MeshService, ReqBody, ResetReason, Workload};

/// The endpoints (`address:port`) tried so far by one request, shared by its attempts
/// (the retry layer inserts it; the balancer avoids them, as Istio's
/// `retryIgnorePreviousHosts` asks).
#[derive(Clone, Debug, Default)]
pub struct Attempts(pub Arc<Mutex<Vec<Arc<str>>>>);

impl Attempts {
    /// The endpoints tried, in order.
    pub fn tried(&self) -> Vec<Arc<str>> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// See [`BalanceLayer`](super::BalanceLayer).
#[derive(Clone, Debug)]
pub struct Balance<S> {
    pub(super) inner: S,
    pub(super) workload: Arc<Workload>,
}

/// How many picks may be spent looking for an endpoint not tried yet (Envoy's default
/// `host_selection_retry_max_attempts` in Istio's retry policy).
const HOST_SELECTION_ATTEMPTS: usize = 5;

impl<S: MeshService> Service<Request<ReqBody>> for Balance<S> {
    crate::mesh_service_types!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let mut inner = crate::take(&mut self.inner);
        let Some(routed) = req.extensions().get::<Arc<Routed>>().cloned() else {
            return Box::pin(async { Ok(MeshFailure::NoHealthyUpstream.into_response()) });
        };
        let attempts = req.extensions().get::<Attempts>().cloned();
        let ignore_previous = routed.retry_policy().ignore_previous_hosts;
        let mut set_cookie = None;
        let (address, port, cluster, index) = match &routed.upstream {
            Upstream::Missing { .. } => {
                tracing::Span::current().record("endpoint", "none");
                return Box::pin(async { Ok(MeshFailure::ClusterNotFound.into_response()) });
            }
            Upstream::Passthrough { host, port } => (host.clone(), *port, None, 0),
            // PASSTHROUGH balancing and resolution NONE: the address the caller asked for.
            Upstream::Cluster(c)
                if c.lb == LbPolicy::Passthrough || c.service.resolution == Resolution::None =>
            {
                let authority = routed.authority.to_str().unwrap_or("");
                let (host, port) = mesh_core::route::split_authority(authority);
                (host.into(), port.unwrap_or(routed.port), None, 0)
            }
            Upstream::Cluster(c) => {
                let mut rng = rand::rng();
                let key = hash_key(c, &req, &self.workload, &mut set_cookie, &mut rng);
                let tried = attempts.as_ref().map(Attempts::tried).unwrap_or_default();
                let mut picked = None;
                for _ in 0..HOST_SELECTION_ATTEMPTS {
                    let mut p = match &key {
                        Some(k) => Pick::with_key(&mut rng, k),
                        None => Pick::new(&mut rng),
                    };
                    let Some((i, u)) = c.pick(&mut p) else { break };
                    picked = Some((i, u.clone()));
                    // Consistent hashing always picks the same endpoint: keep it.
                    if !ignore_previous || c.lb.is_hash() || !tried.contains(&u.id) {
                        break;
                    }
                }
                let Some((i, u)) = picked else {
                    tracing::Span::current().record("endpoint", "none");
                    return Box::pin(async { Ok(MeshFailure::NoHealthyUpstream.into_response()) });
                };
                (u.address.clone(), u.port, Some(c.clone()), i)
            }
        };
        let endpoint: Arc<str> = mesh_core::cluster::host_port(&address, port).into();
        if let Some(a) = &attempts
            && let Ok(mut v) = a.0.lock()
        {
            v.push(endpoint.clone());
        }
        tracing::Span::current().record("endpoint", &*endpoint);
        let protocol = protocol_for(cluster.as_deref(), req.version());
        if let Err(e) = point_at(&mut req, &routed, protocol) {
            return Box::pin(async move { Err(e) });
        }
        req.extensions_mut().insert(Endpoint(endpoint));
        req.extensions_mut().insert(protocol);
        // The least-request balancers count a request as outstanding until its response
        // body is done, not only until its headers arrive.
        let tracks_load = cluster
            .as_ref()
            .is_some_and(|c| matches!(c.lb, LbPolicy::LeastRequest | LbPolicy::PeakEwma { .. }));
        Box::pin(async move {
            let in_flight = match &cluster {
                Some(c) if tracks_load => Some(InFlight::new(c.clone(), index)),
                _ => None,
            };
            let started = Instant::now();
            let result = inner.call(req).await;
            if let Some(c) = &cluster
                && let LbPolicy::PeakEwma { decay_ns, .. } = c.lb
            {
                let rtt = started.elapsed().as_nanos() as u64;
                c.load.observe(index, rtt, clock_ns(), decay_ns);
            }
            match result {
                Ok(mut resp) => {
                    if let Some(v) = set_cookie {
                        resp.headers_mut().append(SET_COOKIE, v);
                    }
                    if let Some(guard) = in_flight {
                        let resp = resp.map(|inner| {
                            Guarded {
                                inner,
                                _guard: guard,
                            }
                            .boxed()
                        });
                        return Ok(resp);
                    }
                    Ok(resp)
                }
                Err(e) => Ok(MeshFailure::ConnectOrReset(reset_reason(&*e)).into_response()),
            }
        })
    }
}

/// One outstanding request to endpoint `index` of a cluster, ended when dropped.
struct InFlight {
    cluster: Arc<Cluster>,
    index: usize,
}

impl InFlight {
    fn new(cluster: Arc<Cluster>, index: usize) -> Self {
        cluster.load.begin(index);
        InFlight { cluster, index }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.load.finish(self.index);
    }
}

/// The codec to speak upstream, as Istio configures Envoy's cluster: HTTP/2 for
/// `HTTP2`/`GRPC`/`GRPC-WEB` ports and for `HTTP` ports whose DestinationRule says
/// `h2UpgradePolicy: UPGRADE`; HTTP/1.1 for other `HTTP` ports; the caller's protocol
/// when the DestinationRule says `useClientProtocol`, and for ports of unknown protocol
/// and passthrough traffic.
pub fn protocol_for(cluster: Option<&Cluster>, version: Version) -> Protocol {
    let client = if version == Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let Some(c) = cluster else { return client };
    let http = c
        .policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.http.as_ref());
    if http.and_then(|h| h.use_client_protocol) == Some(true) {
        return client;
    }
    match c.port.protocol.to_ascii_uppercase().as_str() {
        "HTTP2" | "GRPC" | "GRPC-WEB" => Protocol::Http2,
        "HTTP" => {
            if http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade) {
                Protocol::Http2
            } else {
                Protocol::Http1
            }
        }
        _ => client,
    }
}

/// Nanoseconds on a monotonic clock shared by the process.
fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Sets the URI to the authority the upstream should see — the caller's, or a rewrite's
/// — with the `http` scheme (https requests never reach the balancer: the client refuses
/// them, see [`crate::error::UnsupportedScheme`]). HTTP/1.1 carries it in `Host`;
/// HTTP/2 in `:authority`, so a `Host` header is removed (RFC 9113 §8.3.1).
fn point_at(
    req: &mut Request<ReqBody>,
    routed: &Routed,
    protocol: Protocol,
) -> Result<(), BoxError> {
    let authority = match req.headers().get(HOST) {
        Some(h) => h.clone(),
        None => routed.authority.clone(),
    };
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let auth = Authority::try_from(authority.as_bytes())
        .map_err(|_| -> BoxError { format!("invalid authority {authority:?}").into() })?;
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(auth)
        .path_and_query(pq)
        .build()?;
    *req.uri_mut() = uri;
    match protocol {
        Protocol::Http1 => {
            req.headers_mut().insert(HOST, authority);
        }
        Protocol::Http2 => {
            req.headers_mut().remove(HOST);
        }
    }
    Ok(())
}

/// The consistent-hashing key of a request, generating the cookie when it is absent
/// and has a ttl.
fn hash_key(
    c: &Cluster,
    req: &Request<ReqBody>,
    w: &Workload,
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
        HashOn::SourceIp => Some(format!("{}.{}", w.name, w.namespace).into_bytes()),
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

/// Envoy's reset reason for a failed upstream call, from the error's type: a failed
/// connect is a connection failure; an HTTP/2 `REFUSED_STREAM` is a refused stream
/// (the request was not processed); anything else happened after the request was sent
/// and is a connection termination, which Istio's default retry policy does not retry.
pub fn reset_reason(e: &(dyn std::error::Error + 'static)) -> ResetReason {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(he) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && he.is_connect()
        {
            return ResetReason::ConnectionFailure;
        }
        if let Some(h2e) = err.downcast_ref::<h2::Error>()
            && h2e.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return ResetReason::RefusedStream;
        }
        cur = err.source();
    }
    ResetReason::ConnectionTermination
}
