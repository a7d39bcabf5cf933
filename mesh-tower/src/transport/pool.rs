//! Connection pools: each endpoint's own, kept in its [`EndpointState`].
//!
//! The balancer has already chosen the endpoint, so its pool is reached without a lookup:
//! an HTTP/1.1 pool is a stack of idle connections (the most recently used first, so a
//! light load keeps few connections warm), an HTTP/2 pool one multiplexed connection. A
//! general-purpose keyed pool (hyper-util's legacy client) hashes the request's scheme
//! and authority three times per request to find a pool the mesh already holds, and
//! races a new connect against every checkout: 8.6k instructions per request more than
//! this pool (docs/benchmarks.md). Here a checkout is a mutex held for a `Vec::pop`.
//! (hyper-util's newer composable pools, `client::pool`, keep no idle timeout yet.) The
//! connections are hyper's own (`hyper::client::conn`), dialled by hyper-util's
//! `HttpConnector` (DNS, `TCP_NODELAY`, Envoy's 10 s connect timeout); idle ones close
//! after 4 s — at most 8 s idle when reused, inside the 10 s the mesh's own listeners
//! keep an idle connection (`accept::ListenerTimeouts`), so that a request is not sent on
//! a connection the listener is closing.
//!
//! Every pool is bounded even where no DestinationRule sets a `connectionPool`
//! ([`PoolBounds`]: 1024 connections per endpoint, Envoy's default `max_connections`,
//! and 8192 requests waiting for one): a burst of concurrent requests is queued, then
//! refused with Envoy's overflow, instead of opening a connection per request until the
//! process runs out of descriptors. Each field a DestinationRule sets replaces its
//! default.
//!
//! The request keeps its logical authority (`reviews:9080`) in its URI, so HTTP/2's
//! `:authority` and HTTP/1.1's `Host` say what the caller (or a rewrite) asked for; the
//! endpoint to dial travels beside it in [`Outgoing`]. The codec is the one the balancer
//! chose ([`Protocol`]): the request's version is set to match it, as Envoy translates
//! between downstream and upstream codecs. A request that a reused connection refused
//! before sending it (the server closed it while it sat idle) is sent again on another.
//!
//! How a connection is secured ([`UpstreamTransport`]) is part of the pool key: an
//! endpoint has one plaintext pool, one per mutual TLS key, and one per TLS origination
//! (its settings, and the name sent as SNI and verified when the settings take it from
//! the request's authority, as Envoy's `auto_sni` does). A connection is never lent to a
//! request expecting another transport, server or name. Every kind shares the dial (TCP,
//! `TCP_NODELAY`, the connect timeout) and hyper's handshakes; TLS is a handshake
//! between the two, bounded by the connect timeout too.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tower::Service;

use mesh_core::cluster::{Cluster, ConnectionLimits, Origination};

use super::origination::{self, OriginationTls};
use crate::identity::{WorkloadIdentity, peer_spiffe_id};
use crate::state::{ActiveRequest, ClusterState, EndpointState, give_back, take_below};
use crate::{BoxError, ReqBody, ResBody};

/// Envoy's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many TLS origination pools (settings × server name) one endpoint keeps.
const MAX_ORIGINATION_POOLS: usize = 64;
/// How long an idle connection is kept (see the module documentation).
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The bounds of every endpoint's connection pools where the endpoint's cluster sets
/// none (a DestinationRule's `connectionPool` replaces them): connections per endpoint,
/// and requests waiting for one. Past both, a request is answered at once with Envoy's
/// overflow (`503`, flag `UO`) instead of opening connection after connection until the
/// process runs out of descriptors. Set them with [`set_pool_bounds`] before the
/// endpoints are made (a pool reads them when it is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    /// Connections to one endpoint (made one way: plaintext, mutual TLS with one key,
    /// or one TLS origination), open or being made: 1024 (the `max_connections` Envoy
    /// gives a cluster by default, here per endpoint), fewer when the descriptor limit
    /// is low ([`PoolBounds::for_descriptors`]). An HTTP/1.1 connection carries one
    /// request at a time, so this also bounds the requests in flight over HTTP/1.1.
    pub max_connections: u32,
    /// Requests waiting for a connection to one endpoint (when every connection is busy
    /// and no other may be made): 8192. A waiting request holds its headers and a
    /// future, no descriptor.
    pub max_pending_requests: u32,
}

impl PoolBounds {
    /// The defaults for a process that may open `descriptors` files: 1024 connections
    /// per endpoint, or an eighth of the descriptors when that is fewer (the listeners
    /// take a quarter each: in one process, a pool's connections arrive at a workload's
    /// inbound port), and 8192 waiting requests.
    pub fn for_descriptors(descriptors: u64) -> Self {
        let eighth = u32::try_from(descriptors / 8).unwrap_or(u32::MAX);
        PoolBounds {
            max_connections: eighth.clamp(1, 1024),
            max_pending_requests: 8192,
        }
    }
}

impl Default for PoolBounds {
    /// [`PoolBounds::for_descriptors`] of the process's soft descriptor limit.
    fn default() -> Self {
        Self::for_descriptors(super::accept::descriptor_limit())
    }
}

static POOL_BOUNDS: std::sync::RwLock<Option<PoolBounds>> = std::sync::RwLock::new(None);

/// Sets the bounds of the connection pools made from now on (see [`PoolBounds`]).
pub fn set_pool_bounds(bounds: PoolBounds) {
    *POOL_BOUNDS.write().unwrap_or_else(|e| e.into_inner()) = Some(bounds);
}

/// The bounds connection pools are made with ([`PoolBounds::default`] unless set).
pub fn pool_bounds() -> PoolBounds {
    POOL_BOUNDS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_default()
}

/// The protocol to speak to an endpoint, chosen by the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl Protocol {
    /// The request version the codec speaks.
    pub fn version(self) -> Version {
        match self {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::Http2 => Version::HTTP_2,
        }
    }
}

/// A request on its way to one endpoint: what the connection pools (or another transport
/// given to [`Mesh::client_over`](crate::Mesh::client_over)) receive.
#[derive(Debug)]
pub struct Outgoing {
    /// The request, its URI absolute with the logical authority. Over HTTP/1.1 its
    /// `Host` header is set only when a rewrite set it: otherwise the URI's authority is
    /// the `Host` to send (the pools add it, as hyper's client does).
    pub request: Request<ReqBody>,
    /// The endpoint to send it to.
    pub endpoint: Arc<EndpointState>,
    /// The codec to speak.
    pub protocol: Protocol,
    /// How the connection is secured, `None` for plaintext.
    pub tls: Option<UpstreamTransport>,
    /// The circuit breakers and connection settings of the endpoint's cluster, when it
    /// has any (`None`: no limit, Envoy's connect timeout and idle timeout).
    pub limits: Option<ClusterLimits>,
}

