//! The accept loop every listener shares (the ingress gateway's ports, a workload's
//! inbound port): accept, hand each connection to a task of its own, serve HTTP/1.1 and
//! HTTP/2 on it (plaintext or over TLS) with upgrades, stop accepting on shutdown and let
//! the connections in progress finish their requests.
//!
//! Each request carries the addresses of its connection as [`PeerAddr`] and [`LocalAddr`]
//! extensions (and, over mutual TLS, the peer's verified identity).
//!
//! Every listener is bounded in time by [`ListenerTimeouts`] (10 s by default, the value
//! Envoy's edge guidance gives its request-headers timeout): a connection that sends
//! nothing within the bound of being accepted is closed, and so is an HTTP/1 connection
//! that has not sent a whole request head within the bound of starting it or of its
//! previous response — a client trickling its headers a byte at a time, a silent
//! connection and an idle keep-alive connection alike. (Envoy counts its
//! `request_headers_timeout` from a request's first byte and bounds idle connections with
//! a separate, longer `idle_timeout`; hyper's header timer is one bound for both.) TLS
//! handshakes are bounded where TLS is accepted; at the ingress, a request body that
//! stops arriving is answered `408` after `request_body_idle`. Not bounded yet: a request
//! body that stops arriving at a workload's inbound port, an idle HTTP/2 connection, a
//! client that stops within the first bytes of the HTTP/2 preface.
//!
//! Every listener is bounded in connections too ([`ConnectionLimits`], derived from the
//! process's descriptor limit): past its own bound, or the bound of all the listeners
//! of the process together, a new connection is accepted and closed at once — a clean
//! refusal the client sees as a closed connection, where an exhausted descriptor table
//! would stall every listener and every outbound call alike. The rest of the
//! descriptors stay for what keeps working meanwhile: the connections already
//! established, the upstream connections, configuration files, and the admin endpoint
//! ([`serve_admin`]), which counts its connections apart under a small bound of its
//! own. Accept errors (the descriptor limit reached anyway) back off from 5 ms up to 1 s
//! instead of spinning; refusals and errors are logged at most once a second, with how
//! many were not.

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::BoxError;
use crate::identity::PeerIdentity;
use crate::state::{give_back, take_below};

/// The address of the peer of the connection a request arrived on: a request extension
/// set by every listener of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The local address a request arrived at (AuthorizationPolicy's `destination.ip` and
/// `destination.port`): a request extension set by every listener of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalAddr(pub SocketAddr);

/// The time bounds of every listener of the process (the ingress gateway's ports, the
/// workloads' inbound ports, the admin endpoint): see the module documentation. Set them
/// with [`set_listener_timeouts`] before the listeners start; a listener reads them when
/// it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerTimeouts {
    /// How long a connection may take to send its first byte, and an HTTP/1 connection
    /// a whole request head from its first byte or from the end of its previous
    /// response (so also how long a keep-alive connection may stay idle); 10 s. Zero
    /// turns both bounds off, as a zero timeout does in Envoy.
    pub request_headers: Duration,
    /// How long the ingress waits for more of a request body that has stopped
    /// arriving before answering `408` (flag `SI`): Envoy's `stream_idle_timeout`,
    /// 5 minutes. Zero turns it off.
    pub request_body_idle: Duration,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        ListenerTimeouts {
            request_headers: Duration::from_secs(10),
            request_body_idle: Duration::from_secs(300),
        }
    }
}

static TIMEOUTS: RwLock<Option<ListenerTimeouts>> = RwLock::new(None);

/// Sets the time bounds of the listeners started from now on.
pub fn set_listener_timeouts(timeouts: ListenerTimeouts) {
    *TIMEOUTS.write().unwrap_or_else(|e| e.into_inner()) = Some(timeouts);
}

/// The time bounds listeners start with ([`ListenerTimeouts::default`] unless set).
pub fn listener_timeouts() -> ListenerTimeouts {
    TIMEOUTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_default()
}

