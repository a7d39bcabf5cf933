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
//! stops arriving is answered `408` after `request_body_idle`. Any connection (an HTTP/2
//! one stalling inside its preface or never opening a stream) that has started no
//! request within the bound of its first byte is closed; one without a request in
//! flight for `connection_idle` (1 hour, Envoy's `idle_timeout`) is shut down
//! gracefully (GOAWAY), and closed if it stays open and silent past `drain`; one whose request in
//! flight sees no byte either way for `request_body_idle` and a quarter (Envoy's
//! `stream_idle_timeout`, 5 minutes; here counted per connection, after the ingress's
//! own `408`, and sampled: up to a quarter more) is closed. When a listener stops, its
//! connections are shut down gracefully and given `drain` (5 s) to finish their
//! requests, then closed.
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
    /// How long a connection may stay without a request in flight once it has carried
    /// one (Envoy's `idle_timeout`, 1 hour): an HTTP/2 connection is then sent GOAWAY
    /// and closed. (An idle HTTP/1 connection is closed sooner, by `request_headers`.)
    /// Zero turns it off.
    pub connection_idle: Duration,
    /// How long a listener that stops waits for its connections to finish their
    /// requests before it closes them (Istio's `terminationDrainDuration`, 5 s), and a
    /// connection shut down for idleness may take to close. Zero: no bound.
    pub drain: Duration,
    /// How long a connection may take to send its first byte, any connection its first
    /// request (an HTTP/2 client stalling inside its preface or never opening a
    /// stream), and an HTTP/1 connection a whole request head from its first byte or
    /// from the end of its previous response (so also how long a keep-alive connection
    /// may stay idle); 10 s. Zero turns these bounds off, as a zero timeout does in
    /// Envoy.
    pub request_headers: Duration,
    /// How long a request may go without a byte either way (Envoy's
    /// `stream_idle_timeout`, 5 minutes): at the ingress a request body that has
    /// stopped arriving is then answered `408` (flag `SI`); on every listener a
    /// connection whose request in flight has seen no byte either way for a quarter
    /// longer (after the ingress's `408`) is closed — a body that stopped arriving at a
    /// workload, or an answer that never starts. Zero turns it off.
    pub request_body_idle: Duration,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        ListenerTimeouts {
            connection_idle: Duration::from_secs(3600),
            drain: Duration::from_secs(5),
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
    /// Streams one HTTP/2 connection to the ingress gateway carries at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`): 100, the value of Envoy's edge guidance.
    pub streams_per_connection: u32,
}

/// How long a connection's request in flight may go without a byte either way: a
/// quarter longer than `request_body_idle`, so that the ingress's own `408` goes out
/// first.
fn stall_bound(timeouts: &ListenerTimeouts) -> Duration {
    timeouts.request_body_idle + timeouts.request_body_idle / 4
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
    /// (an unlimited one reads as 1 048 576).
    fn default() -> Self {
        Self::for_descriptors(descriptor_limit())
    }
}

/// The process's soft descriptor limit (`RLIMIT_NOFILE`; an unlimited one reads as
/// 1 048 576).
pub fn descriptor_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(1 << 20, |n| n.min(1 << 20))
}

/// Raises the process's soft descriptor limit to its hard limit (as Go's runtime does at
/// start), so that the default bounds ([`ConnectionLimits`], the pools') are taken
/// from the most the process may open. Call it before the listeners start; returns the
/// limit in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "the descriptor limit could not be raised");
        }
    }
    descriptor_limit()
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
    /// The HTTP/2 streams a connection carries at once, when not hyper's default.
    streams: Option<u32>,
}

impl Admission {
    /// A listener of the process under `limits`, counted among the process's
    /// connections.
    pub(crate) fn process(limits: &ConnectionLimits) -> Self {
        Admission {
            listener: Arc::new(AtomicU32::new(0)),
            listener_max: limits.per_listener,
            shared: Some((PROCESS_CONNECTIONS.clone(), limits.process)),
            streams: None,
        }
    }