/// A cluster's circuit breakers and connection settings, with the counters they read:
/// what a request to one of its endpoints passes through (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct ClusterLimits {
    /// The cluster (its [`ConnectionLimits`]).
    pub cluster: Arc<Cluster>,
    /// Its counters, kept across configurations.
    pub state: Arc<ClusterState>,
}

impl ClusterLimits {
    fn limits(&self) -> &ConnectionLimits {
        &self.cluster.limits
    }
}

/// A circuit breaker of the endpoint's cluster, or the pool's [`PoolBounds`], turned the
/// request away: Envoy's overflow (`UO`), answered 503 and never retried.
#[derive(Debug, thiserror::Error)]
#[error("{0} overflow: the cluster's circuit breaker is open, or the pool's bound reached")]
pub struct Overflow(&'static str);

/// How a connection to an endpoint is secured beyond TCP: part of the pool key.
#[derive(Debug, Clone)]
pub enum UpstreamTransport {
    /// Mutual TLS between workloads of the mesh.
    Mesh(MutualTls),
    /// TLS origination: a DestinationRule's `SIMPLE` or `MUTUAL` TLS, or an `https://`
    /// request (see [`origination`]).
    Origination(Arc<Origination>),
}

impl From<MutualTls> for UpstreamTransport {
    fn from(tls: MutualTls) -> Self {
        UpstreamTransport::Mesh(tls)
    }
}

/// A connection to the endpoint could not be made: Envoy's "connection failure", which
/// Istio's default retry policy retries.
#[derive(Debug, thiserror::Error)]
#[error("connection to {endpoint} failed: {source}")]
pub struct ConnectError {
    endpoint: Arc<str>,
    #[source]
    source: BoxError,
}

impl ConnectError {
    fn new(endpoint: &Arc<str>, source: impl Into<BoxError>) -> Self {
        ConnectError {
            endpoint: endpoint.clone(),
            source: source.into(),
        }
    }
}

/// An idle HTTP/1.1 connection.
struct IdleHttp1 {
    conn: Http1Conn,
    since: Instant,
}

/// What a connection may still do: its cluster's per-connection settings when it was
/// made, and how many requests it carried.
#[derive(Debug, Clone, Copy)]
struct ConnLife {
    born: Instant,
    requests: u32,
    max_requests: Option<u32>,
    max_duration: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl ConnLife {
    fn new(limits: Option<&ClusterLimits>) -> Self {
        let l = limits.map(ClusterLimits::limits);
        ConnLife {
            born: Instant::now(),
            requests: 0,
            max_requests: l.and_then(|l| l.max_requests_per_connection),
            max_duration: l.and_then(|l| l.max_connection_duration),
            idle_timeout: l.and_then(|l| l.idle_timeout),
        }
    }

    /// True when it may carry one more request (`maxRequestsPerConnection`,
    /// `maxConnectionDuration`).
    fn may_carry(&self) -> bool {
        self.max_requests.is_none_or(|m| self.requests < m)
            && self.max_duration.is_none_or(|d| self.born.elapsed() < d)
    }
}

/// An HTTP/1.1 connection, its life and its place among the connections.
struct Http1Conn {
    send: http1::SendRequest<ReqBody>,
    life: ConnLife,
    slot: Arc<ConnSlot>,
}

/// Mutual TLS to an endpoint: the caller's identity, and who the server must prove to
/// be. Part of the pool key: connections made with one identity are never lent to
/// another workload, nor to a request expecting another server.
#[derive(Debug, Clone)]
pub struct MutualTls {
    /// The caller's identity (its certificate, the trust bundle).
    pub client: Arc<WorkloadIdentity>,
    /// The SPIFFE IDs the server may prove (the endpoint's own, or the
    /// DestinationRule's `subjectAltNames`).
    pub server: Arc<[Arc<str>]>,
    /// The SNI to send.
    pub sni: Option<Arc<str>>,
}

impl MutualTls {
    /// True when connections made for `other` may carry requests for `self`.
    fn same_key(&self, other: &MutualTls) -> bool {
        Arc::ptr_eq(&self.client, &other.client)
            && (Arc::ptr_eq(&self.server, &other.server) || self.server == other.server)
            && self.sni == other.sni
    }
}

/// The connections of one endpoint made one way (plaintext, mutual TLS with one key, or
/// one TLS origination).
struct ConnPool {
    idle_timeout: Duration,
    /// Its bounds where the cluster sets none.
    bounds: PoolBounds,
    /// Requests waiting for one of its connections, where the cluster does not count
    /// them (`http1MaxPendingRequests`).
    pending: AtomicU32,
    /// The name a TLS origination sends and verifies.
    server_name: Option<ServerName<'static>>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    http1: Mutex<Vec<IdleHttp1>>,
    /// True while a task closes the expired idle HTTP/1.1 connections.
    reaping: AtomicBool,
    /// The HTTP/2 connections: one, unless `maxConcurrentStreams` filled it and another
    /// was made (as Envoy's pool does).
    http2: Mutex<Vec<Http2Conn>>,
    /// Held while an HTTP/2 connection is being made, so that concurrent requests share
    /// one connection instead of each dialling its own.
    http2_dialling: tokio::sync::Mutex<()>,
    /// Its connections, open or being made.
    open: Arc<AtomicU32>,
    /// Woken when a connection is put back idle or closes, or an HTTP/2 stream ends: a
    /// request waiting for a connection (a circuit breaker's pending request) looks
    /// again.
    freed: Arc<Notify>,
}

/// The HTTP/2 connection of a pool: its handle, its life, and its streams in flight.
#[derive(Clone)]
struct Http2Conn {
    send: http2::SendRequest<ReqBody>,
    /// Its life, when its cluster limits it (`maxRequestsPerConnection`,
    /// `maxConnectionDuration`).
    life: Option<Arc<Mutex<ConnLife>>>,
    streams: Arc<AtomicU32>,
}

impl ConnPool {
    fn new(idle_timeout: Duration, bounds: PoolBounds) -> Self {
        Self::named(idle_timeout, bounds, None)
    }

    fn named(
        idle_timeout: Duration,
        mut bounds: PoolBounds,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        bounds.max_connections = bounds.max_connections.max(1);
        ConnPool {
            idle_timeout,
            bounds,
            pending: AtomicU32::new(0),
            server_name,
            http1: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
            http2: Mutex::new(Vec::new()),
            http2_dialling: tokio::sync::Mutex::new(()),
            open: Arc::new(AtomicU32::new(0)),
            freed: Arc::new(Notify::new()),
        }
    }

    /// An idle HTTP/1.1 connection ready for a request, if one is.
    fn take_idle_http1(&self) -> Option<Http1Conn> {
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        // Expired ones are left to the reaper (a clock read per request saved): one may
        // serve a request up to one more idle timeout late — unless its cluster set an
        // idle timeout of its own, which is checked here.
        while let Some(IdleHttp1 { conn, since }) = idle.pop() {
            let expired = conn.life.idle_timeout.is_some_and(|t| since.elapsed() >= t);
            if conn.send.is_ready() && !expired && conn.life.may_carry() {
                return Some(conn);
            }
        }
        None
    }

    /// Puts `conn` back among the idle connections once it can take another request:
    /// now, or when the response body it is still receiving ends. A connection that has
    /// carried its cluster's `maxRequestsPerConnection` (or lived its
    /// `maxConnectionDuration`) is dropped instead: it closes once its response ends.
    fn release_http1(pool: &Arc<ConnPool>, mut conn: Http1Conn) {
        if !conn.life.may_carry() {
            return;
        }
        if conn.send.is_ready() {
            pool.put_idle_http1(pool, conn);
        } else if !conn.send.is_closed() {
            let pool = Arc::downgrade(pool);
            tokio::spawn(async move {
                if conn.send.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.put_idle_http1(&pool, conn);
                }
            });
        }
    }

    fn put_idle_http1(&self, me: &Arc<ConnPool>, conn: Http1Conn) {
        let reap_every = conn
            .life
            .idle_timeout
            .map_or(self.idle_timeout, |t| t.min(self.idle_timeout));
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(IdleHttp1 {
            conn,
            since: Instant::now(),
        });
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(me), reap_every));
        }
        drop(idle);
        self.freed.notify_one();
    }

    /// An HTTP/2 connection that is open, may carry another request and, under
    /// `max_streams`, has a stream free — reserved for the caller. Closed and retired
    /// connections are forgotten (their streams in flight finish on them).
    fn open_http2(&self, max_streams: Option<u32>) -> Option<(Http2Conn, Option<StreamSlot>)> {
        let mut conns = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| {
            !c.send.is_closed()
                && c.life
                    .as_ref()
                    .is_none_or(|l| l.lock().is_ok_and(|l| l.may_carry()))
        });
        let Some(max) = max_streams else {
            return conns.first().map(|c| (c.clone(), None));
        };
        conns
            .iter()
            .find(|c| take_below(&c.streams, Some(max)))
            .map(|c| {
                let slot = StreamSlot {
                    streams: c.streams.clone(),
                    freed: self.freed.clone(),
                };
                (c.clone(), Some(slot))
            })
    }
}