/// The bounds on the connections listeners hold at once (see the module
/// documentation). Set them with [`set_connection_limits`] before the listeners start;
/// a listener reads them when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections one listener (a gateway port, a workload's inbound port) holds at
    /// once: a quarter of the descriptor limit by default, so that a flood on one port
    /// leaves room for the others (in one process, the ingress's calls to the workloads
    /// arrive at their inbound ports).
    pub per_listener: u32,
    /// Connections all the listeners of the process hold at once, the admin endpoint
    /// aside: half of the descriptor limit by default, the other half kept for upstream
    /// connections, files and the admin endpoint (Envoy's overload manager's
    /// `global_downstream_max_connections`, in spirit).
    pub process: u32,
    /// Streams one HTTP/2 connection carries at once (`SETTINGS_MAX_CONCURRENT_STREAMS`):
    /// 100, the value of Envoy's edge guidance.
    pub streams_per_connection: u32,
}

/// Connections the admin endpoint holds at once, outside the process's bound.
pub const ADMIN_CONNECTIONS: u32 = 64;

impl ConnectionLimits {
    /// The defaults for a process that may open `descriptors` files (its `RLIMIT_NOFILE`).
    pub fn for_descriptors(descriptors: u64) -> Self {
        let d = u32::try_from(descriptors).unwrap_or(u32::MAX);
        ConnectionLimits {
            per_listener: (d / 4).max(1),
            process: (d / 2).max(1),
            streams_per_connection: 100,
        }
    }
}

impl Default for ConnectionLimits {
    /// [`ConnectionLimits::for_descriptors`] of the process's soft descriptor limit
    /// (1024 when it cannot be read; unlimited reads as 1 048 576).
    fn default() -> Self {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(1 << 20, |n| n.min(1 << 20));
        Self::for_descriptors(nofile)
    }
}

static LIMITS: RwLock<Option<ConnectionLimits>> = RwLock::new(None);

/// Sets the connection bounds of the listeners started from now on (the process-wide
/// bound counts every listener's connections, whenever it started).
pub fn set_connection_limits(limits: ConnectionLimits) {
    *LIMITS.write().unwrap_or_else(|e| e.into_inner()) = Some(limits);
}

/// The connection bounds listeners start with ([`ConnectionLimits::default`] unless
/// set).
pub fn connection_limits() -> ConnectionLimits {
    let set = *LIMITS.read().unwrap_or_else(|e| e.into_inner());
    set.unwrap_or_default()
}

/// The connections the listeners of the process hold (the admin endpoint aside).
static PROCESS_CONNECTIONS: LazyLock<Arc<AtomicU32>> =
    LazyLock::new(|| Arc::new(AtomicU32::new(0)));

/// The connections the listeners of the process hold now, the admin endpoint aside.
pub fn open_connections() -> u32 {
    PROCESS_CONNECTIONS.load(Ordering::Relaxed)
}

/// Who a listener lets in: its own bound, and the bound it shares with others.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    listener: Arc<AtomicU32>,
    listener_max: u32,
    shared: Option<(Arc<AtomicU32>, u32)>,
}

impl Admission {
    /// A listener of the process under `limits`, counted among the process's
    /// connections.
    pub(crate) fn process(limits: &ConnectionLimits) -> Self {
        Admission {
            listener: Arc::new(AtomicU32::new(0)),
            listener_max: limits.per_listener,
            shared: Some((PROCESS_CONNECTIONS.clone(), limits.process)),
        }
    }

    /// The admin endpoint: [`ADMIN_CONNECTIONS`], counted apart.
    pub(crate) fn admin() -> Self {
        Admission {
            listener: Arc::new(AtomicU32::new(0)),
            listener_max: ADMIN_CONNECTIONS,
            shared: None,
        }
    }

    /// A listener under `per_listener`, sharing `shared` (a gauge and its bound).
    #[cfg(test)]
    pub(crate) fn with(per_listener: u32, shared: Option<(Arc<AtomicU32>, u32)>) -> Self {
        Admission {
            listener: Arc::new(AtomicU32::new(0)),
            listener_max: per_listener,
            shared,
        }
    }

    /// A place for one more connection, held until dropped; `None` past a bound.
    fn admit(&self) -> Option<Admitted> {
        if !take_below(&self.listener, Some(self.listener_max)) {
            return None;
        }
        if let Some((gauge, max)) = &self.shared
            && !take_below(gauge, Some(*max))
        {
            give_back(&self.listener);
            return None;
        }
        Some(Admitted {
            listener: self.listener.clone(),
            shared: self.shared.as_ref().map(|(g, _)| g.clone()),
        })
    }
}

/// A connection's place under its listener's bounds.
struct Admitted {
    listener: Arc<AtomicU32>,
    shared: Option<Arc<AtomicU32>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        give_back(&self.listener);
        if let Some(g) = &self.shared {
            give_back(g);
        }
    }
}

