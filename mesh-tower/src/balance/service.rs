use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{COOKIE, HOST, SET_COOKIE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri};
use mesh_config::model::Resolution;
use mesh_core::Upstream;
use mesh_core::balance::{LbPolicy, Pick};
use mesh_core::cluster::{Cluster, HashOn};
use rand::RngExt;
use tower::Service;

use crate::route::Routed;
use crate::upstream::Protocol;
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
        let Some(routed) = req.extensions().get::<Routed>().cloned() else {
            return Box::pin(async { Ok(MeshFailure::NoHealthyUpstream.into_response()) });
        };
        let attempts = req.extensions().get::<Attempts>().cloned();
        let ignore_previous = routed.retry_policy().ignore_previous_hosts;
        let mut set_cookie = None;
        let (address, port, cluster, index) = match &routed.upstream {
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
        let endpoint: Arc<str> = format!("{address}:{port}").into();
        if let Some(a) = &attempts
            && let Ok(mut v) = a.0.lock()
        {
            v.push(endpoint.clone());
        }
        tracing::Span::current().record("endpoint", &*endpoint);
        if let Err(e) = point_at(&mut req, &endpoint, &routed) {
            return Box::pin(async move { Err(e) });
        }
        let protocol = match cluster.as_ref().map(|c| c.port.protocol.as_str()) {
            Some("HTTP2" | "GRPC" | "GRPC-WEB") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        req.extensions_mut().insert(protocol);
        Box::pin(async move {
            let _in_flight = cluster.as_ref().map(|c| c.load.start(index));
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
                    Ok(resp)
                }
                Err(e) => Ok(MeshFailure::ConnectOrReset(reset_reason(&*e)).into_response()),
            }
        })
    }
}

/// Nanoseconds on a monotonic clock shared by the process.
fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Writes the endpoint into the URI; keeps the caller's authority in `Host` (unless a
/// rewrite already set one).
fn point_at(req: &mut Request<ReqBody>, endpoint: &str, routed: &Routed) -> Result<(), BoxError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(Authority::try_from(endpoint)?)
        .path_and_query(pq)
        .build()?;
    *req.uri_mut() = uri;
    if !req.headers().contains_key(HOST) {
        req.headers_mut().insert(HOST, routed.authority.clone());
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
            let mut header = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs().max(1));
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

/// Envoy's reset reason for a failed upstream call.
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> ResetReason {
    if let Some(he) = e.downcast_ref::<hyper_util::client::legacy::Error>()
        && he.is_connect()
    {
        return ResetReason::ConnectionFailure;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("refused stream") || text.contains("refused_stream") {
            return ResetReason::RefusedStream;
        }
        if text.contains("connection refused") || text.contains("connect") && text.contains("error")
        {
            return ResetReason::ConnectionFailure;
        }
        cur = err.source();
    }
    ResetReason::ConnectionTermination
}