/// A connection counted against its endpoint's connections, its pool's and (when the
/// cluster limits them) its cluster's `maxConnections`, until the connection ends — or,
/// for a connection retired by `maxRequestsPerConnection`, until its last response ends
/// (Envoy closes it then): released once, waking a request waiting for a connection.
struct ConnSlot {
    endpoint: Arc<EndpointState>,
    open: Arc<AtomicU32>,
    freed: Arc<Notify>,
    cluster: Option<Arc<ClusterState>>,
    released: AtomicBool,
}

impl ConnSlot {
    /// A slot for one more connection of `pool` to `endpoint`, unless the cluster has
    /// its `maxConnections` — Envoy's rule: a pool without any connection may always
    /// make one, so that its pending requests are never stranded — or, where the
    /// cluster sets no `maxConnections`, the pool has its [`PoolBounds`]' connections.
    fn take(
        endpoint: &Arc<EndpointState>,
        pool: &ConnPool,
        limits: Option<&ClusterLimits>,
    ) -> Option<Arc<ConnSlot>> {
        let cluster = match limits {
            Some(l) if l.limits().max_connections.is_some() => {
                let gauge = &l.state.breakers.connections;
                let first = pool.open.load(Ordering::Acquire) == 0;
                if !take_below(gauge, l.limits().max_connections) {
                    if !first {
                        l.state
                            .breakers
                            .connection_overflow
                            .fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    gauge.fetch_add(1, Ordering::AcqRel);
                }
                pool.open.fetch_add(1, Ordering::AcqRel);
                Some(l.state.clone())
            }
            _ => {
                if !take_below(&pool.open, Some(pool.bounds.max_connections)) {
                    return None;
                }
                None
            }
        };
        endpoint.connection_opened();
        Some(Arc::new(ConnSlot {
            endpoint: endpoint.clone(),
            open: pool.open.clone(),
            freed: pool.freed.clone(),
            cluster,
            released: AtomicBool::new(false),
        }))
    }

    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(c) = &self.cluster {
            give_back(&c.breakers.connections);
        }
        give_back(&self.open);
        self.endpoint.connection_closed();
        self.freed.notify_one();
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request waiting for a connection: counted against its cluster's
/// `http1MaxPendingRequests` when the cluster sets it, else against its pool's
/// [`PoolBounds::max_pending_requests`] (and, when the cluster has circuit breakers,
/// still among the cluster's pending requests, which its retry budget reads).
struct PendingRequest<'a> {
    cluster: Option<&'a AtomicU32>,
    pool: Option<&'a AtomicU32>,
}

impl<'a> PendingRequest<'a> {
    /// `breakers`: the cluster's limits, when it has circuit breakers.
    fn enter(breakers: Option<&'a ClusterLimits>, pool: &'a ConnPool) -> Result<Self, Overflow> {
        let own = breakers.and_then(|l| l.limits().max_pending_requests);
        let mut entered = PendingRequest {
            cluster: None,
            pool: None,
        };
        let admitted = match (breakers, own) {
            (Some(l), Some(max)) => {
                let gauge = &l.state.breakers.pending;
                take_below(gauge, Some(max)) && {
                    entered.cluster = Some(gauge);
                    true
                }
            }
            _ => {
                let max = Some(pool.bounds.max_pending_requests);
                take_below(&pool.pending, max) && {
                    entered.pool = Some(&pool.pending);
                    if let Some(l) = breakers {
                        take_below(&l.state.breakers.pending, None);
                        entered.cluster = Some(&l.state.breakers.pending);
                    }
                    true
                }
            }
        };
        if admitted {
            return Ok(entered);
        }
        if let Some(l) = breakers {
            l.state
                .breakers
                .request_overflow
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(Overflow("pending requests"))
    }
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        for gauge in [self.cluster, self.pool].into_iter().flatten() {
            give_back(gauge);
        }
    }
}

/// The TLS origination settings and name of a pool.
struct OriginationKey {
    settings: Arc<Origination>,
    /// The host the name comes from, when the settings have no `sni`.
    host: Option<Box<str>>,
}

/// The connection pools of one endpoint, made empty and filled on use: one for
/// plaintext, one per mutual TLS key, one per TLS origination key.
pub(crate) struct EndpointPools {
    /// What the connector dials (`http://address:port/`), `None` for an id that is not
    /// an authority.
    target: Option<Uri>,
    connector: HttpConnector,
    idle_timeout: Duration,
    /// The bounds of its pools.
    bounds: PoolBounds,
    plain: Arc<ConnPool>,
    /// The mutual TLS pools, by key (a workload calls an endpoint with one key; a few
    /// workloads of one process share the endpoint's state).
    mutual: Mutex<Vec<(MutualTls, Arc<ConnPool>)>>,
    /// The TLS origination pools, by settings (the same allocation, or equal values:
    /// after an update, connections made with the same settings stay in use) and name.
    originated: Mutex<Vec<(OriginationKey, Arc<ConnPool>)>>,
}

impl std::fmt::Debug for EndpointPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPools")
            .field("target", &self.target)
            .field(
                "idle_http1",
                &self.plain.http1.lock().map_or(0, |v| v.len()),
            )
            .finish_non_exhaustive()
    }
}