/// A log line at most once per second; the lines not written are counted and said with
/// the next one.
#[derive(Debug)]
struct Throttled {
    next: Instant,
    skipped: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            next: Instant::now(),
            skipped: 0,
        }
    }

    /// `Some(lines skipped since the last one)` when a line may be written now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now < self.next {
            self.skipped += 1;
            return None;
        }
        self.next = now + Duration::from_secs(1);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// What a listener knows of one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) local: Option<SocketAddr>,
    /// The peer's verified identity, over mutual TLS.
    pub(crate) identity: Option<PeerIdentity>,
}

impl ConnectionInfo {
    /// A plaintext connection from `peer` on `stream`.
    pub(crate) fn plain(stream: &TcpStream, peer: SocketAddr) -> Self {
        ConnectionInfo {
            peer,
            local: stream.local_addr().ok(),
            identity: None,
        }
    }
}

/// A service that records its connection's [`ConnectionInfo`] in each request (as
/// [`PeerAddr`], [`LocalAddr`] and [`PeerIdentity`] extensions) before calling `inner`.
#[derive(Debug, Clone)]
pub(crate) struct WithConnection<S> {
    inner: S,
    info: ConnectionInfo,
}

impl<S> WithConnection<S> {
    pub(crate) fn new(inner: S, info: ConnectionInfo) -> Self {
        WithConnection { inner, info }
    }
}

impl<S, B> Service<Request<B>> for WithConnection<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let ext = req.extensions_mut();
        ext.insert(PeerAddr(self.info.peer));
        if let Some(local) = self.info.local {
            ext.insert(LocalAddr(local));
        }
        if let Some(id) = &self.info.identity {
            ext.insert(id.clone());
        }
        self.inner.call(req)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the connections in
/// progress finish their requests. Each request carries its connection's [`PeerAddr`].
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let admission = Admission::process(&connection_limits());
    serve_plain(listener, admission, app, shutdown).await
}

/// Serves an admin endpoint's `app` on `listener` as [`serve`] does, its connections
/// counted apart from the process's ([`ADMIN_CONNECTIONS`]), so that it keeps answering
/// when the other listeners are at their bound.
pub async fn serve_admin<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_plain(listener, Admission::admin(), app, shutdown).await
}

/// [`serve`] under `admission`'s bounds.
pub(crate) async fn serve_plain<S, B>(
    listener: TcpListener,
    admission: Admission,
    app: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    accept_admitting(
        listener,
        admission,
        shutdown,
        move |stream, peer, builder, watcher| {
            let app = WithConnection::new(app.clone(), ConnectionInfo::plain(&stream, peer));
            serve_connection(stream, app, builder, watcher)
        },
    )
    .await
}

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on one connection with `app`, until the
/// connection ends or the graceful shutdown `watcher` belongs to is done.
pub(crate) async fn serve_connection<IO, S, B>(
    io: IO,
    app: S,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections on `listener` until `shutdown` completes, running
/// `handle(stream, peer, builder, watcher)` in a task of its own for each (the handler
/// serves the connection through `watcher`, so that shutdown waits for it); then waits
/// for the connections in progress to finish their requests. The listener's
/// connections count against the process's [`ConnectionLimits`].
pub(crate) async fn accept_each<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr, Builder<TokioExecutor>, Watcher) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admission = Admission::process(&connection_limits());
    accept_admitting(listener, admission, shutdown, handle).await
}

