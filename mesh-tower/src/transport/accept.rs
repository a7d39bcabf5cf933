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
use std::sync::RwLock;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::BoxError;
use crate::identity::PeerIdentity;

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
    accept_each(listener, shutdown, move |stream, peer, builder, watcher| {
        let app = WithConnection::new(app.clone(), ConnectionInfo::plain(&stream, peer));
        serve_connection(stream, app, builder, watcher)
    })
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
/// for the connections in progress to finish their requests.
pub(crate) async fn accept_each<F, Fut>(
    listener: TcpListener,
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
    let graceful = GracefulShutdown::new();
    // Tells the connections still waiting for their first byte that the listener stops.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    // A transient accept error (too many open files, a reset before
                    // accept): keep serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (handle, builder, watcher) = (handle.clone(), builder.clone(), graceful.watcher());
                let mut stop = stop.clone();
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