impl EndpointPools {
    /// The pools of the endpoint `address:port`.
    pub(crate) fn new(id: &str) -> Self {
        Self::with_settings(id, IDLE_TIMEOUT, pool_bounds())
    }

    pub(crate) fn with_settings(id: &str, idle_timeout: Duration, bounds: PoolBounds) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        EndpointPools {
            target: format!("http://{id}/").parse().ok(),
            connector,
            idle_timeout,
            bounds,
            plain: Arc::new(ConnPool::new(idle_timeout, bounds)),
            mutual: Mutex::new(Vec::new()),
            originated: Mutex::new(Vec::new()),
        }
    }

    /// Number of idle plaintext HTTP/1.1 connections.
    #[cfg(test)]
    fn idle_http1(&self) -> usize {
        self.plain.http1.lock().map_or(0, |v| v.len())
    }

    /// The pool of connections made `tls`'s way for a request to `uri` (whose host a
    /// TLS origination may name).
    fn pool(
        &self,
        id: &Arc<str>,
        tls: Option<&UpstreamTransport>,
        uri: &Uri,
    ) -> Result<Arc<ConnPool>, ConnectError> {
        match tls {
            None => Ok(self.plain.clone()),
            Some(UpstreamTransport::Mesh(tls)) => Ok(self.mutual(tls)),
            Some(UpstreamTransport::Origination(settings)) => {
                self.originated(id, settings, uri.host())
            }
        }
    }

    /// The pool of mutual TLS connections with `tls`'s key.
    fn mutual(&self, tls: &MutualTls) -> Arc<ConnPool> {
        let mut mutual = self.mutual.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, pool)) = mutual.iter().find(|(k, _)| k.same_key(tls)) {
            return pool.clone();
        }
        // A key whose identity is gone (its workload was dropped) is forgotten.
        mutual.retain(|(k, _)| Arc::strong_count(&k.client) > 1);
        let pool = Arc::new(ConnPool::new(self.idle_timeout, self.bounds));
        mutual.push((tls.clone(), pool.clone()));
        pool
    }

    /// The pool of connections originating TLS with `settings` to `host`.
    fn originated(
        &self,
        id: &Arc<str>,
        settings: &Arc<Origination>,
        host: Option<&str>,
    ) -> Result<Arc<ConnPool>, ConnectError> {
        // With an `sni`, the host names neither the SNI nor what is verified.
        let host = if settings.sni.is_some() { None } else { host };
        let mut pools = self.originated.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, pool)) = pools.iter_mut().find(|(k, _)| {
            k.host.as_deref() == host
                && (Arc::ptr_eq(&k.settings, settings) || *k.settings == **settings)
        }) {
            if !Arc::ptr_eq(&key.settings, settings) {
                // Equal settings of a newer configuration: the older ones may go.
                key.settings = settings.clone();
            }
            return Ok(pool.clone());
        }
        let Some(name) = settings
            .sni
            .as_deref()
            .or(host)
            .and_then(origination::server_name)
        else {
            let name = settings.sni.as_deref().or(host).unwrap_or("");
            return Err(ConnectError::new(
                id,
                format!("TLS origination: `{name}` is not a server name"),
            ));
        };
        // Settings no configuration holds any more are forgotten.
        pools.retain(|(k, _)| Arc::strong_count(&k.settings) > 1);
        // Hosts come from requests: beyond a bound, the oldest pools are forgotten
        // (their connections finish what they carry), so that ever new names cannot
        // grow an endpoint's pools without limit.
        if pools.len() >= MAX_ORIGINATION_POOLS {
            let excess = pools.len() + 1 - MAX_ORIGINATION_POOLS;
            pools.drain(..excess);
        }
        let pool = Arc::new(ConnPool::named(self.idle_timeout, self.bounds, Some(name)));
        let key = OriginationKey {
            settings: settings.clone(),
            host: host.map(Box::from),
        };
        pools.push((key, pool.clone()));
        Ok(pool)
    }

    async fn dial(
        &self,
        id: &Arc<str>,
        tls: Option<&UpstreamTransport>,
        pool: &ConnPool,
        http2: bool,
        connect_timeout: Option<Duration>,
    ) -> Result<Box<dyn IoBox>, ConnectError> {
        let Some(target) = &self.target else {
            return Err(ConnectError::new(id, "invalid endpoint address"));
        };
        // A TLS origination that cannot be configured makes no connection at all.
        let origination = match tls {
            Some(UpstreamTransport::Origination(settings)) => {
                Some(originate(id, settings, pool, http2).await?)
            }
            _ => None,
        };
        let mut connector = self.connector.clone();
        if let Some(t) = connect_timeout {
            connector.set_connect_timeout(Some(t));
        }
        let tcp = connector
            .call(target.clone())
            .await
            .map_err(|e| ConnectError::new(id, e))?
            .into_inner();
        match (tls, origination) {
            (Some(UpstreamTransport::Mesh(tls)), _) => {
                Ok(Box::new(handshake(id, tcp, tls, http2).await?))
            }
            (_, Some((config, name))) => Ok(Box::new(
                tls_connect(id, tcp, config, name, "TLS origination").await?,
            )),
            _ => Ok(Box::new(tcp)),
        }
    }

    /// A new HTTP/1.1 connection, counted by `slot` for as long as it lives.
    async fn new_http1(
        &self,
        id: &Arc<str>,
        tls: Option<&UpstreamTransport>,
        pool: &ConnPool,
        slot: Arc<ConnSlot>,
        limits: Option<&ClusterLimits>,
    ) -> Result<Http1Conn, BoxError> {
        let io = self
            .dial(id, tls, pool, false, connect_timeout(limits))
            .await?;
        let (send, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::new(id, e))?;
        let held = slot.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
            drop(held);
        });
        Ok(Http1Conn {
            send,
            life: ConnLife::new(limits),
            slot,
        })
    }

    /// A connection for an HTTP/1.1 request: an idle one, or a new one. Without an idle
    /// connection, and none that may be made (the cluster's `maxConnections`, else the
    /// pool's [`PoolBounds`]), the request is pending — refused past
    /// `http1MaxPendingRequests`, else the pool's bound — until a connection is put back
    /// or one may be made. With circuit breakers, as in Envoy's pool, a request is
    /// pending while its connection is made too.
    async fn http1(
        &self,
        endpoint: &Arc<EndpointState>,
        tls: Option<&UpstreamTransport>,
        pool: &ConnPool,
        limits: Option<&ClusterLimits>,
    ) -> Result<(Http1Conn, bool), BoxError> {
        let id = endpoint.id();
        if let Some(conn) = pool.take_idle_http1() {
            return Ok((conn, true));
        }
        let breakers = limits.filter(|l| l.limits().has_breakers());
        // Without circuit breakers, a request that may have a connection of its own
        // does not wait; with them, it is pending until connected, as in Envoy.
        if breakers.is_none()
            && let Some(slot) = ConnSlot::take(endpoint, pool, None)
        {
            return Ok((self.new_http1(id, tls, pool, slot, limits).await?, false));
        }
        let _pending = PendingRequest::enter(limits, pool)?;
        let slot = loop {
            let freed = pool.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(conn) = pool.take_idle_http1() {
                return Ok((conn, true));
            }
            // Not waiting any more (a wakeup meanwhile goes to another request).
            if let Some(slot) = ConnSlot::take(endpoint, pool, breakers) {
                break slot;
            }
            freed.await;
        };
        Ok((self.new_http1(id, tls, pool, slot, limits).await?, false))
    }

    /// The HTTP/2 connection of `pool` with room for one more stream, made if there is
    /// none (or it closed, or was retired), and whether it was made before this
    /// request. A request that finds no room (the connection has `maxConcurrentStreams`
    /// streams, or another may not be made under `maxConnections`) is pending — refused
    /// past `http1MaxPendingRequests` — until a stream ends or a connection is made.
    async fn http2(
        &self,
        pool: &ConnPool,
        endpoint: &Arc<EndpointState>,
        tls: Option<&UpstreamTransport>,
        limits: Option<&ClusterLimits>,
    ) -> Result<(Http2Conn, Option<StreamSlot>, bool), BoxError> {
        let max_streams = limits.and_then(|l| l.limits().max_concurrent_streams);
        if let Some((conn, stream)) = pool.open_http2(max_streams) {
            return Ok((conn, stream, true));
        }
        let mut pending = None;
        loop {
            let slot = loop {
                let freed = pool.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some((conn, stream)) = pool.open_http2(max_streams) {
                    return Ok((conn, stream, true));
                }
                // No connection, or every one at `maxConcurrentStreams`: another one, if
                // `maxConnections` (or the pool's bound) allows — not waiting any more
                // while it is made.
                if let Some(slot) = ConnSlot::take(endpoint, pool, limits) {
                    break slot;
                }
                if pending.is_none() {
                    pending = Some(PendingRequest::enter(limits, pool)?);
                }
                freed.await;
            };
            match self
                .new_http2(pool, endpoint, tls, limits, slot, max_streams)
                .await?
            {
                Some((conn, stream)) => return Ok((conn, stream, false)),
                // One was made by a concurrent request meanwhile: look again.
                None => continue,
            }
        }
    }

    /// Makes an HTTP/2 connection of `pool`, counted by `slot`, and reserves a stream on
    /// it — unless a concurrent request made one with room while this one waited its
    /// turn to dial (`None`): one dial at a time, so that concurrent requests share a
    /// connection.
    async fn new_http2(
        &self,
        pool: &ConnPool,
        endpoint: &Arc<EndpointState>,
        tls: Option<&UpstreamTransport>,
        limits: Option<&ClusterLimits>,
        slot: Arc<ConnSlot>,
        max_streams: Option<u32>,
    ) -> Result<Option<(Http2Conn, Option<StreamSlot>)>, BoxError> {
        let id = endpoint.id();
        let _dialling = pool.http2_dialling.lock().await;
        if let Some(found) = pool.open_http2(max_streams) {
            // Not taken after all: the reservation is given back at once.
            drop(found);
            return Ok(None);
        }
        let io = self
            .dial(id, tls, pool, true, connect_timeout(limits))
            .await?;
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::new(id, e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
            drop(slot);
        });
        let conn = Http2Conn {
            send,
            life: Some(ConnLife::new(limits))
                .filter(|l| l.max_requests.is_some() || l.max_duration.is_some())
                .map(|l| Arc::new(Mutex::new(l))),
            streams: Arc::new(AtomicU32::new(0)),
        };
        let stream = max_streams.map(|_| {
            conn.streams.fetch_add(1, Ordering::AcqRel);
            StreamSlot {
                streams: conn.streams.clone(),
                freed: pool.freed.clone(),
            }
        });
        pool.http2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.clone());
        // Every request waiting for a connection may share this one.
        pool.freed.notify_waiters();
        Ok(Some((conn, stream)))
    }
}