    /// An edge listener (the ingress gateway's ports): as [`Admission::process`], its
    /// HTTP/2 connections carrying `streams_per_connection` streams at once. (A
    /// workload's inbound port keeps hyper's 200: the mesh's own HTTP/2 pools keep one
    /// connection per endpoint, as Envoy's inbound listeners take any number.)
    pub(crate) fn edge(limits: &ConnectionLimits) -> Self {
        Admission {
            streams: Some(limits.streams_per_connection),
            ..Self::process(limits)
        }
    }

    /// The admin endpoint: [`ADMIN_CONNECTIONS`], counted apart.
    pub(crate) fn admin() -> Self {
        Admission {
            listener: Arc::new(AtomicU32::new(0)),
            listener_max: ADMIN_CONNECTIONS,
            shared: None,
            streams: None,
        }
    }

    /// A listener under `per_listener`, sharing `shared` (a gauge and its bound).
    #[cfg(test)]
    pub(crate) fn with(per_listener: u32, shared: Option<(Arc<AtomicU32>, u32)>) -> Self {
        Admission {
            listener: Arc::new(AtomicU32::new(0)),
            listener_max: per_listener,
            shared,
            streams: None,
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

/// True for the accept errors that concern one connection only (reset or aborted before
/// its accept, and the network errors Linux's accept(2) passes on, to be treated as a
/// retry): the next accept may go ahead at once. Any other (out of descriptors or
/// memory, or worse) backs off.
fn retry_at_once(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return true;
    }
    let errno = Errno::from_io_error(e);
    [
        Errno::PROTO,
        Errno::NETDOWN,
        Errno::NETUNREACH,
        Errno::HOSTDOWN,
        Errno::HOSTUNREACH,
        Errno::NONET,
        Errno::NOPROTOOPT,
        Errno::OPNOTSUPP,
    ]
    .into_iter()
    .any(|r| Some(r) == errno)
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
    serve_plain(listener, admission, listener_timeouts(), app, shutdown).await
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
    let timeouts = listener_timeouts();
    serve_plain(listener, Admission::admin(), timeouts, app, shutdown).await
}

/// [`serve`] for an edge listener (the ingress gateway's plaintext ports):
/// [`Admission::edge`].
pub(crate) async fn serve_edge<S, B>(
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
    let admission = Admission::edge(&connection_limits());
    serve_plain(listener, admission, listener_timeouts(), app, shutdown).await
}

/// [`serve`] under `admission`'s and `timeouts`' bounds.
pub(crate) async fn serve_plain<S, B>(
    listener: TcpListener,
    admission: Admission,
    timeouts: ListenerTimeouts,
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
        timeouts,
        shutdown,
        move |stream, peer, builder, control| {
            let app = WithConnection::new(app.clone(), ConnectionInfo::plain(&stream, peer));
            serve_connection(stream, app, builder, control)
        },
    )
    .await
}

/// What a connection's task is told by its listener, and the bounds it keeps: see
/// [`serve_connection`].
pub(crate) struct ConnControl {
    /// The listener's phase: [`STOPPING`] (the connection is shut down gracefully, as
    /// when the listener's future is dropped), then [`FORCED`] (the drain time is over:
    /// it is closed).
    phase: tokio::sync::watch::Receiver<u8>,
    /// How long a connection shut down for idleness may take to close (a client that
    /// never answers HTTP/2's GOAWAY ping would keep it open).
    drain: Duration,
    /// How long the connection may take to start its first request.
    first: Option<Duration>,
    /// How long it may stay without a request in flight afterwards.
    idle: Option<Duration>,
    /// How long a request in flight may go without a byte either way.
    stalled: Option<Duration>,
    /// Held while the connection's task runs: the listener waits for every one.
    _alive: tokio::sync::mpsc::Sender<()>,
    /// Its place under the listener's bounds: moved into the connection's IO, so that
    /// an upgraded connection (WebSocket) holds it until it closes.
    admitted: Option<Admitted>,
}

/// A listener stopping: its connections are shut down gracefully.
const STOPPING: u8 = 1;
/// A listener's drain time over: its connections still open are closed.
const FORCED: u8 = 2;

/// Completes once the listener's phase reaches `at`, or (`on_drop`) the listener is
/// gone; never otherwise.
async fn reached(mut phase: tokio::sync::watch::Receiver<u8>, at: u8, on_drop: bool) {
    if phase.wait_for(|p| *p >= at).await.is_err() && !on_drop {
        std::future::pending::<()>().await;
    }
}

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on one connection with `app`, until the
/// connection ends. It is closed when no request has started within the bound of its
/// first byte; shut down gracefully (HTTP/2 GOAWAY, HTTP/1 after the response in
/// progress) when its listener stops or when no request has been in flight for
/// `connection_idle` — then closed if still open once a `drain` window after the first
/// passes without a byte either way (a response still streaming is left to finish,
/// looked at again after the stall bound); closed when a request
/// in flight (until its response head) sees no byte either way for the stall bound, and
/// when the listener's drain time is over. An upgraded connection (WebSocket) leaves
/// these bounds once upgraded: it keeps its place under the connection bounds until it
/// closes.
pub(crate) async fn serve_connection<IO, S, B>(
    io: IO,
    app: S,
    builder: Builder<TokioExecutor>,
    mut control: ConnControl,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let app = Tracked {
        inner: app,
        activity: activity.clone(),
    };
    let io = Guarded {
        io,
        activity: activity.clone(),
        _admitted: control.admitted.take(),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut closing = false;
    // Set when the connection was shut down: closed if still open and silent then.
    let mut close_by: Option<tokio::time::Instant> = None;
    // The connection's read/write count when last looked at after its shutdown (`None`
    // in the first `drain`, when its own GOAWAY goes out).
    let mut moved_at_close: Option<u64> = None;
    loop {
        let deadline = async {
            match close_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = reached(control.phase.clone(), STOPPING, true), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                // The listener's drain (or its future dropped): closed if still open
                // and silent after `drain`.
                close_by = (!control.drain.is_zero())
                    .then(|| tokio::time::Instant::now() + control.drain);
                moved_at_close = None;
            }
            started = activity.idle(control.first, control.idle), if !closing => {
                if !started {
                    tracing::debug!("connection started no request within its bound: closed");
                    return;
                }
                tracing::debug!("connection idle past its bound: shut down");
                conn.as_mut().graceful_shutdown();
                closing = true;
                close_by = (!control.drain.is_zero())
                    .then(|| tokio::time::Instant::now() + control.drain);
                moved_at_close = None;
            }
            () = deadline => {
                // Closed once a whole window passes without a byte either way; bytes
                // still moving (a response streaming after its head, which does not
                // count in flight) are left to finish, looked at again after the stall
                // bound.
                let now = activity.moved.load(Ordering::Relaxed);
                let again = match moved_at_close {
                    None => Some(control.drain),
                    Some(before) if before != now => Some(control.stalled.unwrap_or(control.drain)),
                    Some(_) => None,
                };
                if let Some(again) = again {
                    moved_at_close = Some(now);
                    close_by = Some(tokio::time::Instant::now() + again);
                    continue;
                }
                tracing::debug!("connection shut down still open and silent after the drain time: closed");
                return;
            }
            () = activity.stalled(control.stalled) => {
                tracing::debug!("a request went without a byte either way past its bound: connection closed");
                return;
            }
            () = reached(control.phase.clone(), FORCED, false) => {
                tracing::debug!("connection still busy after the drain time: closed");
                return;
            }
        }
    }
}

/// A connection's IO holding its place under its listener's bounds, and noting in its
/// [`Activity`] when bytes last went either way.
struct Guarded<IO> {
    io: IO,
    activity: Arc<Activity>,
    _admitted: Option<Admitted>,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved();
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The requests of one connection: how many are in flight, when the first started and
/// the last ended, and how many reads and writes moved bytes.
#[derive(Debug)]
struct Activity {
    born: Instant,
    in_flight: AtomicU32,
    /// Milliseconds from `born` to the first request's start, then to the last end of
    /// one; `u64::MAX` before the first.
    last: std::sync::atomic::AtomicU64,
    /// Reads and writes that moved bytes: sampled by [`Activity::stalled`] (a count,
    /// not a clock read per read or write).
    moved: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            last: std::sync::atomic::AtomicU64::new(u64::MAX),
            moved: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Counts a read or write that moved bytes. One task at a time does the
    /// connection's IO: a load and a store, no locked instruction.
    fn moved(&self) {
        let n = self.moved.load(Ordering::Relaxed);
        self.moved.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// A request starts: the first one marks the connection as started.
    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if self.last.load(Ordering::Relaxed) == u64::MAX {
            self.touch();
        }
    }