/// [`accept_each`] under `admission`'s bounds: a connection past them is closed as soon
/// as it is accepted.
pub(crate) async fn accept_admitting<F, Fut>(
    listener: TcpListener,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr, Builder<TokioExecutor>, Watcher) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let timeouts = listener_timeouts();
    let bound = (!timeouts.request_headers.is_zero()).then_some(timeouts.request_headers);
    let mut builder = Builder::new(TokioExecutor::new());
    // Without a timer hyper enforces no header timeout at all.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bound);
    builder
        .http2()
        .max_concurrent_streams(connection_limits().streams_per_connection);
    let graceful = GracefulShutdown::new();
    // Tells the connections still waiting for their first byte that the listener stops.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let local = listener.local_addr().ok();
    let (mut refusals, mut errors) = (Throttled::new(), Throttled::new());
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => {
                        backoff = Duration::ZERO;
                        x
                    }
                    // A transient accept error (too many open files, a reset before
                    // accept): keep serving, waiting longer each time it repeats.
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                        if let Some(skipped) = errors.allow() {
                            tracing::warn!(error = %e, listener = ?local, retry_in = ?backoff, skipped, "accept failed");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => continue,
                            () = &mut shutdown => break,
                        }
                    }
                };
                let Some(admitted) = admission.admit() else {
                    if let Some(skipped) = refusals.allow() {
                        tracing::warn!(%peer, listener = ?local, skipped, "connection refused: the listeners hold as many connections as they may");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (handle, builder, watcher) = (handle.clone(), builder.clone(), graceful.watcher());
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    // A connection that sends nothing is closed after the bound (hyper's
                    // protocol detection would wait forever), or when the listener stops.
                    let mut byte = [0u8; 1];
                    let first = async {
                        match bound {
                            Some(b) => tokio::time::timeout(b, stream.peek(&mut byte)).await.ok(),
                            None => Some(stream.peek(&mut byte).await),
                        }
                    };
                    let first = tokio::select! {
                        first = first => first,
                        _ = stop.wait_for(|s| *s) => None,
                    };
                    match first {
                        Some(Ok(n)) if n > 0 => handle(stream, peer, builder, watcher).await,
                        _ => tracing::debug!(%peer, "connection closed before its first byte"),
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    let _ = stopping.send(true);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `ok` on a fresh 127.0.0.1 port under `admission`, until the test ends.
    async fn listener(admission: Admission) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        tokio::spawn(serve_plain(l, admission, app, std::future::pending()));
        addr
    }

    /// Sends one keep-alive request on `conn`; true when `ok` came back.
    async fn ask(conn: &mut TcpStream) -> bool {
        let req = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        if conn.write_all(req).await.is_err() {
            return false;
        }
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        let read = async {
            while !got.ends_with(b"ok") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            true
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap_or(false)
    }

    /// True when the listener closed `conn` without a byte (a refusal).
    async fn refused(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn a_listener_at_its_bound_refuses_new_connections_and_serves_the_others() {
        let addr = listener(Admission::with(3, None)).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            assert!(ask(&mut c).await);
            held.push(c);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(refused(&mut extra).await, "a fourth connection was let in");
        // The established connections keep working.
        for c in &mut held {
            assert!(ask(c).await);
        }
        // A connection that ends gives its place back.
        drop(held.pop());
        let mut again = None;
        for _ in 0..50 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if ask(&mut c).await {
                again = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            again.is_some(),
            "the place of a closed connection was not given back"
        );
    }

    #[tokio::test]
    async fn listeners_share_the_process_bound_and_the_admin_endpoint_counts_apart() {
        let process = Arc::new(AtomicU32::new(0));
        let a = listener(Admission::with(10, Some((process.clone(), 4)))).await;
        let b = listener(Admission::with(10, Some((process.clone(), 4)))).await;
        let admin = listener(Admission::with(2, None)).await;
        let mut held = Vec::new();
        for addr in [a, a, a, b] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            assert!(ask(&mut c).await);
            held.push(c);
        }
        assert_eq!(process.load(Ordering::SeqCst), 4);
        for addr in [a, b] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            assert!(
                refused(&mut c).await,
                "a fifth connection was let in at {addr}"
            );
        }
        let mut c = TcpStream::connect(admin).await.unwrap();
        assert!(ask(&mut c).await, "the admin endpoint refused");
        for c in &mut held {
            assert!(ask(c).await);
        }
        assert_eq!(
            process.load(Ordering::SeqCst),
            4,
            "refusals are not counted"
        );
    }

    #[test]
    fn the_defaults_follow_the_descriptor_limit() {
        let l = ConnectionLimits::for_descriptors(20_000);
        assert_eq!((l.per_listener, l.process), (5_000, 10_000));
        assert_eq!(l.streams_per_connection, 100);
        let tiny = ConnectionLimits::for_descriptors(2);
        assert_eq!((tiny.per_listener, tiny.process), (1, 1));
        let huge = ConnectionLimits::for_descriptors(u64::MAX);
        assert_eq!(huge.process, u32::MAX / 2);
    }

    #[test]
    fn throttled_lines_count_the_skipped_ones() {
        let mut t = Throttled::new();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.next = Instant::now();
        assert_eq!(t.allow(), Some(2));
    }
}