/// The cluster's connect timeout, when it is not the connector's own.
fn connect_timeout(limits: Option<&ClusterLimits>) -> Option<Duration> {
    limits
        .map(|l| l.limits().connect_timeout)
        .filter(|t| *t != CONNECT_TIMEOUT)
}

/// A stream to an endpoint: plaintext or TLS.
trait IoBox: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoBox for T {}

/// The configuration and name of a TLS origination with `settings` over a connection of
/// `pool` speaking HTTP/2 (`http2`) or HTTP/1.1.
async fn originate(
    id: &Arc<str>,
    settings: &Arc<Origination>,
    pool: &ConnPool,
    http2: bool,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ConnectError> {
    // Built once per settings; the first build reads files (and maybe the system's
    // roots), off the async workers.
    let built = match origination::cached(settings) {
        Some(b) => b,
        None => {
            let owned = settings.clone();
            let fresh = tokio::task::spawn_blocking(move || OriginationTls::new(&owned))
                .await
                .map_err(|e| ConnectError::new(id, format!("TLS origination: {e}")))?;
            origination::store(settings, id, fresh)
        }
    };
    let config = match built {
        Ok(built) => built.client_config(http2).clone(),
        Err(e) => {
            tracing::debug!(endpoint = %id, error = %e, "no connection made: TLS origination cannot be configured");
            return Err(ConnectError::new(id, format!("TLS origination: {e}")));
        }
    };
    let name = pool
        .server_name
        .clone()
        .ok_or_else(|| ConnectError::new(id, "TLS origination without a server name"))?;
    Ok((config, name))
}

/// The client side of a TLS handshake (`kind`, for the log) on `tcp` with `config`,
/// sending and verifying `name` (as the configuration's verifier does), within the
/// connect timeout. A failure is a connect failure, logged with its reason.
async fn tls_connect(
    id: &Arc<str>,
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    kind: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %id, error = %e, "{kind} handshake with the endpoint failed");
            Err(ConnectError::new(id, format!("TLS handshake failed: {e}")))
        }
        Err(_) => {
            tracing::debug!(endpoint = %id, "{kind} handshake with the endpoint timed out");
            Err(ConnectError::new(id, "TLS handshake timed out"))
        }
    }
}