    /// Completes once a request in flight has gone `bound` (up to a quarter more: the
    /// connection's IO is sampled four times per bound) without a byte read or written
    /// on the connection (Envoy's `stream_idle_timeout`, per connection: a request body
    /// that stops arriving, or a response that never starts).
    async fn stalled(&self, bound: Option<Duration>) {
        let Some(bound) = bound else {
            return std::future::pending().await;
        };
        let step = (bound / 4).max(Duration::from_millis(1));
        let mut seen = self.moved.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            let now = self.moved.load(Ordering::Relaxed);
            let busy = self.in_flight.load(Ordering::Relaxed) > 0;
            if now != seen || !busy {
                seen = now;
                quiet = Duration::ZERO;
                continue;
            }
            quiet += step;
            if quiet >= bound {
                return;
            }
        }
    }

    /// Completes once the connection has gone `first` without starting a request
    /// (`false`), or `idle` without a request in flight since its last one (`true`).
    async fn idle(&self, first: Option<Duration>, idle: Option<Duration>) -> bool {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let started = last != u64::MAX;
            let (bound, since) = if started {
                let at = self.born + Duration::from_millis(last);
                (idle, at.elapsed())
            } else {
                (first, self.born.elapsed())
            };
            let Some(bound) = bound else {
                match (started, idle) {
                    // No first bound: the idle bound counts from the connection's start.
                    (false, Some(idle)) => {
                        let since = self.born.elapsed();
                        if since >= idle {
                            return true;
                        }
                        tokio::time::sleep(idle - since).await;
                        continue;
                    }
                    _ => return std::future::pending().await,
                }
            };
            let busy = self.in_flight.load(Ordering::Relaxed) > 0;
            if !busy && since >= bound {
                return started;
            }
            let mut wait = if busy { bound } else { bound - since };
            if !started && let Some(idle) = idle {
                // A request may start meanwhile: the idle bound then counts.
                wait = wait.min(idle);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// A connection's service, counting its requests in flight in its [`Activity`].
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> Service<R> for Tracked<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.activity.started();
        TrackedFuture {
            inner: self.inner.call(req),
            done: InFlight(self.activity.clone()),
        }
    }
}

/// A request in flight on its connection until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`]: the request counts in flight until its
    /// response is ready (or it is dropped).
    #[derive(Debug)]
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        done: InFlight,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

/// Accepts connections on `listener` until `shutdown` completes, running
/// `handle(stream, peer, builder, control)` in a task of its own for each (the handler
/// serves the connection with [`serve_connection`] and `control`, so that shutdown
/// waits for it); then waits for the connections in progress to finish their requests,
/// up to the listeners' drain time. Its connections are let in as `admission` says
/// ([`Admission::process`] for a workload's port, [`Admission::edge`] for the
/// ingress's), under the process's [`ListenerTimeouts`].
pub(crate) async fn accept_each<F, Fut>(
    listener: TcpListener,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr, Builder<TokioExecutor>, ConnControl) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_admitting(listener, admission, listener_timeouts(), shutdown, handle).await
}

/// [`accept_each`] under `admission`'s bounds (a connection past them is closed as soon
/// as it is accepted) and `timeouts`.
pub(crate) async fn accept_admitting<F, Fut>(
    listener: TcpListener,
    admission: Admission,
    timeouts: ListenerTimeouts,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr, Builder<TokioExecutor>, ConnControl) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let bound = (!timeouts.request_headers.is_zero()).then_some(timeouts.request_headers);
    let mut builder = Builder::new(TokioExecutor::new());
    // Without a timer hyper enforces no header timeout at all.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bound);
    if let Some(streams) = admission.streams {
        builder.http2().max_concurrent_streams(streams);
    }
    // Tells the connections that the listener stops, then that the drain time is over;
    // every connection's task holds an `alive` sender until it ends.
    let (phase_tx, phase) = tokio::sync::watch::channel(0u8);
    let (alive, mut ended) = tokio::sync::mpsc::channel::<()>(1);
    let idle = (!timeouts.connection_idle.is_zero()).then_some(timeouts.connection_idle);
    // At the ingress a stalled body is answered 408 at `request_body_idle`: the
    // connections' own bound comes later, so that the 408 goes out first, and the
    // ingress's request to a workload ends before that workload's bound.
    let stalled = (!timeouts.request_body_idle.is_zero()).then(|| stall_bound(&timeouts));
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
                    // A connection reset or aborted before its accept: the next one.
                    Err(e) if retry_at_once(&e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                    // Out of descriptors or memory (or another error that would
                    // repeat): keep serving, waiting longer each time instead of
                    // spinning.
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
                let (handle, builder) = (handle.clone(), builder.clone());
                let control = ConnControl {
                    phase: phase.clone(),
                    drain: timeouts.drain,
                    first: bound,
                    idle,
                    stalled,
                    _alive: alive.clone(),
                    admitted: Some(admitted),
                };
                let stop = phase.clone();
                tokio::spawn(async move {
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
                        () = reached(stop, STOPPING, true) => None,
                    };
                    match first {
                        Some(Ok(n)) if n > 0 => handle(stream, peer, builder, control).await,
                        _ => tracing::debug!(%peer, "connection closed before its first byte"),
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    // No new connection waits in the backlog while the others drain.
    drop(listener);
    let _ = phase_tx.send(STOPPING);
    drop(alive);
    // Every connection's task gone, or the drain time over (zero: no bound): then the
    // rest are closed. (A task still in its TLS handshake, bounded by the handshake
    // timeout, sees the listener's phase once it serves; upgraded connections are left
    // to close on their own.)
    if timeouts.drain.is_zero() {
        ended.recv().await;
    } else if tokio::time::timeout(timeouts.drain, ended.recv())
        .await
        .is_err()
    {
        let _ = phase_tx.send(FORCED);
        let _ = tokio::time::timeout(Duration::from_secs(1), ended.recv()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `ok` on a fresh 127.0.0.1 port under `admission`, until the test ends.
    async fn listener(admission: Admission) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let timeouts = ListenerTimeouts::default();
        tokio::spawn(serve_plain(
            l,
            admission,
            timeouts,
            app,
            std::future::pending(),
        ));
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
        let admin = listener(Admission::admin()).await;
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

    /// Serves `/sleep/MS` (answers after MS milliseconds) on a fresh port under
    /// `timeouts` until `shutdown`; the serving task, to see when it ends.
    async fn sleeper(
        timeouts: ListenerTimeouts,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = tower::service_fn(|req: Request<Incoming>| async move {
            let ms = req
                .uri()
                .path()
                .strip_prefix("/sleep/")
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let admission = Admission::with(100, None);
        let task = tokio::spawn(serve_plain(l, admission, timeouts, app, shutdown));
        (addr, task)
    }

    fn short(first: u64, idle: u64, drain: u64) -> ListenerTimeouts {
        ListenerTimeouts {
            request_headers: Duration::from_millis(first),
            connection_idle: Duration::from_millis(idle),
            drain: Duration::from_millis(drain),
            ..ListenerTimeouts::default()
        }
    }

    /// An HTTP/2 client connection, and the task driving it (ends when the server
    /// closes it).
    async fn h2(
        addr: SocketAddr,
    ) -> (
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    ) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, task)
    }

    async fn h2_get(
        send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        path: &str,
    ) -> u16 {
        let req = Request::get(format!("http://a{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap().status().as_u16()
    }

    /// An HTTP/2 connection without a request in flight for `connection_idle` is shut
    /// down; one with a request in flight is not.
    #[tokio::test]
    async fn an_idle_http2_connection_is_shut_down() {
        let (addr, _task) = sleeper(short(10_000, 300, 1_000), std::future::pending()).await;
        let (mut send, conn) = h2(addr).await;
        // A request longer than the idle bound keeps the connection.
        assert_eq!(h2_get(&mut send, "/sleep/600").await, 200);
        assert!(!conn.is_finished(), "closed while a request was in flight");
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an idle HTTP/2 connection was kept")
            .unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    }

    /// A client that stalls inside the HTTP/2 preface, or finishes it and never opens a
    /// stream, is closed once it has started no request within the first bound.
    #[tokio::test]
    async fn a_connection_that_starts_no_request_is_closed() {
        let (addr, _task) = sleeper(short(300, 3_600_000, 1_000), std::future::pending()).await;
        // Half a preface.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let started = Instant::now();
        assert!(refused(&mut raw).await, "a stalled preface was kept");
        assert!(started.elapsed() >= Duration::from_millis(250));
        // A whole handshake, then nothing.
        let (_send, conn) = h2(addr).await;
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an HTTP/2 connection without a stream was kept")
            .unwrap();
    }

    /// A listener that stops lets a request in progress finish within the drain time,
    /// and closes what is still busy after it.
    #[tokio::test]
    async fn shutdown_drains_within_its_bound() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let (addr, task) = sleeper(short(10_000, 3_600_000, 500), shutdown).await;
        let (mut quick, _) = h2(addr).await;
        let (mut slow, slow_conn) = h2(addr).await;
        let quick = tokio::spawn(async move { h2_get(&mut quick, "/sleep/200").await });
        let slow = tokio::spawn(async move {
            let req = Request::get("http://a/sleep/20000")
                .body(Full::new(Bytes::new()))
                .unwrap();
            slow.send_request(req).await.map(|r| r.status().as_u16())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        stop.send(()).unwrap();
        assert_eq!(quick.await.unwrap(), 200, "a request in progress was cut");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the listener did not stop within its drain time")
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(
            slow.await.unwrap().is_err(),
            "the slow request was answered"
        );
        tokio::time::timeout(Duration::from_secs(2), slow_conn)
            .await
            .expect("the busy connection was not closed")
            .unwrap();
    }

    /// An edge listener advertises its bound on concurrent HTTP/2 streams.
    #[tokio::test]
    async fn an_edge_listener_advertises_its_stream_bound() {
        let limits = ConnectionLimits {
            streams_per_connection: 7,
            ..ConnectionLimits::for_descriptors(1000)
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let timeouts = ListenerTimeouts::default();
        let pending = std::future::pending();
        tokio::spawn(serve_plain(
            l,
            Admission::edge(&limits),
            timeouts,
            app,
            pending,
        ));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // The server's SETTINGS have arrived once a response has.
        let (resp, _) = send
            .send_request(Request::get("http://a/").body(()).unwrap(), true)
            .unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        assert_eq!(send.current_max_send_streams(), 7);
    }

    /// A request whose body stops arriving is closed after `request_body_idle` without a
    /// byte either way; a body that keeps arriving slowly is read whole.
    #[tokio::test]
    async fn a_request_body_that_stops_arriving_closes_its_connection() {
        use http_body_util::BodyExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = tower::service_fn(|req: Request<Incoming>| async move {
            let n = req
                .into_body()
                .collect()
                .await
                .map_or(0, |b| b.to_bytes().len());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
        });
        let timeouts = ListenerTimeouts {
            request_body_idle: Duration::from_millis(400),
            ..ListenerTimeouts::default()
        };
        let pending = std::future::pending();
        tokio::spawn(serve_plain(
            l,
            Admission::with(10, None),
            timeouts,
            app,
            pending,
        ));
        let bound = stall_bound(&timeouts);
        let head = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n";
        // Ten bytes 100 ms apart: served.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(head).await.unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.write_all(b"x").await.unwrap();
        }
        let mut got = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&got[..n]).to_string();
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("10"),
            "{text}"
        );
        // Three bytes, then nothing: closed once the bound passes without a byte.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(head).await.unwrap();
        c.write_all(b"xyz").await.unwrap();
        let started = Instant::now();
        assert!(refused(&mut c).await, "a stalled body kept its connection");
        let took = started.elapsed();
        assert!(
            took >= bound - Duration::from_millis(50) && took < Duration::from_secs(3),
            "{took:?} (bound {bound:?})"
        );
    }

    /// The client preface and an empty SETTINGS frame, as a raw HTTP/2 client sends.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

    /// Reads `c` until the server closes it (true), or `within` passes (false).
    async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(within, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    /// A raw HTTP/2 client that completes its preface and then says nothing — never
    /// answering the ping a graceful GOAWAY sends — is closed at the first bound.
    #[tokio::test]
    async fn a_silent_http2_client_is_closed_at_the_first_bound() {
        let (addr, _task) = sleeper(short(300, 3_600_000, 60_000), std::future::pending()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(PREFACE).await.unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut c, Duration::from_secs(5)).await,
            "kept open"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    /// A raw HTTP/2 client that sends one request and then never answers the GOAWAY's
    /// ping is closed once idle for `connection_idle` and then `drain`.
    #[tokio::test]
    async fn an_idle_http2_client_that_ignores_goaway_is_closed_after_the_drain_time() {
        let (addr, _task) = sleeper(short(10_000, 300, 300), std::future::pending()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(PREFACE).await.unwrap();
        // HEADERS, stream 1, END_STREAM | END_HEADERS: GET http://a/ (HPACK: indexed
        // :method GET, :scheme http, :path /, and :authority `a` as a literal).
        let headers = [
            0x00, 0x00, 0x06, 0x01, 0x05, 0x00, 0x00, 0x00, 0x01, 0x82, 0x86, 0x84, 0x41, 0x01,
            b'a',
        ];
        c.write_all(&headers).await.unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut c, Duration::from_secs(5)).await,
            "kept open"
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(550), "closed after {took:?}");
    }

    /// Without the first-request bound (`request_headers` zero), the idle bound still
    /// applies once a request has been served.
    #[tokio::test]
    async fn the_idle_bound_holds_without_the_first_request_bound() {
        let mut timeouts = short(10_000, 300, 1_000);
        timeouts.request_headers = Duration::ZERO;
        let (addr, _task) = sleeper(timeouts, std::future::pending()).await;
        let (mut send, conn) = h2(addr).await;
        assert_eq!(h2_get(&mut send, "/").await, 200);
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an idle HTTP/2 connection was kept")
            .unwrap();
    }

    /// A response body sending a byte every 100 ms, 15 times.
    struct Drip {
        left: u32,
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }

    impl http_body::Body for Drip {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            std::task::ready!(timer.as_mut().poll(cx));
            self.timer = None;
            self.left -= 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
        }
    }

    /// A response still streaming after its head (which no longer counts in flight) is
    /// left to finish when its connection is shut down for idleness.
    #[tokio::test]
    async fn a_streaming_response_outlives_the_idle_shutdown() {
        use http_body_util::BodyExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Drip {
                left: 15,
                timer: None,
            }))
        });
        let timeouts = short(10_000, 300, 300);
        let pending = std::future::pending();
        tokio::spawn(serve_plain(
            l,
            Admission::with(10, None),
            timeouts,
            app,
            pending,
        ));
        let (mut send, _conn) = h2(addr).await;
        let req = Request::get("http://a/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("the stream did not end")
            .expect("the stream was cut");
        assert_eq!(body.to_bytes().len(), 15);
    }
}