/// The client side of mutual TLS on `tcp`: the caller's certificate in force, the
/// server's chain verified against the trust bundle, then its SPIFFE ID against those
/// `tls` accepts — before a byte of a request is sent. A refusal is a connect failure,
/// logged with its reason.
async fn handshake(
    id: &Arc<str>,
    tcp: TcpStream,
    tls: &MutualTls,
    http2: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let material = tls.client.current();
    let config = material.client_config(http2).clone();
    let name = tls
        .sni
        .as_deref()
        .and_then(|s| ServerName::try_from(s.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));
    let stream = tls_connect(id, tcp, config, name, "mutual TLS").await?;
    let peer = peer_spiffe_id(stream.get_ref().1.peer_certificates());
    match peer {
        Some(p) if tls.server.iter().any(|s| **s == *p.as_str()) => Ok(stream),
        other => {
            let found = other.map_or_else(|| "no SPIFFE ID".to_string(), |p| p.to_string());
            let expected = tls
                .server
                .iter()
                .map(|s| &**s)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::debug!(endpoint = %id, %found, %expected, "the endpoint's identity is not the one expected; connection closed");
            Err(ConnectError::new(
                id,
                format!("the server proved {found}, expected {expected}"),
            ))
        }
    }
}

/// Closes the pool's expired idle HTTP/1.1 connections every `idle_timeout` until none
/// is left.
async fn reap(pool: Weak<ConnPool>, idle_timeout: Duration) {
    loop {
        tokio::time::sleep(idle_timeout).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.http1.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| {
            !c.conn.send.is_closed()
                && c.since.elapsed() < c.conn.life.idle_timeout.unwrap_or(idle_timeout)
        });
        if idle.is_empty() {
            // Under the lock: the next connection put back starts a new reaper.
            pool.reaping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// HTTP/1.1 sends the target in origin form and the authority in `Host` (hyper's client
/// does the same; a port that is the scheme's default is left out).
fn to_http1(request: &mut Request<ReqBody>) {
    if !request.headers().contains_key(HOST)
        && let Some(host) = host_header(request.uri())
    {
        request.headers_mut().insert(HOST, host);
    }
    if request.method() != Method::CONNECT && request.uri().authority().is_some() {
        let origin = match request.uri().path_and_query() {
            Some(p) if p.as_str() != "/" => Uri::from(p.clone()),
            _ => Uri::from(PathAndQuery::from_static("/")),
        };
        *request.uri_mut() = origin;
    }
}

fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let default_port = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => Some(443),
        Some(s) if *s == Scheme::HTTP => Some(80),
        _ => None,
    };
    let value = if authority.as_str().contains('@') || authority.port_u16() == default_port {
        match authority.port_u16().filter(|p| Some(*p) != default_port) {
            Some(port) => HeaderValue::try_from(format!("{}:{port}", authority.host())),
            None => HeaderValue::from_str(authority.host()),
        }
    } else {
        HeaderValue::from_str(authority.as_str())
    };
    value.ok()
}

/// Sends `request` to `endpoint` over one of its pooled connections (made `tls`'s way),
/// through its cluster's circuit breakers (`limits`). The response comes with the
/// request's place among the cluster's requests in flight, to be held until its body
/// ends.
async fn send(
    endpoint: Arc<EndpointState>,
    protocol: Protocol,
    tls: Option<UpstreamTransport>,
    limits: Option<ClusterLimits>,
    mut request: Request<ReqBody>,
) -> Result<(Response<Incoming>, Option<Attached>), BoxError> {
    *request.version_mut() = protocol.version();
    let id = endpoint.id();
    let pools = endpoint.pools();
    let pool = pools.pool(id, tls.as_ref(), request.uri())?;
    let limits = limits.as_ref();
    let mut resent = 0;
    match protocol {
        Protocol::Http1 => {
            to_http1(&mut request);
            loop {
                let (mut conn, reused) =
                    pools.http1(&endpoint, tls.as_ref(), &pool, limits).await?;
                let mut attached = attach(limits, None)?;
                conn.life.requests += 1;
                match conn.send.try_send_request(request).await {
                    Ok(response) => {
                        if let Some(a) = attached.as_mut()
                            && !conn.life.may_carry()
                        {
                            a.retiring = Some(conn.slot.clone());
                        }
                        ConnPool::release_http1(&pool, conn);
                        return Ok((response, attached));
                    }
                    Err(e) => request = unsent(e, reused, &mut resent)?,
                }
            }
        }
        Protocol::Http2 => loop {
            let (mut conn, stream, reused) =
                pools.http2(&pool, &endpoint, tls.as_ref(), limits).await?;
            let attached = attach(limits, stream)?;
            if let Some(mut life) = conn.life.as_ref().and_then(|l| l.lock().ok()) {
                life.requests += 1;
            }
            match conn.send.try_send_request(request).await {
                Ok(response) => return Ok((response, attached)),
                Err(e) => request = unsent(e, reused, &mut resent)?,
            }
        },
    }
}

/// A request on a connection: counted among its cluster's requests in flight (refused
/// past `http2MaxRequests`, as Envoy's pool does when it attaches a request to a
/// connection) and, on HTTP/2 under `maxConcurrentStreams`, among its connection's
/// streams. `None` when nothing counts it.
fn attach(
    limits: Option<&ClusterLimits>,
    stream: Option<StreamSlot>,
) -> Result<Option<Attached>, Overflow> {
    let counted = |l: &&ClusterLimits| {
        l.limits().has_breakers() || l.limits().retry_budget.is_some() || stream.is_some()
    };
    let Some(l) = limits.filter(counted) else {
        return Ok(None);
    };
    let active =
        ActiveRequest::start(&l.state, l.limits().max_requests).ok_or(Overflow("requests"))?;
    Ok(Some(Attached {
        _active: active,
        _stream: stream,
        retiring: None,
    }))
}

/// A request in flight on a connection (see [`attach`]); dropping it ends it.
#[derive(Debug)]
pub(crate) struct Attached {
    _active: ActiveRequest,
    /// Its stream, reserved under `maxConcurrentStreams` (given back when dropped).
    _stream: Option<StreamSlot>,
    /// The connection, when this request was its last: it counts no more once the
    /// response ends.
    retiring: Option<Arc<ConnSlot>>,
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot")
            .field("endpoint", self.endpoint.id())
            .finish_non_exhaustive()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(slot) = self.retiring.take() {
            slot.release();
        }
    }
}

/// A stream reserved on an HTTP/2 connection under `maxConcurrentStreams`: given back,
/// waking a request waiting for one, when the request ends (or is not sent).
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: Arc<AtomicU32>,
    freed: Arc<Notify>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        give_back(&self.streams);
        self.freed.notify_one();
    }
}

/// How many times a request is sent again after connections closed before sending it.
const MAX_RESENDS: u32 = 3;

/// The request back from a connection that closed before sending it, to be sent on
/// another — unless the connection was new (then the endpoint itself refuses it) or the
/// request was already sent again [`MAX_RESENDS`] times.
fn unsent(
    mut e: TrySendError<Request<ReqBody>>,
    reused: bool,
    resent: &mut u32,
) -> Result<Request<ReqBody>, BoxError> {
    match e.take_message() {
        Some(request) if reused && *resent < MAX_RESENDS => {
            *resent += 1;
            Ok(request)
        }
        _ => Err(Box::new(e.into_error())),
    }
}

/// Sends each [`Outgoing`] request over its endpoint's pooled connections (Envoy's
/// default connect timeout, 10 s; idle connections kept 4 s; [`PoolBounds`] where the
/// cluster sets no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pools;

impl Service<Outgoing> for Pools {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = PoolFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outgoing) -> PoolFuture {
        PoolFuture(Box::pin(send(
            out.endpoint,
            out.protocol,
            out.tls,
            out.limits,
            out.request,
        )))
    }
}

type Sent = Result<(Response<Incoming>, Option<Attached>), BoxError>;

/// The response future of [`Pools`].
pub struct PoolFuture(Pin<Box<dyn Future<Output = Sent> + Send>>);

impl Future for PoolFuture {
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map_ok(|(resp, attached)| {
            let mut resp = resp.map(ResBody::incoming);
            if let Some(a) = attached {
                resp.body_mut().hold_attached(a);
            }
            resp
        })
    }
}

impl std::fmt::Debug for PoolFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolFuture")
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    use super::*;

    /// A backend on 127.0.0.1 answering `host target` (its `Host` header and request
    /// target); with `close`, every response says `Connection: close`. Counts the
    /// connections it accepted and those that ended.
    struct Backend {
        id: Arc<str>,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    }

    async fn backend(close: bool) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id: Arc<str> = l.local_addr().unwrap().to_string().into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        let host = req.headers().get(HOST).map_or("-", |h| h.to_str().unwrap());
                        let body = format!("{host} {}", req.uri());
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        if close {
                            resp.headers_mut()
                                .insert("connection", HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            id,
            accepted,
            ended,
        }
    }

    fn endpoint(id: &Arc<str>, idle_timeout: Duration) -> Arc<EndpointState> {
        Arc::new(EndpointState::with_pools(
            Box::new([EndpointPools::with_settings(
                id,
                idle_timeout,
                PoolBounds::default(),
            )]),
            id.clone(),
        ))
    }

    async fn get(endpoint: Arc<EndpointState>, protocol: Protocol, uri: &str) -> String {
        let request = Request::get(uri).body(ReqBody::empty()).unwrap();
        let resp = Pools
            .call(Outgoing {
                request,
                endpoint,
                protocol,
                tls: None,
                limits: None,
            })
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http1_requests_one_after_the_other_reuse_one_connection() {
        let b = backend(false).await;
        let ep = endpoint(&b.id, IDLE_TIMEOUT);
        for i in 0..20 {
            let said = get(
                ep.clone(),
                Protocol::Http1,
                &format!("http://reviews:9080/r?i={i}"),
            )
            .await;
            assert_eq!(said, format!("reviews:9080 /r?i={i}"));
        }
        assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(ep.pools().idle_http1(), 1);
    }

    #[tokio::test]
    async fn http1_concurrent_requests_open_connections_that_are_kept() {
        let b = backend(false).await;
        let ep = endpoint(&b.id, IDLE_TIMEOUT);
        let all = (0..8).map(|_| get(ep.clone(), Protocol::Http1, "http://reviews:9080/"));
        let said = futures_join_all(all).await;
        assert!(said.iter().all(|s| s == "reviews:9080 /"), "{said:?}");
        let opened = b.accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened} connections");
        assert_eq!(ep.pools().idle_http1(), opened);
        // Reused afterwards: no new connection.
        get(ep.clone(), Protocol::Http1, "http://reviews:9080/").await;
        assert_eq!(b.accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_not_reused() {
        let b = backend(true).await;
        let ep = endpoint(&b.id, IDLE_TIMEOUT);
        for _ in 0..5 {
            assert_eq!(get(ep.clone(), Protocol::Http1, "http://a/x").await, "a /x");
        }
        assert_eq!(b.accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        // A server that answers one request per connection with keep-alive, then
        // closes the socket: the pool learns it only from the connection.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id: Arc<str> = l.local_addr().unwrap().to_string().into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let ep = endpoint(&id, IDLE_TIMEOUT);
        for _ in 0..3 {
            assert_eq!(get(ep.clone(), Protocol::Http1, "http://a/").await, "ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let b = backend(false).await;
        let ep = endpoint(&b.id, IDLE_TIMEOUT);
        let all = (0..16).map(|_| get(ep.clone(), Protocol::Http2, "http://ratings:9080/p"));
        let said = futures_join_all(all).await;
        // HTTP/2 carries the authority in `:authority`; the server maps it to the URI.
        assert!(
            said.iter().all(|s| s == "- http://ratings:9080/p"),
            "{said:?}"
        );
        assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let b = backend(false).await;
        let ep = endpoint(&b.id, Duration::from_millis(100));
        get(ep.clone(), Protocol::Http1, "http://a/").await;
        assert_eq!(ep.pools().idle_http1(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.ended.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the idle connection stayed open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ep.pools().idle_http1(), 0);
        assert!(
            !ep.pools().plain.reaping.load(Ordering::SeqCst),
            "the reaper ended"
        );
        // The pool works on: a new connection, and a new reaper.
        get(ep.clone(), Protocol::Http1, "http://a/").await;
        assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
        assert!(ep.pools().plain.reaping.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id: Arc<str> = l.local_addr().unwrap().to_string().into();
        drop(l);
        let ep = endpoint(&id, IDLE_TIMEOUT);
        let request = Request::get("http://a/").body(ReqBody::empty()).unwrap();
        let err = Pools
            .call(Outgoing {
                request,
                endpoint: ep,
                protocol: Protocol::Http1,
                tls: None,
                limits: None,
            })
            .await
            .unwrap_err();
        assert!(err.is::<ConnectError>(), "{err}");
        assert!(err.to_string().contains(&*id), "{err}");
    }

    #[test]
    fn origination_pools_are_keyed_by_settings_and_name() {
        let pools = EndpointPools::new("127.0.0.1:443");
        let id: Arc<str> = "127.0.0.1:443".into();
        let a = Arc::new(Origination::simple());
        let same = |x: &Arc<ConnPool>, y: &Arc<ConnPool>| Arc::ptr_eq(x, y);
        let p1 = pools.originated(&id, &a, Some("api.example.com")).unwrap();
        // Equal settings (a new configuration's), the same name: the same pool.
        let equal = Arc::new(Origination::simple());
        let p2 = pools
            .originated(&id, &equal, Some("api.example.com"))
            .unwrap();
        assert!(same(&p1, &p2));
        // Another host: another SNI, another pool.
        let p3 = pools.originated(&id, &a, Some("web.example.com")).unwrap();
        assert!(!same(&p1, &p3));
        // Other settings: another pool.
        let insecure = Arc::new(Origination {
            insecure_skip_verify: true,
            ..Origination::simple()
        });
        let p4 = pools
            .originated(&id, &insecure, Some("api.example.com"))
            .unwrap();
        assert!(!same(&p1, &p4));
        // A fixed SNI: the host does not matter.
        let sni = Arc::new(Origination {
            sni: Some("edge.example.com".into()),
            ..Origination::simple()
        });
        let p5 = pools.originated(&id, &sni, Some("a.example.com")).unwrap();
        let p6 = pools.originated(&id, &sni, Some("b.example.com")).unwrap();
        assert!(same(&p5, &p6));
        assert!(
            matches!(&p5.server_name, Some(ServerName::DnsName(n)) if n.as_ref() == "edge.example.com")
        );
        // Not a name: a connect error, no pool.
        let err = pools.originated(&id, &a, Some("bad name")).err();
        assert!(err.is_some_and(|e| e.to_string().contains("not a server name")));
        // Plaintext is another pool still.
        assert!(!same(&pools.plain, &p1));
        // Ever new names from requests: the pools stay bounded.
        for i in 0..(3 * MAX_ORIGINATION_POOLS) {
            pools
                .originated(&id, &a, Some(&format!("h{i}.example.com")))
                .unwrap();
        }
        assert!(pools.originated.lock().unwrap().len() <= MAX_ORIGINATION_POOLS);
    }

    #[test]
    fn the_host_header_leaves_out_the_default_port_and_user_info() {
        let cases = [
            ("http://reviews:9080/", Some("reviews:9080")),
            ("http://reviews/", Some("reviews")),
            ("http://reviews:80/", Some("reviews")),
            ("https://reviews:443/", Some("reviews")),
            ("https://reviews:80/", Some("reviews:80")),
            ("http://user@reviews:9080/", Some("reviews:9080")),
            ("http://user@reviews/", Some("reviews")),
            ("http://[::1]:8080/", Some("[::1]:8080")),
            ("/relative", None),
        ];
        for (uri, want) in cases {
            let got = host_header(&uri.parse().unwrap());
            assert_eq!(got.as_ref().map(|h| h.to_str().unwrap()), want, "{uri}");
        }
    }

    #[test]
    fn http1_requests_go_in_origin_form_with_their_host() {
        let cases = [
            ("http://a:81/p/q?x=1", None, "/p/q?x=1", "a:81"),
            ("http://a:81", None, "/", "a:81"),
            ("http://a:81/", Some("rewritten"), "/", "rewritten"),
        ];
        for (uri, host, target, want_host) in cases {
            let mut b = Request::get(uri);
            if let Some(h) = host {
                b = b.header(HOST, h);
            }
            let mut req = b.body(ReqBody::empty()).unwrap();
            to_http1(&mut req);
            assert_eq!(req.uri().to_string(), target, "{uri}");
            assert_eq!(req.headers()[HOST], want_host, "{uri}");
        }
    }

    /// Without circuit breakers, a pool opens at most its bound's connections to an
    /// endpoint; requests beyond them wait (up to the pending bound) and are served as
    /// connections come free; past that they are refused at once as an overflow.
    #[tokio::test]
    async fn http1_pool_bounds_cap_connections_and_queue_then_overflow() {
        // A backend answering after 300 ms, counting connections.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id: Arc<str> = l.local_addr().unwrap().to_string().into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<Incoming>| async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let bounds = PoolBounds {
            max_connections: 2,
            max_pending_requests: 3,
        };
        let ep = Arc::new(EndpointState::with_pools(
            Box::new([EndpointPools::with_settings(&id, IDLE_TIMEOUT, bounds)]),
            id.clone(),
        ));
        let started = Instant::now();
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let ep = ep.clone();
                tokio::spawn(async move {
                    let request = Request::get("http://a/").body(ReqBody::empty()).unwrap();
                    let out = Pools
                        .call(Outgoing {
                            request,
                            endpoint: ep,
                            protocol: Protocol::Http1,
                            tls: None,
                            limits: None,
                        })
                        .await;
                    match out {
                        Ok(resp) => {
                            let body = resp.into_body().collect().await.unwrap().to_bytes();
                            Ok((body, started.elapsed()))
                        }
                        Err(e) => Err((e.is::<Overflow>(), started.elapsed())),
                    }
                })
            })
            .collect();
        let mut served = Vec::new();
        let mut refused = Vec::new();
        for c in calls {
            match c.await.unwrap() {
                Ok((body, at)) => {
                    assert_eq!(body, "ok");
                    served.push(at);
                }
                Err((overflow, at)) => {
                    assert!(overflow, "a refusal that is not an overflow");
                    refused.push(at);
                }
            }
        }
        assert_eq!((served.len(), refused.len()), (5, 3));
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "connections opened");
        // Refused at once, not after waiting for a connection.
        assert!(
            refused.iter().all(|t| *t < Duration::from_millis(250)),
            "{refused:?}"
        );
        // Two rounds of two and one of one: the last served after three responses' time.
        let last = served.iter().max().unwrap();
        assert!(*last >= Duration::from_millis(850), "{last:?}");
        // Nothing waits any more: the next request is served on an idle connection.
        assert_eq!(get(ep.clone(), Protocol::Http1, "http://a/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    async fn futures_join_all<F: Future<Output = String> + Send + 'static>(
        all: impl Iterator<Item = F>,
    ) -> Vec<String> {
        let handles: Vec<_> = all.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
